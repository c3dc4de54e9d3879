"""`RunStore`: the one module that reads and writes the runs directory.

Nothing else in the project writes run files. One folder per run under the
store's root (default `core.config.runs_dir()`, i.e. `$FREEZE_LAB_RUNS_DIR`
or `./runs`)::

    runs/20261123-142501-a3f9/
        run.json        id, name, owner, created, status, reason, started, finished, config
        metrics.json    {"steps": [[step, epoch, loss], ...], "epochs": [record, ...], "info": {...}}
        summary.json    the engine's `RunSummary`: final figures, freeze audit, param groups ...
        weights.pt      state dict of tensors (torch.save; read back with weights_only=True)
        traceback.txt   full traceback of a failed run

Every write is atomic: the bytes go to a temporary file in the same folder,
are flushed and fsynced, then `os.replace`d over the old file. A reader never
sees half a file, and a crash mid-write leaves the previous version. A new run
folder is assembled under a hidden name and renamed into place, and a deleted
one is renamed away before it is removed, so `list()` never meets half a run.

Concurrency: one writer per run (the worker, or the command line) plus any
number of readers, in threads or processes. Read-modify-write of `run.json`
(status, rename) is serialised by a lock inside the store, so a rename from
the UI and a status change from the worker do not lose each other's update
within one process.

Run ids look like ``20261123-142501-a3f9``: UTC time of creation plus 16
random bits. They sort by creation second, are URL-safe (they live in
`st.query_params`), and anything that does not look like one is treated as an
unknown id, so an id from a URL can never point outside the root.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from core.config import RunConfig, dataset_name, runs_dir
from core.files import atomic_write, fsync_dir, write_json
from core.store.process import describe_process, process_alive, this_process
from core.summary import RunSummary

log = logging.getLogger(__name__)

# --- statuses ---------------------------------------------------------------
QUEUED = "queued"  # created, waiting for the device
RUNNING = "running"  # a worker is training it
FINISHED = "finished"  # trained to the end; weights and summary saved
FAILED = "failed"  # raised; `reason` says why, traceback.txt has the rest
CANCELLED = "cancelled"  # stopped on request (before or during training)
INTERRUPTED = "interrupted"  # the process died while it was queued or running
STATUSES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE = frozenset({QUEUED, RUNNING})
TERMINAL = frozenset({FINISHED, FAILED, CANCELLED, INTERRUPTED})

INTERRUPTED_REASON = "the app restarted while this run was in flight"
DEAD_OWNER_REASON = "the process that was training it ({process}) is gone"

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.json"
WEIGHTS_FILE = "weights.pt"
TRACEBACK_FILE = "traceback.txt"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MAX_NAME = 120


class StoreError(ValueError):
    """The runs folder cannot be written (read-only, full, not a folder); the message is for the user."""


def empty_metrics() -> dict:
    """What `metrics.json` holds before the first step."""
    return {"steps": [], "epochs": []}


def default_name(config: RunConfig) -> str:
    """A readable name from the config, e.g. "resnet18 · head · demo-target"."""
    return f"{config.arch} · {config.preset} · {dataset_name(config.dataset)}"


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RunRecord:
    """One run as stored on disk, at the moment it was read.

    `metrics` and `summary` are read lazily, on first access, and then kept:
    `list()` stays cheap (it reads only `run.json` per run), and a record is a
    consistent snapshot once read. Load the record again for fresher figures.
    """

    id: str
    name: str
    owner: str  # who submitted it (a session or user label); "" when unknown
    created: str  # ISO 8601 UTC
    status: str  # one of STATUSES
    reason: str | None  # why it failed / was cancelled / was interrupted
    started: str | None  # ISO 8601 UTC, set when it starts running
    finished: str | None  # ISO 8601 UTC, set when it reaches a terminal status
    config: RunConfig
    path: Path  # the run's folder
    process: dict | None = None  # {"host", "pid", "start"} of the process that created or trains it

    @functools.cached_property
    def metrics(self) -> dict:
        """`{"steps": [[step, epoch, loss], ...], "epochs": [record, ...]}` (plus "info" once started).

        Entries of the wrong shape (a damaged or hand-edited file) are left out, never passed on.
        """
        return clean_metrics(_read_json(self.path / METRICS_FILE, None))

    @functools.cached_property
    def summary(self) -> RunSummary:
        """The engine's final summary; every field None until the run finishes (or when summary.json
        is damaged)."""
        return RunSummary.from_dict(_read_json(self.path / SUMMARY_FILE, None)) or RunSummary()

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def has_weights(self) -> bool:
        return (self.path / WEIGHTS_FILE).is_file()

    def elapsed_s(self) -> float | None:
        """Seconds from start to finish (or to now while it runs); None if it never started."""
        start = _parse_time(self.started)
        if start is None:
            return None
        end = _parse_time(self.finished) or datetime.now(UTC)
        return max(0.0, (end - start).total_seconds())


class RunStore:
    """Runs on disk: create, read, update and delete, every write atomic."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else runs_dir()
        self._lock = threading.RLock()  # serialises read-modify-write of run.json

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # --- create / read --------------------------------------------------------
    def create(self, config: RunConfig, *, name: str | None = None, owner: str = "") -> str:
        """Create a queued run for `config` and return its id."""
        meta = {
            "id": "",
            "name": _clean_name(name) if name is not None else default_name(config),
            "owner": str(owner or ""),
            "created": now_iso(),
            "status": QUEUED,
            "reason": None,
            "started": None,
            "finished": None,
            "process": this_process(),
            "config": config.to_dict(),
        }
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._lock:
                run_id = self._new_id()
                meta["id"] = run_id
                # Assemble under a hidden name, then rename into place: the run
                # appears whole or not at all.
                staging = Path(tempfile.mkdtemp(prefix=f".new-{run_id}-", dir=self.root))
                try:
                    _write_json(staging / RUN_FILE, meta)
                    _write_json(staging / METRICS_FILE, empty_metrics())
                    os.rename(staging, self.root / run_id)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                fsync_dir(self.root)
        except OSError as exc:
            raise StoreError(
                f"Cannot create a run in {self.root}: {exc.strerror or exc}. Free some space, or point "
                "FREEZE_LAB_RUNS_DIR (--runs-dir on the command line) at a folder you can write to."
            ) from None
        return run_id

    def exists(self, run_id: str) -> bool:
        return valid_id(run_id) and (self.root / run_id / RUN_FILE).is_file()

    def load(self, run_id: str) -> RunRecord:
        """The run `run_id`; KeyError if there is no such (readable) run."""
        path = self._dir(run_id)
        meta = _read_json(path / RUN_FILE, None)
        if meta is None:
            raise KeyError(f"{run_id}: unreadable run.json")
        try:
            return _record(meta, path)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyError(f"{run_id}: unreadable run.json ({exc})") from exc

    def list(self) -> list[RunRecord]:
        """All readable runs, newest first. Unreadable folders are skipped, not fatal (see `survey`)."""
        return self.survey()[0]

    def survey(self) -> tuple[list[RunRecord], list[tuple[str, str]]]:
        """(every readable run, newest first; (folder name, why) for each damaged run folder).

        A damaged folder (a `run.json` that is not a run, or one that names another id than its
        folder, as a copied folder does) is reported and never acted on.
        """
        if not self.root.is_dir():
            return [], []
        records, damaged = [], []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            if not valid_id(path.name):
                damaged.append((path.name, "its name is not a run id"))
                continue
            if not (path / RUN_FILE).is_file():
                damaged.append((path.name, f"it holds no {RUN_FILE}"))
                continue
            try:
                records.append(self.load(path.name))
            except (KeyError, OSError) as exc:
                reason = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
                damaged.append((path.name, reason.removeprefix(f"{path.name}: ")))
                log.warning("skipping unreadable run folder %s: %s", path, reason)
        records.sort(key=lambda r: (r.created, r.id), reverse=True)
        return records, sorted(damaged)

    # --- updates ----------------------------------------------------------------
    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Set the status (and reason; None clears it). "running" stamps `started`,
        a terminal status stamps `finished`."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {STATUSES}")

        def change(meta: dict) -> None:
            meta["status"] = status
            meta["reason"] = reason
            if status == RUNNING:
                meta["started"] = now_iso()
                meta["finished"] = None
                meta["process"] = this_process()
            elif status in TERMINAL:
                meta["finished"] = now_iso()

        self._update(run_id, change)

    def rename(self, run_id: str, name: str) -> None:
        """Give the run a new display name (stripped, at most 120 characters)."""
        clean = _clean_name(name)
        self._update(run_id, lambda meta: meta.__setitem__("name", clean))

    def write_metrics(self, run_id: str, metrics: Mapping) -> None:
        """Replace `metrics.json` (`{"steps": [...], "epochs": [...], ...}`)."""
        _write_json(self._dir(run_id) / METRICS_FILE, dict(metrics))

    def write_summary(self, run_id: str, summary: RunSummary) -> None:
        """Replace `summary.json` with the run's `RunSummary`."""
        _write_json(self._dir(run_id) / SUMMARY_FILE, summary.to_dict())

    def write_traceback(self, run_id: str, text: str) -> None:
        atomic_write(self._dir(run_id) / TRACEBACK_FILE, text.encode("utf-8", "replace"))

    def read_traceback(self, run_id: str) -> str | None:
        try:
            return (self._dir(run_id) / TRACEBACK_FILE).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None

    # --- weights ----------------------------------------------------------------
    def weights_path(self, run_id: str) -> Path:
        """Where the run's weights are (or will be) saved; the file may not exist."""
        return self._dir(run_id) / WEIGHTS_FILE

    def save_weights(self, run_id: str, state_dict: Mapping) -> None:
        """Save a state dict (tensors moved to the CPU) atomically with `torch.save`."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"a state dict must be a mapping, got {type(state_dict).__name__}")
        plain = {str(k): (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state_dict.items()}
        path = self.weights_path(run_id)
        atomic_write(path, lambda f: torch.save(plain, f))

    def load_weights(self, run_id: str) -> dict[str, torch.Tensor]:
        """The run's state dict on the CPU, loaded with `weights_only=True` (never runs code).

        KeyError for an unknown run; FileNotFoundError if the run saved no weights
        (it failed, was cancelled or is still training).
        """
        path = self.weights_path(run_id)
        if not path.is_file():
            status = self.load(run_id).status
            raise FileNotFoundError(f"run {run_id} has no saved weights (status: {status})")
        return dict(torch.load(path, map_location="cpu", weights_only=True))

    # --- delete / restart -----------------------------------------------------------
    def delete(self, run_id: str) -> None:
        """Remove a run and its files.

        ValueError for a queued or running run, and for a run whose weights other runs start from.
        """
        record = self.load(run_id)
        if record.status in ACTIVE:
            raise ValueError(f"run {run_id} is {record.status}: cancel it before deleting it")
        dependents = [r.name for r in self.list() if r.config.weights == f"run:{run_id}"]
        if dependents:
            raise ValueError(
                f"{len(dependents)} run(s) start from this run's weights ({', '.join(dependents[:3])}): "
                "delete them first, or they could no longer be rebuilt."
            )
        with self._lock:
            # Rename away first (atomic), then remove: readers never see half a run.
            trash = self.root / f".trash-{run_id}-{secrets.token_hex(4)}"
            os.rename(record.path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def mark_interrupted(self) -> list[str]:
        """Mark runs left "queued" or "running" by an earlier app process as interrupted.

        Call once at start-up, before any worker starts (the JobManager does).
        A run whose process is still alive elsewhere (a command-line run on
        this machine) is left alone; every other one in flight, this process's
        own included (a fresh manager holds none of them) and one written
        before runs recorded their process, is marked. Their metrics so far
        stay. Returns the ids changed.
        """
        me = this_process()
        return [r.id for r in self.list()
                if r.status in ACTIVE and (r.process in (None, me) or not process_alive(r.process))
                and self._interrupt(r.id, INTERRUPTED_REASON)]

    def reap(self, record: RunRecord) -> RunRecord:
        """`record` itself, or, when it is in flight but the process that owned it has died (a
        command-line run killed with `kill -9`), the record marked interrupted with that reason."""
        if record.status not in ACTIVE or process_alive(record.process):
            return record
        reason = DEAD_OWNER_REASON.format(process=describe_process(record.process))
        return self.load(record.id) if self._interrupt(record.id, reason) else record

    def _interrupt(self, run_id: str, reason: str) -> bool:
        try:
            self.set_status(run_id, INTERRUPTED, reason)
            return True
        except (KeyError, OSError) as exc:
            log.warning("could not mark run %s interrupted: %s", run_id, exc)
            return False

    # --- internals -------------------------------------------------------------------
    def _dir(self, run_id: str) -> Path:
        if not valid_id(run_id):
            raise KeyError(run_id)
        path = self.root / run_id
        if not (path / RUN_FILE).is_file():
            raise KeyError(run_id)
        return path

    def _update(self, run_id: str, change) -> None:
        with self._lock:
            path = self._dir(run_id)
            meta = _read_json(path / RUN_FILE, None)
            if not isinstance(meta, dict):
                raise KeyError(f"{run_id}: unreadable run.json")
            change(meta)
            _write_json(path / RUN_FILE, meta)

    def _new_id(self) -> str:
        return new_id(lambda candidate: (self.root / candidate).exists())


# --- helpers ----------------------------------------------------------------------


def valid_id(run_id) -> bool:
    """Whether `run_id` looks like an id this store makes (anything else is an unknown id, never a path)."""
    return isinstance(run_id, str) and bool(_RUN_ID.match(run_id))


def new_id(taken: Callable[[str], bool]) -> str:
    """A fresh id: UTC time of creation plus 16 random bits, one that `taken` does not refuse."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    while True:
        candidate = f"{stamp}-{secrets.token_hex(2)}"
        if not taken(candidate):
            return candidate


