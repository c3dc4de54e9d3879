"""The feature cache: the frozen prefix of a forward pass, computed once per image and kept.

`forward_chain(model, arch)` writes each catalog model as the sequence of
named steps its `forward` runs (VGG: ``features.0`` ... ``avgpool``,
``flatten``, ``classifier.0`` ...; ResNet: ``conv1`` ... ``layer4.1``,
``avgpool``, ``flatten``, ``fc``). The longest prefix of steps that holds no
trainable parameter and behaves the same in train and eval mode (no Dropout /
StochasticDepth, no BatchNorm that would update its statistics) is a fixed
function of the image (`frozen_prefix`). Without augmentation the engine
computes its output once per image and trains only the remaining steps on
those features (`plan_feature_cache`).

The features are also kept on disk (`load_features` / `save_features`, under
``data_dir()/.cache``), so a later run that shares the prefix and the data
(another head, learning rate, optimizer or number of epochs; for VGG the
classifier and FC1+FC2 presets share the whole convolutional prefix) skips
the prefix entirely. The key (`feature_key`) covers everything the features
depend on: the image files and their geometry and normalisation, the
prefix's structure and the exact bits of its parameters and buffers
(`prefix_fingerprint`), the precision, the device type and the torch
version. Change any of them and the key changes: nothing is invalidated by
hand, and a stale entry is simply never read again (and pruned when the cache
is over its budget).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from core.config import RunConfig
from core.data import Preprocess
from core.files import load_tensor, save_tensor
from core.models import arch_spec, build_skeleton

FEATURES_VERSION = 1  # bump when what a stored feature tensor means changes

# --------------------------------------------------------------------------- forward chain


class _Step(nn.Module):
    """A functional step of a model's `forward` (e.g. DenseNet's final relu) as a module."""

    def __init__(self, fn: Callable[[Tensor], Tensor], label: str) -> None:
        super().__init__()
        self.fn, self.label = fn, label

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.label


def _flatten() -> _Step:
    return _Step(lambda x: torch.flatten(x, 1), "torch.flatten(x, 1)")


def _expand(module: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """A module as its named children when it is a plain `nn.Sequential`, recursively."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module):
        return [step for name, child in module.named_children() for step in _expand(child, f"{path}.{name}")]
    return [(path, module)]


