"""State-dict checkpoints: read without running code, checked tensor by tensor, reported key by key.

Pickles are read with ``torch.load(weights_only=True)``; every tensor becomes a dense, contiguous,
finite copy of its own. `checkpoint_report` decides what loads the ``strict=False`` way and refuses a
checkpoint of another architecture or with a head of the wrong size (`CheckpointError`).
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.files import atomic_write
from core.models.registry import arch_spec, get_module


@dataclass(frozen=True)
class Checkpoint:
    """A state dict already read and checked, and what to call it in reports ("run baseline", a file name)."""

    state: dict[str, torch.Tensor]
    source: str


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is shown to the user as is."""


@dataclass
class LoadReport:
    """What a `strict=False` load did, key by key."""

    source: str
    loaded: list[str] = field(default_factory=list)  # keys copied into the model
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model does not have
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    # (key, checkpoint shape, model shape): skipped, the model keeps its own values

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched"
        )

    def status_of(self, key: str) -> str:
        """'loaded' / 'missing' / 'mismatched' / '' for one state-dict key of the model."""
        if key in self._loaded_set:
            return "loaded"
        if key in self._mismatched_set:
            return "mismatched"
        if key in self._missing_set:
            return "missing"
        return ""

    def __post_init__(self) -> None:
        self._loaded_set = set(self.loaded)
        self._missing_set = set(self.missing)
        self._mismatched_set = {k for k, _, _ in self.mismatched}

    @classmethod
    def from_dict(cls, d: dict) -> LoadReport:
        return cls(d["source"], d["loaded"], d["missing"], d["unexpected"],
                   [(k, tuple(a), tuple(b)) for k, a, b in d["mismatched"]])

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": self.loaded,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
        }


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
MAX_CHECKPOINT_BYTES = 4 * 1024**3  # VGG-19 with Adam state is under 2 GB


def check_checkpoint_path(path: Path | str) -> None:
    """A checkpoint path typed by a user is a regular file of sane size, else `CheckpointError`.

    Only a `stat`: cheap enough to refuse a run before it is created rather
    than fail it when it starts. A folder, a device such as /dev/zero (read
    forever) or a FIFO (blocks forever) is refused before opening it.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise CheckpointError(f"No checkpoint file at {path} ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} is not a checkpoint file (it is a folder or a special file).")
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"The checkpoint {path} is {info.st_size / 1024**3:.1f} GB; the limit is {MAX_CHECKPOINT_BYTES / 1024**3:.0f} GB."
        )


def _read_checkpoint_file(path: Path) -> bytes:
    """The bytes of a checkpoint path typed by a user (`check_checkpoint_path` first), or `CheckpointError`."""
    check_checkpoint_path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"Cannot read the checkpoint {path}: {exc.strerror or exc}.") from None


def load_error_reason(exc: Exception) -> str:
    """What a refused `torch.load(weights_only=True)` met, in a few words (torch's own text advises unsafe loading)."""
    text = str(exc)
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return f"it refers to {found.group(1)}, which weights_only loading refuses: loading it could run code"
    first = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()
    return f"{type(exc).__name__}: {first[0][:200]}" if first else type(exc).__name__


def read_state_dict(source: Path | str | bytes) -> dict[str, torch.Tensor]:
    """Read a state dict from a file path or uploaded bytes without running any code.

    Accepts ``torch.save`` files (read with ``weights_only=True``: a pickle that
    would execute code is refused) and safetensors files, a state dict wrapped in
    a training checkpoint (``{"state_dict": ...}``, ``{"model": ...}``), and the
    prefixes of common training wrappers (`strip_wrapper_prefixes`). Every tensor
    comes back as a dense, finite copy of its own (`owned_tensors`). Raises `CheckpointError`.
    """
    data = _read_checkpoint_file(Path(source)) if isinstance(source, (str, Path)) else bytes(source)
    name = str(source) if isinstance(source, (str, Path)) else "upload"
    if not data:
        raise CheckpointError(f"The checkpoint {name} is empty.")
    if data[:2] == b"PK" or data[:1] == b"\x80":  # torch.save zip archive or legacy pickle
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError, ... : never run what's inside
            raise CheckpointError(
                f"The checkpoint {name} could not be read safely: it is not a plain state dict "
                f"of tensors ({load_error_reason(exc)}). "
                "Save it with torch.save(model.state_dict(), path) or as safetensors."
            ) from None
    else:
        try:
            from safetensors.torch import load as load_safetensors

            obj = load_safetensors(data)
        except Exception:
            raise CheckpointError(
                f"The file {name} is neither a PyTorch checkpoint (torch.save) nor a safetensors file."
            ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"The checkpoint {name} does not hold a state dict (a mapping of names to tensors).")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"The checkpoint {name} holds no tensors.")
    if odd := next((k for k in tensors if not isinstance(k, str)), None):
        raise CheckpointError(
            f"The checkpoint {name} is not a state dict: the key {odd!r} is not a parameter name."
        )
    return owned_tensors(strip_wrapper_prefixes(tensors), name)


