"""Checks of a freezing choice before training: what a user should know about what they froze.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.freezing.rules import is_frozen_bn, param_counts, param_groups, set_train_mode
from core.models import arch_spec, get_module


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
