"""Images as tensors: the preprocessing a weights source expects, decoding once into a cached uint8
tensor per file list and geometry, and normalisation on the device.

Epochs and later runs never touch PIL again: decoded pixels are cached on disk (`core.files`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from core import config
from core.data.dataset import DatasetError, Progress
from core.data.images import open_image
from core.files import load_tensor, save_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DECODE_VERSION = 2  # 2: ImageNet preprocessing keeps the aspect ratio

@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, float, float]  # per-channel normalisation of [0, 1] pixels
    std: tuple[float, float, float]
    resize: tuple[int, int]  # (h, w) every image is resized to first (to cover, with `keep_aspect`) ...
    crop: tuple[int, int]  # ... then center-cropped to: the network's input size
    interpolation: str = "bilinear"  # "bilinear" | "bicubic", as the weights were trained
    keep_aspect: bool = False  # scale to cover `resize` keeping the aspect ratio (torchvision's Resize(int)), not squash


# --- transforms and decoded tensors ---------------------------------------------------------------


def preprocess_for(arch: str, weights: str, image_size: tuple[int, int]) -> Preprocess:
    """The evaluation transform that matches the starting weights, scaled to `image_size` (h, w).

    ImageNet weights: torchvision's own metadata (`get_model_weights(arch).DEFAULT.transforms()`):
    its mean/std/interpolation, and its resize/crop ratio (256/224 for most
    models) applied per side, with its semantics: the image is scaled, aspect
    ratio kept, to cover that size (for a square input, its shorter side
    becomes 256, exactly `Resize(256)`), then center-cropped; so a 448x224
    input covers 512x256 and crops 448x224. Random init, checkpoints and earlier runs ("none", a path,
    "run:<id>"): ImageNet statistics, resize straight to `image_size`, no crop.
    An architecture torchvision has no weights for falls back to the same.
    """
    h, w = (int(s) for s in image_size)
    if weights == "imagenet":
        try:
            from torchvision.models import get_model_weights

            t = get_model_weights(arch).DEFAULT.transforms()
            resize, crop = float(t.resize_size[0]), float(t.crop_size[0])
            interp = getattr(t.interpolation, "value", str(t.interpolation)).lower()
            return Preprocess(
                mean=tuple(float(m) for m in t.mean),
                std=tuple(float(s) for s in t.std),
                resize=(round(h * resize / crop), round(w * resize / crop)),
                crop=(h, w),
                interpolation="bicubic" if interp == "bicubic" else "bilinear",
                keep_aspect=True,
            )
        except (ValueError, KeyError, AttributeError, TypeError, IndexError):
            pass
    return Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(h, w), crop=(h, w))


def decode_key(paths: Sequence[Path], pre: Preprocess) -> str:
    """Identity of a decoded image tensor: the files (path, size, mtime) and the geometry of `pre`."""
    h = hashlib.sha256()
    h.update(json.dumps([DECODE_VERSION, list(pre.resize), list(pre.crop), pre.interpolation, pre.keep_aspect]).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            raise DatasetError(f"{Path(p).name}: the file is gone or unreadable; reload the dataset.") from None
    return h.hexdigest()[:32]


def decode_one(path: Path, pre: Preprocess) -> torch.Tensor:
    """One image file as a uint8 [3, crop_h, crop_w] tensor: resized to `pre.resize`, then center-cropped."""
    try:
        img = open_image(path, draft=(pre.resize[1], pre.resize[0]))
    except DatasetError as exc:
        raise DatasetError(f"{Path(path).name}: {exc}") from None
    return image_tensor(img, pre)


def image_tensor(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """An open image as a uint8 [3, crop_h, crop_w] tensor: RGB, resized to `pre.resize`, center-cropped.

    The one place the evaluation geometry is applied, for the decoded cache and for inference alike.
    """
    # The functional API that torchvision's own `weights.transforms()` (ImageClassification) calls, so
    # that ImageNet inputs match it pixel for pixel (v2's uint8 bicubic kernel rounds differently).
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    x = F.pil_to_tensor(img.convert("RGB"))
    mode = InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else InterpolationMode.BILINEAR
    size = _resized_size(tuple(x.shape[-2:]), pre)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.resize(x, list(size), interpolation=mode, antialias=True)
    if tuple(pre.crop) != tuple(x.shape[-2:]):
        x = F.center_crop(x, list(pre.crop))
    return x


def _resized_size(image_hw: tuple[int, int], pre: Preprocess) -> tuple[int, int]:
    """The (h, w) an image of `image_hw` is resized to before the crop.

    Squashed to `pre.resize`, or with `keep_aspect` scaled to cover it: for a square `resize` the
    shorter side becomes its side and the longer one is computed as torchvision's `Resize(int)` does.
    """
    if not pre.keep_aspect:
        return pre.resize
    (h, w), (rh, rw) = image_hw, pre.resize
    if rh == rw:
        short, long = (h, w) if h <= w else (w, h)
        other = int(rh * long / short)
        return (rh, other) if h <= w else (other, rh)
    scale = max(rh / h, rw / w)
    return max(rh, round(h * scale)), max(rw, round(w * scale))


def decode_images(
    paths: Sequence[Path],
    pre: Preprocess,
    *,
    key: str | None = None,
    data_dir: Path | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Decode, resize and crop every image once into a uint8 tensor [N, 3, crop_h, crop_w].

    The result is cached in data_dir/".cache" under a hash of (paths, sizes,
    mtimes, resize, crop) (`core.files`: written atomically, least recently
    used evicted first); a later call with the same files and sizes loads the
    tensor without opening a single image. A file that no longer decodes
    raises `DatasetError` naming it. `key` is `decode_key(paths, pre)` when
    the caller keys more on these images (the feature cache): one stat per
    file, and one identity for all of it.
    """
    data_dir = Path(data_dir) if data_dir is not None else config.data_dir()
    cache = data_dir / ".cache" / f"decoded-{key or decode_key(paths, pre)}.pt"
    x = load_tensor(cache, shape=(len(paths), 3, *pre.crop), dtype=torch.uint8)
    if x is not None:
        return x
    out = torch.empty((len(paths), 3, *pre.crop), dtype=torch.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_one(p, pre)
        if progress and ((i + 1) % 500 == 0 or i + 1 == len(paths)):
            progress(i + 1, len(paths), f"Decoding images: {i + 1}/{len(paths)}")
    save_tensor(cache, out)  # no cache on a read-only or full disk: slower, still correct
    return out


def normalize(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """[N, 3, H, W] uint8 (0-255) or float (0-1) pixels -> normalised float, on the batch's device.

    uint8 becomes float32; a floating batch keeps its dtype (e.g. bf16).
    """
    x = batch.float().div_(255) if batch.dtype == torch.uint8 else batch
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std
