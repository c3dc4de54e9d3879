"""What a freezing choice costs next to full fine-tuning, as the Model page shows it.

One training step always (`estimate`); a whole run when the dataset's split sizes are known
(`run_memory`: resident images, features, evaluation, checkpoint copies). Both for the choice and for
full fine-tuning of the same config, on the device the run would use, in the precision it would use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.config import RunConfig
from core.devices import amp_dtype
from core.estimate.costs import Costs, estimate
from core.estimate.memory import RunMemory, run_memory
from core.estimate.profile import CostProfile


@dataclass(frozen=True)
class ChoiceCosts:
    step: Costs  # one training step of the choice
    full_step: Costs  # ... and of full fine-tuning
    run: RunMemory | None  # the whole run of the choice, when the dataset's sizes are known
    full_run: RunMemory | None
    precision: str  # "bf16" or "fp32", as the run would train on the device


def choice_costs(profile: CostProfile, config: RunConfig, device: torch.device, *,
                 sizes: tuple[int, ...] | None = None, skeleton: nn.Module | None = None) -> ChoiceCosts:
    """`config`'s costs against full fine-tuning; `sizes` = (train, val, test) images, `skeleton` a meta-device
    model of the architecture to reuse (its frozen set and modes change)."""
    precision = "bf16" if amp_dtype(config.precision, device) is not None else "fp32"
    full = config.replace(frozen=(), preset="full")
    if sizes:
        mine_run, full_run = (run_memory(profile, c, train_images=sizes[0], val_images=sizes[1], device=device,
                                         skeleton=skeleton, test_images=sizes[2] if len(sizes) > 2 else 0) for c in (config, full))
        return ChoiceCosts(mine_run.step, full_run.step, mine_run, full_run, precision)
    options = dict(optimizer=config.optimizer, batch_size=config.batch_size, precision=precision,
                   bn_frozen_eval=config.bn_frozen_eval)
    return ChoiceCosts(estimate(profile, config.frozen, **options), estimate(profile, (), **options), None, None, precision)