# Prefixes that training wrappers put before every parameter name: DataParallel / DDP and
# torch.optim.swa_utils.AveragedModel ("module."), torch.compile ("_orig_mod."), a LightningModule
# holding the network as `self.model` ("model.") or `self.net` ("net.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
_WRAPPER_EXTRA_KEYS = ("n_averaged",)  # AveragedModel's counter, beside its "module." tensors


def strip_wrapper_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with the wrappers' prefixes removed, as often as they are nested
    (``_orig_mod.module.fc.weight`` -> ``fc.weight``); AveragedModel's ``n_averaged`` is dropped.

    A prefix is removed only when every key carries it, so a model's own module names are kept.
    """
    tensors = {k: v for k, v in tensors.items() if k not in _WRAPPER_EXTRA_KEYS} or tensors
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in tensors)), None):
        tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    return tensors


def owned_tensors(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Each tensor of an untrusted state dict as a dense, contiguous, finite CPU copy of its own,
    or `CheckpointError` naming the first tensor that cannot be one.

    A file can hold tensors that are legal to load but unsafe to train: a view with stride 0 or
    overlapping strides (``torch.zeros(1).expand(4, 512)``) becomes, once assigned, a parameter whose
    every element shares memory, and a fused optimizer writing through it corrupts the heap; sparse,
    quantised and meta tensors are not weights a torchvision model holds; NaN or infinity would make
    a run "finish" at chance accuracy. Copies also keep the file's storage from being shared by the model.
    """
    owned = {}
    for key, t in tensors.items():
        problem = _tensor_problem(t)
        if problem:
            raise CheckpointError(f"The checkpoint {source} cannot be used: the tensor {key!r} {problem}.")
        owned[key] = torch.empty(t.shape, dtype=t.dtype).copy_(t)  # dense, contiguous, owned
    return owned


def _tensor_problem(t: torch.Tensor) -> str | None:
    """Why `t` cannot be a model weight, or None."""
    if t.is_meta:
        return "has no data (meta tensor)"
    if t.layout != torch.strided:
        return f"is not dense ({str(t.layout).removeprefix('torch.')})"
    if t.is_quantized:
        return "is quantised"
    if t.is_complex():
        return f"has a complex dtype ({str(t.dtype).removeprefix('torch.')})"
    if _overlaps(t):
        return f"is a view whose elements share memory (shape {tuple(t.shape)}, strides {t.stride()})"
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        return f"holds {bad:,} NaN or infinite values"
    return None


