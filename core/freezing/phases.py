"""The phases of a run: which layers train in which epochs (gradual unfreezing, as fastai's `fine_tune`).

The engine trains phase by phase and the memory estimate costs each phase, both from `phase_plan`,
so the estimate plans the run the engine will do.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from core.config import RunConfig
from core.freezing.presets import preset_frozen


@dataclass(frozen=True)
class Phase:
    first_epoch: int  # 1-based, inclusive
    last_epoch: int
    frozen: tuple[str, ...]  # frozen module paths during these epochs

    @property
    def epochs(self) -> int:
        return self.last_epoch - self.first_epoch + 1


def phase_plan(model: nn.Module, config: RunConfig) -> list[Phase]:
    """One phase with the configured frozen set; with `unfreeze_after` > 0, first that many epochs
    that train only the new head. `model` is any model of the config's architecture (a skeleton will do)."""
    if config.unfreeze_after <= 0:
        return [Phase(1, config.epochs, tuple(config.frozen))]
    return [Phase(1, config.unfreeze_after, preset_frozen(model, config.arch, "head")),
            Phase(config.unfreeze_after + 1, config.epochs, tuple(config.frozen))]
