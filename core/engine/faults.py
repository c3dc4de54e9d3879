"""Failures on purpose, for the tests of the failure paths: `FREEZE_LAB_FAULT`.

The variable makes a run fail at a global training step (1 = the first batch):

- ``oom@<step>``: raise ``torch.OutOfMemoryError("CUDA out of memory (simulated) ...")``,
- ``error@<step>``: raise ``RuntimeError("simulated failure ...")``,
- ``segfault@<step>``: the process kills itself with SIGSEGV, as a native crash would.

It is read when a run starts; anything else in the variable is an error. The fault rides on the
monitor (`with_faults`) when that step is reported, so the training loop carries no hook of its own.
"""

from __future__ import annotations

import os
import re
import signal

import torch

from core.engine.events import Monitor

FAULT_ENV = "FREEZE_LAB_FAULT"


def with_faults(monitor: Monitor, spec: str | None = None) -> Monitor:
    """`monitor` as it is, or wrapped to fail as `spec` (default: `$FREEZE_LAB_FAULT`) says."""
    spec = (os.environ.get(FAULT_ENV, "") if spec is None else spec).strip()
    if not spec:
        return monitor
    m = re.fullmatch(r"(oom|error|segfault)@(\d+)", spec)
    if not m:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected 'oom@<step>', 'error@<step>' or 'segfault@<step>'")
    return _Faulty(monitor, m.group(1), int(m.group(2)))


class _Faulty:
    """A `Monitor` that fails when step `step` is reported, and otherwise passes everything on."""

    def __init__(self, monitor: Monitor, kind: str, step: int) -> None:
        self.monitor, self.kind, self.step = monitor, kind, step

    def on_start(self, info: dict) -> None:
        self.monitor.on_start(info)

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        if step == self.step:
            self._fail(step)
        self.monitor.on_step(step, epoch, loss)

    def on_epoch(self, record: dict) -> None:
        self.monitor.on_epoch(record)

    def should_stop(self) -> bool:
        return self.monitor.should_stop()

    def _fail(self, step: int) -> None:
        if self.kind == "segfault":  # the process dies as a native crash kills it: only a worker may
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.kind == "oom":
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (simulated by {FAULT_ENV} at step {step}). Tried to allocate 2.00 GiB."
            )
        raise RuntimeError(f"simulated failure ({FAULT_ENV} at step {step})")
