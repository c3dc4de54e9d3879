"""Where runs train, behind one interface: `Executor`.

Three implement it: `JobManager` (the app's queue: one run at a time in a worker process),
`RayExecutor` (a Ray cluster: members side by side) and `InlineExecutor` (in the caller's own
process and thread: the command line's sweep, and tests). A sweep (`core.sweeps.submit_sweep`), a
page and a command line are handed an executor and never branch on which one it is.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from core.config import RunConfig
from core.jobs.checks import check_runnable
from core.jobs.execute import TrainFn, execute
from core.store import CANCELLED, QUEUED, RunStore


@runtime_checkable
class Executor(Protocol):
    """Runs stored in `store`, trained somewhere."""

    store: RunStore

    def submit(self, config: RunConfig, *, owner: str = "", name: str | None = None) -> str:
        """Check `config` (`ValueError` for the user: nothing is created), create its queued run, hand
        it over to train; the run's id."""
        ...

    def cancel(self, run_id: str) -> bool:
        """Ask a run to stop (a queued one never starts); whether there was one to stop."""
        ...

    def wait(self, run_id: str, timeout: float | None = None) -> str | None:
        """Block until the run ends; its status (None when `timeout` passed first)."""
        ...

    def shutdown(self) -> None:
        """Refuse new runs, stop what runs, release what was started."""
        ...


class InlineExecutor:
    """Trains each run in the caller's thread, when the caller waits for it: `submit` only checks
    and creates the run (so a sweep's record lists every member before the first trains), `wait`
    trains it (`core.jobs.execute`). Ctrl-C during `wait` records that run as cancelled (execute
    does) and propagates; `cancel` marks a run that has not started as cancelled, and so does
    `shutdown` for every run it created and never trained."""

    def __init__(self, store: RunStore, device: torch.device | None = None, train_fn: TrainFn | None = None) -> None:
        self.store, self.device, self.train_fn = store, device, train_fn
        self._created: list[str] = []
        self._closed = False

    def submit(self, config: RunConfig, *, owner: str = "", name: str | None = None) -> str:
        if self._closed:
            raise ValueError("This executor has been shut down: no new runs.")
        check_runnable(config, self.store)
        run_id = self.store.create(config, name=name, owner=owner)
        self._created.append(run_id)
        return run_id

    def cancel(self, run_id: str) -> bool:
        if self.store.load(run_id).status != QUEUED:
            return False
        self.store.set_status(run_id, CANCELLED, "stopped before it started")
        return True

    def wait(self, run_id: str, timeout: float | None = None) -> str | None:
        """Train the run now if it is still queued (`timeout` does not apply: it runs here); its status."""
        if self.store.load(run_id).status == QUEUED:
            execute(self.store, run_id, self.train_fn, self.device)
        return self.store.load(run_id).status

    def shutdown(self) -> None:
        """Refuse new runs; the runs it created and never trained end as cancelled."""
        self._closed = True
        for run_id in self._created:
            self.cancel(run_id)
