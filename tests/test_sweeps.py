"""Sweeps: member configs per kind (exact frozen sets), statistics, the recommendation, the record on
disk, the queue (stop, restart) and the command line's JSON."""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.config import MAX_SWEEP_MEMBERS, RunConfig, SweepConfig
from core.data import demo
from core.engine import RunCancelled, TrainResult
from core.estimate import cost_profile
from core.freezing import norm_paths
from core.jobs import JobManager
from core.jobs.executor import Executor, InlineExecutor
from core.jobs.ray_cluster import RayExecutor
from core.models import build_skeleton
from core.store import CANCELLED, FINISHED, INTERRUPTED, RunStore, SweepStore
from core.summary import RunSummary
from core.sweep import main as sweep_main
from core.sweeps import (
    Row,
    member_configs,
    pareto_front,
    plan,
    recommend,
    sem,
    stop_sweep,
    submit_sweep,
    summarize,
    sweep_state,
    within_error,
)
from core.sweeps.answer import answer_sentence, what_trains
from core.sweeps.plan import member_config
from core.sweeps.stats import Result, choose_rates, rate_rows, relative_to_full
from core.sweeps.timing import Work, achieved_rate, member_work

TIMEOUT = 60
BASE = RunConfig(arch="resnet18", num_classes=4, dataset="demo-target:10", image_size=(32, 32), epochs=1, batch_size=8)
TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


# --- plans ------------------------------------------------------------------------------------


def frozen_sets(kind: str, **changes) -> dict[str, tuple[str, ...]]:
    return {m.label: m.strategy.frozen for m in plan(SweepConfig(base=BASE, kind=kind, **changes))}


def test_a_depth_sweep_trains_the_head_then_ever_more_stages_from_the_end():
    assert frozen_sets("depth") == {
        "head": TRUNK,
        "last1": ("conv1", "bn1", "layer1", "layer2", "layer3"),
        "last2": ("conv1", "bn1", "layer1", "layer2"),
        "last3": ("conv1", "bn1", "layer1"),
        "last4": ("conv1", "bn1"),
        "full": (),
    }
    assert list(frozen_sets("depth", stages=("layer3", "layer4"))) == ["head", "last1", "last2", "full"]


def test_a_surgical_sweep_trains_exactly_one_stage_with_the_head():
    sets = frozen_sets("surgical")
    assert list(sets) == ["head", "stem", "layer1", "layer2", "layer3", "layer4", "full"]  # forward order
    assert sets["stem"] == ("layer1", "layer2", "layer3", "layer4")
    assert sets["layer2"] == ("conv1", "bn1", "layer1", "layer3", "layer4")
    model_labels = list(frozen_sets("surgical", stages=("stem", "layer4")))
    assert model_labels == ["head", "stem", "layer4", "full"]


def test_a_grid_crosses_strategies_rates_and_seeds_in_order():
    members = plan(SweepConfig(base=BASE, kind="grid", presets=("head", "layer2", "full"), lrs=(0.01, 0.001), seeds=2))
    assert [(m.label, m.lr, m.seed) for m in members[:4]] == [
        ("head @ 0.01", 0.01, 0), ("head @ 0.01", 0.01, 1), ("head @ 0.001", 0.001, 0), ("head @ 0.001", 0.001, 1)]
    assert len(members) == 12 and members[4].strategy.frozen == ("conv1", "bn1", "layer1", "layer3", "layer4")


def test_auto_rgn_is_a_strategy_of_every_kind():
    members = plan(SweepConfig(base=BASE, kind="surgical", stages=("layer4",), with_auto_rgn=True))
    assert [m.label for m in members] == ["head", "layer4", "full", "auto-rgn"]
    auto = member_config(SweepConfig(base=BASE, kind="surgical"), members[-1])
    assert auto.auto_rgn and auto.preset == "auto-rgn" and not auto.bn_frozen_eval  # norm layers in train mode
    assert auto.frozen == norm_paths(build_skeleton("resnet18", 4)) and len(auto.frozen) == 20  # as Lee et al.'s code
    assert not member_config(SweepConfig(base=BASE), members[-2]).auto_rgn
    grid = plan(SweepConfig(base=BASE, kind="grid", presets=("head", "auto-rgn")))
    assert [(m.label, m.strategy.auto_rgn) for m in grid] == [("head", False), ("auto-rgn", True)]


