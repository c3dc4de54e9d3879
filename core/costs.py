"""What a freezing choice costs before any training: parameters, FLOPs and memory, measured.

Nothing here is a rule of thumb. Every number comes from running the model's
structure on the ``meta`` device (no memory, no arithmetic) under
`torch.utils.flop_counter.FlopCounterMode` (FLOPs) and
`torch.autograd.graph.saved_tensors_hooks` (what autograd keeps for backward).

Two ways to get the numbers:

- `measure_exact(arch, num_classes, image_size, frozen)`: the whole graph with
  the frozen set applied, forward and backward. Exact, but ~150-200 ms for
  ResNet-50 at 224x224 on a small CPU: too slow for every click.
- `cost_profile(arch, num_classes, image_size)` once (cache it), then
  `estimate(profile, frozen, ...)` per click in pure Python (well under 5 ms).

How the profile is built (`cost_profile`):

1. One forward pass of the all-trainable skeleton in train mode records every
   call of a leaf module (a module without children) in forward order: its
   input's shape and strides, and which storage its input and output live in.
   Storages are the "activation edges" of the graph; autograd often saves the
   same storage for two ops (a ReLU saves its output, the next convolution
   saves the same tensor as its input), and an edge saved twice is counted
   once.
2. Each leaf call is then run alone on a tensor of its recorded input shape,
   under each configuration it can meet: input needs grad or not x its
   parameters trainable or not (and, for BatchNorm with frozen parameters,
   eval mode too, see `RunConfig.bn_frozen_eval`). Each run gives the
   backward FLOPs of that configuration (grad-input, grad-weight or both) and
   what autograd saved, classified as "the input edge", "the output edge", or
   other bytes (BatchNorm's per-channel statistics, dropout masks, max-pool
   indices). Parameter-free modules (ReLU, MaxPool, Dropout, ...) only save
   something when gradient flows through them, so they have one
   configuration. Identical calls (same module repr, input shape and
   configuration) are measured once.
3. Functional ops between modules are not modules (residual adds, flatten,
   DenseNet's final ``F.relu`` and ``torch.cat``, the squeeze-excitation
   ``scale * x``, ConvNeXt's ``layer_scale * x``). What they save is taken from
   the same forward pass of step 1: every tensor packed outside a leaf module
   is recorded with the parameters it depends on and kept in the estimate
   when one of them trains. Tensors saved only because a
   parameter held directly by a container is trainable (ConvNeXt's
   ``layer_scale``) are found by a second pass with those parameters frozen
   and are kept exactly when they train. FlopCounterMode counts only matrix
   products and convolutions, which in the catalog all live in leaf modules,
   so functional ops add no FLOPs.
4. A last pass without autograd, in eval mode, counts with
   `core.livebytes.LiveBytes` the tensor bytes alive during each leaf call
   (`LeafCall.working`): its input and output, what the surrounding
   ``forward`` still holds (a residual block's identity) and the functional
   ops since the previous call. A frozen backbone saves almost nothing for
   backward, but its widest layer's tensors are still in flight: `estimate`
   walks the calls in forward order and takes the peak of "saved so far plus
   this call's working set" (`_walk`).
5. A check: the exact saved bytes of the all-trainable pass of step 1 minus
   what the profile predicts for "all trainable" is kept as
   `CostProfile.residual_bytes`. It is 0 for every architecture of the
   catalog (a test asserts it); a new architecture with a leaf module called
   on several tensors, say, would show up there first.

Whether a module's input needs grad is not guessed from forward order: the
recording pass walks the autograd graph behind every leaf call's input (and
every functionally saved tensor) down to the parameters it depends on and
stores that set as a bit mask, so "the input needs grad" is exactly "one of
those parameters is trainable", residual shortcuts included (for the chain
networks of the catalog this is the same as "some parameter earlier in
forward order trains"). What remains approximate:

- a functional op that saves one operand for the other's gradient (the
  squeeze-excitation ``scale * x``) is kept when the saved tensor itself
  depends on a trainable parameter; with only the SE block's own layers
  trainable and everything before it frozen, the ``x`` it saves is missed
  (and the tiny ``scale`` is counted when it need not be);
- a module with some parameters frozen and others not (a custom set naming
  ``bn1.weight`` alone) is costed as trainable.

The tests check `estimate` against `measure_exact` on several architectures
and presets (equal to the byte and the FLOP on the ones tried).

Units and conventions:

- FLOPs are FlopCounterMode's: 2 per multiply-accumulate, per image; the
  backward of a frozen prefix is skipped by autograd and costs nothing.
- Activation bytes are for the whole batch: the profile is measured for one
  image; saved tensors with a leading batch dimension scale with the batch
  size, the others (BatchNorm's per-channel batch statistics) do not.
  Parameters and buffers that autograd saves are weights, not activations,
  and are not counted.
- Precision ``"bf16"`` (autocast): parameters, gradients and optimizer state
  stay fp32; saved floating-point activations are scaled from the fp32
  measurement to 2 bytes (masks, indices and BatchNorm statistics keep their
  size). Autocast keeps some ops in fp32 (e.g. LayerNorm), so this is an
  approximation.
- Weights are all parameters plus buffers (fp32 master weights are the
  weights themselves); gradients exist for trainable parameters only;
  optimizer state is one fp32 buffer per trainable parameter for SGD with
  momentum and two for Adam/AdamW (their scalar step counters are ignored).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.flop_counter import FlopCounterMode

from core.freezing import set_frozen, set_train_mode
from core.livebytes import LiveBytes
from core.models import build_skeleton

OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}  # fp32 buffers per trainable parameter
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "auto": 4}  # bytes per saved float activation ("auto" on CPU = fp32)

# Isolated-run configurations: does the input need grad, are the parameters trainable, train or eval mode.
_CONFIGS = {"i": (True, False, True), "w": (False, True, True), "iw": (True, True, True), "ie": (True, False, False)}


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class Saves:
    """What autograd saved in one configuration of one leaf call, and its backward FLOPs."""

    bwd_flops: int
    edges: tuple[int, ...]  # activation edges saved (indices into CostProfile.edge_bytes)
    other_float: int  # per image: bytes of other floating-point tensors saved (LayerNorm statistics, ...)
    other_int: int  # per image: bytes of other non-float tensors saved (dropout masks, max-pool indices)
    fixed: int  # per batch: bytes of saved tensors without a batch dimension (BatchNorm's batch statistics)


@dataclass(frozen=True)
class LeafCall:
    """One call of a leaf module, in forward order."""

    path: str  # dotted module path
    own: int  # bit mask (over CostProfile.param_names) of the module's parameters
    deps: int  # bit mask of the parameters its input depends on: it needs grad iff one trains
    is_bn: bool  # a BatchNorm (eval mode when frozen and bn_frozen_eval)
    fwd_flops: int
    saves: dict[str, Saves]  # by configuration "i", "w", "iw", "ie" (see _CONFIGS); absent: nothing saved
    params: int = 0  # number of the module's own parameters
    working: int = 0  # per image, fp32: bytes of all tensors alive during the call in a no-grad pass (see _working)


@dataclass(frozen=True)
class FunctionalSave:
    """A tensor saved by a functional op between leaf modules (a ``torch.cat``, a ``layer_scale * x``, ...)."""

    pos: int  # position in forward order: 2*i lies between leaf calls i-1 and i
    edge: int  # activation edge, or -1 when the tensor is not a module's input or output
    nbytes: int  # bytes when edge == -1 (fp32 if floating point)
    is_float: bool
    per_image: bool  # has a batch dimension (scales with the batch size)
    deps: int  # bit mask of the parameters the saved tensor depends on: kept when one trains
    owner: int  # -1, or a bit mask of container-held parameters (layer_scale): kept exactly when one trains


@dataclass(frozen=True)
class CostProfile:
    """Everything `estimate` needs for one (arch, num_classes, image_size), measured once."""

    arch: str
    num_classes: int
    image_size: tuple[int, int]
    param_names: tuple[str, ...]  # model.named_parameters() order; bit j of the masks is parameter j
    param_sizes: tuple[int, ...]
    buffer_bytes: int  # BatchNorm running statistics and counters
    calls: tuple[LeafCall, ...]  # leaf-module calls in forward order
    edge_bytes: tuple[int, ...]  # fp32 bytes of each activation edge for one image
    functional: tuple[FunctionalSave, ...]
    residual_bytes: int  # exact all-trainable saved bytes minus the estimate's (0: nothing missed)
    build_s: float  # seconds the measurement took

    @property
    def total(self) -> int:
        return sum(self.param_sizes)


def cost_profile(arch: str, num_classes: int, image_size: tuple[int, int]) -> CostProfile:
    """Measure the per-module costs of `arch` at `image_size` (H, W) once; see the module docstring.

    Raises `ValueError` if the input is too small for the architecture.
    """
    start = time.perf_counter()
    model = build_skeleton(arch, num_classes)
    model.requires_grad_(True).train()
    h, w = int(image_size[0]), int(image_size[1])
    names = [n for n, _ in model.named_parameters()]
    index = {n: i for i, n in enumerate(names)}
    bit_of = {id(p): 1 << i for i, p in enumerate(model.parameters())}
    sizes = tuple(p.numel() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    excluded = {_key(t) for t in [*model.parameters(), *model.buffers()]}

    leaves = [(p, m) for p, m in model.named_modules() if p and next(m.children(), None) is None]
    owners = [(p, m) for p, m in model.named_modules() if next(m.children(), None) is not None
              and next(m.parameters(recurse=False), None) is not None]
    owner_bits = [sum(1 << index[f"{p}.{n}" if p else n] for n, _ in m.named_parameters(recurse=False))
                  for p, m in owners]

    pass1 = _record(model, leaves, owners, excluded, bit_of, (h, w))
    # Tensors that functional ops save only because a container's own parameter trains (ConvNeXt's
    # layer_scale): present with those parameters trainable, absent with them frozen.
    owner_of: dict[int, int] = {}
    if owners:
        for _, m in owners:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
        pass2 = _record(model, leaves, owners, excluded, bit_of, (h, w))
        model.requires_grad_(True)
        remaining: dict[tuple, int] = {}
        for pos, _, nbytes, is_float, _, _ in pass2.functional:
            remaining[(pos, nbytes, is_float)] = remaining.get((pos, nbytes, is_float), 0) + 1
        for j, (pos, _, nbytes, is_float, _, deps) in enumerate(pass1.functional):
            if remaining.get((pos, nbytes, is_float)):
                remaining[(pos, nbytes, is_float)] -= 1
            else:  # owned by the innermost container with parameters whose forward call encloses it
                spans = [(hi - lo, c) for c, (lo, hi) in enumerate(pass1.owner_span) if lo <= pos <= hi]
                owner_of[j] = owner_bits[min(spans)[1]] if spans else sum(owner_bits)

    # Activation edges: the storages that are inputs or outputs of leaf calls.
    edge_of: dict[int, int] = {}
    edge_bytes: list[int] = []

    def edge(key: int | None, nbytes: int) -> int:
        if key is None:
            return -1
        if key not in edge_of:
            edge_of[key] = len(edge_bytes)
            edge_bytes.append(nbytes)
        return edge_of[key]

    cache: dict = {}
    working = _working(model, leaves, (h, w))
    calls = []
    for (path, module, shape, stride, in_key, in_bytes, deps, out_key, out_bytes), work in zip(pass1.calls, working,
                                                                                              strict=True):
        in_edge, out_edge = edge(in_key, in_bytes), edge(out_key, out_bytes)
        own = sum(1 << index[f"{path}.{n}"] for n, _ in module.named_parameters())
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        configs = (("iw", "i", "w", "ie") if is_bn else ("iw", "i", "w")) if own else ("i",)
        fwd, saves = 0, {}
        if shape is not None:  # a single tensor input; anything else is left to the residual
            for config in configs:
                k = (_module_key(module), shape, stride, config)
                if k not in cache:
                    cache[k] = _isolated(module, shape, stride, config)
                fwd, bwd, labels, other_float, other_int, fixed = cache[k]
                edges = tuple(sorted({in_edge if label == "in" else out_edge for label in labels} - {-1}))
                if bwd or edges or other_float or other_int or fixed:
                    saves[config] = Saves(bwd, edges, other_float, other_int, fixed)
            module.train()
        calls.append(LeafCall(path, own, deps, is_bn, fwd, saves, sum(p.numel() for p in module.parameters()), work))

    functional = []
    for j, (pos, key, nbytes, is_float, per_image, deps) in enumerate(pass1.functional):
        e = edge_of.get(key, -1)
        functional.append(FunctionalSave(pos, e, 0 if e >= 0 else nbytes, is_float, per_image, deps,
                                         owner_of.get(j, -1)))

    profile = CostProfile(
        arch=arch, num_classes=num_classes, image_size=(h, w), param_names=tuple(names), param_sizes=sizes,
        buffer_bytes=buffer_bytes, calls=tuple(calls), edge_bytes=tuple(edge_bytes),
        functional=tuple(functional), residual_bytes=0, build_s=0.0,
    )
    residual = pass1.saved_bytes - _walk(profile, (1 << len(names)) - 1, True, 4, 1)[0]
    return dataclasses.replace(profile, residual_bytes=residual, build_s=time.perf_counter() - start)


@dataclass
class _Pass:
    calls: list  # [path, module, shape, stride, in key, in bytes, in deps, out key, out bytes]
    functional: list  # (pos, storage key, nbytes, is_float, per_image, deps)
    owner_span: list  # [first, last] position of the forward call of each container with own parameters
    saved_bytes: int  # all saved non-parameter storages, deduplicated (the exact figure for this pass)
    keep: list  # keeps recorded tensors alive so storage keys are not reused


def _record(model: nn.Module, leaves, owners, excluded: set[int], bit_of: dict[int, int], size: tuple[int, int]
            ) -> _Pass:
    """One forward pass with hooks: leaf calls and what functional ops save (see `cost_profile`)."""
    rec = _Pass([], [], [[0, 0] for _ in owners], 0, [])
    state = {"count": 0, "inside": False}
    saved: dict[int, int] = {}
    memo: dict[int, int] = {}  # id(autograd node) -> bit mask of the parameters behind it
    handles = []
    flipped: list[nn.Module] = []  # BatchNorms put in eval mode for this call (`_one_value_per_channel`)

    def deps(t: torch.Tensor) -> int:
        if t.grad_fn is None:
            return bit_of.get(id(t), 0) if t.requires_grad else 0
        return _node_deps(t.grad_fn, memo, bit_of, rec.keep)

    def pre(path, module):
        def hook(mod, args):
            state["inside"] = True
            x = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
            rec.keep.append(args)
            if x is not None and _one_value_per_channel(mod, x.shape) and mod.training:
                mod.eval()
                flipped.append(mod)
            if x is None:
                rec.calls.append([path, module, None, None, None, 0, 0, None, 0])
            else:
                rec.calls.append([path, module, tuple(x.shape), tuple(x.stride()), _key(x), _nbytes(x), deps(x),
                                  None, 0])
        return hook

    def post(mod, args, out):
        if flipped and flipped[-1] is mod:
            flipped.pop().train()
        state["inside"] = False
        state["count"] += 1
        if isinstance(out, torch.Tensor):
            rec.keep.append(out)
            rec.calls[-1][7:9] = [_key(out), _nbytes(out)]

    def pack(t: torch.Tensor):
        k = _key(t)
        if k in excluded:
            return t
        rec.keep.append(t)
        saved.setdefault(k, _nbytes(t))
        if not state["inside"]:
            rec.functional.append((2 * state["count"], k, _nbytes(t), t.is_floating_point(), _per_image(t), deps(t)))
        return t

    def span(c: int, end: int):
        def hook(*_):
            rec.owner_span[c][end] = 2 * state["count"]
        return hook

    for path, m in leaves:
        handles.append(m.register_forward_pre_hook(pre(path, m)))
        handles.append(m.register_forward_hook(post))
    for c, (_, m) in enumerate(owners):
        handles.append(m.register_forward_pre_hook(span(c, 0)))
        handles.append(m.register_forward_hook(span(c, 1)))
    try:
        with saved_tensors_hooks(pack, _identity):
            model(torch.empty(1, 3, *size, device="meta"))
    except RuntimeError as exc:
        raise ValueError(f"An input of {size[0]}x{size[1]} is too small for this architecture "
                         f"({str(exc).splitlines()[0]}).") from None
    finally:
        for handle in handles:
            handle.remove()
    rec.saved_bytes = sum(saved.values())
    return rec


def _working(model: nn.Module, leaves, size: tuple[int, int]) -> list[int]:
    """Per leaf call, in forward order: the most tensor bytes alive at once (one image, fp32) from the end
    of the previous call to the end of this one, in a no-grad eval-mode pass (`core.livebytes.LiveBytes`).

    With nothing saved for backward this is the call's working set: its input and output, what the
    surrounding `forward` still holds (a residual block's identity, DenseNet's concatenated features) and
    the functional ops since the previous call. Parameters and buffers are not counted. Whatever runs
    after the last call (a final flatten) is counted with the last call.
    """
    peaks: list[int] = []

    def post(mod, args, out):
        peaks.append(mem.peak)
        mem.reset_peak()

    was_training = model.training
    handles = [m.register_forward_hook(post) for _, m in leaves]
    try:
        with torch.no_grad(), LiveBytes() as mem:
            model.eval()
            out = model(torch.empty(1, 3, *size, device="meta"))
            del out
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if peaks:
        peaks[-1] = max(peaks[-1], mem.peak)
    return peaks


def _node_deps(root, memo: dict[int, int], bit_of: dict[int, int], keep: list) -> int:
    """Bit mask of the parameters reachable from autograd node `root` (iterative, memoised)."""
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in memo:
            continue
        children = [n for n, _ in node.next_functions if n is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((n, False) for n in children if id(n) not in memo)
            continue
        mask = bit_of.get(id(getattr(node, "variable", None)), 0)
        for n in children:
            mask |= memo[id(n)]
        memo[id(node)] = mask
        keep.append(node)  # ids stay unique while the graph is alive
    return memo[id(root)]


def _isolated(module: nn.Module, shape, stride, config: str):
    """Run one leaf module alone on one image.

    Returns (fwd FLOPs, bwd FLOPs, saved edge labels, other float bytes, other int bytes, fixed bytes).
    """
    input_grad, weight_grad, training = _CONFIGS[config]
    module.train(training and not _one_value_per_channel(module, shape))
    own = list(module.parameters())
    flags = [p.requires_grad for p in own]
    for p in own:
        p.requires_grad_(weight_grad)
    excluded = {_key(t) for t in [*own, *module.buffers()]}
    base = torch.empty_strided(shape, stride, device="meta", requires_grad=input_grad)
    x = base.clone() if input_grad else base  # not a leaf, so in-place modules (ReLU(inplace=True)) work
    saved: list[torch.Tensor] = []
    try:
        with saved_tensors_hooks(lambda t: saved.append(t) or t, _identity):
            with _flop_counter() as counter:
                out = module(x)
                fwd = counter.get_total_flops()
                if out.requires_grad:
                    out.backward(torch.empty_like(out))
                bwd = counter.get_total_flops() - fwd
    finally:
        for p, flag in zip(own, flags):
            p.requires_grad_(flag)
    in_key, out_key = _key(x), _key(out)
    labels, seen, other_float, other_int, fixed = set(), set(), 0, 0, 0
    for t in saved:
        k = _key(t)
        if k in excluded or k in seen:
            continue
        seen.add(k)
        if k == in_key:
            labels.add("in")
        elif k == out_key:
            labels.add("out")
        elif not _per_image(t):
            fixed += _nbytes(t)
        elif t.is_floating_point():
            other_float += _nbytes(t)
        else:
            other_int += _nbytes(t)
    return fwd, bwd, frozenset(labels), other_float, other_int, fixed


def _one_value_per_channel(module: nn.Module, shape) -> bool:
    """A BatchNorm whose batch-of-one input holds one value per channel (a feature map shrunk to 1x1).

    Training mode refuses such an input, so the profile records that call in
    eval mode. In real training the batch holds several images (a batch of
    one is never formed, see `core.training.batch_slices`); the two modes save
    the same input edge and differ only by a few per-channel statistics.
    """
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and math.prod((shape[0], *shape[2:])) == 1


def _per_image(t: torch.Tensor) -> bool:
    """Does a tensor saved in a batch-of-one pass have a batch dimension? (BatchNorm's (C,) statistics do not.)"""
    return t.dim() >= 2 and t.shape[0] == 1


class _NoModuleTracking:
    """Stands in for FlopCounterMode's per-module breakdown, which we do not use.

    That breakdown (`torch.utils.module_tracker.ModuleTracker`) registers
    *global* module forward hooks while the counter is active: they fire in
    every thread, a training worker's included, and its bookkeeping can raise
    there ("The Module hierarchy tracking is wrong") when two threads run
    modules at once. Only the "Global" total is needed here.
    """

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        return None


def _flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that counts the total only and touches no global module hooks (thread-safe)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    return counter


def _module_key(module: nn.Module):
    simple = tuple(sorted((k, repr(v)) for k, v in vars(module).items()
                          if isinstance(v, (int, float, bool, str, tuple, list)) and not k.startswith("_")))
    return type(module).__qualname__, repr(module), simple


def _key(t: torch.Tensor) -> int:
    """Identity of the storage behind `t` (views share it); valid while the storage is alive."""
    return t.untyped_storage()._cdata


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _identity(t):
    return t


# --------------------------------------------------------------------------- estimate


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

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

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
    return {
        "compute_pct": compute_pct,
        "memory_pct": memory_pct,
        "text": f"This choice needs {compute_pct:.0f}% of the compute and {memory_pct:.0f}% of the memory "
                "of full fine-tuning.",
    }


# --------------------------------------------------------------------------- exact measurement


@dataclass(frozen=True)
class ExactCosts:
    """The whole-graph measurement (`measure_exact`), in the units of `Costs`."""

    fwd_flops: int  # per image
    bwd_flops: int  # per image
    activations_bytes: int  # saved for backward, for the batch, fp32


def measure_exact(
    arch: str,
    num_classes: int,
    image_size: tuple[int, int],
    frozen,
    batch_size: int = 1,
    *,
    bn_frozen_eval: bool = True,
) -> ExactCosts:
    """Forward and backward of the whole meta-device model with `frozen` applied, measured.

    The backward starts from the logits (no loss function). Saved tensors are
    counted once per storage; saved parameters and buffers are not counted.
    """
    model = build_skeleton(arch, num_classes)
    set_frozen(model, frozen)
    set_train_mode(model, bn_frozen_eval)
    excluded = {_key(t) for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor):
        k = _key(t)
        if k not in excluded and k not in saved:
            saved[k] = _nbytes(t)
            keep.append(t)
        return t

    x = torch.empty(batch_size, 3, *image_size, device="meta")
    with saved_tensors_hooks(pack, _identity):
        with _flop_counter() as counter:
            out = model(x)
        fwd = counter.get_total_flops()
        bwd = 0
        if out.requires_grad:
            with _flop_counter() as counter:
                out.backward(torch.empty_like(out))
            bwd = counter.get_total_flops()
    return ExactCosts(fwd // batch_size, bwd // batch_size, sum(saved.values()))


# --------------------------------------------------------------------------- formatting


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB" (binary units, like GPU memory tools)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_flops(n: float) -> str:
    """3.9e9 -> "3.90 GFLOP" (decimal units)."""
    n = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f} FLOP" if unit == "" else f"{n:.2f} {unit}FLOP"
        n /= 1000
    raise AssertionError("unreachable")


def human_share(part: float, whole: float) -> str:
    """part / whole as a percentage that never rounds a non-zero share to 0: 2,052 of 11,178,564 -> "0.018%"."""
    if not whole:
        return "0%"
    pct = 100.0 * part / whole
    if pct in (0, 100):
        return f"{pct:.0f}%"
    if pct > 99.95:  # nearly everything, but not all: say so
        return f"{min(pct, 99.99):.2f}%"
    if pct >= 1:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%" if pct >= 0.01 else "<0.01%"
