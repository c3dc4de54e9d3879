"""Background training: a FIFO queue and one supervising thread per device.

The Streamlit app makes one `JobManager` per server process (with
`st.cache_resource`) and every browser session shares it: `submit` a
`RunConfig`, poll `snapshot(run_id)` from a fragment, `cancel` it. The
manager is thread-safe (one lock); its thread never calls `st.*`.

The thread queues, supervises, relays and records; the training itself runs
in a worker process (`core.worker.ProcessTrainer`, the default `train_fn`),
so that neither the viewers' page reruns (which hold the server's GIL) nor a
crash in training reach each other. The engine reports through the interface
of `core.events` (`Monitor`, `RunCancelled`): the thread hands the worker's
reports to the run's `RunMonitor`, the in-memory live copy that `snapshot`
reads, and the store.

`execute(store, run_id, ...)` is the thread's whole body for one run and is a
plain function, so the command line (`python -m core.train`) runs a job the
same way, synchronously and in its own process::

    store = RunStore()
    run_id = store.create(config)
    outcome = execute(store, run_id)          # Outcome(status, reason)

Persistence goes through `core.runs.RunStore` only. Metrics reach the store at
each epoch end, every `flush_every_s` seconds within a long epoch, and at the
end; the in-memory live copy that `snapshot` reads is updated at every step.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

import torch

from core.config import RunConfig
from core.devices import pick_device, training_threads
from core.events import Monitor, RunCancelled, TrainingProcessDied
from core.freezing import output_shapes
from core.models import arch_spec, build_skeleton, checkpoint_report, read_state_dict
from core.runs import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    TERMINAL,
    RunStore,
)
from core.training import train
from core.worker import ProcessTrainer

log = logging.getLogger(__name__)

OOM_REASON = "Out of GPU memory: try a smaller batch size or freeze more layers"
CPU_OOM_REASON = "Out of memory: try a smaller batch size, a smaller image size or freeze more layers"
_KEEP_FINISHED = 32  # finished jobs kept in memory for cheap snapshots; older ones are read from disk
DUPLICATE_WINDOW_S = 10.0  # the same owner submitting the same config and name again within this is refused


# --- the engine's interface ----------------------------------------------------------


class TrainResult(Protocol):
    summary: dict  # JSON-able final figures
    state_dict: dict  # name -> Tensor


TrainFn = Callable[..., TrainResult]  # train(config, monitor, *, device, runs_dir) -> TrainResult


class Outcome(NamedTuple):
    status: str  # FINISHED, FAILED or CANCELLED
    reason: str | None


# --- live state of one run -------------------------------------------------------------


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
        self.summary: dict = {}
        self._steps: list[tuple[int, int, float]] = []  # tuples: never mutated once appended
        self._epochs: list[dict] = []  # records: never mutated once appended
        self._t_begin: float | None = None  # status -> running
        self._t_train: float | None = None  # on_start
        self._t_end: float | None = None
        self._last_flush = time.monotonic()

    # Monitor protocol ---------------------------------------------------------------
    def on_start(self, info: dict) -> None:
        info = _plain(dict(info))
        with self._lock:
            self.info = info
            self.total_steps = _int_or_none(info.get("total_steps"))
            self.epochs = _int_or_none(info.get("epochs"))
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
        record = _plain(dict(record)) | {"logged_at": time.time()}  # wall clock: when the epoch's record arrived
        with self._lock:
            self._epochs.append(record)
            if "epoch" in record:
                self.epoch = _int_or_none(record["epoch"]) or self.epoch
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
            return {"steps": [list(s) for s in self._steps], "epochs": [_copy(r) for r in self._epochs]}

    def begin(self) -> None:
        with self._lock:
            self.status = RUNNING
            self._t_begin = time.monotonic()

    def finish(self, outcome: Outcome, summary: dict | None = None) -> None:
        with self._lock:
            self.status, self.reason = outcome
            self.summary = summary or {}
            self._t_end = time.monotonic()

    def _notify(self, event: str, payload: dict) -> None:
        if self._listener is not None:
            self._listener(event, payload)


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
    (default `core.training.train`, in this process), saves `result.state_dict` and `result.summary`, and
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
        # them. A clean finish on the CPU frees by reference counting (gc costs ~0.1 s).
        _release_memory(device, collect=outcome is None or outcome.status != FINISHED or device.type != "cpu")


def _train_and_save(store, run_id, config, train_fn, device, monitor) -> dict:
    # Kept in its own frame so the model's tensors die with it, before memory is released.
    result = train_fn(config, monitor, device=device, runs_dir=store.root)
    summary = dict(result.summary or {})
    monitor.flush()
    store.save_weights(run_id, result.state_dict)
    store.write_summary(run_id, summary)
    return summary


def _record(store: RunStore, run_id: str, monitor: RunMonitor, outcome: Outcome, summary) -> None:
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


# --- what pages poll ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSnapshot:
    """A copy of one run's state for a page to render; mutating it changes nothing."""

    id: str
    name: str
    owner: str
    status: str
    reason: str | None
    queue_position: int | None  # 1-based among queued runs; None unless queued here
    step: int  # global steps done
    total_steps: int | None
    epoch: int  # latest epoch reported
    epochs: int | None
    epochs_done: int  # epoch records so far (an epoch's validation ends after its last step)
    progress: float  # 0..1
    eta_s: float | None  # seconds left while running, from elapsed / progress
    elapsed_s: float | None  # since it started running
    metrics: dict  # {"steps": [[step, epoch, loss], ...], "epochs": [record, ...]}
    summary: dict  # the engine's final summary ({} until finished)
    info: dict  # what the engine passed to on_start
    config: RunConfig
    created: str

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass
class _Job:
    run_id: str
    name: str
    owner: str
    created: str
    config: RunConfig
    monitor: RunMonitor
    done: threading.Event


