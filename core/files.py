"""Files written atomically, and the tensor cache under `data_dir()/.cache`.

`atomic_write` is the one way this project writes a file another reader may
open at any moment (run records, metrics, weights, dataset indexes, drafts,
cache files): a temp file beside the target, fsync, `os.replace`, fsync of
the folder. A reader sees the old file or the new one, never half a file, and
a full disk leaves no partial file behind.

Two caches live under `.cache`, both derived data that can always be rebuilt:
decoded images (`core.data.decode_images`, one uint8 tensor per file list and
geometry) and prefix features (`core.engine.features`, one tensor per split,
frozen prefix and precision). A damaged or foreign file is never trusted:
`load_tensor` returns None and the caller recomputes. A hit touches the file's
mtime, so `prune` evicts what has gone unused the longest.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

CACHE_BUDGET_BYTES = 8 << 30  # per kind of cache file (decoded images, features)


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write `data` (bytes, or a function writing into a binary file) to `path` atomically and durably.

    The folder is created when missing. Anything raised while writing leaves `path` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, data, *, default: Callable | None = None) -> None:
    """`data` as indented JSON at `path`, atomically; serialised first, so a value that cannot be
    written never touches the disk."""
    atomic_write(path, json.dumps(data, indent=1, default=default).encode("utf-8"))


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensor(path: Path, tensor: torch.Tensor, *, budget: int = CACHE_BUDGET_BYTES) -> bool:
    """Store a CPU copy of `tensor` at `path`, then prune its siblings of the same kind to `budget` bytes.

    Returns False (and stores nothing) when the tensor alone is over half the
    budget or the disk refuses the write: a cache is an optimisation,
    never a reason for a run to fail.
    """
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes > budget // 2:
        return False
    try:
        buf = io.BytesIO()
        torch.save(tensor.detach().cpu().contiguous(), buf)
        atomic_write(path, buf.getvalue())
    except OSError:
        return False
    prune(path.parent, _kind(path), budget, keep=path)
    return True


def load_tensor(path: Path, *, shape: tuple[int, ...] | None = None,
                dtype: torch.dtype | tuple[torch.dtype, ...] | None = None, finite: bool = False) -> torch.Tensor | None:
    """The tensor stored at `path` (memory-mapped), or None when it is missing, damaged or not as
    expected: another shape, a dtype not among `dtype`, or (with `finite`) a NaN or an infinity."""
    try:
        x = torch.load(path, weights_only=True, mmap=True)
    except FileNotFoundError:
        return None
    except Exception:  # a damaged cache file is rebuilt, never trusted
        return None
    if not isinstance(x, torch.Tensor) or (shape is not None and tuple(x.shape) != tuple(shape)):
        return None
    if dtype is not None and x.dtype not in (dtype if isinstance(dtype, tuple) else (dtype,)):
        return None
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return None
    try:
        os.utime(path)  # most recently used
    except OSError:
        pass
    return x


def prune(folder: Path, pattern: str, budget: int, *, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used files matching `pattern` in `folder` until they fit in `budget` bytes.

    `keep` (the file just written) is never deleted. Returns the deleted paths.
    """
    try:
        files = [(p.stat().st_mtime_ns, p.stat().st_size, p) for p in folder.glob(pattern) if p.is_file()]
    except OSError:
        return []
    total = sum(size for _, size, _ in files)
    deleted = []
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if total <= budget:
            break
        if keep is not None and path == keep:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        deleted.append(path)
    return deleted


def _kind(path: Path) -> str:
    """The glob of a cache file's kind: ``decoded-*.pt`` for ``decoded-<key>.pt``."""
    return path.name.split("-", 1)[0] + "-*" + path.suffix
