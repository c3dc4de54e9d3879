"""Which layers train: the layer tree, presets, applying a frozen set, counts and checks.

A freezing choice is a set of dotted module paths (torchvision's own names,
e.g. ``"features"``, ``"layer3.1"``, ``"classifier.0"``): everything under a
frozen path has ``requires_grad=False``, everything else trains. The same set
drives the tree in the UI (`LayerTree`, pure and cheap to recompute on every
click), the real model (`set_frozen`), the optimizer (`param_groups`) and the
generated code.

BatchNorm: a frozen BatchNorm layer keeps its affine weights fixed, but in
``train()`` mode it would still update its running statistics. By default
(`set_train_mode(..., bn_frozen_eval=True)`) frozen BatchNorm layers are put
back into eval mode so nothing frozen moves.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from core.models import arch_spec, build_skeleton, get_module

# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    """A block of the convolutional trunk, the unit of the "last N blocks" preset."""

    name: str  # e.g. "block3", "layer2", "stem"
    paths: tuple[str, ...]  # top-level module paths it consists of, in forward order


def stages(model: nn.Module, arch: str) -> list[Stage]:
    """The trunk of `model` split into its architecture's natural stages, in forward order.

    VGG: the five conv blocks ending in max-pooling. AlexNet: its five conv
    layers. ResNet: stem, layer1-4. DenseNet: stem and each dense block with its
    transition. ConvNeXt: stem and four stages (with their downsampling).
    MobileNetV3 / EfficientNet: each entry of ``features``.
    """
    family = arch_spec(arch).family
    if family == "resnet":
        return [Stage("stem", ("conv1", "bn1", "relu", "maxpool"))] + [
            Stage(f"layer{i}", (f"layer{i}",)) for i in range(1, 5)
        ]
    names = [n for n, _ in model.features.named_children()]
    kinds = [m for _, m in model.features.named_children()]
    paths = [f"features.{n}" for n in names]
    if family == "vgg":  # a block ends with its max-pool
        out, current = [], []
        for path, module in zip(paths, kinds):
            current.append(path)
            if isinstance(module, nn.MaxPool2d):
                out.append(Stage(f"block{len(out) + 1}", tuple(current)))
                current = []
        return out
    if family == "alexnet":  # a stage starts at each convolution
        out = []
        for path, module in zip(paths, kinds):
            if isinstance(module, nn.Conv2d):
                out.append(Stage(f"conv{len(out) + 1}", (path,)))
            else:
                out[-1] = Stage(out[-1].name, out[-1].paths + (path,))
        return out
    if family == "densenet":  # stem | denseblockN (+ transitionN) ... | denseblock4 + norm5
        out = [Stage("stem", tuple(p for p, n in zip(paths, names) if n[-1] == "0"))]
        for path, name in zip(paths, names):
            if name.startswith("denseblock"):
                out.append(Stage(f"block{name[-1]}", (path,)))
            elif name.startswith("transition") or name == "norm5":
                out[-1] = Stage(out[-1].name, out[-1].paths + (path,))
        return out
    if family == "convnext":  # features: 0 stem, 1 stage1, then (downsample, stage) pairs
        out = [Stage("stem", (paths[0],)), Stage("stage1", (paths[1],))]
        for i in range(2, len(paths), 2):
            out.append(Stage(f"stage{len(out)}", (paths[i], paths[i + 1])))
        return out
    return [Stage(f"features.{n}", (p,)) for n, p in zip(names, paths)]  # mobilenet_v3, efficientnet


# --------------------------------------------------------------------------- presets

PRESET_LABELS = {
    "full": "Full fine-tune",
    "head": "Head only",
    "classifier": "Classifier only",
    "fc1_fc2": "FC1 + FC2 + head",
    "last": "Last N blocks",
    "custom": "Custom",  # ticked by hand in the layer tree
}

PRESET_HELP = {
    "full": "Train every layer, starting from the chosen weights.",
    "head": "Feature extractor: everything frozen except the new last layer.",
    "classifier": "The convolutional trunk is frozen; the whole classifier (or fc) trains, "
                  "as in freezing AlexNet's `features`.",
    "fc1_fc2": "VGG: FC1 (classifier.0) and FC2 (classifier.3) fine-tune with the new head (classifier.6); "
               "the convolutional features are frozen.",
    "last": "Train the last N blocks of the trunk and everything after them.",
}


def presets_for(arch: str) -> list[str]:
    """Preset names that make sense for `arch` ("last" stands for "last<N>")."""
    names = ["full", "head", "classifier", "last"]
    if arch_spec(arch).family == "vgg":
        names.insert(3, "fc1_fc2")
    return names


def preset_label(preset: str) -> str:
    """"last2" -> "Last 2 blocks"; known names -> their label; anything else as is."""
    if m := re.fullmatch(r"last(\d+)", preset):
        return f"Last {m.group(1)} block{'s' if m.group(1) != '1' else ''}"
    return PRESET_LABELS.get(preset, preset)


def preset_frozen(model: nn.Module, arch: str, preset: str) -> tuple[str, ...]:
    """The frozen module paths a preset stands for (the model is not changed).

    - ``"full"``: nothing frozen.
    - ``"head"``: everything but the new head (`ArchSpec.head`).
    - ``"classifier"``: the convolutional trunk; the whole classifier / ``fc`` trains.
    - ``"fc1_fc2"`` (VGG): everything but ``classifier.0`` (FC1), ``classifier.3`` (FC2)
      and the new head ``classifier.6``.
    - ``"last<N>"``: the trunk's stages except the last N; the rest trains.
    """
    spec = arch_spec(arch)
    if preset == "full":
        return ()
    if preset == "head":
        return frozen_complement(model, [spec.head])
    if preset == "classifier":
        return frozen_complement(model, [spec.classifier])
    if preset == "fc1_fc2":
        if spec.family != "vgg":
            raise ValueError(f"the FC1+FC2 preset is for VGG models, not {spec.label}")
        return frozen_complement(model, ["classifier.0", "classifier.3", spec.head])
    if m := re.fullmatch(r"last(\d+)", preset):
        trunk = stages(model, arch)
        n = int(m.group(1))
        if not 0 <= n <= len(trunk):
            raise ValueError(f"{spec.label} has {len(trunk)} blocks; cannot train the last {n}")
        paths = [p for stage in trunk[: len(trunk) - n] for p in stage.paths]
        return tuple(p for p in paths if _has_params(get_module(model, p)))
    raise ValueError(f"unknown preset {preset!r}")


def preset_of(model: nn.Module, arch: str, tree: LayerTree, frozen) -> str:
    """The preset that freezes exactly the parameters `frozen` freezes, else "custom".

    Ticking every box by hand is "full", not "custom": the name follows what trains, not how it
    was chosen. Checked in the order of `presets_for`, then "last1", "last2", ...
    """
    mask = tree.frozen_mask(frozen)
    names = [p for p in presets_for(arch) if p != "last"] + [f"last{n}" for n in range(1, len(stages(model, arch)))]
    return next((name for name in names if tree.frozen_mask(preset_frozen(model, arch, name)) == mask), "custom")


def apply_preset(model: nn.Module, arch: str, preset: str) -> tuple[str, ...]:
    """Freeze `model` according to `preset` (see `preset_frozen`); returns the frozen paths."""
    frozen = preset_frozen(model, arch, preset)
    set_frozen(model, frozen)
    return frozen


def frozen_complement(model: nn.Module, trainable: list[str]) -> tuple[str, ...]:
    """The fewest module paths to freeze so that exactly the `trainable` subtrees train.

    Walks down from the root: a child that holds a trainable path is entered,
    a child inside one is left alone, any other child with parameters is frozen
    whole.
    """
    for path in trainable:
        get_module(model, path)  # validate
    out: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if any(path == t or t.startswith(path + ".") for t in trainable):
                if path not in trainable:
                    visit(child, path + ".")
            elif _has_params(child):
                out.append(path)

    visit(model, "")
    return tuple(out)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


# --------------------------------------------------------------------------- the real model


def set_frozen(model: nn.Module, paths) -> None:
    """Freeze exactly the modules (or single parameters) at `paths`; unfreeze the rest.

    A path names a module (everything under it is frozen) or, for parameters
    that belong directly to a container (e.g. ConvNeXt's ``layer_scale``), a
    parameter. Unknown paths raise `ValueError` before anything changes.
    """
    targets = []
    for path in paths:
        try:
            targets.append(model.get_parameter(path) if _is_param(model, path) else get_module(model, path))
        except AttributeError:
            raise ValueError(f"{type(model).__name__} has no module or parameter {path!r}") from None
    model.requires_grad_(True)
    for target in targets:
        target.requires_grad_(False)


def _is_param(model: nn.Module, path: str) -> bool:
    try:
        model.get_parameter(path)
    except AttributeError:
        return False
    return True


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = frozen = 0
    for p in model.parameters():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def is_frozen_bn(module: nn.Module) -> bool:
    """A BatchNorm layer whose affine parameters are all frozen."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
        p.requires_grad for p in module.parameters(recurse=False)
    )