def check_runnable(config: RunConfig, store: RunStore) -> None:
    """Everything about `config` that can be checked before a run exists, else `ValueError` for the user.

    The fields' ranges (`RunConfig.validate`), the architecture, the frozen paths (each a module of
    the model), the input size (a forward pass on a meta-device skeleton: milliseconds, no memory)
    and the starting weights (`check_weights`). A run that passes can still fail on its data or
    device, but never on its own configuration.
    """
    config.validate()
    skeleton = build_skeleton(config.arch, config.num_classes)  # ValueError naming the choices
    names = {name for name, _ in skeleton.named_modules() if name}
    if unknown := [p for p in config.frozen if p not in names]:
        raise ValueError(f"{arch_spec(config.arch).label} has no module {unknown[0]!r} to freeze.")
    output_shapes(skeleton, config.image_size)  # ValueError: too small for this architecture
    check_weights(config, store, skeleton)


def check_weights(config: RunConfig, store: RunStore, skeleton: torch.nn.Module | None = None) -> None:
    """The run's starting weights exist and fit, else ValueError (`CheckpointError`) before any run is created.

    A checkpoint path must be a regular file of sane size that holds a state
    dict of the run's architecture (read safely and compared on a meta-device
    skeleton: a checkpoint chosen for another architecture, still in the
    draft after the architecture changed, is refused here rather than failing
    the run when it starts); ``run:<id>`` a finished run of `store` of the same
    architecture (queued or running is fine: the queue trains it first; a failed
    or cancelled one has no weights). ImageNet weights are downloaded when the run starts.
    """
    if config.weights.startswith("run:"):
        run_id = config.weights.removeprefix("run:")
        if not store.exists(run_id):
            raise ValueError(f"There is no run {run_id!r} to start from.")
        source = store.load(run_id)
        if source.status not in (FINISHED, QUEUED, RUNNING):
            raise ValueError(f"Run {source.name!r} {source.status}: it has no weights to start from.")
        if source.config.arch != config.arch:
            raise ValueError(f"Run {source.name!r} trained a {arch_spec(source.config.arch).label}, "
                             f"not a {arch_spec(config.arch).label}.")
    elif config.weights not in ("none", "imagenet"):
        state = read_state_dict(config.weights)
        skeleton = skeleton if skeleton is not None else build_skeleton(config.arch, config.num_classes)
        checkpoint_report(skeleton, config.arch, state, source=config.weights)


