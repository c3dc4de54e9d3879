"""The feature cache: the frozen prefix of a forward pass, computed once per image and kept.

`core.models.forward_chain(model, arch)` writes each catalog model as the sequence of named steps its
`forward` runs (VGG: ``features.0`` ... ``avgpool``, ``flatten``, ``classifier.0`` ...; ResNet:
``conv1`` ... ``layer4.1``, ``avgpool``, ``flatten``, ``fc``). The longest prefix of steps that holds
no trainable parameter and behaves the same in train and eval mode is a fixed function of the image
(`core.freezing.frozen_prefix`). Without augmentation the engine computes its output once per image
and trains only the remaining steps on those features (`core.estimate.plan_features` decides).

A run may also store the outputs of shorter prefixes it passes on the way (`config.share_features`):
a sweep's members, whose frozen prefixes end at different stages, then share one pass over the data.

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

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from core.data import Preprocess
from core.engine.events import RunCancelled
from core.engine.loop import Loop, Split
from core.files import load_tensor, save_tensor

FEATURES_VERSION = 1  # bump when what a stored feature tensor means changes


def prefix_fingerprint(steps: list[tuple[str, nn.Module]]) -> str:
    """A digest of the prefix's structure and of the exact bits of its parameters and buffers
    (hashing is far cheaper than running the prefix)."""
    h = hashlib.blake2b(digest_size=16)
    for name, step in steps:
        h.update(f"{name}\0{step!r}\0".encode())
        for key, t in step.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()



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


def load_features(cache_dir: Path, key: str, shape: tuple[int, ...], amp_dtype: torch.dtype | None = None) -> Tensor | None:
    """Stored features of that key and shape (memory-mapped on the CPU), or None: also when their dtype
    is neither fp32 nor the run's autocast dtype, or they hold a NaN or an infinity (then recomputed)."""
    dtypes = (torch.float32,) + ((amp_dtype,) if amp_dtype is not None else ())
    return load_tensor(feature_path(cache_dir, key), shape=shape, dtype=dtypes, finite=True)


def save_features(cache_dir: Path, key: str, features: Tensor) -> bool:
    """Store features for later runs; False when they are too large or the disk refuses."""
    return save_tensor(feature_path(cache_dir, key), features)


def compute_features(prefix: list[tuple[str, nn.Module]], split: Split, loop: Loop,
                     keep: Sequence[int] = ()) -> tuple[Split, dict[int, Tensor]]:
    """The prefix's output for every image of a split, in the run's precision, kept on the device;
    and, for each length k in `keep`, the output of the first k steps of the same pass (on the CPU).

    Runs under `no_grad` rather than `inference_mode`: inference tensors could
    not be saved for the backward pass of the trainable tail that reads them.
    The prefix's modules are in eval mode here (and behave the same in training
    mode, which is what made them a prefix).
    """
    out, kept = None, {k: [] for k in keep}
    with torch.no_grad():
        for idx, real in loop.no_grad_batches(len(split)):
            if loop.monitor.should_stop():
                raise RunCancelled("stopped while computing the feature cache")
            f = loop.inputs(split, idx, features=False, train=False)
            with loop.autocast():
                for length, (_, step) in enumerate(prefix, start=1):
                    f = step(f)
                    if length in kept:
                        kept[length].append(f[:real].cpu())
            f = f[:real]
            if out is None:
                out = torch.empty((len(split), *f.shape[1:]), dtype=f.dtype, device=f.device)
            start = int(idx[0])
            out[start:start + real] = f
    return Split(out.contiguous(), split.y), {k: torch.cat(parts) for k, parts in kept.items()}


def prefix_features(
    prefix: list[tuple[str, nn.Module]], split: Split, loop: Loop, *, cache_dir: Path, key: str,
    shape: tuple[int, ...], share: dict[int, str] | None = None,
) -> tuple[Split, str]:
    """One split's prefix features (one image's are of `shape`) and where they came from: "disk"
    (an earlier run stored them under `key`) or "computed" (then stored under `key` for later runs).

    `share` ({length: key}): shorter prefixes whose outputs the same pass stores too, for other runs
    (a sweep's members: one pass over the data for every boundary they need).
    """
    stored = load_features(cache_dir, key, (len(split), *shape), loop.amp_dtype)
    if stored is not None:
        return Split(stored.to(loop.feeder.device), split.y), "disk"
    share = {k: v for k, v in (share or {}).items() if not feature_path(cache_dir, v).exists()}
    features, kept = compute_features(prefix, split, loop, keep=list(share))
    save_features(cache_dir, key, features.x)
    for length, tensor in kept.items():
        save_features(cache_dir, share[length], tensor)
    return features, "computed"
