"""The exact cost of a freezing choice: the whole graph, forward and backward, on the meta device.

Too slow for every click (a ResNet-50 at 224 px takes a few hundred milliseconds); it is the oracle
`estimate` is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks

from core.estimate.profile import flop_counter, identity, nbytes_of, storage_key
from core.freezing import set_frozen, set_train_mode
from core.models import build_skeleton

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
    excluded = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor):
        k = storage_key(t)
        if k not in excluded and k not in saved:
            saved[k] = nbytes_of(t)
            keep.append(t)
        return t

    x = torch.empty(batch_size, 3, *image_size, device="meta")
    with saved_tensors_hooks(pack, identity):
        with flop_counter() as counter:
            out = model(x)
        fwd = counter.get_total_flops()
        bwd = 0
        if out.requires_grad:
            with flop_counter() as counter:
                out.backward(torch.empty_like(out))
            bwd = counter.get_total_flops()
    return ExactCosts(fwd // batch_size, bwd // batch_size, sum(saved.values()))
