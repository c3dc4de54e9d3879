"""What a freezing choice costs before any training: parameters, FLOPs and memory of one step.

`estimate(profile, frozen, ...)` walks a `CostProfile` in pure Python (milliseconds), so every
click gets its numbers; `core.estimate.exact.measure_exact` is the slow exact measurement the tests
compare it with. Units and conventions: docs/cost_model.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from core.estimate.profile import CostProfile, record_profile
from core.estimate.units import human_bytes, human_flops, human_share

OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}  # fp32 buffers per trainable parameter
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "auto": 4}  # bytes per saved float activation ("auto" on CPU = fp32)

# --------------------------------------------------------------------------- estimate


def cost_profile(arch: str, num_classes: int, image_size: tuple[int, int]) -> CostProfile:
    """Measure the per-module costs of `arch` at `image_size` (H, W) once (`record_profile`); cache it.

    `residual_bytes` checks the profile: the bytes autograd really saved with everything trainable,
    minus what `estimate` predicts for that case. It is 0 for every architecture of the catalog (a
    test asserts it); a new architecture the profile misreads shows up there first.
    Raises `ValueError` if the input is too small for the architecture.
    """
    start = time.perf_counter()
    profile, saved_bytes = record_profile(arch, num_classes, image_size)
    residual = saved_bytes - _walk(profile, (1 << len(profile.param_names)) - 1, True, 4, 1)[0]
    return dataclasses.replace(profile, residual_bytes=residual, build_s=time.perf_counter() - start)


@dataclass(frozen=True)
class Costs:
    """What one freezing choice costs per training step; FLOPs per image, memory for the batch."""

    trainable: int  # parameters
    frozen: int
    total: int
    fwd_flops: int  # per image (FlopCounterMode: 2 per multiply-accumulate)
    bwd_flops: int  # per image; 0 when nothing trains
    weights_bytes: int  # all parameters and buffers, fp32
    grads_bytes: int  # trainable parameters only
    optimizer_bytes: int  # momentum (SGD) or two moments (Adam/AdamW) per trainable parameter
    activations_bytes: int  # saved for backward, for the whole batch
    working_bytes: int  # in flight at the step's busiest moment on top of what is saved (see `_walk`)
    casts_bytes: int  # bf16 autocast: low-precision weight copies kept for backward (0 in fp32)
    total_bytes: int
    batch_size: int = 32
    optimizer: str = "sgd"
    precision: str = "fp32"
    cached_calls: int = 0  # leading leaf calls the step does not run (their output comes from the feature cache)

    def to_rows(self) -> list[dict[str, str]]:
        """Rows for a table: {"quantity": ..., "value": ...}."""
        rows = [
            ("Trainable parameters", f"{self.trainable:,} ({human_share(self.trainable, self.total)})"),
            ("Frozen parameters", f"{self.frozen:,} ({human_share(self.frozen, self.total)})"),
            ("Total parameters", f"{self.total:,}"),
            ("Forward FLOPs / image", human_flops(self.fwd_flops)),
            ("Backward FLOPs / image", human_flops(self.bwd_flops)),
            ("Weights", human_bytes(self.weights_bytes)),
            ("Gradients", human_bytes(self.grads_bytes)),
            (f"Optimizer state ({self.optimizer})", human_bytes(self.optimizer_bytes)),
            (f"Activations saved for backward (batch {self.batch_size}, {self.precision})",
             human_bytes(self.activations_bytes)),
            ("Working memory (the busiest layer's tensors in flight)", human_bytes(self.working_bytes)),
        ]
        if self.precision == "bf16":
            rows.append(("bf16 weight copies (autocast)", human_bytes(self.casts_bytes)))
        rows.append(("Total memory per step", human_bytes(self.total_bytes)))
        return [{"quantity": q, "value": v} for q, v in rows]


def estimate(
    profile: CostProfile,
    frozen,
    *,
    optimizer: str = "sgd",
    batch_size: int = 32,
    precision: str = "fp32",
    bn_frozen_eval: bool = True,
    cached_calls: int = 0,
) -> Costs:
    """The costs of freezing the dotted paths `frozen` (modules or single parameters), in pure Python.

    `precision` "auto" counts as fp32 (what it means on a CPU); pass "bf16" for a GPU with bf16 autocast.
    `cached_calls`: the first leaf calls are served from the feature cache, so the step's working memory
    leaves them out (they save nothing either way: a cached prefix is frozen and no gradient reaches it).
    """
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_STATES)}")
    if precision not in PRECISION_BYTES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_BYTES)}")
    trainable_bits = _trainable_bits(profile, frozen)
    trainable = sum(s for j, s in enumerate(profile.param_sizes) if trainable_bits >> j & 1)
    fwd = sum(c.fwd_flops for c in profile.calls)
    bwd = 0
    for call, config in zip(profile.calls, _configs(profile, trainable_bits, bn_frozen_eval)):
        if config in call.saves:
            bwd += call.saves[config].bwd_flops
    activations, casts, peak = _walk(profile, trainable_bits, bn_frozen_eval, PRECISION_BYTES[precision], batch_size,
                                     skip=cached_calls)
    weights = 4 * profile.total + profile.buffer_bytes
    grads = 4 * trainable
    opt = 4 * trainable * OPTIMIZER_STATES[optimizer]
    working = max(0, peak - activations - casts)
    return Costs(trainable, profile.total - trainable, profile.total, fwd, bwd, weights, grads, opt, activations,
                 working, casts, weights + grads + opt + activations + casts + working, batch_size, optimizer,
                 precision, cached_calls)


def forward_pass_bytes(profile: CostProfile, calls: range, batch_size: int, precision: str = "fp32") -> int:
    """Working memory of a forward pass without autograd (nothing saved) over the leaf calls `calls` on
    `batch_size` images: its busiest call's working set. The engine runs two such passes: computing the
    feature cache (the prefix's calls) and evaluation (the calls not cached), both at the training batch.
    When `calls` does not start at the first call, the pass reads cached features, not images."""
    float_bytes = PRECISION_BYTES[precision]
    first = _first_matmul(profile) if calls.start == 0 else None
    return max((_working_bytes(profile, i, float_bytes, batch_size, transient_cast=True,
                               image=None if first is None else i == first)
                for i in calls if i < len(profile.calls)), default=0)


def _first_matmul(profile: CostProfile) -> int:
    """Index of the first leaf call with a convolution or matrix product (the one that reads the image)."""
    return next((i for i, c in enumerate(profile.calls) if c.fwd_flops), -1)


def _working_bytes(profile: CostProfile, i: int, float_bytes: int, batch: int, *, transient_cast: bool,
                   image: bool | None) -> int:
    """Leaf call `i`'s working set for `batch` images in the given precision.

    The fp32 input image is part of every call's measured working set (the caller holds it for the
    whole forward). Autocast leaves it in fp32 and makes a bf16 copy for the first convolution
    (`image` True); with the feature cache (`image` None) it is not there at all. In bf16 a frozen
    convolution or linear layer that no gradient passes through also has its weight copied for the
    call only (`transient_cast`).
    """
    call = profile.calls[i]
    image_bytes = 3 * profile.image_size[0] * profile.image_size[1] * 4
    per_image = (call.working - image_bytes) * float_bytes // 4
    if image is not None:
        per_image += image_bytes + (image_bytes // 2 if float_bytes == 2 and image else 0)
    work = max(0, per_image) * batch
    if float_bytes == 2 and transient_cast and call.fwd_flops:
        work += 2 * call.params  # once per call, not per image
    return work


def _trainable_bits(profile: CostProfile, frozen) -> int:
    """Bit mask of the trainable parameters when the paths `frozen` are frozen (as `LayerTree.frozen_mask`)."""
    frozen = tuple(frozen)
    prefixes = tuple(p + "." for p in frozen)
    exact = set(frozen)
    bits = 0
    for j, name in enumerate(profile.param_names):
        if not (name in exact or name.startswith(prefixes)):
            bits |= 1 << j
    return bits


def _configs(profile: CostProfile, trainable: int, bn_frozen_eval: bool) -> list[str]:
    """Per leaf call, the configuration it runs in ("" when autograd records nothing for it)."""
    out = []
    for call in profile.calls:
        flows = bool(call.deps & trainable)
        if call.own & trainable:
            out.append("iw" if flows else "w")
        elif flows:
            out.append("ie" if call.is_bn and bn_frozen_eval and call.own else "i")
        else:
            out.append("")
    return out


def _walk(profile: CostProfile, trainable: int, bn_frozen_eval: bool, float_bytes: int, batch: int, *,
          skip: int = 0) -> tuple[int, int, int]:
    """Walk the leaf calls in forward order for `batch` images with the parameters in bit mask `trainable`
    trainable. Returns (saved activation bytes, bf16 weight-copy bytes, peak bytes in flight).

    What autograd saves accumulates call by call (an edge saved twice counts once; functional saves
    join where they happen). At each call the step holds what was saved before it plus the call's
    working set (`_working_bytes`: `LeafCall.working` scaled to the batch and precision). The peak is the largest of
    these and of the total saved at the end of the forward: the backward then walks the same calls
    in reverse, freeing saved tensors while gradients of the same sizes as the working set are in
    flight, so it reaches about the same height. In bf16, autocast's low-precision copy of a
    convolution's or linear layer's weight is kept for backward when that weight trains or a gradient
    passes through the layer. The first `skip` calls are not run (see `estimate`).
    """
    lowp = float_bytes == 2
    first = _first_matmul(profile) if skip == 0 else None
    edges: set[int] = set()
    edge_total = other_float = other_int = fixed = casts = peak = 0
    functional = [f for f in profile.functional if (f.owner & trainable if f.owner >= 0 else f.deps & trainable)]
    j = 0

    def add(edge_list=(), f=0, i=0, x=0) -> None:
        nonlocal edge_total, other_float, other_int, fixed
        for e in edge_list:
            if e not in edges:
                edges.add(e)
                edge_total += profile.edge_bytes[e]
        other_float, other_int, fixed = other_float + f, other_int + i, fixed + x

    def save_functional(upto: int) -> None:
        nonlocal j
        while j < len(functional) and functional[j].pos <= upto:
            fs = functional[j]
            if fs.edge >= 0:
                add([fs.edge])
            elif not fs.per_image:
                add(x=fs.nbytes)
            elif fs.is_float:
                add(f=fs.nbytes)
            else:
                add(i=fs.nbytes)
            j += 1

    def saved() -> int:
        return ((edge_total + other_float) * float_bytes // 4 + other_int) * batch + fixed

    for i, (call, config) in enumerate(zip(profile.calls, _configs(profile, trainable, bn_frozen_eval))):
        save_functional(2 * i)
        if i >= skip:
            work = _working_bytes(profile, i, float_bytes, batch, transient_cast=not config,
                                  image=None if first is None else i == first)
            peak = max(peak, saved() + casts + work)
        s = call.saves.get(config)
        if s is not None:
            add(s.edges, s.other_float, s.other_int, s.fixed)
        if lowp and config in ("i", "w", "iw") and call.fwd_flops:
            casts += 2 * call.params
    save_functional(math.inf)
    return saved(), casts, max(peak, saved() + casts)


def compare_to_full(costs: Costs, full_costs: Costs) -> dict:
    """How this choice compares with full fine-tuning: compute (fwd+bwd FLOPs) and memory, in percent."""
    compute = costs.fwd_flops + costs.bwd_flops
    full_compute = full_costs.fwd_flops + full_costs.bwd_flops
    compute_pct = 100.0 * compute / full_compute if full_compute else 0.0
    memory_pct = 100.0 * costs.total_bytes / full_costs.total_bytes if full_costs.total_bytes else 0.0
    return {"compute_pct": compute_pct, "memory_pct": memory_pct}
