"""How long a sweep will take: each member's work from the cost model, at the speed earlier runs reached.

A member's work per image (`member_work`) is what its run computes: each epoch's training pass (the
forward pass after the cached prefix, and the backward pass of what trains), the validation pass
(the forward pass after the prefix), and the prefix's forward pass, once (the feature cache; the
whole forward pass every epoch when there is none). FLOPs come from the cost profile
(`core.estimate`: `torch.utils.flop_counter` on the meta device). The rate is measured, not assumed:
the FLOPs per second earlier finished runs of the same architecture and input size reached on this
store's machine (`achieved_rate`), their median. Without such runs there is no time, only the work.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from core.config import RunConfig
from core.estimate import CostProfile, estimate, plan_feature_cache
from core.freezing import set_frozen, set_train_mode
from core.models import forward_chain
from core.store import FINISHED, RunRecord


@dataclass(frozen=True)
class Work:
    """FLOPs per image of one run."""

    train: int  # each epoch's training pass
    val: int  # each epoch's validation pass
    once: int  # the cached prefix's forward pass, computed once for both splits

    def total(self, epochs: int, train_images: int, val_images: int) -> int:
        return epochs * (self.train * train_images + self.val * val_images) + self.once * (train_images + val_images)


def member_work(profile: CostProfile, config: RunConfig, skeleton: nn.Module) -> Work:
    """`config`'s FLOPs per image (see the module docstring); `skeleton` is a meta-device model of its
    architecture (its frozen set and modes change)."""
    costs = estimate(profile, config.frozen, optimizer=config.optimizer, batch_size=config.batch_size,
                     bn_frozen_eval=config.bn_frozen_eval)
    set_frozen(skeleton, config.frozen)
    set_train_mode(skeleton, config.bn_frozen_eval)
    plan = plan_feature_cache(forward_chain(skeleton, config.arch), config)
    steps = [name for name, _ in forward_chain(skeleton, config.arch)[: plan.length]] if plan.used else []
    prefix = sum(c.fwd_flops for c in profile.calls if any(c.path == s or c.path.startswith(s + ".") for s in steps))
    return Work(costs.fwd_flops - prefix + costs.bwd_flops, costs.fwd_flops - prefix, prefix)


def achieved_rate(profile: CostProfile, runs: Sequence[RunRecord], skeleton: nn.Module) -> float | None:
    """The median FLOPs per second of the training passes of earlier finished runs of the profile's
    architecture and input size (their images/s times their training FLOPs per image), or None."""
    rates = [r.summary.images_per_s * member_work(profile, r.config, skeleton).train for r in runs
             if r.status == FINISHED and r.summary.images_per_s and r.config.arch == profile.arch
             and tuple(r.config.image_size) == tuple(profile.image_size)]
    return statistics.median(rates) if rates else None


def sweep_work(profile: CostProfile, configs: Sequence[RunConfig], sizes: tuple[int, ...], skeleton: nn.Module) -> int:
    """FLOPs of every member's whole run on `sizes` = (train, val[, test]) images; the test split's one
    forward pass at the end is left out (under one epoch's validation pass)."""
    return sum(member_work(profile, c, skeleton).total(c.epochs, *sizes[:2]) for c in configs)
