"""Training in a worker process, supervised by the job manager's thread.

The app's server never trains in its own process: viewers' page reruns (and Streamlit's full garbage
collection after each) hold the server's GIL, which a training thread needs for every step and every
kernel launch, and a crash in training (a segfault, the OOM killer) would take every session down with
the server. `bench/viewers.py` measures the first.

`ProcessTrainer` is a `TrainFn` (`core.jobs.execute` calls it as it calls `core.engine.train`): it
hands one `RunConfig` at a time to a long-lived worker process (started with ``spawn``, CUDA-safe,
reused across runs so a run does not pay torch's import), relays the worker's start, step and epoch
reports to the run's `Monitor` in the calling thread, and returns the trained weights, which the
caller saves: the run store stays the only writer of run folders. Stop reaches the worker through a
shared event checked between batches. A worker that dies (a signal, the OOM killer, ``kill -9``)
fails only its run (`TrainingProcessDied`: "The training process died: signal 11 (SIGSEGV)"); the
next run starts a fresh worker, and the device memory went with the process. The worker runs at a
lower scheduling priority than the server (`NICENESS`), so pages stay quick while it trains.

The protocol, over one duplex pipe (the calling thread sends, the worker answers)::

    ("run", config dict, device, runs dir, FREEZE_LAB_* environment)
        -> ("start", info) ("step", step, epoch, loss)... ("epoch", record)... then
           ("done", summary, state dict) or ("error", exception, traceback text)
    ("probe", config dict, device, runs dir, environment)      (the RGN probe, `probe`)
        -> ("done", signals dict, None) or ("error", exception, traceback text)
    ("quit",)
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import traceback
import types
from pathlib import Path

import torch

from core.config import RunConfig
from core.engine import TrainResult, train
from core.engine.events import Monitor, TrainingProcessDied
from core.engine.probe import Signals, probe_rgn
from core.summary import RunSummary

ENV_PREFIX = "FREEZE_LAB_"  # the environment a run reads (data folder, fault injection): sent with each run
# The worker's scheduling niceness, above the server's: training takes whatever CPU the server (and
# anything interactive on the machine) leaves, never the other way round. A CPU run keeps its core busy;
# on a 2-core machine with six viewers' browsers on the same cores, the update lag's p90 went from
# 2.53 s to 1.66 s and opening the Train page a second time from 5.25 s to 0.89 s, while training kept
# its speed (62% and 64% of its speed with no viewer; bench/viewers.py). A GPU run's process is mostly
# waiting on the device and yields little.
NICENESS = 10
POLL_S = 0.1  # how often the supervising thread looks at the stop request and the worker's health


class ProcessTrainer:
    """Train runs in one worker process (started on the first run, restarted after a death)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads  # torch threads in the worker on the CPU (None: torch's default)
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()  # one run at a time; the job manager runs one anyway
        self._proc = None
        self._conn = None
        self._stop = None

    @property
    def pid(self) -> int | None:
        """The worker's process id while it lives."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def __call__(self, config: RunConfig, monitor: Monitor, *, device: torch.device, runs_dir: Path) -> TrainResult:
        summary, state_dict = self._exchange("run", config, monitor, device, runs_dir)
        return TrainResult(summary=RunSummary.from_dict(summary), state_dict=state_dict)

    def probe(self, config: RunConfig, *, device: torch.device, runs_dir: Path) -> Signals:
        """The RGN probe of `config` (`core.engine.probe.probe_rgn`) in the worker."""
        result, _ = self._exchange("probe", config, _Unstoppable(), device, runs_dir)
        return Signals.from_dict(result)

    def _exchange(self, kind: str, config: RunConfig, monitor: Monitor, device: torch.device, runs_dir: Path):
        """Send one task, relay the worker's reports to `monitor` until it answers; the answer's payload."""
        with self._lock:
            conn, stop = self._ready()
            stop.clear()
            env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
            answered = False  # the worker ended the task itself (done, error): it waits for the next one
            try:
                self._talk(conn.send, (kind, config.to_dict(), str(device), str(runs_dir), env))
                while True:
                    if monitor.should_stop():
                        stop.set()  # the worker raises RunCancelled at its next batch boundary
                    if not self._talk(conn.poll, POLL_S):
                        if not self._proc.is_alive():
                            raise self._died()
                        continue
                    reply, *payload = self._talk(conn.recv)
                    if reply == "step":
                        monitor.on_step(*payload)
                    elif reply == "epoch":
                        monitor.on_epoch(payload[0])
                    elif reply == "start":
                        monitor.on_start(payload[0])
                    elif reply == "done":
                        answered = True
                        return payload
                    elif reply == "error":
                        answered = True
                        exc, remote_traceback = payload
                        exc.add_note(f"In the training process:\n{remote_traceback}")
                        raise exc
            finally:
                if not answered and self._proc is not None:
                    self._discard()  # left mid-task (a failing monitor, ...): its state is unknown, start afresh

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to quit (it is ended if it does not)."""
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send(("quit",))
            except (OSError, ValueError):
                pass
            self._proc.join(timeout)
            self._end(timeout)

    def _ready(self):
        """The live worker's pipe and stop event, starting a worker when there is none."""
        if self._proc is None or not self._proc.is_alive():
            parent, child = self._ctx.Pipe()
            self._stop = self._ctx.Event()
            self._proc = self._ctx.Process(target=serve, args=(child, self._stop, self.threads),
                                           name="freeze-lab-trainer", daemon=True)
            with _no_main_module():
                self._proc.start()
            child.close()
            self._conn = parent
        return self._conn, self._stop

    def _talk(self, call, *args):
        """One operation on the pipe; a broken pipe means the worker is gone."""
        try:
            return call(*args)
        except (EOFError, OSError):
            raise self._died() from None

    def _discard(self) -> None:
        """End the worker at once (under the lock): the next run starts a fresh one."""
        self._end(10)

    def _end(self, timeout: float) -> None:
        """Kill the worker if it still lives, close the pipe and forget both (under the lock)."""
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout)
        self._conn.close()
        self._proc = self._conn = self._stop = None

    def _died(self) -> TrainingProcessDied:
        self._proc.join(5)
        code = self._proc.exitcode
        self._end(5)
        if code is not None and code < 0:
            how = f"signal {-code} ({signal.Signals(-code).name})"
        else:
            how = f"exit status {code}"
        hint = "; the system kills a process so when memory runs short" if code == -signal.SIGKILL else ""
        return TrainingProcessDied(f"The training process died: {how}{hint}")