def test_ten_thousand_pasted_rates_are_refused_before_any_member_is_built():
    started = time.perf_counter()
    with pytest.raises(ValueError, match="at least 10000 runs; the limit is 200"):
        plan(SweepConfig(base=BASE, kind="surgical", lrs=tuple(1e-4 * (i + 1) for i in range(10_000))))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(("changes", "message"), [
    ({"kind": "surgical", "stages": ("layer9",)}, "has no stage 'layer9'"),
    ({"kind": "grid", "presets": ("full",), "with_auto_rgn": True}, "lists auto-rgn among its presets"),
    ({"kind": "grid"}, "needs at least one preset"),
    ({"kind": "depth", "presets": ("head",)}, "presets are for grid sweeps"),
    ({"kind": "zigzag"}, "unknown sweep kind"),
    ({"kind": "surgical", "seeds": 0}, "seeds must be 1-20"),
    ({"kind": "surgical", "lrs": (0.0,)}, "learning rates must be in (0, 10]"),
    ({"kind": "grid", "presets": ("full",), "lrs": tuple(0.001 * (i + 1) for i in range(11)), "seeds": 20},
     f"the limit is {MAX_SWEEP_MEMBERS}"),
    ({"kind": "surgical", "lrs": (0.01, 0.03, 0.01)}, "the learning rate 0.01 is listed twice"),
    ({"kind": "grid", "presets": ("head", "full", "head")}, "the strategy 'head' is listed twice"),
    ({"kind": "surgical", "stages": ("layer1", "layer1")}, "the stage 'layer1' is listed twice"),
])
def test_a_sweep_that_cannot_be_planned_says_why(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        plan(SweepConfig(base=BASE, **changes))


# --- statistics --------------------------------------------------------------------------------


def test_mean_and_standard_error_against_a_hand_computation():
    accs = [0.5, 0.7, 0.9]
    assert sem(accs) == pytest.approx(math.sqrt(((0.2**2) * 2) / 2) / math.sqrt(3))  # sample sd 0.2, n 3
    assert sem([0.5]) is None
    results = [Result("head", a, 10, 1.0) for a in accs] + [Result("full", 0.8, 100, 3.0)]
    rows = summarize(results, ["head", "full", "head"])
    assert [r.label for r in rows] == ["head", "full"]
    assert rows[0].mean_acc == pytest.approx(0.7) and rows[0].n == 3 and rows[1].sem_acc is None
    assert rows[0].sem_acc == pytest.approx(statistics.stdev(accs) / math.sqrt(3))


def row(label, mean, err, params, seconds):
    return Row(label, 3, mean, err, params, seconds)


def test_within_error_means_the_means_differ_by_no_more_than_the_larger_error():
    assert within_error(row("a", 0.80, 0.02, 1, 1), row("b", 0.83, 0.03, 1, 1))
    assert not within_error(row("a", 0.80, 0.02, 1, 1), row("b", 0.84, 0.03, 1, 1))
    assert not within_error(row("a", 0.80, None, 1, 1), row("b", 0.80, None, 1, 1))  # no error to compare with


def test_accuracy_relative_to_full_fine_tuning_is_paired_by_seed_on_test():
    results = [Result("full", 0.10, 100, 9.0, seed=0, test_acc=0.90), Result("full", 0.2, 100, 9.0, seed=1, test_acc=0.80),
               Result("stem", 0.3, 5, 2.0, seed=0, test_acc=0.85), Result("stem", 0.4, 5, 2.0, seed=1, test_acc=0.79),
               Result("layer4", 0.5, 50, 3.0, seed=0, test_acc=0.70)]
    rows = relative_to_full(results, ["head", "stem", "layer4", "full"])
    diffs = [0.85 - 0.90, 0.79 - 0.80]
    assert [r["label"] for r in rows] == ["stem", "layer4"]  # head has no finished member, full is the reference
    assert rows[0]["n"] == 2 and rows[0]["mean_diff"] == pytest.approx(statistics.fmean(diffs))
    assert rows[0]["sem_diff"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2))
    assert rows[1] == {"label": "layer4", "n": 1, "mean_diff": pytest.approx(-0.2), "sem_diff": None}


