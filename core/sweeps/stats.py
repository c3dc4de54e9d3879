"""What a sweep found: each strategy at its own best rate, mean and standard error over seeds, the
Pareto front, and the recommendation.

Choosing and reporting use different images. Every choice reads the **validation** accuracy of the
members' kept weights: a strategy's rate (the one with the best mean validation accuracy over
seeds, when the sweep tried several: Lee et al. tune the rate per strategy), the best strategy and
the one-standard-error recommendation. What is reported as a strategy's result is its **test**
accuracy at that rate, on the held-out split nothing chose with.

The standard error of the mean is the sample standard deviation / sqrt(n) (None with one seed).
Two strategies are *within each other's error* when their mean validation accuracies differ by no
more than the larger of their standard errors. The recommendation follows the one-standard-error
rule: the best strategy by mean validation accuracy, and the cheapest strategy whose mean is within
one standard error of the best (by training time, and by trainable parameters).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One finished member, as the statistics read it."""

    label: str  # the strategy ("head", "layer1", "full", ...)
    val_acc: float  # of the member's kept weights: what chooses
    trainable_params: int
    train_s: float  # seconds inside the epoch loop (feature pass included)
    seed: int = 0
    lr: float = 0.01
    test_acc: float | None = None  # of the same weights on the held-out split: what reports


@dataclass(frozen=True)
class Row:
    """One strategy of the sweep at its chosen rate: its members' figures aggregated over seeds."""

    label: str
    n: int  # finished members at the chosen rate
    mean_acc: float  # validation: chose the rate, ranks the strategies
    sem_acc: float | None  # None with a single member
    trainable_params: int
    mean_train_s: float
    lr: float = 0.01  # the rate its validation accuracy chose (the only one tried, with one rate)
    test_mean_acc: float | None = None  # the result: held-out test accuracy at that rate
    test_sem_acc: float | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "lr": self.lr, "n": self.n, "mean_acc": self.mean_acc, "sem_acc": self.sem_acc,
                "test_mean_acc": self.test_mean_acc, "test_sem_acc": self.test_sem_acc,
                "trainable_params": self.trainable_params, "mean_train_s": self.mean_train_s}


def sem(values: Sequence[float]) -> float | None:
    """The standard error of the mean: sample standard deviation over sqrt(n); None for n < 2."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def _row(label: str, lr: float, mine: Sequence[Result]) -> Row:
    accs = [r.val_acc for r in mine]
    tests = [r.test_acc for r in mine if r.test_acc is not None]
    return Row(label, len(mine), statistics.fmean(accs), sem(accs), mine[0].trainable_params,
               statistics.fmean(r.train_s for r in mine), lr, statistics.fmean(tests) if tests else None, sem(tests))


def rate_rows(results: Sequence[Result], order: Sequence[str]) -> list[Row]:
    """One row per (strategy, rate) with finished members, strategies in `order`, rates ascending."""
    rows = []
    for label in dict.fromkeys(order):
        for lr in sorted({r.lr for r in results if r.label == label}):
            rows.append(_row(label, lr, [r for r in results if r.label == label and r.lr == lr]))
    return rows


def best_rates(rows: Sequence[Row]) -> list[Row]:
    """Of `rate_rows`, each strategy's row at its chosen rate: the best mean validation accuracy over
    its seeds (the smaller rate on a tie), strategies in the rows' order."""
    best: dict[str, Row] = {}
    for row in rows:  # rates ascending within a strategy: a tie keeps the smaller
        if row.label not in best or row.mean_acc > best[row.label].mean_acc:
            best[row.label] = row
    return list(best.values())


def summarize(results: Sequence[Result], order: Sequence[str]) -> list[Row]:
    """One row per strategy that has finished members, in `order` (the plan's), at its chosen rate."""
    return best_rates(rate_rows(results, order))


def choose_rates(results: Sequence[Result], order: Sequence[str]) -> dict[str, float]:
    """Each strategy's chosen rate (see `best_rates`)."""
    return {row.label: row.lr for row in summarize(results, order)}


def at_chosen_rates(results: Sequence[Result], order: Sequence[str]) -> list[Result]:
    """The results of the members that trained at their strategy's chosen rate."""
    rates = choose_rates(results, order)
    return [r for r in results if rates.get(r.label) == r.lr]


def relative_to_full(results: Sequence[Result], order: Sequence[str], reference: str = "full") -> list[dict]:
    """Each strategy's test accuracy minus full fine-tuning's, seed by seed, both at their chosen rates
    (Lee et al.'s Figure 2): per label (in `order`, the reference left out) {"label", "n", "mean_diff",
    "sem_diff"} over the seeds both finished. Pairing by seed removes what a seed's split does to both."""
    results = [r for r in at_chosen_rates(results, order) if r.test_acc is not None]
    full = {r.seed: r.test_acc for r in results if r.label == reference}
    rows = []
    for label in dict.fromkeys(order):
        diffs = [r.test_acc - full[r.seed] for r in results if r.label == label and r.seed in full]
        if label != reference and diffs:
            rows.append({"label": label, "n": len(diffs), "mean_diff": statistics.fmean(diffs), "sem_diff": sem(diffs)})
    return rows


def within_error(a: Row, b: Row) -> bool:
    """Whether the two mean validation accuracies differ by no more than the larger standard error
    (False without one)."""
    errors = [e for e in (a.sem_acc, b.sem_acc) if e is not None]
    return bool(errors) and abs(a.mean_acc - b.mean_acc) <= max(errors)


def pareto_front(rows: Sequence[Row], cost: str = "mean_train_s") -> list[str]:
    """Labels no other row beats on both validation accuracy (higher) and `cost` (lower), cheapest first."""
    front = [r for r in rows if not any(
        o.mean_acc >= r.mean_acc and getattr(o, cost) <= getattr(r, cost)
        and (o.mean_acc > r.mean_acc or getattr(o, cost) < getattr(r, cost)) for o in rows)]
    return [r.label for r in sorted(front, key=lambda r: getattr(r, cost))]


def recommend(rows: Sequence[Row]) -> dict:
    """{"best", "cheapest_within_error", "fewest_params_within_error"}: labels (None without rows),
    chosen on validation accuracy.

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