def frozen_stochastic_depth(model: nn.Module) -> list[nn.Module]:
    """The stochastic-depth modules of frozen blocks: a `StochasticDepth` whose parent (the residual
    block it drops, e.g. an EfficientNet MBConv or a ConvNeXt CNBlock) has parameters, all frozen."""
    out = []
    for block in model.modules():
        params = list(block.parameters())
        if params and not any(p.requires_grad for p in params):
            out += [child for child in block.children() if isinstance(child, StochasticDepth)]
    return out


def set_train_mode(model: nn.Module, bn_frozen_eval: bool = True) -> nn.Module:
    """`model.train()`, then frozen layers back to eval mode (unless switched off): frozen BatchNorm
    layers and the stochastic depth of frozen blocks.

    In eval mode a BatchNorm normalises with its stored running statistics and
    does not update them, which is what "frozen" means to most users. A frozen
    residual block likewise computes its fixed function instead of dropping its
    branch at random; with both, a frozen backbone is a fixed function of the
    image, which the feature cache (`core.features`) relies on.
    """
    model.train()
    if bn_frozen_eval:
        for module in model.modules():
            if is_frozen_bn(module):
                module.eval()
        for module in frozen_stochastic_depth(model):
            module.eval()
    return model


def param_groups(model: nn.Module, arch: str, lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer parameter groups holding only trainable parameters.

    Group "head" holds the new head at `lr`; group "backbone" holds the other
    trainable (pretrained) parameters at `lr * backbone_lr_mult` (discriminative
    rates). Empty groups are left out. Each group carries its name and size.
    """
    head_prefix = arch_spec(arch).head + "."
    head, backbone = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith(head_prefix) else backbone).append(p)
    groups = []
    for name, params, rate in (("head", head, lr), ("backbone", backbone, lr * backbone_lr_mult)):
        if params:
            groups.append(
                {"name": name, "params": params, "lr": rate, "num_tensors": len(params),
                 "num_params": sum(p.numel() for p in params)}
            )
    return groups


@dataclass(frozen=True)
class Check:
    """One pre-flight check of what will really train."""

    name: str
    ok: bool
    detail: str


def preflight(model: nn.Module, arch: str, bn_frozen_eval: bool = True) -> list[Check]:
    """Check what a training step with the current requires_grad state would really do.

    - the new head is trainable,
    - something trains at all,
    - frozen BatchNorm layers are in eval mode in training mode (or, with the
      switch off, say that their running statistics will move),
    - an optimizer built from `param_groups` receives exactly the trainable
      parameters, no frozen ones.
    Leaves the model in eval mode.
    """
    spec = arch_spec(arch)
    checks = []
    head_ok = all(p.requires_grad for p in get_module(model, spec.head).parameters())
    checks.append(Check("New head trains", head_ok,
                        f"{spec.head} is trainable" if head_ok else f"{spec.head} is frozen: the new head would keep its random weights"))
    trainable, frozen = param_counts(model)
    checks.append(Check("Something trains", trainable > 0,
                        f"{trainable:,} trainable parameters" if trainable else "every parameter is frozen"))

    set_train_mode(model, bn_frozen_eval)
    frozen_bn = [n for n, m in model.named_modules() if is_frozen_bn(m)]
    moving = [n for n in frozen_bn if model.get_submodule(n).training]
    model.eval()
    if bn_frozen_eval:
        checks.append(Check("Frozen BatchNorm in eval mode", not moving,
                            f"{len(frozen_bn)} frozen BatchNorm layers keep their running statistics" if not moving
                            else f"{len(moving)} frozen BatchNorm layers would update their statistics: {', '.join(moving[:5])}"))
    else:
        checks.append(Check("Frozen BatchNorm in eval mode", not frozen_bn,
                            "no frozen BatchNorm layers" if not frozen_bn
                            else f"switch is off: {len(frozen_bn)} frozen BatchNorm layers will update their running statistics"))

    groups = param_groups(model, arch, lr=1.0)
    optimizer_groups = torch.optim.SGD(groups, lr=1.0).param_groups if groups else []
    in_optimizer = {id(p) for g in optimizer_groups for p in g["params"]}
    expected = {id(p) for p in model.parameters() if p.requires_grad}
    exact = in_optimizer == expected
    checks.append(Check("Optimizer gets exactly the trainable parameters", exact,
                        f"{len(in_optimizer)} tensors in {len(groups)} groups ({', '.join(g['name'] for g in groups)})" if exact
                        else f"{len(in_optimizer ^ expected)} tensors differ between the optimizer and requires_grad"))
    return checks


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