def forward_chain(model: nn.Module, arch: str) -> list[tuple[str, nn.Module]]:
    """`model`'s forward pass as a list of (name, step); running them in order is `model(x)`.

    Names are the torchvision module paths; plain `nn.Sequential` containers
    are opened (``features.0``, ``layer3.1``, ``classifier.6``), other blocks
    (a ResNet BasicBlock, a DenseNet dense block) stay one step. Functional
    parts of a `forward` become small steps named after what they do
    (``flatten``, DenseNet's ``relu`` and ``avgpool``).
    """
    family = arch_spec(arch).family
    if family == "resnet":
        top = [(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")]
        tail = [("flatten", _flatten()), ("fc", model.fc)]
    elif family in ("vgg", "alexnet", "mobilenet_v3", "efficientnet"):
        top = [("features", model.features), ("avgpool", model.avgpool)]
        tail = [("flatten", _flatten()), ("classifier", model.classifier)]
    elif family == "convnext":  # its classifier flattens (LayerNorm2d, Flatten, Linear)
        top = [("features", model.features), ("avgpool", model.avgpool)]
        tail = [("classifier", model.classifier)]
    elif family == "densenet":
        top = [("features", model.features)]
        tail = [
            ("relu", _Step(F.relu, "F.relu")),
            ("avgpool", _Step(lambda x: F.adaptive_avg_pool2d(x, (1, 1)), "F.adaptive_avg_pool2d(x, (1, 1))")),
            ("flatten", _flatten()),
            ("classifier", model.classifier),
        ]
    else:  # a new family in the catalog must say how its forward runs
        raise NotImplementedError(f"no forward chain for the {family} family")
    return [step for name, module in top + tail for step in _expand(module, name)]


def run_chain(steps: list[tuple[str, nn.Module]], x: Tensor) -> Tensor:
    for _, step in steps:
        x = step(x)
    return x


def _varies_in_training(module: nn.Module) -> bool:
    """Does the module (in its current mode) behave differently from eval mode?"""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.training  # would normalise with batch statistics and update its running ones
    if isinstance(module, (nn.modules.dropout._DropoutNd, StochasticDepth)):
        return module.training and module.p > 0
    return False


def frozen_prefix(steps: list[tuple[str, nn.Module]]) -> tuple[int, str | None]:
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


@dataclass
class FeaturePlan:
    """Whether this phase of the run trains on cached prefix features, and on which prefix."""

    used: bool
    prefix: str | None  # name of the last cached step
    reason: str | None  # why not, when not used
    length: int = 0  # number of cached steps
    build_s: float = 0.0  # seconds spent computing (or loading) the features
    source: str | None = None  # "computed" or "disk" (stored by an earlier run with the same prefix and data)
    shape: tuple[int, ...] = ()  # one image's features

    def to_dict(self) -> dict:
        return {"used": self.used, "prefix": self.prefix, "reason": self.reason, "build_s": round(self.build_s, 3),
                "source": self.source}


def plan_feature_cache(steps, config: RunConfig) -> FeaturePlan:
    """Decide the cache for the model's current frozen set and modes (see `frozen_prefix`)."""
    n, ends = frozen_prefix(steps)
    prefix = steps[n - 1][0] if n else None
    if not config.feature_cache:
        return FeaturePlan(False, prefix, "switched off for this run", n)
    if n == 0:
        return FeaturePlan(False, None, f"no frozen prefix: the first step, {ends}", 0)
    if config.augment:
        return FeaturePlan(False, prefix, f"augmentation ({', '.join(config.augment)}) changes every epoch's input", n)
    return FeaturePlan(True, prefix, None, n)


CPU_FEATURE_BUDGET = 2 << 30  # bytes of cached features on the CPU, at most


def feature_budget(device: torch.device) -> int:
    """Bytes the cached features of a run may take: 40% of the free GPU memory; on the CPU an eighth of
    the physical memory, at most `CPU_FEATURE_BUDGET`."""
    if device.type == "cuda":
        return int(0.4 * torch.cuda.mem_get_info(device)[0])
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = 8 << 30
    return min(CPU_FEATURE_BUDGET, physical // 8)


def plan_features(steps, config: RunConfig, *, images: int, elem_bytes: int, budget: int) -> FeaturePlan:
    """The feature cache of one phase of a run: `plan_feature_cache`, then the shape of one image's
    features and the check that those of all `images` fit in `budget` bytes at `elem_bytes` per value.

    The engine and the memory estimate (`core.memory`) both decide through here, so the estimate
    plans the cache the run will use.
    """
    plan = plan_feature_cache(steps, config)
    if not plan.used:
        return plan
    plan.shape = feature_shape(config.arch, config.num_classes, config.image_size, plan.length)
    need = math.prod(plan.shape) * elem_bytes * images
    if need > budget:
        return FeaturePlan(False, plan.prefix, f"the features up to {plan.prefix} would take "
                           f"{need / 2**20:.0f} MiB (budget {budget / 2**20:.0f} MiB)", plan.length)
    return plan


# --------------------------------------------------------------------------- features on disk


def prefix_fingerprint(steps: list[tuple[str, nn.Module]]) -> str:
    """A digest of the prefix's structure and of the exact bits of its parameters and buffers.

    Hashes about 1 GB/s on one CPU core (ResNet-50 up to ``layer4``: 0.1 s;
    VGG-19's ``features``: 0.08 s), far less than running the prefix.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, step in steps:
        h.update(f"{name}\0{step!r}\0".encode())
        for key, t in step.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def feature_shape(arch: str, num_classes: int, image_size: tuple[int, int], length: int) -> tuple[int, ...]:
    """Shape of one image's features after the first `length` steps of the forward chain.

    A pass on the meta device: no memory, no kernels (a real one-image pass
    would pay for first-call kernel setup, or cuDNN autotuning, of a shape
    that is never used again). Still 10-350 ms of Python for a catalog model,
    so the answer (a pure function of the arguments) is kept.
    """
    skeleton = build_skeleton(arch, num_classes).eval()
    with torch.no_grad():
        out = run_chain(forward_chain(skeleton, arch)[:length], torch.empty(1, 3, *image_size, device="meta"))
    return tuple(out.shape[1:])


def feature_key(images_key: str, pre: Preprocess, fingerprint: str, amp_dtype: torch.dtype | None,
                device: torch.device) -> str:
    """The name of one split's stored features: see the module docstring for what it covers.

    `images_key` identifies the split's decoded images (`core.data.decode_key`),
    `fingerprint` the prefix (`prefix_fingerprint`); `amp_dtype` is the run's
    autocast dtype (None for fp32), `device` where the features are computed.
    """
    parts = [FEATURES_VERSION, images_key, list(pre.mean), list(pre.std), fingerprint, str(amp_dtype), device.type,
             torch.__version__]
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def feature_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"features-{key}.pt"


def load_features(cache_dir: Path, key: str, shape: tuple[int, ...]) -> Tensor | None:
    """Stored features of that key and shape (memory-mapped on the CPU), or None."""
    return load_tensor(feature_path(cache_dir, key), shape=shape)


def save_features(cache_dir: Path, key: str, features: Tensor) -> bool:
    """Store features for later runs; False when they are too large or the disk refuses."""
    return save_tensor(feature_path(cache_dir, key), features)
