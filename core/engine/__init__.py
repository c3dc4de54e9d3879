"""The training engine: one run from a `RunConfig` to a `RunSummary` and its weights.

`run` (`train` and its named steps), `loop` (batches on the device, one epoch, evaluation),
`augment` (batch augmentation on the device), `optim` (optimizer and scheduler), `features` (the
frozen prefix's features, computed once and kept on disk), `audit` (nothing frozen moved),
`faults` (failures on purpose, for tests), `events` (the `Monitor` interface and the result),
`signals` (layer drift, Auto-RGN), `probe` (the relative-gradient-norm probe).
"""

from core.engine.events import Monitor, RunCancelled, TrainingProcessDied, TrainResult
from core.engine.faults import FAULT_ENV
from core.engine.loop import DivergedError
from core.engine.optim import build_optimizer, build_scheduler
from core.engine.probe import PROBE_BATCHES, Signals, probe_rgn
from core.engine.run import train
from core.summary import RunStart, RunSummary

__all__ = [
    "FAULT_ENV", "PROBE_BATCHES", "DivergedError", "Monitor", "RunCancelled", "RunStart", "RunSummary", "Signals",
    "TrainResult", "TrainingProcessDied", "build_optimizer", "build_scheduler", "probe_rgn", "train",
]
