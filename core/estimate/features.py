"""The feature-cache plan of a run's phase: which frozen prefix is cached, its shape, and whether it fits.

The engine and the memory estimate (`core.estimate.memory`) both plan through `plan_features`, so
the estimate plans the cache the run will use. Computing and storing the features is the engine's
(`core.engine.features`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from core.config import RunConfig
from core.freezing.prefix import frozen_prefix
from core.models import build_skeleton, forward_chain, run_chain


@dataclass
class FeaturePlan:
    """Whether this phase of the run trains on cached prefix features, and on which prefix."""

    used: bool
    prefix: str | None  # name of the last cached step
    reason: str | None  # why not, when not used
    length: int = 0  # number of cached steps
    build_s: float = 0.0  # seconds spent computing (or loading) the features
    source: str | None = None  # "computed" or "disk" (stored by an earlier run with the same prefix and data)
    shape: tuple[int, ...] = ()  # one image's features

    def to_dict(self) -> dict:
        return {"used": self.used, "prefix": self.prefix, "reason": self.reason, "build_s": round(self.build_s, 3),
                "source": self.source}


def plan_feature_cache(steps, config: RunConfig) -> FeaturePlan:
    """Decide the cache for the model's current frozen set and modes (see `frozen_prefix`)."""
    n, ends = frozen_prefix(steps)
    prefix = steps[n - 1][0] if n else None
    if not config.feature_cache:
        return FeaturePlan(False, prefix, "switched off for this run", n)
    if n == 0:
        return FeaturePlan(False, None, f"no frozen prefix: the first step, {ends}", 0)
    if config.augment:
        return FeaturePlan(False, prefix, f"augmentation ({', '.join(config.augment)}) changes every epoch's input", n)
    return FeaturePlan(True, prefix, None, n)


CPU_FEATURE_BUDGET = 2 << 30  # bytes of cached features on the CPU, at most


def feature_budget(device: torch.device) -> int:
    """Bytes the cached features of a run may take: 40% of the free GPU memory; on the CPU an eighth of
    the physical memory, at most `CPU_FEATURE_BUDGET`."""
    if device.type == "cuda":
        return int(0.4 * torch.cuda.mem_get_info(device)[0])
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = 8 << 30
    return min(CPU_FEATURE_BUDGET, physical // 8)


def plan_features(steps, config: RunConfig, *, images: int, elem_bytes: int, budget: int) -> FeaturePlan:
    """The feature cache of one phase of a run: `plan_feature_cache`, then the shape of one image's
    features and the check that those of all `images` fit in `budget` bytes at `elem_bytes` per value.

    The engine and the memory estimate (`core.estimate.memory`) both decide through here, so the estimate
    plans the cache the run will use.
    """
    plan = plan_feature_cache(steps, config)
    if not plan.used:
        return plan
    plan.shape = feature_shape(config.arch, config.num_classes, config.image_size, plan.length)
    need = math.prod(plan.shape) * elem_bytes * images
    if need > budget:
        return FeaturePlan(False, plan.prefix, f"the features up to {plan.prefix} would take "
                           f"{need / 2**20:.0f} MiB (budget {budget / 2**20:.0f} MiB)", plan.length)
    return plan


def feature_shape(arch: str, num_classes: int, image_size: tuple[int, int], length: int) -> tuple[int, ...]:
    """Shape of one image's features after the first `length` steps of the forward chain.

    A pass on the meta device: no memory, no kernels (a real one-image pass
    would pay for first-call kernel setup, or cuDNN autotuning, of a shape
    that is never used again). It is still Python over every module, so the
    answer (a pure function of the arguments) is kept.
    """
    skeleton = build_skeleton(arch, num_classes).eval()
    with torch.no_grad():
        out = run_chain(forward_chain(skeleton, arch)[:length], torch.empty(1, 3, *image_size, device="meta"))
    return tuple(out.shape[1:])

