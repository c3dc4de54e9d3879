"""The cost profile of an architecture: every leaf call's FLOPs and saved bytes, per configuration.

Built once per (architecture, head size, input size) by running the model's structure on the
``meta`` device under `FlopCounterMode` and `saved_tensors_hooks` (no memory, no arithmetic), then
read by `core.estimate.costs.estimate` on every click. How it is recorded, what it counts and what
remains approximate: docs/cost_model.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.flop_counter import FlopCounterMode

from core.estimate.livebytes import LiveBytes
from core.models import build_skeleton

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


def record_profile(arch: str, num_classes: int, image_size: tuple[int, int]) -> tuple[CostProfile, int]:
    """The `CostProfile` of `arch` at `image_size` (H, W) without its check, and the bytes autograd
    really saved in the all-trainable pass (`core.estimate.costs.cost_profile` compares the two).

    Raises `ValueError` if the input is too small for the architecture.
    """
    model = build_skeleton(arch, num_classes)
    model.requires_grad_(True).train()
    size = int(image_size[0]), int(image_size[1])
    names = [n for n, _ in model.named_parameters()]
    index = {n: i for i, n in enumerate(names)}
    bit_of = {id(p): 1 << i for i, p in enumerate(model.parameters())}
    excluded = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    leaves = [(p, m) for p, m in model.named_modules() if p and next(m.children(), None) is None]
    owners = [(p, m) for p, m in model.named_modules() if next(m.children(), None) is not None
              and next(m.parameters(recurse=False), None) is not None]

    pass1 = _record(model, leaves, owners, excluded, bit_of, size)
    owner_of = _container_owned(model, leaves, owners, excluded, bit_of, size, pass1, index)
    edges = _Edges()
    calls = _leaf_calls(pass1, _working(model, leaves, size), index, edges)
    functional = tuple(
        FunctionalSave(pos, e := edges.index_of.get(key, -1), 0 if e >= 0 else nbytes, is_float, per_image, deps,
                       owner_of.get(j, -1))
        for j, (pos, key, nbytes, is_float, per_image, deps) in enumerate(pass1.functional)
    )
    profile = CostProfile(
        arch=arch, num_classes=num_classes, image_size=size, param_names=tuple(names),
        param_sizes=tuple(p.numel() for p in model.parameters()),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()), calls=calls,
        edge_bytes=tuple(edges.nbytes), functional=functional, residual_bytes=0, build_s=0.0,
    )
    return profile, pass1.saved_bytes


def _container_owned(model: nn.Module, leaves, owners, excluded: set[int], bit_of: dict[int, int],
                     size: tuple[int, int], pass1: _Pass, index: dict[str, int]) -> dict[int, int]:
    """Functional saves that exist only because a container's own parameter trains (ConvNeXt's
    layer_scale): present with those parameters trainable, absent with them frozen. Maps such a save's
    position in `pass1.functional` to the parameter bits of the innermost container enclosing it."""
    if not owners:
        return {}
    owner_bits = [sum(1 << index[f"{p}.{n}" if p else n] for n, _ in m.named_parameters(recurse=False))
                  for p, m in owners]
    for _, m in owners:
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
    pass2 = _record(model, leaves, owners, excluded, bit_of, size)
    model.requires_grad_(True)
    remaining: dict[tuple, int] = {}
    for pos, _, nbytes, is_float, _, _ in pass2.functional:
        remaining[(pos, nbytes, is_float)] = remaining.get((pos, nbytes, is_float), 0) + 1
    owner_of = {}
    for j, (pos, _, nbytes, is_float, _, _) in enumerate(pass1.functional):
        if remaining.get((pos, nbytes, is_float)):
            remaining[(pos, nbytes, is_float)] -= 1
        else:
            spans = [(hi - lo, c) for c, (lo, hi) in enumerate(pass1.owner_span) if lo <= pos <= hi]
            owner_of[j] = owner_bits[min(spans)[1]] if spans else sum(owner_bits)
    return owner_of


class _Edges:
    """Activation edges: the storages that are inputs or outputs of leaf calls, numbered as first seen."""

    def __init__(self) -> None:
        self.index_of: dict[int, int] = {}
        self.nbytes: list[int] = []

    def edge(self, key: int | None, nbytes: int) -> int:
        if key is None:
            return -1
        if key not in self.index_of:
            self.index_of[key] = len(self.nbytes)
            self.nbytes.append(nbytes)
        return self.index_of[key]


def _leaf_calls(pass1: _Pass, working: list[int], index: dict[str, int], edges: _Edges) -> tuple[LeafCall, ...]:
    """Every leaf call of `pass1` with its costs in each configuration it can meet (run alone, once per
    identical call)."""
    cache: dict = {}
    calls = []
    for (path, module, shape, stride, in_key, in_bytes, deps, out_key, out_bytes), work in zip(pass1.calls, working,
                                                                                              strict=True):
        in_edge, out_edge = edges.edge(in_key, in_bytes), edges.edge(out_key, out_bytes)
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
                saved_edges = tuple(sorted({in_edge if label == "in" else out_edge for label in labels} - {-1}))
                if bwd or saved_edges or other_float or other_int or fixed:
                    saves[config] = Saves(bwd, saved_edges, other_float, other_int, fixed)
            module.train()
        calls.append(LeafCall(path, own, deps, is_bn, fwd, saves, sum(p.numel() for p in module.parameters()), work))
    return tuple(calls)


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
                rec.calls.append([path, module, tuple(x.shape), tuple(x.stride()), storage_key(x), nbytes_of(x), deps(x),
                                  None, 0])
        return hook

    def post(mod, args, out):
        if flipped and flipped[-1] is mod:
            flipped.pop().train()
        state["inside"] = False
        state["count"] += 1
        if isinstance(out, torch.Tensor):
            rec.keep.append(out)
            rec.calls[-1][7:9] = [storage_key(out), nbytes_of(out)]

    def pack(t: torch.Tensor):
        k = storage_key(t)
        if k in excluded:
            return t
        rec.keep.append(t)
        saved.setdefault(k, nbytes_of(t))
        if not state["inside"]:
            rec.functional.append((2 * state["count"], k, nbytes_of(t), t.is_floating_point(), _per_image(t), deps(t)))
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
        with saved_tensors_hooks(pack, identity):
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
    of the previous call to the end of this one, in a no-grad eval-mode pass (`core.estimate.livebytes.LiveBytes`).

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
    excluded = {storage_key(t) for t in [*own, *module.buffers()]}
    base = torch.empty_strided(shape, stride, device="meta", requires_grad=input_grad)
    x = base.clone() if input_grad else base  # not a leaf, so in-place modules (ReLU(inplace=True)) work
    saved: list[torch.Tensor] = []
    try:
        with saved_tensors_hooks(lambda t: saved.append(t) or t, identity):
            with flop_counter() as counter:
                out = module(x)
                fwd = counter.get_total_flops()
                if out.requires_grad:
                    out.backward(torch.empty_like(out))
                bwd = counter.get_total_flops() - fwd
    finally:
        for p, flag in zip(own, flags):
            p.requires_grad_(flag)
    in_key, out_key = storage_key(x), storage_key(out)
    labels, seen, other_float, other_int, fixed = set(), set(), 0, 0, 0
    for t in saved:
        k = storage_key(t)
        if k in excluded or k in seen:
            continue
        seen.add(k)
        if k == in_key:
            labels.add("in")
        elif k == out_key:
            labels.add("out")
        elif not _per_image(t):
            fixed += nbytes_of(t)
        elif t.is_floating_point():
            other_float += nbytes_of(t)
        else:
            other_int += nbytes_of(t)
    return fwd, bwd, frozenset(labels), other_float, other_int, fixed


def _one_value_per_channel(module: nn.Module, shape) -> bool:
    """A BatchNorm whose batch-of-one input holds one value per channel (a feature map shrunk to 1x1).

    Training mode refuses such an input, so the profile records that call in
    eval mode. In real training the batch holds several images (a batch of
    one is never formed, see `core.engine.loop.batch_slices`); the two modes save
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


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that counts the total only and touches no global module hooks (thread-safe)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    return counter


def _module_key(module: nn.Module):
    simple = tuple(sorted((k, repr(v)) for k, v in vars(module).items()
                          if isinstance(v, (int, float, bool, str, tuple, list)) and not k.startswith("_")))
    return type(module).__qualname__, repr(module), simple


def storage_key(t: torch.Tensor) -> int:
    """Identity of the storage behind `t` (views share it); valid while the storage is alive."""
    return t.untyped_storage()._cdata


def nbytes_of(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def identity(t):
    return t
