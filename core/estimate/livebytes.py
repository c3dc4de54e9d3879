"""Tensor memory counted op by op: the bytes of storages alive at once, and their peak.

On a GPU, `torch.cuda.max_memory_allocated` answers "how much tensor memory
did this need at most"; on the CPU, and on the ``meta`` device where nothing
is allocated at all, there is no allocator to ask (the process's resident
size mixes in the interpreter, libraries and freed-but-kept pages).
`LiveBytes` answers it there: a `TorchDispatchMode` that sees every tensor an
op returns, counts its storage once while the storage is alive (a weakref
finalizer takes it off when the last view dies) and keeps the running peak.

It counts what tensors hold, as the CUDA caching allocator's "allocated"
figure does, and nothing of an op's private scratch space (cuDNN workspaces
and the like are not tensors the op returns). Storages that existed before
the mode was entered are not seen unless passed to `track`.

Used by `core.estimate.profile` (the working set of each layer, on the meta device) and
by the tests that hold the memory estimate against a real run on the CPU.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages (optionally of one device type): `current` and `peak`.

    >>> with LiveBytes() as mem:
    ...     y = torch.ones(1024).mul(2)   # two storages of 4 KiB, the first one freed right away
    >>> mem.peak
    8192
    """

    def __init__(self, device_type: str | None = None) -> None:
        super().__init__()
        self.device_type = device_type
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}  # id(storage) -> bytes counted for it

    def track(self, *tensors) -> None:
        """Count tensors (nested in lists, dicts, ...) created before the mode was entered."""
        for t in tree_leaves(tensors):
            self._add(t)

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # A view or an in-place op returns its input's storage: nothing new unless that storage is counted
        # already (then an op with out= or resize_ may have grown it).
        inputs = {id(s) for s in map(_storage, tree_leaves((args, kwargs))) if s is not None}
        for storage in map(_storage, tree_leaves(out)):
            if storage is not None and (id(storage) in self._live or id(storage) not in inputs):
                self._count(storage)
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        if self.device_type is not None and storage.device.type != self.device_type:
            return
        key, nbytes = id(storage), storage.nbytes()
        if key in self._live:
            self.current += nbytes - self._live[key]
            self._live[key] = nbytes
        else:
            self._live[key] = nbytes
            self.current += nbytes
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def _add(self, t: torch.Tensor) -> None:
        storage = _storage(t)
        if storage is not None:
            self._count(storage)


def _storage(t) -> torch.UntypedStorage | None:
    """The storage behind a tensor (one Python object per storage), or None for anything else."""
    if not isinstance(t, torch.Tensor):
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return None
