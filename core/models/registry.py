"""The architecture registry: what each torchvision family is, in one entry per family.

fastai keeps this in one `model_meta` table and timm puts a `group_matcher` on
each model; here a `Family` says where the classifier and its last Linear are,
how the convolutional trunk splits into stages (the unit of the "last N
blocks" preset and of sweeps), how `forward` runs as a chain of steps (for the
feature cache and the cost model), and which hidden fully connected layers a
family names (VGG's FC1 and FC2). Adding a family is one `Family` here plus
its architectures in `CATALOG`; the parametrised tests then cover it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm

Step = tuple[str, nn.Module]  # (torchvision module path or functional name, module)


@dataclass(frozen=True)
class Stage:
    """A block of the convolutional trunk, the unit of the "last N blocks" preset."""

    name: str  # e.g. "block3", "layer2", "stem"
    paths: tuple[str, ...]  # top-level module paths it consists of, in forward order


@dataclass(frozen=True)
class Family:
    """What an architecture family is; see the module docstring."""

    name: str  # "vgg", "resnet", ...
    classifier: str  # dotted path of the whole classifier (the part after the convolutional trunk)
    head: str  # dotted path of the last Linear, replaced for num_classes
    stages: Callable[[nn.Module], list[Stage]]  # the trunk's stages, in forward order
    chain: Callable[[nn.Module], list[Step]]  # `forward` as top-level steps (Sequentials are opened later)
    fc_layers: tuple[str, ...] = ()  # hidden Linear layers the "fc1_fc2" preset trains with the head


@dataclass(frozen=True)
class ArchSpec:
    name: str  # torchvision builder name, e.g. "vgg19"
    label: str  # what users call it, e.g. "VGG-19"
    family: Family

    @property
    def head(self) -> str:
        return self.family.head

    @property
    def classifier(self) -> str:
        return self.family.classifier


# --------------------------------------------------------------------------- functional steps


class FunctionalStep(nn.Module):
    """A functional step of a model's `forward` (e.g. DenseNet's final relu) as a module."""

    def __init__(self, fn: Callable[[Tensor], Tensor], label: str) -> None:
        super().__init__()
        self.fn, self.label = fn, label

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.label


def _flatten() -> FunctionalStep:
    return FunctionalStep(lambda x: torch.flatten(x, 1), "torch.flatten(x, 1)")


def _named(model: nn.Module, *names: str) -> list[Step]:
    return [(n, getattr(model, n)) for n in names]


# --------------------------------------------------------------------------- stages per family


def _features(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(child name, path, module) of `model.features`, in order."""
    return [(n, f"features.{n}", m) for n, m in model.features.named_children()]


def _resnet_stages(model: nn.Module) -> list[Stage]:
    return [Stage("stem", ("conv1", "bn1", "relu", "maxpool"))] + [Stage(f"layer{i}", (f"layer{i}",)) for i in range(1, 5)]


def _vgg_stages(model: nn.Module) -> list[Stage]:
    """The five conv blocks, each ending with its max-pool."""
    out, current = [], []
    for _, path, module in _features(model):
        current.append(path)
        if isinstance(module, nn.MaxPool2d):
            out.append(Stage(f"block{len(out) + 1}", tuple(current)))
            current = []
    return out


def _alexnet_stages(model: nn.Module) -> list[Stage]:
    """The five conv layers: a stage starts at each convolution."""
    out: list[Stage] = []
    for _, path, module in _features(model):
        if isinstance(module, nn.Conv2d):
            out.append(Stage(f"conv{len(out) + 1}", (path,)))
        else:
            out[-1] = Stage(out[-1].name, out[-1].paths + (path,))
    return out


def _densenet_stages(model: nn.Module) -> list[Stage]:
    """stem | denseblockN (+ transitionN) ... | denseblock4 + norm5."""
    children = _features(model)
    out = [Stage("stem", tuple(path for name, path, _ in children if name[-1] == "0"))]
    for name, path, _ in children:
        if name.startswith("denseblock"):
            out.append(Stage(f"block{name[-1]}", (path,)))
        elif name.startswith("transition") or name == "norm5":
            out[-1] = Stage(out[-1].name, out[-1].paths + (path,))
    return out


def _convnext_stages(model: nn.Module) -> list[Stage]:
    """features: 0 stem, 1 stage1, then (downsample, stage) pairs."""
    paths = [path for _, path, _ in _features(model)]
    out = [Stage("stem", (paths[0],)), Stage("stage1", (paths[1],))]
    for i in range(2, len(paths), 2):
        out.append(Stage(f"stage{len(out)}", (paths[i], paths[i + 1])))
    return out


def _each_feature_stages(model: nn.Module) -> list[Stage]:
    """MobileNetV3 / EfficientNet: each entry of ``features`` is a stage."""
    return [Stage(path, (path,)) for _, path, _ in _features(model)]


# --------------------------------------------------------------------------- forward chains per family


