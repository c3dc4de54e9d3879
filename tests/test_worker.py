"""Training in a worker process (`core.jobs.ProcessTrainer`), supervised by the job manager's thread.

Each test spawns a real worker (torch's import in it takes a few seconds) and trains tiny runs.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import types

import pytest
import torch

from core.config import RunConfig
from core.jobs import JobManager, ProcessTrainer, RunMonitor, execute, worker
from core.models import build_model
from core.store import RunStore, runs
from tests.test_training import draw_folder

TIMEOUT = 180


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return draw_folder(tmp_path_factory.mktemp("shapes"), per_class=8)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FREEZE_LAB_FAULT", raising=False)


@pytest.fixture
def manager(tmp_path):
    m = JobManager(RunStore(tmp_path / "runs"), device=torch.device("cpu"), threads=1)
    yield m
    m.shutdown(wait=True, timeout=60)


def config(folder, **changes) -> RunConfig:
    return RunConfig(**{"dataset": str(folder), "num_classes": 3, "image_size": (32, 32), "batch_size": 8,
                        "epochs": 1, **changes})


def wait_for_step(manager, run_id, step=1, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = manager.snapshot(run_id, with_metrics=False)
        if snap.step >= step and snap.info.get("worker_pid"):
            return snap
        time.sleep(0.05)
    raise AssertionError("the run never stepped")


def test_the_app_trains_in_a_worker_process_with_the_same_results_as_in_process(folder, tmp_path, manager):
    cfg = config(folder, epochs=2, seed=3)
    run_id = manager.submit(cfg)
    assert manager.wait(run_id, TIMEOUT) == runs.FINISHED
    snap = manager.snapshot(run_id)
    assert snap.info["worker_pid"] != os.getpid()  # not the server's process
    store = RunStore(tmp_path / "here")
    here = store.create(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (threads=1): the same reduction order, the same numbers
    try:
        assert execute(store, here, device=torch.device("cpu")).status == runs.FINISHED  # the engine in this process
    finally:
        torch.set_num_threads(threads)
    same = store.load(here)
    assert [s[2] for s in snap.metrics["steps"]] == pytest.approx([s[2] for s in same.metrics["steps"]], abs=1e-5)
    assert snap.summary.val_acc == same.summary.val_acc
    weights, weights_here = manager.store.load_weights(run_id), store.load_weights(here)
    assert weights.keys() == weights_here.keys()
    assert all(torch.allclose(weights[k].float(), weights_here[k].float(), atol=1e-5) for k in weights)


def test_the_worker_never_runs_the_servers_main_script(folder, manager, tmp_path, monkeypatch):
    """Streamlit (and AppTest) make the page being run `__main__`; a spawned child imports the parent's
    `__main__` unless told not to, and a page that fails outside Streamlit killed the worker at start."""
    page = tmp_path / "a_page.py"
    page.write_text("raise SystemExit('a page script ran in the worker')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__, fake_main.__spec__ = str(page), None
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    run_id = manager.submit(config(folder))
    assert manager.wait(run_id, TIMEOUT) == runs.FINISHED, manager.store.load(run_id).reason
    assert sys.modules["__main__"] is fake_main  # left as it was


def test_the_worker_is_reused_across_runs(folder, manager):
    first = manager.submit(config(folder))
    assert manager.wait(first, TIMEOUT) == runs.FINISHED
    second = manager.submit(config(folder, seed=1))
    assert manager.wait(second, TIMEOUT) == runs.FINISHED
    assert manager.snapshot(first).info["worker_pid"] == manager.snapshot(second).info["worker_pid"]


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX scheduling priorities")
def test_the_worker_yields_the_cpu_to_the_server(folder, manager):
    run_id = manager.submit(config(folder, epochs=3))
    pid = wait_for_step(manager, run_id).info["worker_pid"]
    server = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, server + worker.NICENESS) > server
    manager.cancel(run_id)


def test_a_killed_worker_fails_only_its_run_and_the_next_run_finishes(folder, manager):
    long = manager.submit(config(folder, epochs=200))
    snap = wait_for_step(manager, long)
    os.kill(snap.info["worker_pid"], signal.SIGKILL)
    assert manager.wait(long, TIMEOUT) == runs.FAILED
    record = manager.store.load(long)
    assert record.reason == ("The training process died: signal 9 (SIGKILL); the system kills a process so when "
                             "memory runs short")
    assert record.metrics["steps"]  # its metrics so far are kept
    after = manager.submit(config(folder, seed=2))  # a fresh worker
    assert manager.wait(after, TIMEOUT) == runs.FINISHED
    assert manager.snapshot(after).info["worker_pid"] != snap.info["worker_pid"]


def test_a_segfault_in_training_fails_the_run_not_the_server(folder, manager, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_FAULT", "segfault@2")  # sent to the worker with the run
    crashed = manager.submit(config(folder))
    assert manager.wait(crashed, TIMEOUT) == runs.FAILED
    assert manager.store.load(crashed).reason == "The training process died: signal 11 (SIGSEGV)"
    monkeypatch.delenv("FREEZE_LAB_FAULT")
    fine = manager.submit(config(folder, seed=4))
    assert manager.wait(fine, TIMEOUT) == runs.FINISHED


def test_stop_reaches_the_worker_within_a_batch(folder, manager):
    long = manager.submit(config(folder, epochs=200))
    wait_for_step(manager, long)
    assert manager.cancel(long)
    assert manager.wait(long, 60) == runs.CANCELLED
    assert manager.store.load(long).reason == "cancelled while training"


def test_a_stride_0_checkpoint_sent_through_the_queue_leaves_the_server_running(folder, tmp_path, manager, monkeypatch):
    """Whatever the loader does with the crafted checkpoint of the hostile-input issue, it happens in the
    worker: here the pre-check is bypassed, so the worker's own loader meets the file."""
    import core.jobs.manager

    state = build_model("resnet18", 3).state_dict()
    state["fc.weight"] = torch.zeros(1).expand(3, 512)
    torch.save(state, tmp_path / "stride0.pt")
    monkeypatch.setattr(core.jobs.manager, "check_runnable", lambda config, store: None)
    run_id = manager.submit(config(folder, weights=str(tmp_path / "stride0.pt")))
    assert manager.wait(run_id, TIMEOUT) == runs.FAILED
    assert "strides (0, 0)" in manager.store.load(run_id).reason
    fine = manager.submit(config(folder, seed=5))
    assert manager.wait(fine, TIMEOUT) == runs.FINISHED