def test_each_strategy_is_reported_at_the_rate_its_validation_chose_with_its_test_accuracy():
    results = [
        *(Result("head", v, 10, 1.0, seed=s, lr=0.01, test_acc=t) for s, v, t in ((0, 0.70, 0.95), (1, 0.72, 0.95))),
        *(Result("head", v, 10, 1.0, seed=s, lr=0.1, test_acc=t) for s, v, t in ((0, 0.80, 0.60), (1, 0.82, 0.62))),
        *(Result("full", v, 99, 5.0, seed=s, lr=0.01, test_acc=t) for s, v, t in ((0, 0.90, 0.88), (1, 0.92, 0.86))),
        *(Result("full", v, 99, 5.0, seed=s, lr=0.1, test_acc=t) for s, v, t in ((0, 0.50, 0.99), (1, 0.52, 0.99))),
    ]
    assert choose_rates(results, ["head", "full"]) == {"head": 0.1, "full": 0.01}
    rows = summarize(results, ["head", "full"])
    assert [(r.label, r.lr) for r in rows] == [("head", 0.1), ("full", 0.01)]  # validation chose, not test
    assert rows[0].mean_acc == pytest.approx(0.81) and rows[0].test_mean_acc == pytest.approx(0.61)
    assert rows[0].test_sem_acc == pytest.approx(statistics.stdev([0.60, 0.62]) / math.sqrt(2))
    assert rows[1].test_mean_acc == pytest.approx(0.87) and rows[1].n == 2
    assert [(r.label, r.lr) for r in rate_rows(results, ["head", "full"])] == [
        ("head", 0.01), ("head", 0.1), ("full", 0.01), ("full", 0.1)]
    tie = [Result("head", 0.5, 10, 1.0, lr=0.1), Result("head", 0.5, 10, 1.0, lr=0.01)]
    assert choose_rates(tie, ["head"]) == {"head": 0.01}  # a tie keeps the smaller rate


def test_the_answer_in_words_for_a_hand_made_summary():
    model = build_skeleton("resnet18", 4)
    total = sum(p.numel() for p in model.parameters())
    stem = Row("stem", 3, 0.95, 0.01, 9_668, 20.0, 0.03, 0.917, 0.012)
    full = Row("full", 3, 0.96, 0.005, total, 50.0, 0.01, 0.938, 0.005)
    described = what_trains("stem", model, "resnet18")
    assert described == "only the stem (conv1, bn1, relu, maxpool) and the new head (fc)"
    text = answer_sentence(stem, [stem, full], described=described, total_params=total, seeds=3,
                           rates=(0.003, 0.01, 0.03))
    assert text == (
        f"Train only the stem (conv1, bn1, relu, maxpool) and the new head (fc): {100 * 9_668 / total:.2g}% of the "
        "parameters, test accuracy "
        "91.7% ± 1.2% against full fine-tuning's 93.8% ± 0.5%, in 40% of its training time. Chosen on validation "
        "accuracy (the cheapest strategy within one standard error of the best), 3 seeds, its rate 0.03 chosen from "
        "0.003, 0.01, 0.03 on validation; the test images chose nothing.")
    running = answer_sentence(full, [stem, full], described="every layer", total_params=total, seeds=1,
                              rates=(0.01,), so_far="2 of 7 runs ended, about 3 min left")
    assert running.startswith("So far (2 of 7 runs ended, about 3 min left): Train every layer: 100.0% of the")
    assert "one seed (no error bar), one rate (0.01), not tuned" in running
    assert what_trains("last2", model, "resnet18") == "the last 2 stages (layer3, layer4) and the new head (fc)"
    assert what_trains("head", model, "resnet18") == "only the new head (fc)"
    head = Row("head", 3, 0.9, 0.01, 2_052, 1.0, 0.01, 0.896, 0.006)
    assert "0.018% of the parameters" in answer_sentence(head, [head], described="x", total_params=total, seeds=3,
                                                          rates=(0.01,))  # 2,052 of 11,178,564: not "0.0%"


def test_the_recommendation_is_the_best_and_the_cheapest_within_one_standard_error():
    rows = [row("head", 0.78, 0.01, 10, 1.0), row("layer4", 0.86, 0.02, 500, 4.0), row("layer1", 0.85, 0.02, 80, 2.0),
            row("full", 0.87, 0.02, 1000, 9.0)]
    assert recommend(rows) == {"best": "full", "cheapest_within_error": "layer1", "fewest_params_within_error": "layer1"}
    assert recommend([]) == {"best": None, "cheapest_within_error": None, "fewest_params_within_error": None}
    assert pareto_front(rows) == ["head", "layer1", "layer4", "full"]
    assert pareto_front(rows + [row("slow", 0.80, 0.0, 5, 20.0)]) == ["head", "layer1", "layer4", "full"]