class JobManager:
    """Queue of runs for one device, trained one at a time in a worker process that its thread supervises."""

    def __init__(self, store: RunStore, train_fn: TrainFn | None = None, device: torch.device | None = None,
                 threads: int | None = None) -> None:
        self.store = store
        self.device = device or pick_device()
        # On the CPU, the threads training uses (`training_threads`: one core is left to the app's server).
        self.threads = threads or training_threads()
        # By default every run trains in a worker process; tests may pass an engine of their own.
        self._train_fn = train_fn or ProcessTrainer(self.threads if self.device.type == "cpu" else None)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}  # queued, running and recently finished
        self._queue: deque[str] = deque()
        self._running: str | None = None
        self._finished: deque[str] = deque()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._recent: dict[tuple, tuple[float, str]] = {}  # (owner, config, name) -> (when, run id)
        # Nothing of an earlier process is still training: say so on disk.
        self.interrupted: list[str] = store.mark_interrupted()

    # --- submitting and cancelling ------------------------------------------------------
    def submit(self, config: RunConfig, *, owner: str = "", name: str | None = None) -> str:
        """Validate `config` (ValueError for the user: nothing is created), store it
        as a queued run and queue it. Returns the run id.

        What is checked before the run exists: `check_runnable`. A runs folder that cannot be
        written is a `ValueError` too (`StoreError`). One user action is one run: the same
        owner submitting the same config and name again within `DUPLICATE_WINDOW_S`, while the
        first is still queued or running, is refused (a key's Enter, then the button).
        """
        check_runnable(config, self.store)
        key = (owner, config, name)
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager has shut down")
            self._refuse_duplicate(key)
            # Claimed before the run is created: a second click racing this one is refused too.
            self._recent[key] = (time.monotonic(), "")
        try:
            run_id = self.store.create(config, name=name, owner=owner)
        except BaseException:
            with self._lock:
                self._recent.pop(key, None)
            raise
        with self._lock:
            self._recent[key] = (time.monotonic(), run_id)
        record = self.store.load(run_id)
        job = _Job(
            run_id=run_id,
            name=record.name,
            owner=record.owner,
            created=record.created,
            config=config,
            monitor=RunMonitor(self.store, run_id, lock=self._lock),
            done=threading.Event(),
        )
        with self._changed:
            if not self._closed:
                self._jobs[run_id] = job
                self._queue.append(run_id)
                self._start_worker()
                self._changed.notify_all()
                return run_id
        self.store.set_status(run_id, CANCELLED, "the job manager shut down before it started")
        raise RuntimeError("the job manager has shut down")

    def _refuse_duplicate(self, key: tuple) -> None:  # under the lock
        now = time.monotonic()
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] < DUPLICATE_WINDOW_S}
        when, run_id = self._recent.get(key, (0.0, None))
        job = self._jobs.get(run_id) if run_id else None  # None: still being created (its id may be known)
        if run_id is not None and (job is None or job.monitor.status not in TERMINAL):
            raise ValueError(
                f"This exact run was started {now - when:.0f} s ago ({run_id or 'being created'}); it is not "
                "started twice. Change a setting (the seed, say) to start another one."
            )

    def cancel(self, run_id: str) -> bool:
        """Cancel a queued run at once, or ask a running one to stop at the next batch.

        Returns False if the run is not queued or running here. A run already past
        its last batch finishes normally.
        """
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None or job.monitor.status in TERMINAL:
                return False
            if run_id in self._queue:
                self._queue.remove(run_id)
                job.monitor.finish(Outcome(CANCELLED, "cancelled before it started"))
            else:
                job.monitor.request_stop("cancelled while training")
                return True
        self._record_cancelled(job)
        return True

    # --- reading ------------------------------------------------------------------------------
    def snapshot(self, run_id: str, *, with_metrics: bool = True) -> RunSnapshot | None:
        """A frozen copy of the run's live state (from disk for runs not in memory);
        None for an unknown id. `with_metrics=False` skips copying the curves."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is not None:
                return self._snapshot_job(job, with_metrics)
        try:
            record = self.store.reap(self.store.load(run_id))  # a dead command-line run becomes interrupted
        except (KeyError, OSError):
            return None
        metrics = record.metrics  # entries of the wrong shape are already left out
        info = metrics.get("info") or {}
        steps, records = metrics["steps"], metrics["epochs"]
        step = steps[-1][0] if steps else 0
        epoch = (_int_or_none(records[-1].get("epoch")) or len(records)) if records else (steps[-1][1] if steps else 0)
        total_steps = _int_or_none(info.get("total_steps"))
        epochs = _int_or_none(info.get("epochs")) or record.config.epochs
        progress = _progress(record.status, step, total_steps, len(records), epochs)
        elapsed = record.elapsed_s()
        return RunSnapshot(
            id=record.id,
            name=record.name,
            owner=record.owner,
            status=record.status,
            reason=record.reason,
            queue_position=None,
            step=step,
            total_steps=total_steps,
            epoch=epoch,
            epochs=epochs,
            epochs_done=len(records),
            progress=progress,
            eta_s=_eta(record.status, elapsed, progress),
            elapsed_s=elapsed,
            metrics={"steps": steps, "epochs": records} if with_metrics else {"steps": [], "epochs": []},
            summary=record.summary,
            info=info,
            config=record.config,
            created=record.created,
        )

    def active_runs(self) -> list[str]:
        """Ids of the running run (first) and the queued ones, in the order they will run."""
        with self._lock:
            return ([self._running] if self._running else []) + list(self._queue)

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Block until the run ends (or `timeout` passes) and return its status."""
        with self._lock:
            job = self._jobs.get(run_id)
        if job is None:
            return self.store.load(run_id).status
        job.done.wait(timeout)
        with self._lock:
            return job.monitor.status

    # --- housekeeping passed through to the store -----------------------------------------------
    def rename(self, run_id: str, name: str) -> None:
        self.store.rename(run_id, name)
        with self._lock:
            if (job := self._jobs.get(run_id)) is not None:
                job.name = self.store.load(run_id).name

    def delete(self, run_id: str) -> None:
        """Delete a run that is not queued or running (ValueError otherwise)."""
        with self._lock:
            if run_id in self._queue or run_id == self._running:
                raise ValueError(f"run {run_id} is still in flight: cancel it before deleting it")
        self.store.delete(run_id)  # a run that is not in flight never goes back in: no race
        with self._lock:
            self._jobs.pop(run_id, None)
            if run_id in self._finished:
                self._finished.remove(run_id)

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Refuse new runs, cancel queued ones, stop the running one; join the worker if `wait`."""
        with self._changed:
            self._closed = True
            queued = [self._jobs[i] for i in self._queue]
            self._queue.clear()
            for job in queued:
                job.monitor.finish(Outcome(CANCELLED, "the app shut down before it started"))
            if self._running:
                self._jobs[self._running].monitor.request_stop("the app shut down while it was training")
            worker = self._worker
            self._changed.notify_all()
        for job in queued:
            self._record_cancelled(job)
        if wait and worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        if isinstance(self._train_fn, ProcessTrainer) and (worker is None or not worker.is_alive()):
            self._train_fn.close()

    # --- internals --------------------------------------------------------------------------------
    def _start_worker(self) -> None:  # under the lock
        if self._worker is None or not self._worker.is_alive():
            name = f"freeze-lab-worker-{self.device}"
            self._worker = threading.Thread(target=self._work, name=name, daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    self._worker = None
                    return
                run_id = self._queue.popleft()
                job = self._jobs[run_id]
                self._running = run_id
                job.monitor.status = RUNNING
            try:
                execute(self.store, run_id, self._train_fn, self.device, job.monitor)
            except Exception as exc:  # recording itself failed (disk full, folder removed ...)
                log.exception("run %s could not be recorded", run_id)
                job.monitor.finish(Outcome(FAILED, f"could not record the run: {exc}"))
            finally:
                with self._changed:
                    self._running = None
                    self._retire(job)

    def _record_cancelled(self, job: _Job) -> None:
        try:
            self.store.set_status(job.run_id, CANCELLED, job.monitor.reason)
        except (KeyError, OSError):
            log.exception("could not record the cancellation of run %s", job.run_id)
        with self._changed:
            self._retire(job)

    def _retire(self, job: _Job) -> None:  # under the lock
        job.done.set()
        self._finished.append(job.run_id)
        while len(self._finished) > _KEEP_FINISHED:
            self._jobs.pop(self._finished.popleft(), None)
        self._changed.notify_all()

    def _snapshot_job(self, job: _Job, with_metrics: bool) -> RunSnapshot:  # under the lock
        m = job.monitor
        now = time.monotonic()
        elapsed = None if m._t_begin is None else (m._t_end or now) - m._t_begin
        progress = _progress(m.status, m.step, m.total_steps, len(m._epochs), m.epochs or job.config.epochs)
        trained = None if m._t_train is None else (m._t_end or now) - m._t_train
        return RunSnapshot(
            id=job.run_id,
            name=job.name,
            owner=job.owner,
            status=m.status,
            reason=m.reason,
            queue_position=(self._queue.index(job.run_id) + 1) if job.run_id in self._queue else None,
            step=m.step,
            total_steps=m.total_steps,
            epoch=m.epoch,
            epochs=m.epochs or job.config.epochs,
            epochs_done=len(m._epochs),
            progress=progress,
            eta_s=_eta(m.status, trained, progress),
            elapsed_s=elapsed,
            metrics=m.metrics() if with_metrics else {"steps": [], "epochs": []},
            summary=_copy(m.summary),
            info=_copy(m.info),
            config=job.config,
            created=job.created,
        )


# --- small helpers --------------------------------------------------------------------------------


def _progress(status: str, step: int, total_steps: int | None, epochs_done: int, epochs: int | None) -> float:
    if status == FINISHED:
        return 1.0
    if total_steps:
        p = step / total_steps
    elif epochs:
        p = epochs_done / epochs
    else:
        p = 0.0
    return min(1.0, max(0.0, p))


def _eta(status: str, elapsed: float | None, progress: float) -> float | None:
    if status != RUNNING or not elapsed or not 0 < progress < 1:
        return None
    return elapsed * (1 - progress) / progress


def _int_or_none(value) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """JSON-shaped copy: dicts, lists, numbers, strings; tensors and numpy become lists/numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy
        return value.tolist()
    return str(value)  # torch.device, dtype, Path ...


def _copy(value: Any) -> Any:
    """Copy a JSON-shaped value (much faster than deepcopy for confusion matrices)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
