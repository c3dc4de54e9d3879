"""Building a torchvision classifier with a fresh head, from the weights a run asks for.

Every model is a stock torchvision classifier built with the current weights
API (`weights=`), with its last linear layer replaced for `num_classes` the way
torchvision users write it (`model.classifier[6] = nn.Linear(4096, n)`,
`model.fc = nn.Linear(2048, n)`), so module names stay torchvision's own and
code learned here carries over to a script.

Weights sources (`weights` argument, also `RunConfig.weights`):

- ``None`` / ``"none"``: random initialisation.
- ``"imagenet"``: torchvision's default weights for the architecture, downloaded
  once (with progress) into torch's usual hub cache and used from there.
- a path to a state-dict checkpoint (``.pt``/``.pth``/``.safetensors``), loaded
  the ``strict=False`` way and reported key by key (`LoadReport`).
- a state dict already read (the final weights of an earlier run: `core.store.run_state_dict`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from core.models.checkpoints import (
    Checkpoint,
    CheckpointError,
    LoadReport,
    checkpoint_report,
    load_checkpoint,
    read_state_dict,
)
from core.models.registry import arch_spec, get_module, imagenet_weights
from core.models.weights import ProgressFn, download_imagenet_weights

# --------------------------------------------------------------------------- building


def replace_head(model: nn.Module, arch: str, num_classes: int) -> nn.Module:
    """Swap the last Linear for a fresh `nn.Linear(in_features, num_classes)`, in place.

    Equivalent to `model.classifier[6] = nn.Linear(4096, num_classes)` for VGG or
    `model.fc = nn.Linear(model.fc.in_features, num_classes)` for ResNet; the
    module keeps its torchvision name. A head already of the right size is kept.
    """
    path = arch_spec(arch).head
    old = get_module(model, path)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"expected a Linear at {path!r}, found {type(old).__name__}")
    if old.out_features == num_classes:
        return model
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent_path, _, child = path.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    setattr(parent, child, new)  # Sequential children are named "0", "1", ...: setattr works for both
    return model


def build_skeleton(arch: str, num_classes: int) -> nn.Module:
    """The model's structure on the `meta` device: no memory, no init cost.

    Used for shapes, the layer tree and cost estimates, which depend only on
    the architecture, the head size and the input size.
    """
    with torch.device("meta"):
        model = tvm.get_model(arch_spec(arch).name, weights=None)
        return replace_head(model, arch, num_classes)


def prepare_model(
    arch: str,
    num_classes: int,
    weights: str | Path | Checkpoint | None = None,
    *,
    progress: ProgressFn | None = None,
) -> tuple[nn.Module, LoadReport | None]:
    """`build_model`, also returning the `LoadReport` when a checkpoint was loaded."""
    spec = arch_spec(arch)
    if weights in (None, "none"):
        return replace_head(tvm.get_model(spec.name, weights=None), arch, num_classes), None
    if weights == "imagenet":
        download_imagenet_weights(arch, progress)
        imagenet = imagenet_weights(arch)
        state = imagenet.get_state_dict(progress=False)
        model = _meta_backbone(arch, num_classes)
        try:
            loaded = checkpoint_report(model, arch, state).loaded
        except CheckpointError:  # keys torchvision's own builder renames on loading (DenseNet's old names)
            loaded = []
        if not _assign_all(model, state, loaded):
            model = replace_head(tvm.get_model(spec.name, weights=imagenet, progress=False), arch, num_classes)
        return model, None
    if isinstance(weights, Checkpoint):
        state, source = weights.state, weights.source
    elif isinstance(weights, str) and weights.startswith("run:"):  # the run store resolves these
        raise ValueError(f"{weights!r}: resolve an earlier run's weights with core.store.resolve_weights first")
    else:
        path = Path(weights)
        state, source = read_state_dict(path), path.name
    model = _meta_backbone(arch, num_classes)
    report = checkpoint_report(model, arch, state, source=source)  # refuses a checkpoint of another architecture
    if _assign_all(model, state, report.loaded):
        return model, report
    model = replace_head(tvm.get_model(spec.name, weights=None), arch, num_classes)  # a partial checkpoint
    return model, load_checkpoint(model, arch, state, source=source)


def _meta_backbone(arch: str, num_classes: int) -> nn.Module:
    """`arch` built on the meta device (no memory, no random init), with a new `num_classes` head built
    for real when the size differs (`replace_head` runs outside the meta context)."""
    with torch.device("meta"):
        model = tvm.get_model(arch_spec(arch).name, weights=None)
    return replace_head(model, arch, num_classes)


def _assign_all(model: nn.Module, state: dict[str, torch.Tensor], loaded: list[str]) -> bool:
    """Give a `_meta_backbone` the tensors of `state` named in `loaded`, as they are
    (`load_state_dict(assign=True)`, cast to the model's dtype where they differ), when that leaves
    nothing on the meta device; False, and the model untouched, otherwise.

    This skips computing a random init only to overwrite it (VGG-19's is slow on a CPU).
    A partial checkpoint, whose missing tensors keep torchvision's init, takes the long way.
    """
    own = model.state_dict()
    keys = set(loaded)
    if any(t.is_meta and k not in keys for k, t in own.items()):
        return False
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in loaded}, strict=False, assign=True)
    return True


def build_model(
    arch: str,
    num_classes: int,
    weights: str | Path | Checkpoint | None = None,
    *,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """A torchvision `arch` with a fresh `num_classes` head, from the given weights source.

    `weights`: None/"none" (random init), "imagenet" (torchvision's default
    weights, downloaded with `progress` if not cached), a checkpoint path, or a
    `Checkpoint` already read (an earlier run's final weights: `core.store.resolve_weights`).
    All parameters trainable.
    """
    return prepare_model(arch, num_classes, weights, progress=progress)[0]
