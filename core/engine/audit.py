"""The freeze audit: every frozen tensor compared bit for bit before and after the run.

Frozen parameters, and frozen BatchNorm buffers when they must not move, are copied to the CPU when
the run starts; at the end each is bit-identical or listed as changed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.freezing import is_frozen_bn

# --------------------------------------------------------------------------- audit


def freeze_snapshot(model: nn.Module, bn_frozen_eval: bool) -> dict[str, Tensor]:
    """CPU copies of every frozen parameter, and of frozen BatchNorm buffers when they must not move."""
    snapshot = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if not p.requires_grad}
    if bn_frozen_eval:
        for path, module in model.named_modules():
            if is_frozen_bn(module):
                for name, buffer in module.named_buffers(prefix=path, recurse=False):
                    snapshot[name] = buffer.detach().to("cpu", copy=True)
    return snapshot


def freeze_audit(model: nn.Module, snapshot: dict[str, Tensor]) -> dict:
    """Compare the model with `freeze_snapshot`: bit-identical or listed as changed."""
    current = dict(model.named_parameters())
    current.update(model.named_buffers())
    changed = [name for name, before in snapshot.items() if not torch.equal(current[name].detach().cpu(), before)]
    return {"ok": not changed, "checked_tensors": len(snapshot), "changed": changed}
