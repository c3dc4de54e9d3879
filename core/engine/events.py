"""The training engine's interface to whoever runs it: what it reports, to what, and how it is stopped.

The engine (`core.engine.train`) reports to a `Monitor` and leaves by `RunCancelled` when the
monitor asks it to stop (fastai's `CancelFitException` pattern: one exit, caught in one place,
`core.jobs.execute`). Whoever supervises it (the job manager's thread, a worker process's pipe, the
command line) implements the same protocol. `TrainingProcessDied` is what a supervisor raises when
the process training a run ends without an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from core.summary import RunSummary


class RunCancelled(Exception):
    """Raised by the training engine when `monitor.should_stop()` turns true.

    `execute` catches it and records the run as "cancelled"; metrics so far
    are kept, weights are not saved.
    """


class TrainingProcessDied(RuntimeError):
    """The process training a run ended without an answer (a signal, the OOM killer); the message,
    "The training process died: …", is what the run's record says."""


@runtime_checkable
class Monitor(Protocol):
    """What the training engine reports to while it trains."""

    def on_start(self, info: dict) -> None:
        """Once, before the first batch. Keys include total_steps, epochs, classes,
        device, param_groups, feature_cache."""

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        """After every optimizer step: `step` is the global step count so far
        (1 after the first batch, `total_steps` after the last)."""

    def on_epoch(self, record: dict) -> None:
        """After each epoch's validation. Keys: epoch, train_loss, train_acc, val_loss,
        val_acc, per_class_acc, confusion, epoch_time_s, images_per_s, peak_mem_bytes, lr, lrs,
        layers (`core.engine.signals.LayerDrift.epoch_record`)."""

    def should_stop(self) -> bool:
        """Checked between batches; when true the engine raises `RunCancelled`."""


@dataclass
class TrainResult:
    """What `core.engine.train` returns: the summary, and the weights the store saves."""

    summary: RunSummary
    state_dict: dict[str, Tensor]  # trainable parameters + all buffers, on the CPU