def _overlaps(t: torch.Tensor) -> bool:
    """True unless each dimension's stride steps past everything the smaller strides reach
    (the sufficient test for a non-overlapping layout; stride 0 over a size > 1 always fails it)."""
    reach = 0
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def checkpoint_report(
    model: nn.Module, arch: str, state: dict[str, torch.Tensor], *, source: str = "checkpoint", require_head: bool = False
) -> LoadReport:
    """What loading `state` into `model` the `strict=False` way would do, without loading.

    Tensors whose shape differs from the model's (typically the old 1000-class
    head) would be skipped and are listed as shape-mismatched: the model keeps
    its fresh values there. A checkpoint that fits less than half of the
    model's backbone is refused (`CheckpointError`) as belonging to another
    architecture, and with `require_head` a head of the wrong size is refused
    too. Works on a meta-device skeleton: only names and shapes are compared.
    """
    spec = arch_spec(arch)
    own = model.state_dict()
    fits = [k for k, v in state.items() if k in own and v.shape == own[k].shape]
    if wrong := next((k for k in fits if own[k].is_floating_point() and not state[k].is_floating_point()), None):
        raise CheckpointError(
            f"The checkpoint's tensor {wrong!r} holds {str(state[wrong].dtype).removeprefix('torch.')} values "
            "where the model has floating-point weights: it is not a weights file of this model."
        )
    fit_set = set(fits)
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and k not in fit_set]

    head_prefix = spec.head + "."
    backbone = {k: v for k, v in own.items() if not k.startswith(head_prefix) and v.is_floating_point()}
    covered = sum(own[k].numel() for k in fits if k in backbone)
    total = sum(v.numel() for v in backbone.values())
    if total and covered < total / 2:
        example = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"This checkpoint does not fit {spec.label}: it covers {covered:,} of the "
            f"{total:,} backbone values (keys like {example}). It is probably a checkpoint of "
            "another architecture; pick the architecture it was saved from."
        )
    head_mismatch = [a for k, a, _ in mismatched if k.startswith(head_prefix)]
    if require_head and head_mismatch:
        raise CheckpointError(
            f"The checkpoint's head ({spec.head}) has shape {head_mismatch[0]}, but this model's head has "
            f"{tuple(get_module(model, spec.head).weight.shape)}: the number of classes differs."
        )
    return LoadReport(
        source=source,
        loaded=sorted(fits),
        missing=sorted(k for k in own if k not in fit_set),
        unexpected=sorted(k for k in state if k not in own),
        mismatched=mismatched,
    )


def store_checkpoint(data: bytes, filename: str, data_dir: Path) -> Path:
    """Keep an uploaded checkpoint under `data_dir`/checkpoints, named by its content.

    The user's file name is reduced to safe characters (no path parts), and
    the same bytes uploaded again map to the same file, written once.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename).name)[-80:] or "checkpoint.pt"
    target = Path(data_dir) / "checkpoints" / f"{hashlib.sha256(data).hexdigest()[:12]}-{stem}"
    if not target.is_file():
        try:
            atomic_write(target, data)  # a full disk leaves no partial file behind
        except OSError as exc:
            raise CheckpointError(f"Could not keep the uploaded checkpoint in {target.parent}: {exc.strerror or exc}.") from None
    return target


def load_checkpoint(
    model: nn.Module, arch: str, state: dict[str, torch.Tensor], *, source: str = "checkpoint",
    require_head: bool = False, assign: bool = False,
) -> LoadReport:
    """Load `state` into `model` the `strict=False` way; see `checkpoint_report` for the rules.

    `assign`: the model's tensors become the checkpoint's (no copy), as a model built on the meta
    device needs. On refusal (`CheckpointError`) the model is unchanged.
    """
    report = checkpoint_report(model, arch, state, source=source, require_head=require_head)
    result = model.load_state_dict({k: state[k] for k in report.loaded}, strict=False, assign=assign)
    # BatchNorm fills an absent num_batches_tracked itself (a state without version metadata reads as an
    # old checkpoint): a fresh counter either way, so the report's "missing" still holds.
    filled = set(report.missing) - set(result.missing_keys)
    assert set(result.missing_keys) <= set(report.missing) and all(
        k.endswith(".num_batches_tracked") for k in filled), "report and load disagree"
    return report