# --- the demo world's shifts ----------------------------------------------------------------------


def test_the_shifted_demo_worlds_are_the_source_shapes_shifted_as_described():
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    square = np.asarray(demo.draw_image(rng(), "square"))
    assert np.array_equal(np.asarray(demo.draw_member("demo-flip", demo.SOURCE_CLASSES.index("circle"), rng())), square)
    shifted = demo.draw_image(rng(), "square")
    expected = (np.asarray(shifted, dtype=np.float32) * 0.35 + 120).astype(np.uint8)  # low contrast, lighter
    got = np.asarray(demo.draw_member("demo-shift", demo.SOURCE_CLASSES.index("square"), rng()))
    assert np.array_equal(got, expected) and got.min() >= 120 and got.max() <= 209
    assert demo.WORLDS["demo-shift"][0] == demo.WORLDS["demo-flip"][0] == demo.WORLDS["demo-source"][0]


# --- the queue and the record -----------------------------------------------------------------------


class Engine:
    """A stand-in for `core.engine.train`: one epoch, its accuracy from the member's frozen set; `gate`
    holds every run after the first `free` ones at its first batch until set (checking `should_stop`)."""

    def __init__(self, gate: threading.Event | None = None, free: int = 0):
        self.gate, self.free, self.started = gate, free, threading.Semaphore(0)

    def __call__(self, config, monitor, *, device, runs_dir):
        monitor.on_start({"total_steps": 1, "epochs": 1, "classes": ["a", "b"]})
        self.started.release()
        self.free -= 1
        while self.gate is not None and self.free < 0 and not self.gate.wait(0.005):
            if monitor.should_stop():
                raise RunCancelled()
        acc = 0.5 + len(config.frozen) / 100
        monitor.on_step(1, 1, 1.0)
        monitor.on_epoch({"epoch": 1, "val_acc": acc, "train_acc": acc})
        summary = RunSummary(val_acc=acc, trainable_params=100 - len(config.frozen), timings={"epochs_s": 1.0})
        return TrainResult(summary=summary, state_dict={"fc.weight": torch.ones(1)})


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


def wait_done(manager, record):
    for run_id in record.run_ids:
        manager.wait(run_id, TIMEOUT)


def test_a_sweep_queues_its_members_and_answers_from_them(store):
    manager = JobManager(store, train_fn=Engine(), device=torch.device("cpu"))
    try:
        sweep = SweepConfig(base=BASE, kind="surgical", stages=("layer4",), seeds=2)
        sweep_id = submit_sweep(manager, sweep, owner="alice", name="my   sweep")
        record = SweepStore(store).load(sweep_id)
        assert record.name == "my sweep" and record.owner == "alice" and record.config == sweep
        assert [m["label"] for m in record.members] == ["head", "head", "layer4", "layer4", "full", "full"]
        wait_done(manager, record)
        report = sweep_state(manager.store, record)
        assert report.done and all(m.status == FINISHED for m in report.members)
        assert [r.label for r in report.rows] == ["head", "layer4", "full"]
        assert report.rows[0].mean_acc == pytest.approx(0.56) and report.rows[0].sem_acc == 0.0
        assert report.recommendation["best"] == "head"
        assert store.load(record.run_ids[0]).name == "my sweep · head · seed 0"
        assert [r.id for r in SweepStore(store).list()] == [sweep_id]
    finally:
        manager.shutdown(wait=True, timeout=TIMEOUT)


def test_while_a_sweep_runs_its_answer_says_so_far_and_the_time_left(store):
    gate = threading.Event()
    engine = Engine(gate, free=1)  # the first member finishes, the next one waits in training
    manager = JobManager(store, train_fn=engine, device=torch.device("cpu"))
    try:
        record = SweepStore(store).load(submit_sweep(manager, SweepConfig(base=BASE, kind="surgical", stages=("layer4",))))
        manager.wait(record.run_ids[0], TIMEOUT)
        assert engine.started.acquire(timeout=TIMEOUT) and engine.started.acquire(timeout=TIMEOUT)
        rec = sweep_state(manager.store, record).recommendation
        assert rec["so_far"] and rec["chosen"] == "head"  # the only finished strategy: an answer, marked as such
        assert rec["answer"].startswith("So far (1 of 3 runs ended, about 0 min left): Train only the new head (fc)")
        gate.set()
        wait_done(manager, record)
        rec = sweep_state(manager.store, record).recommendation
        assert not rec["so_far"] and not rec["answer"].startswith("So far")
    finally:
        gate.set()
        manager.shutdown(wait=True, timeout=TIMEOUT)


