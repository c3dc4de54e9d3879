"""The run store: the one writer of the runs directory, and the weights of earlier runs.

`runs` (run folders: records, metrics, summaries, weights, statuses), `process` (which process owns
a run, so a dead one is known), `weights` (an earlier run's final weights as a `Checkpoint`).
"""

from core.store.process import describe_process, process_alive, this_process
from core.store.runs import (
    ACTIVE,
    CANCELLED,
    DEAD_OWNER_REASON,
    FAILED,
    FINISHED,
    INTERRUPTED,
    INTERRUPTED_REASON,
    METRICS_FILE,
    QUEUED,
    RUN_FILE,
    RUNNING,
    STATUSES,
    SUMMARY_FILE,
    TERMINAL,
    TRACEBACK_FILE,
    WEIGHTS_FILE,
    RunRecord,
    RunStore,
    StoreError,
    clean_metrics,
    default_name,
    empty_metrics,
    now_iso,
)
from core.store.sweeps import SweepRecord, SweepStore
from core.store.weights import RUN_PREFIX, resolve_weights, run_state_dict

__all__ = [
    "ACTIVE", "CANCELLED", "DEAD_OWNER_REASON", "FAILED", "FINISHED", "INTERRUPTED", "INTERRUPTED_REASON",
    "METRICS_FILE", "QUEUED", "RUNNING", "RUN_FILE", "RUN_PREFIX", "STATUSES", "SUMMARY_FILE", "TERMINAL",
    "TRACEBACK_FILE", "WEIGHTS_FILE", "RunRecord", "RunStore", "StoreError", "SweepRecord", "SweepStore", "clean_metrics", "default_name",
    "describe_process", "empty_metrics", "now_iso", "process_alive", "resolve_weights", "run_state_dict",
    "this_process",
]
