"""The optimizer over the trainable parameters only, in named groups, and the epoch scheduler.
"""

from __future__ import annotations

import torch
from torch import nn

from core.config import RunConfig
from core.freezing import param_groups

# --------------------------------------------------------------------------- optimizer


def build_optimizer(model: nn.Module, config: RunConfig) -> tuple[torch.optim.Optimizer, list[dict]]:
    """The optimizer over `param_groups` (trainable parameters only, named groups), and their description.

    Like nanoGPT's `configure_optimizers`: only `requires_grad` parameters go
    in, each group says how many tensors and parameters it holds, and on CUDA
    and the CPU the fused implementation (one kernel for the whole update) is
    used. The new head trains at `lr`, other trainable layers at
    `lr * backbone_lr_mult`; with Auto-RGN every tensor has a group of its
    own, all at `lr` (`core.engine.signals.AutoRGN` scales each). The
    description lists the named groups.
    """
    mult = 1.0 if config.auto_rgn else config.backbone_lr_mult  # Auto-RGN: one base rate, its scales set the rest
    groups = param_groups(model, config.arch, config.lr, mult)
    if not groups:
        raise ValueError("Every parameter is frozen: nothing would train. Unfreeze at least the new head.")
    described = [{"name": g["name"], "num_tensors": g["num_tensors"], "num_params": g["num_params"], "lr": g["lr"]} for g in groups]
    if config.auto_rgn:
        groups = per_tensor_groups(model, groups)
    device_type = groups[0]["params"][0].device.type
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay, "fused": device_type in ("cuda", "cpu")}
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=0.9, **kwargs)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, **kwargs)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, **kwargs)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    return optimizer, described


def per_tensor_groups(model: nn.Module, groups: list[dict]) -> list[dict]:
    """`groups` split into one group per tensor (Auto-RGN sets each tensor's rate), each keeping its
    group's name and rate and saying which tensor it holds."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [{"name": g["name"], "tensor": names[id(p)], "params": [p], "lr": g["lr"]} for g in groups for p in g["params"]]


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int):
    """None / CosineAnnealingLR over `epochs` / StepLR (step max(1, epochs // 3), gamma 0.1); stepped per epoch."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    return None
