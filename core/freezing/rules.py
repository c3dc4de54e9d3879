"""A freezing choice applied to a real model: requires_grad, counts, train-mode rules, optimizer groups.

A freezing choice is a set of dotted module paths (torchvision's own names,
e.g. ``"features"``, ``"layer3.1"``, ``"classifier.0"``): everything under a
frozen path has ``requires_grad=False``, everything else trains.

BatchNorm: a frozen BatchNorm layer keeps its affine weights fixed, but in
``train()`` mode it would still update its running statistics. By default
(`set_train_mode(..., bn_frozen_eval=True)`) frozen BatchNorm layers are put
back into eval mode so nothing frozen moves.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops import StochasticDepth

from core.models import arch_spec, get_module

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


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def norm_paths(model: nn.Module) -> tuple[str, ...]:
    """The dotted paths of every normalisation layer with parameters (BatchNorm, GroupNorm, LayerNorm,
    InstanceNorm, and their subclasses such as torchvision's LayerNorm2d), in module order."""
    return tuple(name for name, m in model.named_modules()
                 if isinstance(m, NORM_LAYERS) and any(True for _ in m.parameters(recurse=False)))


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
    image, which the feature cache (`core.engine.features`) relies on.
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