@contextlib.contextmanager
def _no_main_module():
    """While a worker starts: a bare `__main__`, so the spawned child does not import the parent's.

    ``spawn`` children import the parent's main module by its file (`multiprocessing.spawn`). In the
    app that is the page Streamlit is running (it makes each script `__main__`), which would run in
    the worker and may fail there; the worker needs only `serve`, importable from this module.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


# --- the worker process ------------------------------------------------------------------------------


class _PipeMonitor:
    """The `Monitor` the engine reports to inside the worker: every report goes down the pipe."""

    def __init__(self, conn, stop) -> None:
        self.conn, self.stop = conn, stop

    def on_start(self, info: dict) -> None:
        self.conn.send(("start", {**info, "worker_pid": os.getpid()}))

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        self.conn.send(("step", step, epoch, loss))

    def on_epoch(self, record: dict) -> None:
        self.conn.send(("epoch", record))

    def should_stop(self) -> bool:
        return self.stop.is_set()


class _Unstoppable:
    """The monitor of a task nobody stops midway (a probe: a few batches)."""

    def should_stop(self) -> bool:
        return False


def serve(conn, stop, threads: int | None) -> None:
    """The worker's whole life: train each run it is sent, until "quit" or the server is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the server's terminal is the server's to handle
    if hasattr(os, "nice"):  # (POSIX)
        os.nice(NICENESS)
    if threads:
        torch.set_num_threads(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if message[0] == "quit":
            return
        kind, config, device, runs_dir, env = message
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update(env)
        config, device, runs_dir = RunConfig.from_dict(config), torch.device(device), Path(runs_dir)
        try:
            if kind == "probe":
                result = probe_rgn(config, device=device, runs_dir=runs_dir)
                conn.send(("done", result.to_dict(), None))
            else:
                result = train(config, _PipeMonitor(conn, stop), device=device, runs_dir=runs_dir)
                conn.send(("done", result.summary.to_dict(), result.state_dict))
        except Exception as exc:
            remote_traceback = traceback.format_exc()
            conn.send(("error", _portable(exc), remote_traceback))
        finally:
            result = None
            gc.collect()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()


def _portable(exc: Exception) -> Exception:
    """`exc` itself when it survives pickling (its type and message reach the run's record), else a
    RuntimeError that keeps its type's name and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
