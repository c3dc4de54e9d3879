"""Classify images with a finished run, or with the original ImageNet model.

`load_run_model(record)` rebuilds a run's network exactly as it ended: the
architecture with a fresh head (`core.models.build_model`), then the run's
full final state dict (`core.store.run_state_dict`: its saved tensors on top
of its own starting weights), loaded with `require_head=True` so a head of the
wrong size is refused, and every key must be present. `load_imagenet_model(arch)`
gives the stock torchvision model with its 1000 ImageNet categories
(``weights.meta["categories"]``); it never downloads: when the weights are not
in the local cache it raises `WeightsUnavailableError` (the page offers an
explicit download button, `core.models.download_imagenet_weights`).

`classify(model, images, pre, device, precision)` applies the evaluation
transform the model was trained with (`core.data.preprocess_for` of the run's
arch, weights and image size: resize, centre crop, `core.data.normalize`) and
returns softmax probabilities, under `torch.inference_mode()` in eval mode.

Device policy (`inference_device`)
    Inference must never block or disturb a run that is training. The job
    manager trains one run at a time on its device. When that device is a GPU
    and the manager has a run queued or training, inference runs on the CPU
    (a few images cost milliseconds there, and the GPU's memory and compute
    stay the run's); otherwise it runs on the device the run trained on, when
    this machine has it, else on the CPU. On a CPU-only machine inference
    shares the CPU with a training run: it does not wait for it, and a handful
    of images at a time is a small share. The page says which device was used
    and why. Precision follows the run: bf16 autocast when the run trained in
    bf16 and inference is on CUDA, fp32 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.data import Preprocess, image_tensor, normalize, preprocess_for
from core.models import (
    CheckpointError,
    WeightsUnavailableError,
    arch_spec,
    build_model,
    imagenet_available,
    imagenet_weights,
    load_checkpoint,
)
from core.store import FINISHED, WEIGHTS_FILE, RunRecord, RunStore, run_state_dict

BATCH = 64  # images per forward pass


@dataclass
class Classifier:
    """A network ready for inference, with what is needed to feed it and read its output."""

    model: nn.Module  # in eval mode, on `device`
    classes: list[str]  # output index -> class name
    pre: Preprocess  # the evaluation transform it was trained with
    device: torch.device
    precision: str  # "fp32" | "bf16" (autocast on CUDA only)
    label: str  # what the UI calls it: the run's name or "ImageNet ResNet-18"


# --------------------------------------------------------------------------- device policy


def inference_device(run_device: str | None, manager_device: torch.device | None, manager_busy: bool) -> tuple[torch.device, str]:
    """Where to run inference, and why (a sentence for the UI); see the module docstring."""
    wanted = torch.device(run_device or "cpu")
    if wanted.type != "cpu" and manager_busy and manager_device is not None and manager_device.type == wanted.type:
        return torch.device("cpu"), f"on the CPU: a run is training on {manager_device.type.upper()}, which stays its own"
    if wanted.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu"), "on the CPU: this machine has no CUDA GPU"
    if wanted.type == "mps" and not torch.backends.mps.is_available():
        return torch.device("cpu"), "on the CPU: this machine has no MPS device"
    if wanted.type == "cpu":
        return wanted, "on the CPU, where the run trained" + (" (shared with the run training now)" if manager_busy else "")
    return wanted, f"on {wanted.type.upper()}, the device the run trained on"


def _precision(precision: str, device: torch.device) -> str:
    return "bf16" if precision == "bf16" and device.type == "cuda" else "fp32"


# --------------------------------------------------------------------------- loading


def run_classes(record: RunRecord) -> list[str]:
    """The run's class names (index = output unit), from its summary or start info."""
    classes = record.summary.classes or (record.metrics.get("info") or {}).get("classes")
    if not classes:
        classes = [f"class {i}" for i in range(record.config.num_classes)]
    return [str(c) for c in classes]


def weights_mtime(record: RunRecord) -> float:
    """Modification time of the run's weights file (0 if absent): part of the cache key."""
    try:
        return (record.path / WEIGHTS_FILE).stat().st_mtime
    except OSError:
        return 0.0


