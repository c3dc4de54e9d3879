"""The layer tree the pages draw: every module with its parameters, shapes and frozen state.

Pure and cheap to recompute on every click: it is built once per architecture, head and input size
on the meta device, and a freezing choice is a mask over it.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import nn

from core.models import Stage, arch_spec, build_skeleton, stages

# --------------------------------------------------------------------------- the layer tree


@dataclass(frozen=True)
class LayerNode:
    path: str  # dotted torchvision path ("" is the model itself)
    name: str  # last path component
    depth: int  # 0 for top-level modules
    kind: str  # class name, e.g. "Conv2d"
    own_params: int  # parameters held directly (recurse=False)
    total_params: int  # parameters in the whole subtree
    param_start: int  # the subtree's parameters are LayerTree.param_names[param_start:param_end]
    param_end: int
    has_children: bool
    out_shape: tuple[int, ...] | None  # output shape for one image at the tree's input size


@dataclass(frozen=True)
class LayerTree:
    """The model as a tree of named modules, for any frozen set, without touching a model.

    Built once per (architecture, head size, input size) from a meta-device
    skeleton; every question about a freezing choice (counts, per-node state,
    toggling a node) is then plain arithmetic over the parameter list, fast
    enough to recompute on every click.
    """

    nodes: tuple[LayerNode, ...]  # pre-order, top-level modules have depth 0
    param_names: tuple[str, ...]  # model.named_parameters() order (pre-order too)
    param_sizes: tuple[int, ...]
    head: str  # path of the new head

    @property
    def total(self) -> int:
        return sum(self.param_sizes)

    def node(self, path: str) -> LayerNode:
        for n in self.nodes:
            if n.path == path:
                return n
        raise ValueError(f"no layer {path!r}")

    def frozen_mask(self, frozen) -> list[bool]:
        """Per parameter: frozen under the set of paths `frozen`?"""
        prefixes = tuple(p + "." for p in frozen)
        exact = set(frozen)
        return [n in exact or n.startswith(prefixes) for n in self.param_names]

    def counts(self, frozen) -> tuple[int, int]:
        """(trainable, frozen) parameter counts for the set `frozen`."""
        mask = self.frozen_mask(frozen)
        f = sum(s for s, m in zip(self.param_sizes, mask) if m)
        return self.total - f, f

    def trainable_per_node(self, frozen) -> list[int]:
        """Trainable parameter count of each node's subtree, aligned with `nodes`."""
        mask = self.frozen_mask(frozen)
        cum = [0, *accumulate(0 if m else s for s, m in zip(self.param_sizes, mask))]
        return [cum[n.param_end] - cum[n.param_start] for n in self.nodes]

    def states(self, frozen) -> list[str]:
        """Per node: "trainable", "frozen", "partial", or "" (no parameters)."""
        out = []
        for node, t in zip(self.nodes, self.trainable_per_node(frozen)):
            if node.total_params == 0:
                out.append("")
            elif t == node.total_params:
                out.append("trainable")
            elif t == 0:
                out.append("frozen")
            else:
                out.append("partial")
        return out

    def trainable_names(self, frozen) -> list[str]:
        return [n for n, m in zip(self.param_names, self.frozen_mask(frozen)) if not m]

    def with_node(self, frozen, path: str, train: bool) -> tuple[str, ...]:
        """The frozen set after ticking (`train=True`) or unticking one node.

        Ticking a container trains everything under it; unticking freezes it
        all. The result is canonical (`canonical`), so toggling back and forth
        gives the same set.
        """
        node = self.node(path)
        mask = self.frozen_mask(frozen)
        for i in range(node.param_start, node.param_end):
            mask[i] = not train
        return self.canonical(mask)

    def canonical(self, mask) -> tuple[str, ...]:
        """The fewest paths that freeze exactly the parameters flagged in `mask`.

        A node whose whole subtree is frozen is named once; its descendants are
        not. Parameters held directly by a partly frozen container are named
        as parameters.
        """
        out: list[str] = []
        skip_until = -1  # parameters below this index are covered by a named ancestor
        cum = [0, *accumulate(1 if m else 0 for m in mask)]
        for node in self.nodes:
            if node.param_start < skip_until or node.total_params == 0:
                continue
            frozen_here = cum[node.param_end] - cum[node.param_start]
            if frozen_here == node.param_end - node.param_start:
                out.append(node.path)
                skip_until = node.param_end
            elif frozen_here and node.own_params:
                # direct parameters of a container come first in its range
                for i in range(node.param_start, node.param_end):
                    name = self.param_names[i]
                    if mask[i] and name.rpartition(".")[0] == node.path:
                        out.append(name)
        return tuple(out)


@functools.lru_cache(maxsize=32)
def model_structure(arch: str, num_classes: int, input_size: tuple[int, int] | None = None) -> tuple[LayerTree, tuple[Stage, ...]]:
    """Layer tree (with output shapes for `input_size`) and trunk stages of an architecture.

    Both are immutable and depend only on their arguments, so they are built
    once per process and shared by every page and session.
    """
    skeleton = build_skeleton(arch, num_classes)
    return layer_tree(skeleton, arch, input_size), tuple(stages(skeleton, arch))


def layer_tree(model: nn.Module, arch: str, input_size: tuple[int, int] | None = None) -> LayerTree:
    """Build the `LayerTree` of `model` (a real or meta-device model).

    With `input_size` (H, W), each node also gets its output shape for one
    image, found by a forward pass with hooks on a meta-device copy (no
    compute, no memory). Raises `ValueError` if the input is too small for the
    architecture.
    """
    shapes = output_shapes(model, input_size) if input_size else {}
    names, sizes = [], []
    index = {}
    for name, p in model.named_parameters():
        index[name] = len(names)
        names.append(name)
        sizes.append(p.numel())
    nodes = []
    for path, module in model.named_modules():
        if not path:
            continue
        params = [n for n, _ in module.named_parameters(prefix=path)]
        start = index[params[0]] if params else 0
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total = sum(p.numel() for p in module.parameters())
        shape = shapes.get(path)
        nodes.append(
            LayerNode(path=path, name=path.rpartition(".")[2], depth=path.count("."), kind=type(module).__name__,
                      own_params=own, total_params=total, param_start=start, param_end=start + len(params),
                      has_children=next(module.children(), None) is not None, out_shape=shape)
        )
    return LayerTree(tuple(nodes), tuple(names), tuple(sizes), arch_spec(arch).head)


def output_shapes(model: nn.Module, input_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Output shape (without the batch dimension) of every module for one HxW image.

    Runs on a meta-device copy of the structure, so it costs neither memory nor
    compute even for VGG-19 at 448x224.
    """
    meta = model if _is_meta(model) else _meta_copy(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for path, module in meta.named_modules():
        if path:
            handles.append(module.register_forward_hook(_shape_hook(shapes, path)))
    h, w = input_size
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(1, 3, h, w, device="meta"))
    except RuntimeError as exc:
        raise ValueError(f"An input of {h}x{w} is too small for this architecture ({str(exc).splitlines()[0]}).") from None
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _shape_hook(shapes, path):
    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            shapes[path] = tuple(output.shape[1:])
    return hook


def _is_meta(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.is_meta


def _meta_copy(model: nn.Module) -> nn.Module:
    """A meta-device copy; the caller's model is never moved. Prefer passing a skeleton."""
    return copy.deepcopy(model).to("meta")
