"""Background training: a FIFO queue and one supervising thread per device.

The Streamlit app makes one `JobManager` per server process (with
`st.cache_resource`) and every browser session shares it: `submit` a
`RunConfig`, poll `snapshot(run_id)` from a fragment, `cancel` it. The
manager is thread-safe (one lock); its thread never calls `st.*`.

The thread queues, supervises, relays and records; the training itself runs
in a worker process (`core.jobs.worker.ProcessTrainer`, the default `train_fn`),
so that neither the viewers' page reruns (which hold the server's GIL) nor a
crash in training reach each other. The engine reports through the interface
of `core.engine.events` (`Monitor`, `RunCancelled`): the thread hands the worker's
reports to the run's `RunMonitor`, the in-memory live copy that `snapshot`
reads, and the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from core.config import RunConfig
from core.devices import pick_device, training_threads
from core.jobs.checks import check_runnable
from core.jobs.execute import TrainFn, execute
from core.jobs.monitor import Outcome, RunMonitor, copy_plain, int_or_none
from core.jobs.worker import ProcessTrainer
from core.store import (
    CANCELLED,
    FAILED,
    FINISHED,
    RUNNING,
    TERMINAL,
    RunStore,
)
from core.summary import RunSummary

log = logging.getLogger(__name__)


_KEEP_FINISHED = 32  # finished jobs kept in memory for cheap snapshots; older ones are read from disk
DUPLICATE_WINDOW_S = 10.0  # the same owner submitting the same config and name again within this is refused

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
    summary: RunSummary  # the engine's final summary (every field None until finished)
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
        epoch = (int_or_none(records[-1].get("epoch")) or len(records)) if records else (steps[-1][1] if steps else 0)
        total_steps = int_or_none(info.get("total_steps"))
        epochs = int_or_none(info.get("epochs")) or record.config.epochs
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
            summary=m.summary,  # frozen: shared, never copied
            info=copy_plain(m.info),
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