def test_every_executor_implements_the_protocol_and_an_inline_one_trains_when_waited_for(store):
    assert all(hasattr(cls, m) for cls in (JobManager, RayExecutor, InlineExecutor)
               for m in ("submit", "cancel", "wait", "shutdown"))
    manager = JobManager(store, train_fn=Engine(), device=torch.device("cpu"))
    assert isinstance(manager, Executor)
    manager.shutdown(wait=True, timeout=TIMEOUT)
    executor = InlineExecutor(store, torch.device("cpu"), train_fn=Engine())
    assert isinstance(executor, Executor)
    record = SweepStore(store).load(submit_sweep(executor, SweepConfig(base=BASE, kind="depth", stages=("layer4",))))
    assert {store.load(r).status for r in record.run_ids} == {"queued"}  # recorded before the first trains
    assert executor.cancel(record.run_ids[1]) and not executor.cancel(record.run_ids[1])
    assert executor.wait(record.run_ids[0]) == FINISHED and store.load(record.run_ids[2]).status == "queued"
    executor.shutdown()  # what it never trained ends as cancelled
    assert [store.load(r).status for r in record.run_ids] == [FINISHED, CANCELLED, CANCELLED]
    with pytest.raises(ValueError, match="shut down"):
        executor.submit(BASE)


def test_a_sweep_that_cannot_run_queues_nothing(store):
    manager = JobManager(store, train_fn=Engine(), device=torch.device("cpu"))
    try:
        with pytest.raises(ValueError, match="no run 'nope'"):
            submit_sweep(manager, SweepConfig(base=BASE.replace(weights="run:nope"), kind="depth"))
        assert store.list() == [] and SweepStore(store).list() == []
    finally:
        manager.shutdown(wait=True, timeout=TIMEOUT)


def test_stopping_a_sweep_cancels_the_running_member_and_the_queued_ones(store):
    gate = threading.Event()
    manager = JobManager(store, train_fn=Engine(gate), device=torch.device("cpu"))
    try:
        record = SweepStore(store).load(submit_sweep(manager, SweepConfig(base=BASE, kind="depth", stages=("layer4",))))
        assert stop_sweep(manager, record) == 3
        wait_done(manager, record)
        assert {m.status for m in sweep_state(manager.store, record).members} == {CANCELLED}
    finally:
        gate.set()
        manager.shutdown(wait=True, timeout=TIMEOUT)


def test_after_a_restart_members_in_flight_are_interrupted_and_the_sweep_shows_what_finished(store):
    gate = threading.Event()
    engine = Engine(gate, free=1)  # the first member finishes, the second hangs in training
    manager = JobManager(store, train_fn=engine, device=torch.device("cpu"))
    try:
        record = SweepStore(store).load(submit_sweep(manager, SweepConfig(base=BASE, kind="depth", stages=("layer4",))))
        manager.wait(record.run_ids[0], TIMEOUT)
        assert engine.started.acquire(timeout=TIMEOUT) and engine.started.acquire(timeout=TIMEOUT)
        store.mark_interrupted()  # what the app does when it starts again after a crash
        report = sweep_state(manager.store, SweepStore(store).load(record.id))
        assert [m.status for m in report.members] == [FINISHED, INTERRUPTED, INTERRUPTED]
        assert [r.label for r in report.rows] == ["head"] and report.done
    finally:
        gate.set()
        manager.shutdown(wait=True, timeout=TIMEOUT)


def test_a_damaged_sweep_record_is_skipped(store):
    sweeps = SweepStore(store)
    sweeps.root.mkdir(parents=True)
    (sweeps.root / "20260101-000000-abcd.json").write_text("{not json")
    assert sweeps.list() == []
    with pytest.raises(KeyError):
        sweeps.load("../../etc/passwd")


# --- the command line ---------------------------------------------------------------------------------


