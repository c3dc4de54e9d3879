"""Device memory of a whole training run, before it starts: the Model page's "peak for a run".

`core.estimate.costs.estimate` costs one training step. A run of the engine
(`core.engine.train`) also keeps, from start to end:

- the decoded training, validation and test images (uint8, [N, 3, H, W]) on
  the device when they fit (`core.devices.fits_on_device`);
- with the feature cache (`core.estimate.features.plan_features`, the same decision the
  engine makes), the prefix's output for every image, in the run's precision;

and its memory peaks in one of these moments (`RunMemory.moments`):

- **feature pass**: every weight, the images, the features and the working set
  of the prefix at the batch size, without autograd
  (`core.engine.features.compute_features`);
- **training step**: `Costs.total_bytes` of what is not cached (weights,
  gradients, optimizer state, saved activations, working set, bf16 weight
  copies), with the images and features still there;
- **evaluation**: the forward of what is not cached at the batch size
  without autograd, next to the weights, gradients and optimizer state
  (and, once at the end, the test split's forward through the whole network).

On the CPU the device memory is the host's, so more things count: the
freeze audit's copies of the frozen tensors and the layer drift's copies of the
trainable ones (`core.engine.signals.LayerDrift`; both taken before training,
kept to the end), with ``keep="best"`` the copies of the trainable tensors and
buffers of the best epoch so far (`core.engine.best`), the difference of one
trained tensor from its start at each epoch's end (**layer drift**), and, at the end, the copies of the trained
weights and all buffers that become the run's checkpoint (**saving**).

With gradual unfreezing the run has two phases (head only, then the
configured set); the estimate is that of the phase with the higher peak.

Not counted: on CUDA, cuDNN's and cuBLAS's workspaces (cuDNN's autotuning tries
algorithms with large workspaces in the first steps) and the caching
allocator's rounding; the CUDA context; the Python process itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.config import RunConfig
from core.devices import amp_dtype, fits_on_device
from core.estimate.costs import Costs, estimate, forward_pass_bytes
from core.estimate.features import FeaturePlan, feature_budget, plan_features
from core.estimate.profile import CostProfile
from core.estimate.units import human_bytes
from core.freezing import is_frozen_bn, phase_plan, set_frozen, set_train_mode
from core.models import build_skeleton, forward_chain


@dataclass(frozen=True)
class RunMemory:
    """What a run keeps in device memory, by part, and its peak."""

    step: Costs  # one training step of what is not cached
    feature_cache: FeaturePlan
    images: int  # training + validation
    data_bytes: int  # decoded images on the device (0 when they stay in pinned host memory)
    features_bytes: int  # cached prefix features of every image
    feature_pass_bytes: int  # working set of computing them (0 without the cache)
    eval_bytes: int  # working set of evaluation, plus autocast's copies of the trained weights
    audit_bytes: int  # CPU only: copies of the frozen tensors for the freeze audit
    checkpoint_bytes: int  # CPU only: copies of the trained weights and buffers at the end
    drift_bytes: int = 0  # CPU only: the layer drift's copies of the trainable tensors at the start
    drift_diff_bytes: int = 0  # CPU only: the largest trainable tensor, its difference from the start
    best_bytes: int = 0  # CPU only, keep="best": copies of the trainable tensors and buffers of the best epoch so far

    @property
    def moments(self) -> dict[str, int]:
        """Bytes in use at each moment where the run can peak."""
        s = self.step
        before = self.data_bytes + self.features_bytes + self.audit_bytes + self.drift_bytes
        kept = before + self.best_bytes  # the best epoch's copy exists from the first epoch's end
        state = s.weights_bytes + s.grads_bytes + s.optimizer_bytes
        out = {"training step": s.total_bytes + kept, "evaluation": state + self.eval_bytes + kept}
        if self.drift_diff_bytes:
            out["layer drift"] = state + kept + self.drift_diff_bytes
        if self.feature_cache.used:
            out["feature pass"] = s.weights_bytes + self.feature_pass_bytes + before
        if self.checkpoint_bytes:
            out["saving"] = state + kept + self.checkpoint_bytes
        return out

    @property
    def peak_bytes(self) -> int:
        return max(self.moments.values())

    @property
    def peak_moment(self) -> str:
        moments = self.moments
        return max(moments, key=moments.get)

    def to_rows(self) -> list[dict[str, str]]:
        """Rows for a table: {"quantity": ..., "value": ...}."""
        rows = [
            (f"Decoded images on the device ({self.images:,})", human_bytes(self.data_bytes)),
            ("Cached features", human_bytes(self.features_bytes)),
            ("Computing the features (no autograd)", human_bytes(self.feature_pass_bytes)),
            ("Evaluation (no autograd)", human_bytes(self.eval_bytes)),
        ]
        if self.audit_bytes or self.checkpoint_bytes:
            rows.append(("Copies for the freeze audit, the layer drift, the best epoch and the checkpoint (CPU)",
                         human_bytes(self.audit_bytes + self.drift_bytes + self.best_bytes + self.checkpoint_bytes)))
        rows.append((f"Peak for the run (during {self.peak_moment})", human_bytes(self.peak_bytes)))
        return [{"quantity": q, "value": v} for q, v in rows]


def cached_calls(profile: CostProfile, prefix: list[str]) -> int:
    """How many leading leaf calls of the profile lie inside the forward-chain steps named `prefix`."""
    inside = tuple(prefix)
    below = tuple(name + "." for name in prefix)
    n = 0
    while n < len(profile.calls) and (profile.calls[n].path in inside or profile.calls[n].path.startswith(below)):
        n += 1
    return n


def run_memory(profile: CostProfile, config: RunConfig, *, train_images: int, val_images: int,
               device: torch.device, skeleton: nn.Module | None = None, test_images: int = 0) -> RunMemory:
    """The device memory a run of `config` on `device` needs, for a dataset of that many images.

    `profile` is `cost_profile(config.arch, config.num_classes, config.image_size)`. `skeleton`: a
    meta-device model of that architecture to reuse (its frozen set and modes are changed here);
    one is built when not given. See the module docstring for what is counted.
    """
    if skeleton is None:
        skeleton = build_skeleton(config.arch, config.num_classes)
    return max((_phase_memory(profile, config, phase.frozen, train_images, val_images, test_images, device, skeleton)
                for phase in phase_plan(skeleton, config)), key=lambda m: m.peak_bytes)


def _phase_memory(profile: CostProfile, config: RunConfig, frozen: tuple[str, ...], train_images: int,
                  val_images: int, test_images: int, device: torch.device, skeleton: nn.Module) -> RunMemory:
    dtype = amp_dtype(config.precision, device)
    precision = "bf16" if dtype is not None else "fp32"
    elem_bytes = dtype.itemsize if dtype is not None else 4
    images = train_images + val_images

    set_frozen(skeleton, config.frozen)  # what trains in the run's last phase: the drift copies it at the start
    moving = [p.numel() * 4 for p in skeleton.parameters() if p.requires_grad]
    set_frozen(skeleton, frozen)
    set_train_mode(skeleton, config.bn_frozen_eval)
    steps = forward_chain(skeleton, config.arch)
    plan = plan_features(steps, config, images=images, elem_bytes=elem_bytes, budget=feature_budget(device))
    cached = cached_calls(profile, [name for name, _ in steps[:plan.length]]) if plan.used else 0

    # The largest batch each pass forms: a split smaller than the batch is one batch of its own size,
    # except in the passes without autograd on CUDA, which pad every batch to the full size
    # (`core.engine.loop.Loop.no_grad_batches`).
    step_batch = min(config.batch_size, train_images)
    padded = device.type == "cuda"
    pass_batch = config.batch_size if padded else min(config.batch_size, max(train_images, val_images))
    eval_batch = config.batch_size if padded else min(config.batch_size, val_images)
    step = estimate(profile, frozen, optimizer=config.optimizer, batch_size=step_batch, precision=precision,
                    bn_frozen_eval=config.bn_frozen_eval, cached_calls=cached)
    h, w = config.image_size
    data = (images + test_images) * 3 * h * w  # the test split waits on the device for the end
    data_bytes = data if fits_on_device(data, device) else 0
    features_bytes = images * math.prod(plan.shape) * elem_bytes if plan.used else 0
    calls = len(profile.calls)
    feature_pass = forward_pass_bytes(profile, range(cached), pass_batch, precision) if plan.used else 0
    evaluation = forward_pass_bytes(profile, range(cached, calls), eval_batch, precision) + step.casts_bytes
    if test_images:  # graded once at the end, through the whole network
        test_batch = config.batch_size if padded else min(config.batch_size, test_images)
        evaluation = max(evaluation, forward_pass_bytes(profile, range(calls), test_batch, precision) + step.casts_bytes)
    audit = checkpoint = drift = drift_diff = best = 0
    if device.type == "cpu":
        drift, drift_diff = sum(moving), max(moving, default=0)
        audit = sum(p.numel() * 4 for p in skeleton.parameters() if not p.requires_grad)
        if config.bn_frozen_eval:
            audit += sum(b.numel() * b.element_size() for m in skeleton.modules() if is_frozen_bn(m)
                         for b in m.buffers(recurse=False))
        checkpoint = 4 * step.trainable + profile.buffer_bytes
        best = sum(moving) + profile.buffer_bytes if config.keep == "best" else 0
    return RunMemory(step, plan, images, data_bytes, features_bytes, feature_pass, evaluation, audit, checkpoint,
                     drift, drift_diff, best)
