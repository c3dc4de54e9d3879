"""Layer signals: which layers want to move (relative gradient norms), and which did (weight drift).

Relative gradient norm, RGN (Lee et al., ICLR 2023, "Surgical fine-tuning improves adaptation to
distribution shifts", their Auto-RGN): for a parameter tensor θ with gradient g, ‖g‖ / ‖θ‖. A layer
or a stage counts its tensors as one vector, sqrt(Σ‖g‖²) / sqrt(Σ‖θ‖²), so that a large weight is
not outvoted by its small biases (`relative_norm`). The Model page's probe (`core.engine.probe`)
measures it on a few batches without an update; `AutoRGN` trains with it, per tensor, as Lee et al.'s
code does (`measure_rgn`).

Layer drift: at each epoch's end, per part of the network (`core.freezing.network_parts`: the
trunk's stages, then what the classifier holds besides its head, then the head), the relative change of the group's weights since the run
started, ‖θ − θ₀‖ / ‖θ₀‖, and the root mean square over the epoch's steps of the gradient norm of
its trainable parameters (`LayerDrift`). θ₀ is a CPU copy of the trainable parameters only (frozen
ones cannot move; the freeze audit checks), and the drift is computed on the CPU, one tensor at a
time: a GPU holds nothing more than it does to train. On the CPU the copy and one tensor's
difference count (`core.estimate.memory` counts them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import get_total_norm


def relative_norm(grad_sq: float, param_sq: float) -> float | None:
    """sqrt(Σ‖g‖²) / sqrt(Σ‖θ‖²) from the sums of squares; None when the weights are all zero."""
    return math.sqrt(grad_sq) / math.sqrt(param_sq) if param_sq > 0 else None


def squared_norms(tensors: Iterable[Tensor]) -> Tensor:
    """The squared L2 norm of `tensors` taken as one vector, as a 0-d tensor on their device (no sync)."""
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(())
    return get_total_norm(tensors, foreach=True).float().square()


class LayerDrift:
    """Per signal group: weight drift since the start and the gradient norm, one record per epoch.

    `after_backward` runs after every backward pass (it adds each group's squared gradient norm on
    the device, without a sync); `epoch_record` closes an epoch.
    """

    def __init__(self, model: nn.Module, groups: dict[str, list[str]]) -> None:
        """`groups`: {group: parameter names} (`network_parts`); what trains now is what may move."""
        params = dict(model.named_parameters())
        self.groups = groups
        self.params = params
        with torch.no_grad():
            # every tensor that trains in some phase: the run's frozen set is the last phase's
            self.start = {n: p.detach().to("cpu", copy=True) for n, p in params.items() if p.requires_grad}
            self.start_sq = {g: squared_norms(params[n].detach() for n in names).item() for g, names in self.groups.items()}
        self._grad_sq: dict[str, Tensor] = {}
        self._steps = 0

    def after_backward(self, first_step: bool) -> None:
        for group, names in self.groups.items():
            grads = [self.params[n].grad for n in names if self.params[n].grad is not None]
            if grads:
                total = squared_norms(grads)
                self._grad_sq[group] = self._grad_sq[group] + total if group in self._grad_sq else total
        self._steps += 1

    @torch.no_grad()
    def epoch_record(self) -> dict:
        """{"groups", "drift", "grad_norm"}, lists in the groups' order; grad_norm is None for a group
        that had no gradient this epoch (frozen). Resets the epoch's gradient sums."""
        drift, grad_norm = [], []
        for group, names in self.groups.items():
            # on the CPU, one tensor at a time: the device holds nothing more than during training
            moved = sum(float(torch.linalg.vector_norm(self.params[n].detach().cpu() - self.start[n])) ** 2
                        for n in names if n in self.start)
            drift.append(relative_norm(moved, self.start_sq[group]))
            grad_sq = self._grad_sq.get(group)
            grad_norm.append(math.sqrt(grad_sq.item() / self._steps) if grad_sq is not None else None)
        self._grad_sq, self._steps = {}, 0
        return {"groups": list(self.groups), "drift": drift, "grad_norm": grad_norm}


RGN_BATCHES = 5  # Lee et al.'s code averages each tensor's RGN over the first 5 batches of the epoch


def measure_rgn(model: nn.Module, forward: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]],
                amp: Callable[[], AbstractContextManager]) -> dict[str, float]:
    """Each trainable tensor's relative gradient norm ‖g‖/‖θ‖, averaged over `batches` ((inputs, labels)
    of the run's batch size), with no update: Lee et al.'s `get_lr_weights`. Tensors whose weights are
    all zero have no RGN and are left out. `.grad` is not touched."""
    with torch.no_grad():
        norms = {n: float(p.detach().float().norm()) for n, p in model.named_parameters() if p.requires_grad}
    params = {n: p for n, p in model.named_parameters() if norms.get(n, 0.0) > 0}
    sums, count = dict.fromkeys(params, 0.0), 0
    for x, y in batches:
        with amp():
            logits = forward(x)
        grads = torch.autograd.grad(F.cross_entropy(logits.float(), y), list(params.values()), allow_unused=True)
        for name, g in zip(params, grads):
            if g is not None:
                sums[name] += float(g.detach().float().norm()) / norms[name]
        count += 1
    return {name: total / max(count, 1) for name, total in sums.items()}


class AutoRGN:
    """Auto-RGN as Lee et al. (ICLR 2023) define it in their code: at each epoch's start, every
    trainable tensor (the norm layers are frozen: `preset_frozen(..., "auto-rgn")`) gets the base
    rate × its RGN / the largest RGN (`measure_rgn`), and the optimizer starts afresh (their code
    builds a new one each epoch: no momentum carried over).

    The optimizer has one parameter group per tensor, all at the one base rate (`build_optimizer`).
    `end_epoch` puts the unscaled rates back before the scheduler steps, so any schedule acts on
    the base rate. A tensor without an RGN (all-zero weights) trains at the base rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.scales: dict[str, float] = {}  # tensor name -> this epoch's scale

    def start_epoch(self, rgn: dict[str, float]) -> None:
        """Scale every group's rate by its tensor's RGN over the largest, and forget the optimizer's state."""
        top = max(rgn.values(), default=0.0)
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:
            scale = rgn[group["tensor"]] / top if top > 0 and group["tensor"] in rgn else 1.0
            group["unscaled_lr"] = group["lr"]
            group["lr"] *= scale
            self.scales[group["tensor"]] = scale

    def end_epoch(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group.pop("unscaled_lr", group["lr"])

    def group_scales(self, groups: dict[str, list[str]], sizes: dict[str, int]) -> list[float | None]:
        """Each signal group's scale this epoch, its tensors' scales weighted by their sizes."""
        out = []
        for names in groups.values():
            scaled = [(self.scales[n], sizes[n]) for n in names if n in self.scales]
            out.append(sum(s * k for s, k in scaled) / sum(k for _, k in scaled) if scaled else None)
        return out