def test_an_error_in_the_worker_keeps_its_type_message_and_traceback(folder, manager, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_FAULT", "error@1")
    run_id = manager.submit(config(folder))
    assert manager.wait(run_id, TIMEOUT) == runs.FAILED
    assert manager.store.load(run_id).reason == "RuntimeError: simulated failure (FREEZE_LAB_FAULT at step 1)"
    trace = manager.store.read_traceback(run_id)
    assert "In the training process:" in trace and "train_one_epoch" in trace


def test_a_run_left_mid_way_by_its_supervisor_does_not_leave_the_worker_out_of_step(folder, tmp_path):
    """If the supervising side fails mid-run (here its monitor raises at the third step), the worker, whose
    state is then unknown, is ended: the next run gets a fresh one and its own reports, not the old run's."""
    trainer = ProcessTrainer(threads=1)
    store = RunStore(tmp_path / "runs")

    class Failing(RunMonitor):
        def on_step(self, step, epoch, loss):
            if step == 3:
                raise OSError(28, "No space left on device")
            super().on_step(step, epoch, loss)

    try:
        first = store.create(config(folder, epochs=50))
        with pytest.raises(OSError, match="No space left"):
            trainer(store.load(first).config, Failing(store, first), device=torch.device("cpu"), runs_dir=store.root)
        assert trainer.pid is None
        second = store.create(config(folder, seed=7))
        monitor = RunMonitor(store, second)
        result = trainer(store.load(second).config, monitor, device=torch.device("cpu"), runs_dir=store.root)
        steps = [s[0] for s in monitor.metrics()["steps"]]
        assert result.summary.epochs == 1 and steps == list(range(1, result.summary.total_steps + 1))  # its own steps
        assert result.summary.total_steps < 50  # and not the first run's
    finally:
        trainer.close()
