"""What a sweep found: mean and standard error per strategy, the Pareto front, and the recommendation.

A strategy's accuracy is its members' final validation accuracy (one per seed): the mean, and the
standard error of the mean (sample standard deviation / sqrt(n); None with one seed). Two
strategies are *within each other's error* when their means differ by no more than the larger of
their standard errors. The recommendation follows the one-standard-error rule: the best strategy
by mean accuracy, and the cheapest strategy whose mean is within one standard error of the best
(by training time, and by trainable parameters).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One finished member, as the statistics read it."""

    label: str
    val_acc: float
    trainable_params: int
    train_s: float  # seconds inside the epoch loop (feature pass included)
    seed: int = 0


@dataclass(frozen=True)
class Row:
    """One strategy of the sweep (one label): its members' figures aggregated."""

    label: str
    n: int  # finished members
    mean_acc: float
    sem_acc: float | None  # None with a single member
    trainable_params: int
    mean_train_s: float

    def to_dict(self) -> dict:
        return {"label": self.label, "n": self.n, "mean_acc": self.mean_acc, "sem_acc": self.sem_acc,
                "trainable_params": self.trainable_params, "mean_train_s": self.mean_train_s}


def sem(values: Sequence[float]) -> float | None:
    """The standard error of the mean: sample standard deviation over sqrt(n); None for n < 2."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def summarize(results: Sequence[Result], order: Sequence[str]) -> list[Row]:
    """One row per label that has finished members, in `order` (the plan's forward order)."""
    rows = []
    for label in dict.fromkeys(order):
        mine = [r for r in results if r.label == label]
        if mine:
            accs = [r.val_acc for r in mine]
            rows.append(Row(label, len(mine), statistics.fmean(accs), sem(accs), mine[0].trainable_params,
                            statistics.fmean(r.train_s for r in mine)))
    return rows


def relative_to_full(results: Sequence[Result], order: Sequence[str], reference: str = "full") -> list[dict]:
    """Each strategy's accuracy minus full fine-tuning's, seed by seed (Lee et al.'s Figure 2): per label
    (in `order`, the reference left out) {"label", "n", "mean_diff", "sem_diff"} over the seeds both
    finished. Pairing by seed removes what a seed's split does to both."""
    full = {r.seed: r.val_acc for r in results if r.label == reference}
    rows = []
    for label in dict.fromkeys(order):
        diffs = [r.val_acc - full[r.seed] for r in results if r.label == label and r.seed in full]
        if label != reference and diffs:
            rows.append({"label": label, "n": len(diffs), "mean_diff": statistics.fmean(diffs), "sem_diff": sem(diffs)})
    return rows


def within_error(a: Row, b: Row) -> bool:
    """Whether the two means differ by no more than the larger standard error (False without one)."""
    errors = [e for e in (a.sem_acc, b.sem_acc) if e is not None]
    return bool(errors) and abs(a.mean_acc - b.mean_acc) <= max(errors)


def pareto_front(rows: Sequence[Row], cost: str = "mean_train_s") -> list[str]:
    """Labels no other row beats on both accuracy (higher) and `cost` (lower), cheapest first."""
    front = [r for r in rows if not any(
        o.mean_acc >= r.mean_acc and getattr(o, cost) <= getattr(r, cost)
        and (o.mean_acc > r.mean_acc or getattr(o, cost) < getattr(r, cost)) for o in rows)]
    return [r.label for r in sorted(front, key=lambda r: getattr(r, cost))]


def recommend(rows: Sequence[Row]) -> dict:
    """{"best", "cheapest_within_error", "fewest_params_within_error"}: labels (None without rows).

    Within error of the best means a mean accuracy at least the best's mean minus its standard error
    (the best's mean itself with one seed).
    """
    if not rows:
        return {"best": None, "cheapest_within_error": None, "fewest_params_within_error": None}
    best = max(rows, key=lambda r: r.mean_acc)
    floor = best.mean_acc - (best.sem_acc or 0.0)
    close = [r for r in rows if r.mean_acc >= floor]
    return {
        "best": best.label,
        "cheapest_within_error": min(close, key=lambda r: (r.mean_train_s, -r.mean_acc)).label,
        "fewest_params_within_error": min(close, key=lambda r: (r.trainable_params, -r.mean_acc)).label,
    }
