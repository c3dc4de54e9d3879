"""torchvision's ImageNet weights: where they are cached, and downloading them with progress.

Offline the download fails with `WeightsUnavailableError`, whose message offers the ways forward.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from core.models.registry import arch_spec, imagenet_weights


class WeightsUnavailableError(ValueError):
    """Pretrained weights could not be fetched (typically: no network)."""


# --------------------------------------------------------------------------- weights


def imagenet_cache_path(arch: str) -> Path:
    """Where torch's hub cache keeps (or will keep) the ImageNet weights file of `arch`."""
    url = imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_available(arch: str) -> bool:
    """True when the ImageNet weights are already in the local cache (no download needed)."""
    return imagenet_cache_path(arch).is_file()


ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total or 0 if unknown)


def download_imagenet_weights(arch: str, progress: ProgressFn | None = None, timeout: float = 20.0) -> Path:
    """Fetch `arch`'s ImageNet weights into torch's hub cache, reporting progress.

    Does nothing when the file is already cached. The download goes to a
    temporary file that is checked against the hash prefix in torchvision's file
    name and then renamed, so an interrupted download never leaves a broken
    cache entry. Offline, raises `WeightsUnavailableError` with a way forward.
    """
    target = imagenet_cache_path(arch)
    if target.is_file():
        return target
    url = imagenet_weights(arch).url
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".partial")
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"Could not download the ImageNet weights for {arch_spec(arch).label} ({exc}). "
            "Without network access, choose random initialisation ('none'), a local checkpoint "
            "file, or the weights of an earlier run (e.g. a backbone pretrained on the demo-source dataset)."
        ) from None
    # torchvision file names end in the first hex digits of the file's SHA-256 (torch.hub's rule).
    expected = re.search(r"-([a-f0-9]+)\.", target.name)
    if expected and not sha.hexdigest().startswith(expected.group(1)):
        tmp.unlink(missing_ok=True)
        raise WeightsUnavailableError(f"The download of {url} is corrupt (hash mismatch); try again.")
    os.replace(tmp, target)
    return target
