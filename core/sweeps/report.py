"""A sweep's state and answer, read from its member runs: the members table, the summary, the
recommendation. The command line prints it as JSON; the Sweep page draws it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from core.models import build_skeleton
from core.store import ACTIVE, FINISHED, RunRecord
from core.store.sweeps import SweepRecord
from core.sweeps.answer import answer_sentence, what_trains
from core.sweeps.stats import Result, Row, best_rates, pareto_front, rate_rows, recommend, relative_to_full


@dataclass(frozen=True)
class MemberState:
    label: str  # the strategy, with the rate when the sweep tries several ("head @ 0.01")
    strategy: str  # what trains: "head", "layer1", "full", ...
    preset: str
    frozen: list[str]
    lr: float
    seed: int
    run_id: str
    status: str
    val_acc: float | None  # of the weights the run kept, once finished; the last epoch's while it trains
    best_val_acc: float | None
    test_acc: float | None  # held out, once finished
    epochs_done: int
    trainable_params: int | None
    train_s: float | None  # seconds inside the epoch loop, once finished
    where: str = ""  # the machine and device training it ("gpu-node-2 · GPU 1"), once it started

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("label", "strategy", "preset", "frozen", "lr", "seed", "run_id", "status",
                                              "val_acc", "best_val_acc", "test_acc", "trainable_params", "train_s")}


def member_state(entry: dict, record: RunRecord | None) -> MemberState:
    """One member as its run stands (a member whose run folder is gone reads as "missing")."""
    epochs = record.metrics["epochs"] if record is not None else []
    summary = record.summary if record is not None else None
    timings = (summary.timings or {}) if summary is not None else {}
    train_s = timings.get("epochs_s", 0.0) + timings.get("features_s", 0.0) if timings else None
    accs = [e["val_acc"] for e in epochs if isinstance(e.get("val_acc"), (int, float))]
    kept = summary.val_acc if summary is not None and summary.val_acc is not None else accs[-1] if accs else None
    return MemberState(
        entry["label"], entry.get("strategy") or entry["label"].split(" @ ")[0], entry["preset"], list(entry["frozen"]),
        entry["lr"], entry["seed"], entry["run_id"], record.status if record is not None else "missing", kept,
        max(accs) if accs else None, summary.test_acc if summary is not None else None,
        len(epochs), summary.trainable_params if summary is not None else None, train_s,
        where_of(record.metrics.get("info") or {}) if record is not None else "",
    )


def where_of(info: dict) -> str:
    """Where a run trains, from what its engine reported at the start: a Ray member's node and GPUs,
    else this machine's device."""
    if info.get("host"):
        gpus = info.get("gpus") or []
        return f"{info['host']} · " + (f"GPU {', '.join(map(str, gpus))}" if gpus else "CPU")
    return f"this machine · {info['device']}" if info.get("device") else ""


@dataclass(frozen=True)
class SweepReport:
    sweep: SweepRecord
    members: list[MemberState]
    rows: list[Row]  # one per strategy, at its chosen rate
    rates: list[Row]  # one per strategy and rate tried
    recommendation: dict
    front: list[str]  # Pareto front of accuracy against training time, cheapest first
    relative: list[dict]  # accuracy minus full fine-tuning's, seed by seed (`relative_to_full`)

    @property
    def done(self) -> bool:
        return all(m.status not in ACTIVE for m in self.members)

    def to_dict(self) -> dict:
        return {"sweep_id": self.sweep.id, "kind": self.sweep.config.kind,
                "members": [m.to_dict() for m in self.members], "summary": [r.to_dict() for r in self.rows],
                "rates": [r.to_dict() for r in self.rates], "recommendation": dict(self.recommendation),
                "pareto_front": self.front}


def sweep_report(sweep: SweepRecord, runs: dict[str, RunRecord | None]) -> SweepReport:
    """The report of `sweep` from its member runs (`runs`: run id -> record, None when missing)."""
    members = [member_state(entry, runs.get(entry["run_id"])) for entry in sweep.members]
    results = [Result(m.strategy, m.val_acc, m.trainable_params, m.train_s, m.seed, m.lr, m.test_acc) for m in members
               if m.status == FINISHED and m.val_acc is not None and m.train_s is not None]
    order = [m.strategy for m in members]
    rates = rate_rows(results, order)
    rows = best_rates(rates)
    recommendation = recommend(rows)
    recommendation |= answer_of(sweep, members, rows, recommendation["cheapest_within_error"])
    return SweepReport(sweep, members, rows, rates, recommendation, pareto_front(rows), relative_to_full(results, order))


def answer_of(sweep: SweepRecord, members: list[MemberState], rows: list[Row], label: str | None) -> dict:
    """The recommendation's chosen strategy `label` (the cheapest within one standard error of the best,
    on validation), its rate, its test accuracy, and the sentence; "so_far" while members are active."""
    chosen = next((r for r in rows if r.label == label), None)
    active = [m for m in members if m.status in ACTIVE]
    out = {"chosen": None, "lr": None, "test_acc": None, "test_sem_acc": None, "answer": None, "so_far": bool(active)}
    if chosen is None:
        return out
    base = sweep.config.base
    model = build_skeleton(base.arch, base.num_classes)
    times = [m.train_s for m in members if m.train_s is not None]
    so_far = None
    if active:
        finished = len(members) - len(active)
        left = f", about {statistics.fmean(times) * len(active) / 60:.0f} min left" if times else ""
        so_far = f"{finished} of {len(members)} runs ended{left}"
    sentence = answer_sentence(chosen, rows, described=what_trains(chosen.label, model, base.arch),
                               total_params=sum(p.numel() for p in model.parameters()), seeds=sweep.config.seeds,
                               rates=sweep.config.lrs or (base.lr,), so_far=so_far)
    return out | {"chosen": chosen.label, "lr": chosen.lr, "test_acc": chosen.test_mean_acc,
                  "test_sem_acc": chosen.test_sem_acc, "answer": sentence}
