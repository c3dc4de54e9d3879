"""Faults in a real browser, each on its own server: a run that fails mid-way, out of GPU memory
(simulated with FREEZE_LAB_FAULT), and the app dying during a run.

Runs are ResNet-18 full fine-tunes on demo-target at 32 px: 7 steps per epoch (204 training images,
batch size 32), a second or a few per epoch on a 2-core CPU.
"""

import json
import re

import pytest
from playwright.sync_api import expect

from core.jobs import OOM_REASON
from core.store import INTERRUPTED_REASON, RunStore
from tests.e2e.conftest import (
    ONE_THREAD,
    AppServer,
    open_train,
    open_train_small,
    start_run,
    wait_idle,
)

LONG = 180_000  # ms: generous, the machine is shared and slow
STEPS_PER_EPOCH = 7  # demo-target: 204 training images (51 per class: 80 less 16 test and 13 validation), batch 32


@pytest.fixture
def servers(tmp_path):
    """Start servers with `servers(env)` (on this test's folder: a second one is the app restarted);
    every one is stopped at the end."""
    started = []

    def start(env=None) -> AppServer:
        server = AppServer(tmp_path, env={**ONE_THREAD, **(env or {})}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_failed_run_shows_its_reason_and_the_next_run_goes_on(servers, page, shots):
    fault_step = 10 * STEPS_PER_EPOCH + 4  # in epoch 11: ten epochs of metrics exist
    server = servers({"FREEZE_LAB_FAULT": f"error@{fault_step}"})
    open_train_small(page, server)
    doomed = start_run(page, name="doomed run", epochs=12)
    nxt = start_run(page, name="next in line", epochs=2)  # 14 steps: the fault never fires for it
    expect(page.get_by_text("Queued: position 1")).to_be_visible()
    page.screenshot(path=shots / "next_run_queued.png", full_page=True)

    # the queue goes on after the failure
    expect(page.get_by_text("Freeze audit passed")).to_be_visible(timeout=LONG)
    page.wait_for_timeout(1500)
    page.screenshot(path=shots / "next_run_finished.png", full_page=True)

    # the failed run: failed, with its reason, its traceback and its metrics so far
    open_train(page, server, doomed)
    expect(page.get_by_role("heading", name="Run: doomed run")).to_be_visible()
    failed = page.get_by_test_id("stAlert").filter(has_text="This run failed.")
    expect(failed).to_contain_text(f"RuntimeError: simulated failure (FREEZE_LAB_FAULT at step {fault_step})")
    expect(page.get_by_test_id("stExpander").filter(has_text="Traceback")).to_be_visible()
    store = RunStore(server.runs_dir)
    record = store.load(doomed)
    last = record.metrics["epochs"][-1]
    expect(page.get_by_test_id("stMetric").filter(has_text="Validation accuracy")).to_contain_text(f"{last['val_acc']:.1%}")
    expect(page.get_by_test_id("stProgress")).to_have_count(0)
    expect(page.get_by_role("button", name="Stop", exact=True)).to_have_count(0)
    page.wait_for_timeout(1500)
    page.screenshot(path=shots / "failed_run.png", full_page=True)

    assert (record.status, record.reason) == ("failed", f"RuntimeError: simulated failure (FREEZE_LAB_FAULT at step {fault_step})")
    assert len(record.metrics["epochs"]) == 10 and "simulated failure" in store.read_traceback(doomed)
    assert not record.has_weights
    after = store.load(nxt)
    assert after.status == "finished" and len(after.metrics["epochs"]) == 2
    assert after.created < record.finished <= after.started  # it was queued behind the failed run

    # the app keeps serving: another page opens, with no exception
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare").click()
    wait_idle(page)
    expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=shots / "compare_after_failure.png", full_page=True)


def test_out_of_gpu_memory_says_what_to_change(servers, page, shots):
    server = servers({"FREEZE_LAB_FAULT": f"oom@{STEPS_PER_EPOCH + 3}"})  # in epoch 2
    open_train_small(page, server)
    run_id = start_run(page, name="too big", epochs=3)
    failed = page.get_by_test_id("stAlert").filter(has_text="This run failed.")
    expect(failed).to_be_visible(timeout=LONG)
    expect(failed).to_contain_text(OOM_REASON)
    assert "smaller batch size" in OOM_REASON and "freeze more layers" in OOM_REASON
    expect(page.get_by_test_id("stMetric").filter(has_text="Validation accuracy")).to_be_visible()  # epoch 1 kept
    page.wait_for_timeout(1500)
    page.screenshot(path=shots / "oom_failed.png", full_page=True)

    record = RunStore(server.runs_dir).load(run_id)
    assert (record.status, record.reason) == ("failed", OOM_REASON)
    assert len(record.metrics["epochs"]) == 1


