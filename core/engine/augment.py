"""Augmentation of whole batches on the device, with per-sample randomness.

Random resized crop through `torchvision.ops.roi_align` with one box per sample, horizontal flip
through a per-sample mask, colour jitter through per-sample brightness / contrast / saturation
factors: no PIL work per epoch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import roi_align

JITTER = 0.4  # colour jitter strength: factors drawn from [1 - 0.4, 1 + 0.4] (torchvision's common choice)
CROP_SCALE = (0.6, 1.0)  # random resized crop: area fraction of the image
CROP_RATIO = (3 / 4, 4 / 3)  # random resized crop: aspect ratio of the box

# --------------------------------------------------------------------------- augmentation


def random_resized_crop(x: Tensor, generator: torch.Generator, scale=CROP_SCALE, ratio=CROP_RATIO) -> Tensor:
    """Per-sample random resized crop of a float batch [N, C, H, W], resized back to H x W.

    Each sample gets its own box (area fraction in `scale`, aspect ratio in
    `ratio`, log-uniform like torchvision's RandomResizedCrop) and
    `roi_align` resamples all boxes bilinearly in one call.
    """
    n, _, h, w = x.shape
    u = torch.rand(n, 4, device=x.device, generator=generator)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * (h * w)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    box_w = torch.sqrt(area * torch.exp(log_r)).clamp(max=w)
    box_h = torch.sqrt(area / torch.exp(log_r)).clamp(max=h)
    x0 = (w - box_w) * u[:, 2]
    y0 = (h - box_h) * u[:, 3]
    index = torch.arange(n, device=x.device, dtype=x.dtype)
    boxes = torch.stack([index, x0, y0, x0 + box_w, y0 + box_h], dim=1).to(x.dtype)
    return roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def color_jitter(x: Tensor, generator: torch.Generator, strength: float = JITTER) -> Tensor:
    """Per-sample brightness, contrast and saturation factors in [1-s, 1+s] on a [0, 1] batch."""
    f = 1 + strength * (2 * torch.rand(x.shape[0], 3, 1, 1, 1, device=x.device, generator=generator) - 1)
    brightness, contrast, saturation = f.unbind(1)
    x = (x * brightness).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    gray = _gray(x)
    return ((x - gray) * saturation + gray).clamp(0, 1)


def augment_batch(x: Tensor, ops: tuple[str, ...], generator: torch.Generator) -> Tensor:
    """Apply the configured augmentations (`RunConfig.augment`) to a float [0, 1] batch."""
    if "crop" in ops:
        x = random_resized_crop(x, generator)
    if "flip" in ops:
        x = random_flip(x, generator)
    if "jitter" in ops:
        x = color_jitter(x, generator)
    return x