def test_the_command_line_prints_the_sweeps_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FREEZE_LAB_FAULT", raising=False)
    args = ["--kind", "surgical", "--stages", "layer4", "--arch", "resnet18", "--dataset", "demo-target:10",
            "--weights", "none", "--image-size", "32", "--epochs", "1", "--seeds", "1", "--lrs", "0.01,0.02",
            "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--json"]
    assert sweep_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"sweep_id", "kind", "members", "summary", "rates", "recommendation", "pareto_front"}
    assert [m["label"] for m in out["members"]] == [f"{s} @ {lr}" for s in ("head", "layer4", "full")
                                                    for lr in ("0.01", "0.02")]
    member = out["members"][2]
    assert member["frozen"] == ["conv1", "bn1", "layer1", "layer2", "layer3"] and member["lr"] == 0.01
    assert member["status"] == FINISHED and 0 <= member["val_acc"] <= 1 and member["train_s"] > 0
    assert set(out["members"][0]) == {"label", "strategy", "preset", "frozen", "lr", "seed", "run_id", "status",
                                      "val_acc", "best_val_acc", "test_acc", "trainable_params", "train_s"}
    assert 0 <= member["test_acc"] <= 1 and member["strategy"] == "layer4"
    assert [(r["label"], r["lr"]) for r in out["rates"]] == [(m["strategy"], m["lr"]) for m in out["members"]]
    assert [r["label"] for r in out["summary"]] == ["head", "layer4", "full"]  # each at the rate validation chose
    for row in out["summary"]:
        tried = [r for r in out["rates"] if r["label"] == row["label"]]
        assert row["mean_acc"] == max(r["mean_acc"] for r in tried)
        assert row == next(r for r in tried if r["lr"] == row["lr"])
        assert set(row) >= {"test_mean_acc", "test_sem_acc", "lr"}
    rec = out["recommendation"]
    assert rec["best"] in {r["label"] for r in out["summary"]} and rec["chosen"] == rec["cheapest_within_error"]
    chosen = next(r for r in out["summary"] if r["label"] == rec["chosen"])
    assert rec["lr"] == chosen["lr"] and rec["test_acc"] == chosen["test_mean_acc"] and not rec["so_far"]
    assert rec["answer"].startswith("Train ") and "chosen from 0.01, 0.02 on validation" in rec["answer"]
    runs = RunStore(tmp_path / "runs")
    assert {r.id for r in runs.list()} == {m["run_id"] for m in out["members"]}


def test_the_command_line_refuses_a_bad_sweep_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    args = ["--kind", "surgical", "--stages", "layer9", "--dataset", "demo-target:10", "--runs-dir",
            str(tmp_path / "runs"), "--json"]
    assert sweep_main(args) == 1
    assert "no stage 'layer9'" in json.loads(capsys.readouterr().out)["reason"]
    assert sweep_main(["--lrs", "0.01,abc", "--runs-dir", str(tmp_path / "runs")]) == 1
    assert "'abc' is not a number" in capsys.readouterr().err
    assert RunStore(tmp_path / "runs").list() == []


# --- the time estimate ----------------------------------------------------------------------------------


def test_a_members_work_counts_the_cached_prefix_once_and_what_trains_every_epoch():
    profile = cost_profile("resnet18", 4, (32, 32))
    model = build_skeleton("resnet18", 4)
    members = plan(SweepConfig(base=BASE, kind="grid", presets=("head", "full")))
    head, full = member_configs(SweepConfig(base=BASE, kind="grid", presets=("head", "full")), members, model)
    fc = 2 * 512 * 4  # the head's forward: a 512 x 4 matrix product per image
    every_call = sum(c.fwd_flops for c in profile.calls)
    work = member_work(profile, head, model)
    assert work == Work(train=fc + fc, val=fc, once=every_call - fc)  # backward of fc: its weight's gradient only
    assert member_work(profile, full, model).once == 0 and member_work(profile, full, model).val == every_call
    assert work.total(epochs=3, train_images=10, val_images=5) == 3 * (2 * fc * 10 + fc * 5) + (every_call - fc) * 15


def test_the_rate_is_what_earlier_runs_of_this_architecture_and_size_reached():
    profile = cost_profile("resnet18", 4, (32, 32))
    model = build_skeleton("resnet18", 4)
    head = BASE.replace(frozen=TRUNK, preset="head")
    runs = [SimpleNamespace(status=FINISHED, config=head, summary=SimpleNamespace(images_per_s=100.0)),
            SimpleNamespace(status=FINISHED, config=head.replace(image_size=(64, 64)), summary=SimpleNamespace(images_per_s=1.0)),
            SimpleNamespace(status=CANCELLED, config=head, summary=SimpleNamespace(images_per_s=1.0))]
    assert achieved_rate(profile, runs, model) == 100.0 * member_work(profile, head, model).train
    assert achieved_rate(profile, runs[1:], model) is None
