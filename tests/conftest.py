"""Fixtures shared by the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import RunConfig
from core.engine import TrainResult, train
from core.engine.events import Monitor
from core.jobs import manager as manager_module


class InProcessTrainer:
    """The job manager's `train_fn` for page tests: the real engine (`core.engine.train`) in the
    manager's supervising thread, instead of a spawned worker process that imports torch again
    (8-15 s per test here). The worker process itself is tested in tests/test_worker.py and by the
    browser tests, which start the real app."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def __call__(self, config: RunConfig, monitor: Monitor, *, device: torch.device, runs_dir: Path) -> TrainResult:
        return train(config, monitor, device=device, runs_dir=runs_dir)

    def close(self) -> None:
        """Nothing to end: no process was started."""


@pytest.fixture
def in_process_training(monkeypatch):
    """Job managers made during the test (the app's `get_manager` too) train in this process."""
    monkeypatch.setattr(manager_module, "ProcessTrainer", InProcessTrainer)
