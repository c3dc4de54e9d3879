"""`execute(store, run_id)`: one stored run trained to its end and its outcome recorded.

The supervising thread's whole body for one run, and a plain function, so the command line
(`python -m core.train`) runs a job the same way, synchronously and in its own process::

    store = RunStore()
    run_id = store.create(config)
    outcome = execute(store, run_id)          # Outcome(status, reason)

Persistence goes through `core.store.RunStore` only.
"""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable

import torch

from core.devices import pick_device
from core.engine import TrainResult, train
from core.engine.events import RunCancelled, TrainingProcessDied
from core.jobs.monitor import Outcome, RunMonitor
from core.store import (
    CANCELLED,
    FAILED,
    FINISHED,
    RUNNING,
    RunStore,
)
from core.summary import RunSummary

log = logging.getLogger(__name__)


OOM_REASON = "Out of GPU memory: try a smaller batch size or freeze more layers"
CPU_OOM_REASON = "Out of memory: try a smaller batch size, a smaller image size or freeze more layers"

TrainFn = Callable[..., TrainResult]  # train(config, monitor, *, device, runs_dir) -> TrainResult




# --- the worker body -------------------------------------------------------------------


def execute(
    store: RunStore,
    run_id: str,
    train_fn: TrainFn | None = None,
    device: torch.device | None = None,
    monitor: RunMonitor | None = None,
) -> Outcome:
    """Train one stored run to its end and record the outcome; never raises for a
    training failure (KeyError if `run_id` is unknown).

    Marks the run running, calls `train_fn(config, monitor, device=..., runs_dir=store.root)`
    (default `core.engine.train`, in this process), saves `result.state_dict` and `result.summary`, and
    marks it finished. `RunCancelled` -> "cancelled"; any other exception -> "failed" with a
    one-line reason and the traceback in traceback.txt. Metrics so far are kept either way,
    and memory is released (`gc.collect()`, CUDA cache emptied) before returning.
    """
    config = store.load(run_id).config
    device = device or pick_device()
    monitor = monitor or RunMonitor(store, run_id)
    train_fn = train_fn or train
    summary = outcome = None
    try:
        try:
            monitor.begin()
            store.set_status(run_id, RUNNING)
            if monitor.should_stop():
                raise RunCancelled(monitor.stop_reason or "cancelled before it started")
            summary = _train_and_save(store, run_id, config, train_fn, device, monitor)
            outcome = Outcome(FINISHED, None)
        except RunCancelled as exc:
            outcome = Outcome(CANCELLED, monitor.stop_reason or str(exc) or "cancelled on request")
        except Exception as exc:
            outcome = Outcome(FAILED, failure_reason(exc))
            text = traceback.format_exc()
            traceback.clear_frames(exc.__traceback__)  # frames hold the model and activations
            try:
                store.write_traceback(run_id, text)
            except OSError:
                log.exception("could not write the traceback of run %s", run_id)
        except BaseException:  # KeyboardInterrupt in the command line: record it, then let it go
            _record(store, run_id, monitor, Outcome(CANCELLED, "stopped from the keyboard"), None)
            raise
        _record(store, run_id, monitor, outcome, summary)
        return outcome
    finally:
        # A failure's frames and tracebacks form reference cycles that hold tensors: collect
        # them. A clean finish on the CPU frees by reference counting (a full collection is not free).
        _release_memory(device, collect=outcome is None or outcome.status != FINISHED or device.type != "cpu")


def _train_and_save(store, run_id, config, train_fn, device, monitor) -> RunSummary:
    # Kept in its own frame so the model's tensors die with it, before memory is released.
    result = train_fn(config, monitor, device=device, runs_dir=store.root)
    summary = result.summary
    monitor.flush()
    store.save_weights(run_id, result.state_dict)
    store.write_summary(run_id, summary)
    return summary


def _record(store: RunStore, run_id: str, monitor: RunMonitor, outcome: Outcome,
            summary: RunSummary | None) -> None:
    try:
        monitor.flush()  # metrics so far stay, whatever the outcome
    finally:
        store.set_status(run_id, outcome.status, outcome.reason)
        monitor.finish(outcome, summary)


def failure_reason(exc: BaseException) -> str:
    """A short, one-line reason for the UI (the full traceback goes to traceback.txt)."""
    text = str(exc).strip()
    if isinstance(exc, TrainingProcessDied):
        return text
    lowered = text.lower()
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in lowered:
        return OOM_REASON
    if "not enough memory" in lowered:  # the CPU allocator's wording
        return CPU_OOM_REASON
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, ValueError) and first:
        reason = first  # DatasetError / CheckpointError: their message is written for the user
    else:
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return reason if len(reason) <= 300 else reason[:299] + "…"


def _release_memory(device: torch.device, collect: bool = True) -> None:
    if collect:
        gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if device.type == "mps":
        torch.mps.empty_cache()
