"""Where a network's function stops being fixed: the frozen prefix the feature cache may skip.

"Frozen" means a fixed function of the input: a frozen BatchNorm in eval mode, Dropout and
stochastic depth in frozen blocks switched off. The longest such prefix of the forward chain can be
computed once per image (`core.engine.features`).
"""

from __future__ import annotations

from torch import nn
from torchvision.ops import StochasticDepth

from core.models.registry import Step


def _varies_in_training(module: nn.Module) -> bool:
    """Does the module (in its current mode) behave differently from eval mode?"""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.training  # would normalise with batch statistics and update its running ones
    if isinstance(module, (nn.modules.dropout._DropoutNd, StochasticDepth)):
        return module.training and module.p > 0
    return False


def frozen_prefix(steps: list[Step]) -> tuple[int, str | None]:
    """How many leading steps are a fixed function of the input, in the modules' current modes.

    Call with the model in its training mode (`set_train_mode`). Returns the
    prefix length and, for the step that ends it, why (or None when every
    step is fixed, i.e. nothing trains).
    """
    for i, (name, step) in enumerate(steps):
        if any(p.requires_grad for p in step.parameters()):
            return i, f"{name} trains"
        for sub_name, sub in step.named_modules(prefix=name):
            if _varies_in_training(sub):
                what = "updates its running statistics" if isinstance(sub, nn.modules.batchnorm._BatchNorm) else "is random in training"
                return i, f"{sub_name} ({type(sub).__name__}) {what}"
    return len(steps), None