def _clean_name(name: str) -> str:
    clean = " ".join(str(name).split())[:_MAX_NAME]
    if not clean:
        raise ValueError("a run name cannot be empty")
    return clean


def _record(meta: dict, path: Path) -> RunRecord:
    if not isinstance(meta, dict):
        raise ValueError(f"run.json holds a {type(meta).__name__}, not a run")
    if meta.get("id") != path.name:
        raise ValueError(f"run.json names the run {meta.get('id')!r}, not its folder's name (a copied folder?)")
    status = meta["status"]
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    if not isinstance(meta["config"], dict):
        raise ValueError(f"its config is a {type(meta['config']).__name__}, not a set of fields")
    process = meta.get("process")
    return RunRecord(
        id=path.name,
        name=str(meta.get("name") or path.name),
        owner=str(meta.get("owner") or ""),
        created=str(meta["created"]),
        status=status,
        reason=_text_or_none(meta.get("reason")),
        started=_text_or_none(meta.get("started")),
        finished=_text_or_none(meta.get("finished")),
        config=RunConfig.from_dict(meta["config"]),
        path=path,
        process=process if isinstance(process, dict) else None,
    )


def _text_or_none(value) -> str | None:
    return None if value is None else str(value)


def _parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time as an aware datetime (UTC when no zone is given); None when absent or unreadable."""
    try:
        t = datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def clean_metrics(data) -> dict:
    """`metrics.json` as read, with steps, epochs and info only where they have the shape this module
    writes: steps as [int, int, float], epoch records as objects, info as an object."""
    if not isinstance(data, dict):
        return empty_metrics()
    steps = []
    for entry in data.get("steps") if isinstance(data.get("steps"), list) else []:
        try:
            step, epoch, loss = entry
            steps.append([int(step), int(epoch), float(loss)])
        except (TypeError, ValueError):
            continue
    epochs = [r for r in data.get("epochs") or [] if isinstance(r, dict)] if isinstance(data.get("epochs"), list) else []
    out = {**data, "steps": steps, "epochs": epochs}
    if not isinstance(out.get("info"), dict):
        out.pop("info", None)
    return out


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:  # cannot happen through this module's atomic writes
        log.warning("unreadable %s: %s", path, exc)
        return default


def _json_default(value):
    """Make engine output JSON-able: tensors and numpy values become numbers/lists."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)  # torch.device, Path, dtypes ...


def _write_json(path: Path, data) -> None:
    write_json(path, data, default=_json_default)