def load_run_model(record: RunRecord, device: torch.device | str = "cpu", precision: str = "fp32",
                   *, runs_dir: Path | None = None) -> Classifier:
    """The finished run's network with its final weights, in eval mode on `device`.

    Raises `CheckpointError` (message for the user) when the run did not
    finish, saved no weights, or its weights do not fit its configuration;
    `WeightsUnavailableError` when it started from ImageNet weights that are
    not on this machine.
    """
    config = record.config
    if record.status != FINISHED:
        raise CheckpointError(f"Run {record.name!r} has not finished (status: {record.status}); only finished runs classify.")
    if not record.has_weights:
        raise CheckpointError(f"Run {record.name!r} has no saved weights.")
    runs_dir = Path(runs_dir) if runs_dir is not None else record.path.parent
    state, source = run_state_dict(record.id, config.arch, runs_dir=runs_dir)
    with torch.device("meta"):  # the structure only: every tensor comes from `state` (no random init to throw away)
        model = build_model(config.arch, config.num_classes, None)
    report = load_checkpoint(model, config.arch, state, source=source, require_head=True, assign=True)
    left = report.missing or [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"The weights of run {record.name!r} lack {len(left)} tensors (e.g. {left[0]}).")
    classes = run_classes(record)
    if len(classes) != config.num_classes:
        raise CheckpointError(f"Run {record.name!r} lists {len(classes)} classes but its head has {config.num_classes}.")
    device = torch.device(device)
    model.eval().to(device)
    pre = preprocess_for(config.arch, config.weights, config.image_size)
    return Classifier(model, classes, pre, device, _precision(precision, device), record.name)


def load_imagenet_model(arch: str, device: torch.device | str = "cpu") -> Classifier:
    """torchvision's `arch` with its ImageNet weights and 1000 category names; never downloads.

    `WeightsUnavailableError` when the weights are not in the local cache.
    """
    from torchvision import models as tvm

    spec = arch_spec(arch)
    if not imagenet_available(arch):
        raise WeightsUnavailableError(
            f"The ImageNet weights of {spec.label} are not on this machine. Download them with the button "
            "(needs network access), or classify with your runs only."
        )
    weights = imagenet_weights(arch)
    model = tvm.get_model(spec.name, weights=weights, progress=False)
    size = weights.transforms().crop_size[0]
    device = torch.device(device)
    model.eval().to(device)
    pre = preprocess_for(arch, "imagenet", (size, size))
    return Classifier(model, list(weights.meta["categories"]), pre, device, "fp32", f"ImageNet {spec.label}")


# --------------------------------------------------------------------------- classifying


def logits_of(model: nn.Module, x: torch.Tensor, pre: Preprocess, device: torch.device | str, precision: str = "fp32") -> torch.Tensor:
    """Logits (float32, on the CPU) for a uint8 batch [N, 3, H, W], in batches of `BATCH`."""
    device = torch.device(device)
    bf16 = _precision(precision, device) == "bf16"
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), BATCH):
            batch = normalize(x[start:start + BATCH].to(device), pre)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out.append(model(batch).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def classify(model: nn.Module, images: Sequence[Image.Image], pre: Preprocess, device: torch.device | str,
             precision: str = "fp32") -> torch.Tensor:
    """Softmax probabilities [len(images), num_classes] (float32, CPU; each row sums to 1)."""
    if not images:
        raise ValueError("no images to classify")
    x = torch.stack([image_tensor(img, pre) for img in images])
    return logits_of(model, x, pre, device, precision).softmax(1)


def top_k(probs: torch.Tensor | Sequence[float], classes: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    """The `k` most likely (class, probability) pairs of one image, most likely first."""
    p = torch.as_tensor(probs, dtype=torch.float32).flatten()
    if len(p) != len(classes):
        raise ValueError(f"{len(p)} probabilities for {len(classes)} classes")
    values, index = p.topk(min(k, len(p)))
    return [(str(classes[i]), float(v)) for v, i in zip(values.tolist(), index.tolist())]


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample (no reduction)."""
    return F.cross_entropy(logits, labels, reduction="none")


def finished_runs(store: RunStore) -> list[RunRecord]:
    """Runs that can classify: finished, with saved weights, newest first."""
    return [r for r in store.list() if r.status == FINISHED and r.has_weights]