@pytest.mark.parametrize("how", ["kill", "terminate"])
def test_a_restart_during_a_run_shows_it_interrupted_with_its_metrics(servers, page, shots, how):
    first = servers()
    open_train_small(page, first)
    run_id = start_run(page, name="cut short", epochs=200)
    # two epochs done: their metric boxes and curves are on the page
    expect(page.get_by_test_id("stProgress")).to_contain_text(re.compile(r"Epoch ([3-9]|\d\d+)/200"), timeout=LONG)
    expect(page.get_by_test_id("stMetric").filter(has_text="Validation accuracy")).to_be_visible()
    page.screenshot(path=shots / "before_restart.png", full_page=True)

    first.kill() if how == "kill" else first.stop()  # SIGKILL (a crash) or SIGTERM
    metrics = json.loads((first.runs_dir / run_id / "metrics.json").read_text())
    assert len(metrics["epochs"]) >= 2 and metrics["steps"]
    assert json.loads((first.runs_dir / run_id / "run.json").read_text())["status"] == "running"

    second = servers()  # the same runs and data folders, a new process
    open_train(page, second, run_id)
    expect(page.get_by_role("heading", name="Run: cut short")).to_be_visible()
    warning = page.get_by_test_id("stAlert").filter(has_text="This run was interrupted.")
    expect(warning).to_contain_text(f"{INTERRUPTED_REASON.capitalize()}. Its metrics so far are kept.")
    last = metrics["epochs"][-1]
    expect(page.get_by_test_id("stMetric").filter(has_text="Validation accuracy")).to_contain_text(f"{last['val_acc']:.1%}")
    expect(page.get_by_test_id("stMetric").filter(has_text="Train accuracy")).to_contain_text(f"{last['train_acc']:.1%}")
    tabs = {"Per class": ("Validation accuracy per class", "Confusion matrix (validation)"),
            "Layer signals": ("Weight drift ‖θ − θ₀‖ / ‖θ₀‖ per stage",
                              "Gradient norm per stage (RMS over the epoch's steps)"),
            "Loss and accuracy": ("Loss", "Accuracy")}
    for tab, titles in tabs.items():  # two charts per tab, drawn when it opens
        page.get_by_role("tab", name=tab).click()
        for title in titles:
            expect(page.get_by_test_id("stPlotlyChart").filter(has=page.locator(".gtitle", has_text=title))).to_have_count(1)
        expect(page.get_by_test_id("stPlotlyChart")).to_have_count(2)
        page.get_by_test_id("stTabs").screenshot(path=shots / f"after_restart_tab_{tab.split()[0].lower()}.png")
    expect(page.get_by_test_id("stProgress")).to_have_count(0)
    expect(page.get_by_role("button", name="Stop", exact=True)).to_have_count(0)
    page.wait_for_timeout(2000)  # let the charts draw
    page.screenshot(path=shots / "after_restart.png", full_page=True)

    record = RunStore(second.runs_dir).load(run_id)
    assert (record.status, record.reason) == ("interrupted", INTERRUPTED_REASON)
    assert record.metrics["epochs"] == metrics["epochs"]  # nothing lost, nothing added


def test_a_crash_in_the_training_process_fails_its_run_and_the_server_answers(servers, page, shots):
    """A segfault in training (a native crash, the OOM killer) used to take the server and every session
    with it: training now runs in a worker process, so only the run fails and the next one starts a fresh
    worker."""
    crash_step = 2 * STEPS_PER_EPOCH + 4  # in epoch 3
    server = servers({"FREEZE_LAB_FAULT": f"segfault@{crash_step}"})
    open_train_small(page, server)
    doomed = start_run(page, name="crashing run", epochs=4)
    nxt = start_run(page, name="after the crash", epochs=2)  # 14 steps: the crash never comes for it
    expect(page.get_by_text("Freeze audit passed")).to_be_visible(timeout=LONG)
    open_train(page, server, doomed)  # a fresh page load: the server answers
    failed = page.get_by_test_id("stAlert").filter(has_text="This run failed.")
    expect(failed).to_contain_text("The training process died: signal 11 (SIGSEGV)")
    page.wait_for_timeout(1000)
    page.screenshot(path=shots / "crashed_run.png", full_page=True)
    store = RunStore(server.runs_dir)
    assert store.load(doomed).metrics["epochs"]  # two epochs of metrics were kept
    assert store.load(nxt).status == "finished"
    assert server.proc.poll() is None  # the server process never died
