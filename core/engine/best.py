"""Which epoch's weights a run ends with, and when it stops early.

`RunConfig.keep` = ``"best"`` ends a run with the weights of its best validation epoch (the
earliest, on a tie), ``"last"`` with its last epoch's. `RunConfig.early_stop` = k > 0 ends a run
once k epochs in a row have not beaten the best validation accuracy. Both choose on the
validation split only; the test split grades the kept weights once, afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def best_index(val_accs: Sequence[float]) -> int:
    """The position of the best validation accuracy, the earliest on a tie."""
    return max(range(len(val_accs)), key=lambda i: (val_accs[i], -i))


def plateaued(val_accs: Sequence[float], patience: int) -> bool:
    """Whether the last `patience` epochs all failed to beat the best before them (False when 0: off)."""
    return patience > 0 and len(val_accs) - 1 - best_index(val_accs) >= patience


@dataclass
class KeptWeights:
    """CPU copies of what a run can change (`names`: its trainable parameters over all phases, and
    every buffer) at its best validation epoch so far; `restore` puts them back."""

    names: frozenset[str]
    val_accs: list[float] = field(default_factory=list)
    state: dict[str, Tensor] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        """The kept epoch, counted from 1."""
        return best_index(self.val_accs) + 1

    def offer(self, model: nn.Module, val_acc: float) -> None:
        """Record an epoch's validation accuracy, and copy the weights when it is the best so far."""
        self.val_accs.append(val_acc)
        if self.epoch == len(self.val_accs):
            changing = {n: p for n, p in model.named_parameters() if n in self.names} | dict(model.named_buffers())
            self.state = {}  # one copy at a time: the old one goes before the new one is made
            self.state = {n: t.detach().to("cpu", copy=True) for n, t in changing.items()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put the kept epoch's values back into `model`, in place (layouts and devices unchanged)."""
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, value in self.state.items():
            tensors[name].copy_(value)
