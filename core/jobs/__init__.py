"""Jobs: runs queued, supervised and recorded in the background; checks before a run exists.

`manager` (`JobManager`: the queue, the supervising thread, cancel, snapshots), `execute` (one run
trained and its outcome recorded), `monitor` (`RunMonitor`: a run's live state), `worker` (the
local-process executor: training in a long-lived spawned process), `checks` (a config checked
before its run is created).
"""

from core.engine.events import Monitor, RunCancelled, TrainingProcessDied
from core.jobs.checks import check_runnable, check_weights
from core.jobs.execute import (
    CPU_OOM_REASON,
    OOM_REASON,
    TrainFn,
    execute,
    failure_reason,
)
from core.jobs.manager import DUPLICATE_WINDOW_S, JobManager, RunSnapshot
from core.jobs.monitor import Outcome, RunMonitor
from core.jobs.worker import ProcessTrainer

__all__ = [
    "CPU_OOM_REASON", "DUPLICATE_WINDOW_S", "OOM_REASON", "JobManager", "Monitor", "Outcome", "ProcessTrainer",
    "RunCancelled", "RunMonitor", "RunSnapshot", "TrainFn", "TrainingProcessDied", "check_runnable", "check_weights",
    "execute", "failure_reason",
]
