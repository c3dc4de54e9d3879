"""`RunMonitor`: the live, in-memory state of one run, fed by the engine's reports and written to the store.

Steps and epoch records are kept in memory (what `JobManager.snapshot` reads) and reach the store
at each epoch end, every `flush_every_s` seconds within a long epoch, and at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from core.store import (
    QUEUED,
    RUNNING,
    RunStore,
)
from core.summary import RunSummary

# --- live state of one run -------------------------------------------------------------


class Outcome(NamedTuple):
    status: str  # FINISHED, FAILED or CANCELLED
    reason: str | None


class RunMonitor:
    """The `Monitor` the worker hands to the engine: keeps the live state of one run.

    Steps and epoch records are kept in memory (what `JobManager.snapshot`
    reads) and written to the store at each epoch end, at most every
    `flush_every_s` seconds within an epoch, and by `flush()`. `listener`, if
    given, is called as `listener(event, payload)` for "start", "step" and
    "epoch" (the command line prints from it); it runs in the training thread.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        stop_event: threading.Event | None = None,
        lock: threading.RLock | None = None,
        listener: Callable[[str, dict], None] | None = None,
        flush_every_s: float = 30.0,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.stop_event = stop_event or threading.Event()
        self.stop_reason: str | None = None
        self._lock = lock or threading.RLock()
        self._listener = listener
        self._flush_every_s = flush_every_s
        # Live state; read and written under `_lock`.
        self.status = QUEUED
        self.reason: str | None = None
        self.info: dict = {}
        self.step = 0
        self.total_steps: int | None = None
        self.epoch = 0
        self.epochs: int | None = None
        self.summary = RunSummary()
        self._steps: list[tuple[int, int, float]] = []  # tuples: never mutated once appended
        self._epochs: list[dict] = []  # records: never mutated once appended
        self._t_begin: float | None = None  # status -> running
        self._t_train: float | None = None  # on_start
        self._t_end: float | None = None
        self._last_flush = time.monotonic()

    # Monitor protocol ---------------------------------------------------------------
    def on_start(self, info: dict) -> None:
        info = plain(dict(info))
        with self._lock:
            self.info = info
            self.total_steps = int_or_none(info.get("total_steps"))
            self.epochs = int_or_none(info.get("epochs"))
            self._t_train = time.monotonic()
        self.flush()
        self._notify("start", info)

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        entry = (int(step), int(epoch), float(loss))
        with self._lock:
            self._steps.append(entry)
            self.step, self.epoch = entry[0], entry[1]
        if time.monotonic() - self._last_flush >= self._flush_every_s:
            self.flush()
        self._notify("step", {"step": entry[0], "epoch": entry[1], "loss": entry[2]})

    def on_epoch(self, record: dict) -> None:
        record = plain(dict(record)) | {"logged_at": time.time()}  # wall clock: when the epoch's record arrived
        with self._lock:
            self._epochs.append(record)
            if "epoch" in record:
                self.epoch = int_or_none(record["epoch"]) or self.epoch
        self.flush()
        self._notify("epoch", record)

    def should_stop(self) -> bool:
        return self.stop_event.is_set()

    # Control and bookkeeping -----------------------------------------------------------
    def request_stop(self, reason: str = "cancelled on request") -> None:
        """Ask the engine to stop at the next batch boundary."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
        self.stop_event.set()

    def flush(self) -> None:
        """Write the metrics so far to the store."""
        with self._lock:  # shallow copies suffice: entries are never mutated once appended
            data = {"steps": list(self._steps), "epochs": list(self._epochs), "info": self.info}
            self._last_flush = time.monotonic()
        self.store.write_metrics(self.run_id, data)

    def metrics(self) -> dict:
        """A private copy of the metrics so far (callers may mutate it)."""
        with self._lock:
            return {"steps": [list(s) for s in self._steps], "epochs": [copy_plain(r) for r in self._epochs]}

    def begin(self) -> None:
        with self._lock:
            self.status = RUNNING
            self._t_begin = time.monotonic()

    def finish(self, outcome: Outcome, summary: RunSummary | None = None) -> None:
        with self._lock:
            self.status, self.reason = outcome
            self.summary = summary or RunSummary()
            self._t_end = time.monotonic()

    def _notify(self, event: str, payload: dict) -> None:
        if self._listener is not None:
            self._listener(event, payload)


def int_or_none(value) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def plain(value: Any) -> Any:
    """JSON-shaped copy: dicts, lists, numbers, strings; tensors and numpy become lists/numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy
        return value.tolist()
    return str(value)  # torch.device, dtype, Path ...


def copy_plain(value: Any) -> Any:
    """Copy a JSON-shaped value (much faster than deepcopy for confusion matrices)."""
    if isinstance(value, dict):
        return {k: copy_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_plain(v) for v in value]
    return value
