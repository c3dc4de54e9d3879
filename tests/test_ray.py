"""Sweeps on Ray (`core.jobs.ray_cluster`) against the local queue, on a local Ray instance (2 CPUs, no
dashboard) started once for this session: the same numbers, stop, a killed worker, a bad address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
from streamlit.testing.v1 import AppTest

from core.config import RunConfig, SweepConfig
from core.jobs import JobManager
from core.jobs.ray_cluster import RUNTIME_ENV, ClusterError, RayExecutor, cluster_info
from core.store import CANCELLED, FAILED, FINISHED, RunStore, SweepStore
from core.sweeps import stop_sweep, submit_sweep
from tests.test_training import draw_folder
from ui.services import get_cluster, get_manager

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=RUNTIME_ENV)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return draw_folder(tmp_path_factory.mktemp("shapes"), per_class=8)


@pytest.fixture
def executor(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    ex = RayExecutor(RunStore(tmp_path / "runs"), "local")
    yield ex
    ex.shutdown()


def sweep_of(folder, **changes) -> SweepConfig:
    base = RunConfig(dataset=str(folder), num_classes=3, image_size=(32, 32), batch_size=8, epochs=2, seed=5)
    return SweepConfig(base=base.replace(**changes), kind="grid", presets=("head", "layer4", "full"))


def run_sweep(manager, sweep: SweepConfig) -> list:
    record = SweepStore(manager.store).load(submit_sweep(manager, sweep))
    for run_id in record.run_ids:
        assert manager.wait(run_id, TIMEOUT) == FINISHED
    return [manager.store.load(run_id) for run_id in record.run_ids]


def numbers(record) -> dict:
    epochs = record.metrics["epochs"]
    return {"losses": [s[2] for s in record.metrics["steps"]], "val_acc": [e["val_acc"] for e in epochs],
            "train_loss": [e["train_loss"] for e in epochs], "drift": [e["layers"]["drift"] for e in epochs]}


def wait_until(check, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_a_sweep_on_ray_gives_the_same_numbers_as_the_local_queue(executor, folder, tmp_path):
    sweep = sweep_of(folder)
    on_ray = run_sweep(executor, sweep)
    local = JobManager(RunStore(tmp_path / "local"), device=torch.device("cpu"), threads=1)
    try:
        here = run_sweep(local, sweep)
    finally:
        local.shutdown(wait=True, timeout=60)
    assert [numbers(r) for r in on_ray] == [numbers(r) for r in here]
    info = on_ray[0].metrics["info"]
    assert info["node"] and info["host"] and info["worker_pid"] != os.getpid() and info["gpus"] == []
    assert executor.store.load_weights(on_ray[2].id).keys() == local.store.load_weights(here[2].id).keys()
    assert cluster_info("local").nodes == 1 and cluster_info("local").cpus == 2


def test_stopping_a_sweep_on_ray_cancels_running_and_waiting_members(executor, folder):
    record = SweepStore(executor.store).load(submit_sweep(executor, sweep_of(folder, epochs=200)))
    # two members start (one CPU each), the third waits for a CPU
    wait_until(lambda: sum(bool(executor.store.load(r).metrics.get("steps")) for r in record.run_ids) >= 2)
    stop_sweep(executor, record)
    statuses = [executor.wait(r, TIMEOUT) for r in record.run_ids]
    assert statuses == [CANCELLED] * 3
    runs = [executor.store.load(r) for r in record.run_ids]
    assert sum(bool(r.metrics.get("steps")) for r in runs) == 2  # the waiting one never trained
    assert all(len(r.metrics.get("epochs", [])) < 200 for r in runs)


def test_a_member_whose_worker_dies_fails_with_its_metrics_and_the_others_finish(executor, folder):
    record = SweepStore(executor.store).load(submit_sweep(executor, sweep_of(folder, epochs=6)))
    victim = record.run_ids[2]  # "full": the slowest member
    pid = wait_until(lambda: (executor.store.load(victim).metrics.get("epochs") or None) and
                     executor.store.load(victim).metrics["info"].get("worker_pid"))
    os.kill(pid, signal.SIGKILL)
    statuses = [executor.wait(r, TIMEOUT) for r in record.run_ids]
    assert statuses == [FINISHED, FINISHED, FAILED]
    dead = executor.store.load(victim)
    assert "Ray worker" in dead.reason and "died" in dead.reason
    assert 1 <= len(dead.metrics["epochs"]) < 6  # what it trained before it died is kept


def test_an_address_that_does_not_answer_is_a_message_and_starts_nothing(local_ray, tmp_path):
    store = RunStore(tmp_path / "runs")
    started = time.monotonic()
    with pytest.raises(ClusterError, match="Cannot reach the Ray cluster at '127.0.0.1:9'"):
        RayExecutor(store, "127.0.0.1:9")
    with pytest.raises(ClusterError, match="not a Ray address"):
        RayExecutor(store, "nonsense")
    assert time.monotonic() - started < 10 and store.list() == []


def test_the_command_line_on_ray_prints_the_same_json(folder, tmp_path):
    def sweep_json(*extra) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "core.sweep", "--kind", "grid", "--presets", "head", "full", "--dataset", str(folder),
             "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--json",
             *extra], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
            env=os.environ | {"FREEZE_LAB_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    def comparable(result: dict) -> dict:  # without ids, times and what is chosen by time
        result = {k: v for k, v in result.items() if k not in ("sweep_id", "pareto_front")}
        result["recommendation"] = result["recommendation"]["best"]
        result["members"] = [{k: v for k, v in m.items() if k not in ("run_id", "train_s")} for m in result["members"]]
        for table in ("summary", "rates"):
            result[table] = [{k: v for k, v in r.items() if k != "mean_train_s"} for r in result[table]]
        return result

    here, on_ray = sweep_json(), sweep_json("--ray-address", "local")
    assert comparable(on_ray) == comparable(here)
    assert {m["status"] for m in on_ray["members"]} == {"finished"}


# --- the app ----------------------------------------------------------------------------------------------

SWEEP_PAGE = str(ROOT / "app_pages" / "sweep.py")


@pytest.fixture
def app_env(local_ray, tmp_path, monkeypatch):
    """The app's services on this test's folders, with the cluster that FREEZE_LAB_RAY_ADDRESS will name."""
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    get_manager.clear()
    get_cluster.clear()
    yield monkeypatch
    get_cluster.clear()  # shuts its executor down
    get_manager().shutdown(wait=True, timeout=30)
    get_manager.clear()


def sweep_page(folder):
    at = AppTest.from_file(SWEEP_PAGE, default_timeout=60)
    at.session_state["owner"] = "0123456789ab"
    at.session_state["draft"] = RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32),
                                          epochs=1, batch_size=8)
    at.run()
    at.toggle(key="sweep_tune").set_value(False)  # one rate: three members
    at.multiselect(key="sweep_stages").set_value(["layer4"]).run()
    return at


def test_the_sweep_page_sends_a_sweep_to_the_cluster_and_shows_where_members_ran(app_env, folder):
    app_env.setenv("FREEZE_LAB_RAY_ADDRESS", "local")
    at = sweep_page(folder)
    assert any("side by side on the Ray cluster at `local`" in m.value for m in at.markdown)
    at.button(key="sweep_start").click().run()
    assert not at.exception
    [record] = SweepStore(get_cluster().store).list()
    for run_id in record.run_ids:
        assert get_cluster().executor().wait(run_id, TIMEOUT) == FINISHED
    at.run()
    [table] = [d.value for d in at.dataframe if "strategy" in d.value.columns]
    assert list(table["strategy"]) == ["head", "layer4", "full"] and set(table["status"]) == {FINISHED}
    assert all(w.endswith(" · CPU") and not w.startswith("this machine") for w in table["where"])


def test_an_unreachable_cluster_is_a_message_on_the_page_and_no_sweep_starts(app_env, folder):
    app_env.setenv("FREEZE_LAB_RAY_ADDRESS", "127.0.0.1:9")
    at = sweep_page(folder)
    at.button(key="sweep_start").click().run()
    assert not at.exception
    assert any("Cannot reach the Ray cluster at '127.0.0.1:9'" in e.value for e in at.error)
    assert get_manager().store.list() == [] and SweepStore(get_manager().store).list() == []
