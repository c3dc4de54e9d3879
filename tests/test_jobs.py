"""JobManager: FIFO queue, one run at a time, cancel, failures, restart, snapshots.

The training engine is stood in for by small plain-Python train functions
(`Engine` below) that speak the real `Monitor` protocol: they test the
manager's own logic, not training.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref

import pytest
import torch

from core.config import RunConfig
from core.engine import TrainResult
from core.jobs import (
    OOM_REASON,
    JobManager,
    Monitor,
    RunCancelled,
    RunMonitor,
    execute,
    failure_reason,
)
from core.models import build_skeleton
from core.store import RunStore, runs
from core.summary import RunSummary

CONFIG = RunConfig(arch="resnet18", preset="head", dataset="demo-target", epochs=2)
TIMEOUT = 10.0


class Engine:
    """A stand-in for `core.engine.train`: `epochs` x `steps` batches, reporting to the monitor.

    - `log` records (run name, "start"/"end", time) for every run, to check order and overlap;
    - `gate`: if given, the first batch waits for it (checking `should_stop` meanwhile);
    - `pause_after`: after that many steps, set `paused` and wait for `resume`;
    - `fail`: {run name: exception to raise after the first epoch}.
    """

    def __init__(self, epochs=2, steps=3, gate=None, pause_after=None, fail=None):
        self.epochs, self.steps = epochs, steps
        self.gate, self.pause_after, self.fail = gate, pause_after, fail or {}
        self.log: list[tuple[str, str, float]] = []
        self.steps_after_stop = 0
        self.paused, self.resume = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __call__(self, config, monitor, *, device, runs_dir):
        name = config.dataset
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.log.append((name, "start", time.monotonic()))
        try:
            return self._train(name, monitor, device)
        finally:
            with self._lock:
                self.active -= 1
                self.log.append((name, "end", time.monotonic()))

    def _train(self, name, monitor, device):
        total = self.epochs * self.steps
        monitor.on_start({"total_steps": total, "epochs": self.epochs, "classes": ["a", "b"], "device": device})
        step = 0
        for epoch in range(1, self.epochs + 1):
            for _ in range(self.steps):
                if self.gate is not None and step == 0:
                    while not self.gate.wait(0.005):
                        if monitor.should_stop():
                            raise RunCancelled()
                if monitor.should_stop():
                    raise RunCancelled()
                step += 1
                monitor.on_step(step, epoch, 1.0 / step)
                if step == self.pause_after:
                    self.paused.set()
                    assert self.resume.wait(TIMEOUT)
            monitor.on_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.5, "confusion": [[1, 1], [0, 2]]})
            if name in self.fail and epoch == 1:
                raise self.fail[name]
        return TrainResult(summary=RunSummary(val_acc=0.5, classes=[name]), state_dict={"fc.weight": torch.ones(2, 2)})


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


@pytest.fixture
def manager_for(store):
    made = []

    def make(engine, **kwargs):
        manager = JobManager(store, train_fn=engine, device=torch.device("cpu"), **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown(wait=True, timeout=TIMEOUT)


def cfg(name: str) -> RunConfig:
    """A config whose dataset field names the run, so the stand-in engine can log it."""
    return CONFIG.replace(dataset=name)


def test_run_monitor_speaks_the_protocol(store):
    assert isinstance(RunMonitor(store, "x"), Monitor)


def test_a_run_trains_and_is_recorded(store, manager_for):
    manager = manager_for(Engine())
    run_id = manager.submit(cfg("a"), owner="alice", name="first try")
    assert manager.wait(run_id, TIMEOUT) == runs.FINISHED
    record = store.load(run_id)
    assert record.status == runs.FINISHED and record.reason is None
    assert record.owner == "alice" and record.name == "first try"
    assert record.started and record.finished
    assert record.summary == RunSummary(val_acc=0.5, classes=["a"])
    assert len(record.metrics["steps"]) == 6 and len(record.metrics["epochs"]) == 2
    assert record.metrics["info"]["device"] == "cpu"
    assert torch.equal(store.load_weights(run_id)["fc.weight"], torch.ones(2, 2))
    snap = manager.snapshot(run_id)
    assert (snap.status, snap.owner, snap.name) == ("finished", "alice", "first try")
    assert snap.progress == 1.0 and snap.step == 6 and snap.total_steps == 6 and snap.epoch == 2
    assert snap.eta_s is None and snap.elapsed_s > 0
    assert snap.summary.val_acc == 0.5 and snap.info["classes"] == ["a", "b"]
    assert manager.active_runs() == []


def test_invalid_config_creates_nothing(store, manager_for):
    manager = manager_for(Engine())
    with pytest.raises(ValueError, match="epochs"):
        manager.submit(CONFIG.replace(epochs=0))
    assert store.list() == []
    assert manager.active_runs() == []


def test_missing_starting_weights_create_nothing(store, manager_for, tmp_path):
    manager = manager_for(Engine(steps=1))
    with pytest.raises(ValueError, match="No checkpoint file"):
        manager.submit(CONFIG.replace(weights=str(tmp_path / "gone.pt")))
    with pytest.raises(ValueError, match="no run 'nope'"):
        manager.submit(CONFIG.replace(weights="run:nope"))
    alexnet = tmp_path / "alexnet.pt"  # e.g. chosen on the Model page before the architecture changed
    torch.save({k: torch.zeros(v.shape) for k, v in build_skeleton("alexnet", 3).state_dict().items()}, alexnet)
    with pytest.raises(ValueError, match="does not fit"):
        manager.submit(CONFIG.replace(weights=str(alexnet)))
    assert store.list() == []
    backbone = manager.submit(CONFIG)  # a run still queued or training is a fine start: the queue trains it first
    child = manager.submit(CONFIG.replace(weights=f"run:{backbone}"))
    assert manager.wait(child, TIMEOUT) == runs.FINISHED


def test_fifo_one_run_at_a_time(manager_for):
    engine = Engine(steps=2)
    manager = manager_for(engine)
    ids = [manager.submit(cfg(name)) for name in "abcd"]
    for run_id in ids:
        assert manager.wait(run_id, TIMEOUT) == runs.FINISHED
    assert [name for name, event, _ in engine.log if event == "start"] == list("abcd")
    assert engine.max_active == 1
    events = [event for _, event, _ in engine.log]
    assert events == ["start", "end"] * 4  # each run ends before the next starts


def test_queue_positions_and_active_runs(manager_for):
    gate = threading.Event()
    manager = manager_for(Engine(gate=gate))
    first, second, third = (manager.submit(cfg(n)) for n in "abc")
    _until(lambda: manager.snapshot(first).status == runs.RUNNING)
    assert manager.active_runs() == [first, second, third]
    assert manager.snapshot(first).queue_position is None
    assert manager.snapshot(second).queue_position == 1
    assert manager.snapshot(third).queue_position == 2
    assert manager.snapshot(third).status == runs.QUEUED
    gate.set()
    assert manager.wait(third, TIMEOUT) == runs.FINISHED
    assert manager.snapshot(third).queue_position is None


def test_cancel_a_queued_run(store, manager_for):
    gate = threading.Event()
    engine = Engine(gate=gate)
    manager = manager_for(engine)
    first, second, third = (manager.submit(cfg(n)) for n in "abc")
    _until(lambda: manager.snapshot(first).status == runs.RUNNING)
    assert manager.cancel(second) is True
    # At once, before the running run ends:
    assert manager.snapshot(second).status == runs.CANCELLED
    assert store.load(second).status == runs.CANCELLED
    assert manager.snapshot(third).queue_position == 1
    assert manager.active_runs() == [first, third]
    assert manager.cancel(second) is False  # already over
    gate.set()
    assert manager.wait(third, TIMEOUT) == runs.FINISHED
    assert [n for n, event, _ in engine.log if event == "start"] == ["a", "c"]
    assert manager.wait(second) == runs.CANCELLED
    assert not store.load(second).has_weights


def test_cancel_a_running_run_stops_within_one_batch(store, manager_for):
    engine = Engine(epochs=3, steps=4, pause_after=5)
    manager = manager_for(engine)
    run_id = manager.submit(cfg("a"))
    assert engine.paused.wait(TIMEOUT)  # in the middle of epoch 2
    assert manager.cancel(run_id) is True
    engine.resume.set()
    assert manager.wait(run_id, TIMEOUT) == runs.CANCELLED
    record = store.load(run_id)
    assert record.status == runs.CANCELLED and record.reason == "cancelled while training"
    assert [s[0] for s in record.metrics["steps"]] == [1, 2, 3, 4, 5]  # no batch after the request
    assert len(record.metrics["epochs"]) == 1  # metrics so far kept
    assert not record.has_weights and record.summary == RunSummary()
    assert manager.snapshot(run_id).step == 5
    assert manager.cancel(run_id) is False


def test_a_failing_run_is_recorded_and_the_next_one_runs(store, manager_for):
    engine = Engine(fail={"bad": ValueError("bad image in batch 3: not a JPEG\nmore detail")})
    manager = manager_for(engine)
    bad = manager.submit(cfg("bad"))
    good = manager.submit(cfg("good"))
    assert manager.wait(bad, TIMEOUT) == runs.FAILED
    assert manager.wait(good, TIMEOUT) == runs.FINISHED
    record = store.load(bad)
    assert record.reason == "bad image in batch 3: not a JPEG"
    assert len(record.metrics["epochs"]) == 1 and len(record.metrics["steps"]) == 3
    traceback_text = (record.path / "traceback.txt").read_text()
    assert "ValueError: bad image in batch 3" in traceback_text and "_train" in traceback_text
    assert not record.has_weights
    assert manager.snapshot(bad).reason == record.reason


def test_out_of_memory_gets_the_friendly_reason(store, manager_for):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    manager = manager_for(Engine(fail={"big": oom}))
    run_id = manager.submit(cfg("big"))
    assert manager.wait(run_id, TIMEOUT) == runs.FAILED
    assert store.load(run_id).reason == OOM_REASON
    assert OOM_REASON == "Out of GPU memory: try a smaller batch size or freeze more layers"
    assert "OutOfMemoryError" in store.read_traceback(run_id)


def test_a_failed_run_releases_its_tensors(manager_for):
    alive = []

    def leaky(config, monitor, *, device, runs_dir):
        activations = torch.zeros(1024)  # what a real failure leaves in its frames
        alive.append(weakref.ref(activations))
        monitor.on_start({"total_steps": 1, "epochs": 1})
        raise RuntimeError("bad batch")

    manager = manager_for(leaky)
    assert manager.wait(manager.submit(cfg("a")), TIMEOUT) == runs.FAILED
    assert alive[0]() is None


def test_failure_reasons_are_one_short_line():
    assert failure_reason(RuntimeError("CUDA out of memory. Tried to allocate 20 MiB")) == OOM_REASON
    assert failure_reason(RuntimeError("boom\nat line 3")) == "RuntimeError: boom"
    assert failure_reason(KeyError("fc.weight")) == "KeyError: 'fc.weight'"
    assert failure_reason(AssertionError()) == "AssertionError"
    assert len(failure_reason(RuntimeError("x" * 5000))) <= 300


def test_snapshot_is_a_copy(manager_for):
    manager = manager_for(Engine())
    run_id = manager.submit(cfg("a"))
    manager.wait(run_id, TIMEOUT)
    snap = manager.snapshot(run_id)
    snap.metrics["steps"].clear()
    snap.metrics["epochs"][0]["confusion"][0][0] = 99
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.summary.val_acc = -1  # type: ignore[misc]
    snap.info.clear()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.status = "finished"  # type: ignore[misc]
    again = manager.snapshot(run_id)
    assert len(again.metrics["steps"]) == 6
    assert again.metrics["epochs"][0]["confusion"][0][0] == 1
    assert again.summary.val_acc == 0.5 and again.info["epochs"] == 2


def test_live_snapshot_while_running(manager_for):
    engine = Engine(epochs=2, steps=3, pause_after=2)
    manager = manager_for(engine)
    run_id = manager.submit(cfg("a"))
    assert engine.paused.wait(TIMEOUT)
    snap = manager.snapshot(run_id)
    assert snap.status == runs.RUNNING and snap.step == 2 and snap.epoch == 1
    assert snap.progress == pytest.approx(2 / 6)
    assert snap.eta_s is not None and snap.eta_s >= 0
    assert [s[0] for s in snap.metrics["steps"]] == [1, 2]
    assert manager.snapshot(run_id, with_metrics=False).metrics == {"steps": [], "epochs": []}
    assert manager.wait(run_id, timeout=0.01) == runs.RUNNING  # timed out: still running
    engine.resume.set()
    assert manager.wait(run_id, TIMEOUT) == runs.FINISHED


def test_concurrent_submitters_lose_nothing(store, manager_for):
    engine = Engine(epochs=1, steps=1)
    manager = manager_for(engine)
    submitted: dict[str, list[str]] = {}

    def submitter(owner):
        submitted[owner] = [manager.submit(cfg(f"{owner}-{i}"), owner=owner) for i in range(5)]

    threads = [threading.Thread(target=submitter, args=(f"user{t}",)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = [run_id for ids in submitted.values() for run_id in ids]
    assert len(set(all_ids)) == 30
    for owner, ids in submitted.items():
        for run_id in ids:
            assert manager.wait(run_id, TIMEOUT) == runs.FINISHED
            assert store.load(run_id).owner == owner
    assert len(store.list()) == 30
    assert engine.max_active == 1
    assert sorted(n for n, event, _ in engine.log if event == "start") == sorted(
        store.load(i).config.dataset for i in all_ids
    )


def test_restart_marks_in_flight_runs_interrupted(store, manager_for):
    # What a previous process left behind: one run mid-training, one still queued.
    running = store.create(cfg("a"))
    store.set_status(running, runs.RUNNING)
    steps = [[1, 1, 0.7], [2, 1, 0.6]]
    store.write_metrics(running, {"steps": steps, "epochs": [{"epoch": 1}], "info": {"total_steps": 8}})
    queued = store.create(cfg("b"))
    manager = manager_for(Engine())
    assert sorted(manager.interrupted) == sorted([running, queued])
    record = store.load(running)
    assert record.status == runs.INTERRUPTED
    assert record.reason == "the app restarted while this run was in flight"
    assert record.metrics["steps"] == steps
    snap = manager.snapshot(running)  # not in memory: read from disk
    assert snap.status == runs.INTERRUPTED and snap.step == 2 and snap.total_steps == 8
    assert snap.progress == pytest.approx(2 / 8) and snap.queue_position is None
    assert manager.active_runs() == []


def test_snapshot_of_runs_from_disk_and_unknown_ids(store, manager_for):
    first = manager_for(Engine())
    run_id = first.submit(cfg("a"), owner="bob")
    first.wait(run_id, TIMEOUT)
    first.shutdown()
    later = manager_for(Engine())  # a new process, as far as memory goes
    snap = later.snapshot(run_id)
    assert (snap.status, snap.owner, snap.progress, snap.step) == ("finished", "bob", 1.0, 6)
    assert len(snap.metrics["epochs"]) == 2 and snap.summary.classes == ["a"]
    assert later.wait(run_id) == runs.FINISHED
    assert later.snapshot("20200101-000000-0000") is None
    assert later.snapshot("../../etc/passwd") is None
    with pytest.raises(KeyError):
        later.wait("20200101-000000-0000")


def test_shutdown_cancels_queued_and_stops_running(store, manager_for):
    gate = threading.Event()
    manager = manager_for(Engine(gate=gate))
    first, second = manager.submit(cfg("a")), manager.submit(cfg("b"))
    _until(lambda: manager.snapshot(first).status == runs.RUNNING)
    manager.shutdown(wait=True, timeout=TIMEOUT)
    assert store.load(first).status == runs.CANCELLED
    assert store.load(second).status == runs.CANCELLED
    with pytest.raises(RuntimeError):
        manager.submit(cfg("c"))


def test_rename_and_delete_through_the_manager(store, manager_for):
    gate = threading.Event()
    manager = manager_for(Engine(gate=gate))
    run_id = manager.submit(cfg("a"))
    manager.rename(run_id, "renamed")
    assert manager.snapshot(run_id).name == "renamed" == store.load(run_id).name
    with pytest.raises(ValueError):
        manager.delete(run_id)
    gate.set()
    manager.wait(run_id, TIMEOUT)
    manager.delete(run_id)
    assert manager.snapshot(run_id) is None and store.list() == []


def test_execute_synchronously_like_the_command_line(store):
    events = []
    run_id = store.create(cfg("a"))
    monitor = RunMonitor(store, run_id, listener=lambda event, payload: events.append(event))
    outcome = execute(store, run_id, Engine(), torch.device("cpu"), monitor)
    assert outcome == (runs.FINISHED, None)
    assert store.load(run_id).status == runs.FINISHED
    assert events == ["start"] + ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch"]

    failing = store.create(cfg("bad"))
    status, reason = execute(store, failing, Engine(fail={"bad": RuntimeError("nan loss")}), torch.device("cpu"))
    assert (status, reason) == (runs.FAILED, "RuntimeError: nan loss")


def test_a_broken_engine_import_fails_the_run_not_the_worker(store, manager_for, monkeypatch):
    def not_a_result(config, monitor, *, device, runs_dir):
        return None  # no .summary / .state_dict

    manager = manager_for(not_a_result)
    bad = manager.submit(cfg("a"))
    assert manager.wait(bad, TIMEOUT) == runs.FAILED
    assert store.load(bad).reason.startswith("AttributeError")
    manager._train_fn = Engine()
    good = manager.submit(cfg("b"))
    assert manager.wait(good, TIMEOUT) == runs.FINISHED


def _until(condition, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_by_default_runs_train_in_a_worker_process_and_no_module_is_imported_late(tmp_path):
    """The engine's modules come with core.jobs (its thread never imports one lazily: a page thread once
    saw a half-imported pandas that way), and the default engine is the worker process of core.jobs.worker."""
    import sys

    from core.jobs import ProcessTrainer

    assert "core.engine.run" in sys.modules and hasattr(sys.modules["pandas"], "Series")
    manager = JobManager(RunStore(tmp_path / "runs"))
    try:
        assert isinstance(manager._train_fn, ProcessTrainer) and manager._train_fn.pid is None  # started on demand
    finally:
        manager.shutdown()


def test_the_same_submission_twice_while_the_first_is_in_flight_is_refused(store, manager_for):
    """Enter in "Run name" started a run and the Start button then a duplicate: one user action, one run."""
    gate = threading.Event()

    def slow(config, monitor, **kwargs):
        gate.wait(30)
        return Engine()(config, monitor, **kwargs)

    manager = manager_for(slow)
    first = manager.submit(cfg("a"), owner="tab1", name="mine")
    with pytest.raises(ValueError, match=rf"This exact run was started \d+ s ago \({first}\); it is not started twice"):
        manager.submit(cfg("a"), owner="tab1", name="mine")
    other_seed = manager.submit(cfg("a").replace(seed=1), owner="tab1", name="mine")  # a real second run
    other_tab = manager.submit(cfg("a"), owner="tab2", name="mine")  # someone else's
    gate.set()
    for run_id in (first, other_seed, other_tab):
        assert manager.wait(run_id, TIMEOUT) == runs.FINISHED
    again = manager.submit(cfg("a"), owner="tab1", name="mine")  # once the first is done, on purpose
    assert manager.wait(again, TIMEOUT) == runs.FINISHED
    assert len(store.list()) == 4


def test_a_snapshot_counts_epoch_records_so_a_view_sees_an_epoch_end_without_a_new_step(store, manager_for):
    """The live view redraws when the run moved; an epoch's validation ends after its last step, so the
    step alone does not say that a new point exists (the last epoch's point waited for "finished")."""
    stepped, ended, release = threading.Event(), threading.Event(), threading.Event()

    def engine(config, monitor, **kwargs):
        monitor.on_start({"total_steps": 1, "epochs": 1})
        monitor.on_step(1, 1, 0.5)
        stepped.set()
        release.wait(30)
        monitor.on_epoch({"epoch": 1, "val_acc": 0.5})
        release.clear()
        ended.set()
        release.wait(30)
        return Engine()(config, monitor, **kwargs)

    manager = manager_for(engine)
    run_id = manager.submit(cfg("a"))
    assert stepped.wait(30)
    before = manager.snapshot(run_id, with_metrics=False)
    release.set()
    assert ended.wait(30)
    after = manager.snapshot(run_id, with_metrics=False)
    assert (before.step, before.epochs_done) == (1, 0) and (after.step, after.epochs_done) == (1, 1)
    release.set()
    assert manager.wait(run_id, TIMEOUT) == runs.FINISHED
