"""What a run reports: `RunStart` (before its first batch) and `RunSummary` (when it finishes).

Plain typed data, no torch: the engine fills them, the store writes and reads them (summary.json),
and the command line, the pages and compare read their fields. Reading is tolerant: a summary
written by an older version, or damaged by hand, reads with the fields it lacks (or holds in the
wrong type) as None, never as an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class RunStart:
    """What a run knows before its first batch: `Monitor.on_start` receives it (as a dict), and the
    run's `RunSummary` carries the same fields on, so each fact is computed once."""

    total_steps: int | None = None
    steps_per_epoch: int | None = None
    epochs: int | None = None
    classes: list | None = None  # class names; a label is an index into this list
    device: str | None = None
    precision: str | None = None  # "bf16" or "fp32"
    param_groups: list | None = None  # the optimizer's groups: name, num_tensors, num_params, lr
    feature_cache: dict | None = None  # the plan: used, prefix, reason, build_s, source (the last phase's, in a summary)
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    skipped: int | None = None  # image files the dataset left out
    trainable_params: int | None = None
    frozen_params: int | None = None
    load_report: dict | None = None  # the checkpoint's `LoadReport`, when one was loaded

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data) -> Self | None:
        """A summary read back from JSON; a field of the wrong type (a damaged file) reads as None,
        unknown keys are ignored, None when `data` is not a dict."""
        if not isinstance(data, dict):
            return None
        kinds = {f.name: _KINDS.get(str(f.type).split(" | ")[0]) for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in kinds and _is_kind(v, kinds[k])})


@dataclass(frozen=True)
class RunSummary(RunStart):
    """A finished run's figures: the start facts plus the results. The store writes it to
    summary.json; the CLI, the pages and compare read it."""

    # The figures of the weights the run kept (`weights_epoch`: its best validation epoch with
    # keep="best", its last with keep="last"); validation chose them, the test split only grades them.
    val_acc: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    weights_epoch: int | None = None  # the epoch whose weights the run ended with (and saved)
    epochs_done: int | None = None  # fewer than `epochs` when early stopping ended the run
    last_val_acc: float | None = None  # the last epoch's, whichever weights were kept
    train_acc: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    per_class_acc: list | None = None  # None for a class without validation images
    test_acc: float | None = None  # None when the dataset has no test images
    test_loss: float | None = None
    test_per_class_acc: list | None = None  # aligned with `classes`; None for a class without test images
    test_confusion: list | None = None  # rows: true class, columns: predicted
    splits: dict | None = None  # {"train": n, "val": n, "test": n, "test_digest": which test images}
    images_per_s: float | None = None  # training images over the training passes' time
    total_time_s: float | None = None
    peak_mem_bytes: int | None = None
    gradual_unfreezing: dict | None = None  # after_epoch, head_only_groups, groups, head_only_feature_cache
    freeze_audit: dict | None = None  # ok, checked_tensors, changed
    timings: dict | None = None  # seconds: data_s, model_s, features_s, epochs_s, finish_s


_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "list": (list,), "dict": (dict,)}


def _is_kind(value, kind: tuple[type, ...] | None) -> bool:
    return value is None or kind is None or (isinstance(value, kind) and not isinstance(value, bool))