def _resnet_chain(model: nn.Module) -> list[Step]:
    trunk = _named(model, "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
    return trunk + [("flatten", _flatten()), ("fc", model.fc)]


def _features_chain(model: nn.Module) -> list[Step]:
    """features, avgpool, flatten, classifier: VGG, AlexNet, MobileNetV3, EfficientNet."""
    return _named(model, "features", "avgpool") + [("flatten", _flatten()), ("classifier", model.classifier)]


def _convnext_chain(model: nn.Module) -> list[Step]:
    return _named(model, "features", "avgpool", "classifier")  # its classifier flattens (LayerNorm2d, Flatten, Linear)


def _densenet_chain(model: nn.Module) -> list[Step]:
    return [
        ("features", model.features),
        ("relu", FunctionalStep(F.relu, "F.relu")),
        ("avgpool", FunctionalStep(lambda x: F.adaptive_avg_pool2d(x, (1, 1)), "F.adaptive_avg_pool2d(x, (1, 1))")),
        ("flatten", _flatten()),
        ("classifier", model.classifier),
    ]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("vgg", "classifier", "classifier.6", _vgg_stages, _features_chain, fc_layers=("classifier.0", "classifier.3")),
        Family("alexnet", "classifier", "classifier.6", _alexnet_stages, _features_chain),
        Family("resnet", "fc", "fc", _resnet_stages, _resnet_chain),
        Family("mobilenet_v3", "classifier", "classifier.3", _each_feature_stages, _features_chain),
        Family("efficientnet", "classifier", "classifier.1", _each_feature_stages, _features_chain),
        Family("densenet", "classifier", "classifier", _densenet_stages, _densenet_chain),
        Family("convnext", "classifier", "classifier.2", _convnext_stages, _convnext_chain),
    ]
}


def _spec(name: str, label: str, family: str) -> ArchSpec:
    return ArchSpec(name, label, FAMILIES[family])


CATALOG: dict[str, ArchSpec] = {
    s.name: s
    for s in [
        _spec("vgg11", "VGG-11", "vgg"),
        _spec("vgg11_bn", "VGG-11 (BN)", "vgg"),
        _spec("vgg16", "VGG-16", "vgg"),
        _spec("vgg16_bn", "VGG-16 (BN)", "vgg"),
        _spec("vgg19", "VGG-19", "vgg"),
        _spec("vgg19_bn", "VGG-19 (BN)", "vgg"),
        _spec("alexnet", "AlexNet", "alexnet"),
        _spec("resnet18", "ResNet-18", "resnet"),
        _spec("resnet34", "ResNet-34", "resnet"),
        _spec("resnet50", "ResNet-50", "resnet"),
        _spec("resnet101", "ResNet-101", "resnet"),
        _spec("mobilenet_v3_large", "MobileNetV3-Large", "mobilenet_v3"),
        _spec("efficientnet_b0", "EfficientNet-B0", "efficientnet"),
        _spec("densenet121", "DenseNet-121", "densenet"),
        _spec("convnext_tiny", "ConvNeXt-Tiny", "convnext"),
    ]
}


def arch_spec(arch: str) -> ArchSpec:
    """The catalog entry for `arch`; `ValueError` naming the choices if unknown."""
    try:
        return CATALOG[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(CATALOG)}") from None


def get_module(model: nn.Module, path: str) -> nn.Module:
    """`model.get_submodule` with a `ValueError` that names the bad path."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no module {path!r}") from None


def stages(model: nn.Module, arch: str) -> list[Stage]:
    """The trunk of `model` split into its family's natural stages, in forward order.

    VGG: the five conv blocks ending in max-pooling. AlexNet: its five conv
    layers. ResNet: stem, layer1-4. DenseNet: stem and each dense block with its
    transition. ConvNeXt: stem and four stages (with their downsampling).
    MobileNetV3 / EfficientNet: each entry of ``features``.
    """
    return arch_spec(arch).family.stages(model)


def _expand(module: nn.Module, path: str) -> list[Step]:
    """A module as its named children when it is a plain `nn.Sequential`, recursively."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module):
        return [step for name, child in module.named_children() for step in _expand(child, f"{path}.{name}")]
    return [(path, module)]


def forward_chain(model: nn.Module, arch: str) -> list[Step]:
    """`model`'s forward pass as a list of (name, step); running them in order is `model(x)`.

    Names are the torchvision module paths; plain `nn.Sequential` containers
    are opened (``features.0``, ``layer3.1``, ``classifier.6``), other blocks
    (a ResNet BasicBlock, a DenseNet dense block) stay one step. Functional
    parts of a `forward` become small steps named after what they do
    (``flatten``, DenseNet's ``relu`` and ``avgpool``).
    """
    return [step for name, module in arch_spec(arch).family.chain(model) for step in _expand(module, name)]


def run_chain(steps: list[Step], x: Tensor) -> Tensor:
    """Run a `forward_chain` (or a part of one) on `x`."""
    for _, step in steps:
        x = step(x)
    return x


def imagenet_weights(arch: str) -> tvm.WeightsEnum:
    """torchvision's default (best) ImageNet weights enum member for `arch`."""
    return tvm.get_model_weights(arch_spec(arch).name).DEFAULT


def published_num_params(arch: str) -> int:
    """The parameter count torchvision publishes for `arch` with 1000 classes."""
    return imagenet_weights(arch).meta["num_params"]
