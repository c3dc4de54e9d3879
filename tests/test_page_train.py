"""AppTest for the Train page: start a tiny run, poll it to the end, stop another."""

import json
import math
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.analysis import compare
from core.config import RunConfig
from tests.test_training import draw_folder
from ui.services import get_manager

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "train.py")


@pytest.fixture
def folder(tmp_path_factory):
    return draw_folder(tmp_path_factory.mktemp("shapes"), per_class=8)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, in_process_training):
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    get_manager.clear()  # a fresh JobManager on this test's runs directory
    yield
    get_manager().shutdown(wait=True, timeout=30)
    get_manager.clear()


def open_page(folder, **changes) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["draft"] = RunConfig(
        arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32), batch_size=8,
        epochs=1, preset="head", frozen=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"), **changes)
    return at.run()


def poll_until(at: AppTest, done, timeout=60) -> AppTest:
    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()  # run_every timers never fire in AppTest: rerun by hand
        if done(at):
            return at
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_start_a_run_and_see_it_finish(folder):
    at = open_page(folder)
    assert not at.exception
    at.number_input(key="train_epochs").set_value(2)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    at = poll_until(at, lambda a: any("Freeze audit passed" in s.value for s in a.success))
    assert not at.exception
    assert get_manager().store.load(run_id).status == "finished"
    record = get_manager().store.load(run_id)
    shown = {m.label: m.value for m in at.metric}
    kept = record.summary.weights_epoch
    assert shown["Test accuracy"] == f"{record.summary.test_acc:.1%}"
    # images/s has one meaning: the whole run's, as Compare's table has it (with thousands separators)
    assert shown["Images / s"] == f"{record.summary.images_per_s:,.0f}"
    assert compare.runs_table([record])["images/s"][0] == round(record.summary.images_per_s)
    # the top card is the tab's draft, labelled so; the run shows its own setup (another draft here: full fine-tune)
    at.session_state["draft"] = at.session_state["draft"].replace(preset="full", frozen=())
    at.run()
    assert any(m.value.startswith("**Your draft**: what Start trains") for m in at.markdown)
    assert {m.label: m.value for m in at.metric}["Strategy"] == "Full fine-tune"
    assert any(f"id `{run_id}` · finished · trained ResNet-18 · Head only · shapes" in c.value for c in at.caption)
    assert shown[f"Validation accuracy (epoch {kept} of 2)"] == f"{record.metrics['epochs'][kept - 1]['val_acc']:.1%}"
    assert any("Feature cache: on" in c.value for c in at.caption)
    # the charts' tabs: only the open one's charts are built and sent
    assert [t.label for t in at.tabs] == ["Loss and accuracy", "Per class", "Layer signals"]
    assert drawn_charts(at) == ["train_loss_chart", "train_acc_chart"]
    # the finished run's loss curve ends at its last step (the live view redraws it only every few seconds)
    steps = get_manager().store.load(run_id).metrics["steps"]
    loss = json.loads(next(c for c in at.get("plotly_chart") if c.proto.id.endswith("train_loss_chart")).proto.spec)
    assert loss["data"][0]["x"][-1] == steps[-1][0] and loss["data"][0]["y"][-1] == steps[-1][2]
    at.session_state["train_charts"] = "Per class"
    assert drawn_charts(at.run()) == ["train_class_chart", "train_confusion_chart"]
    at.session_state["train_charts"] = "Layer signals"
    assert drawn_charts(at.run()) == ["train_drift_chart", "train_grad_chart"]
    # the layer signals: a head-only run moved its head and nothing else, in each of its 2 epochs
    drift = drawn_heatmap(at, "train_drift_chart")
    assert drift["x"] == ["epoch 1", "epoch 2"] and drift["y"] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [row[0] for row in drift["text"][:5]] == ["frozen"] * 5 and drift["text"][5][0].endswith("%")
    recorded = get_manager().store.load(run_id).metrics["epochs"][-1]["layers"]
    assert drift["text"][5][1] == f"{recorded['drift'][5]:.2%}"


def drawn_charts(at) -> list[str]:
    """The keys of the Plotly charts the page sent, in order (a chart's element id ends with its key)."""
    return [c.proto.id.rpartition("-")[2] for c in at.get("plotly_chart")]


def drawn_heatmap(at, key: str) -> dict:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key))
    return json.loads(chart.proto.spec)["data"][0]


def test_bad_hyper_parameters_are_a_message(folder):
    at = open_page(folder, unfreeze_after=0)
    before = at.session_state["draft"]
    at.number_input(key="train_unfreeze").set_value(5)  # past the last epoch
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    assert any("gradual unfreezing" in e.value for e in at.error)
    assert not get_manager().store.list()
    assert at.session_state["draft"] == before  # a refused start changes nothing


def test_stop_a_run(folder):
    at = open_page(folder)
    at.number_input(key="train_epochs").set_value(50)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    at = poll_until(at, lambda a: any(b.key == "train_stop" for b in a.button))
    at.button(key="train_stop").click().run()
    at = poll_until(at, lambda a: any("cancelled" in w.value for w in a.warning))
    assert not at.exception
    assert any("This run was cancelled.** Cancelled while training." in w.value for w in at.warning)
    assert get_manager().store.list()[0].status == "cancelled"


def test_rename_and_delete_a_finished_run(folder):
    at = open_page(folder)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    run_id = get_manager().store.list()[0].id
    get_manager().wait(run_id, timeout=60)
    at.run()
    at.text_input(key=f"train_rename_{run_id}").input("my probe").run()
    at.button(key="train_rename").click().run()
    assert get_manager().store.load(run_id).name == "my probe"
    at.button(key="train_delete").click().run()
    assert not at.exception
    assert not get_manager().store.exists(run_id)


def shown_run(at: AppTest) -> str:
    run = at.query_params["run"]
    return run[0] if isinstance(run, list) else run


def test_a_second_run_started_in_the_same_tab_is_the_one_shown(folder):
    """Regression: the keyed "Show run" box kept the first run and sent the URL back to it."""
    at = open_page(folder)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    first = shown_run(at)
    get_manager().wait(first, timeout=60)
    at.run()
    assert at.selectbox(key="train_show").value == first
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    second = get_manager().store.list()[0].id
    assert second != first
    at.run()
    assert shown_run(at) == second and at.selectbox(key="train_show").value == second
    assert any(second in c.value for c in at.caption)
    at.selectbox(key="train_show").set_value(first).run()  # choosing in the box still works
    assert shown_run(at) == first and any(first in c.value for c in at.caption)


def test_without_a_run_in_the_url_a_tab_shows_its_own_newest_run(folder):
    """Another session's newer run is not shown as this tab's run (e.g. coming back from another page)."""
    cfg = RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32), batch_size=8,
                    epochs=1, preset="head", frozen=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))
    mine = get_manager().submit(cfg, owner="me", name="my run")
    other = get_manager().submit(cfg, owner="someone else", name="their run")
    for run_id in (mine, other):
        get_manager().wait(run_id, timeout=60)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["owner"] = "me"
    at.run()
    assert not at.exception
    assert shown_run(at) == mine and at.selectbox(key="train_show").value == mine
    at = AppTest.from_file(PAGE, default_timeout=60)  # a tab with no run of its own: the newest run
    at.run()
    assert shown_run(at) == other


def test_the_progress_bar_names_the_epoch_in_progress(folder):
    """Regression: the engine counts epochs from 1 and the bar said "Epoch 2/N" during the first."""
    at = open_page(folder)
    at.number_input(key="train_epochs").set_value(200)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    run_id = shown_run(at)
    seen = set()
    deadline = time.time() + 60
    while len(seen) < 3 and time.time() < deadline and not get_manager().snapshot(run_id).done:
        for bar in at.get("progress"):
            m = re.match(r"Epoch (\d+)/200 · step (\d+)/(\d+|\?)", bar.proto.text)
            assert m, bar.proto.text
            epoch, step, total = int(m[1]), int(m[2]), (None if m[3] == "?" else int(m[3]))
            assert epoch == (max(1, math.ceil(step / (total // 200))) if total else 1), bar.proto.text
            seen.add(epoch)
        time.sleep(0.2)
        at.run()
    get_manager().cancel(run_id)
    assert len(seen) >= 2, seen


def test_the_header_names_a_folder_dataset_by_its_folder_and_keeps_the_path_in_its_help(folder):
    at = open_page(folder)
    shown = {m.label: m for m in at.metric}
    assert shown["Dataset"].value == folder.name and shown["Dataset"].help == str(folder)
    assert shown["Model"].value == "ResNet-18" and shown["Strategy"].value == "Head only"


def test_a_run_another_session_started_stops_only_after_a_second_click(folder):
    manager = get_manager()
    config = RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32), batch_size=8,
                       epochs=50, preset="head", frozen=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))
    run_id = manager.submit(config, owner="another-tab")
    at = open_page(folder)
    at.query_params["run"] = run_id
    at = poll_until(at, lambda a: any(b.key == "train_stop_other" for b in a.button))
    assert not any(b.key == "train_stop" for b in at.button)  # no one-click stop of someone else's run
    assert manager.snapshot(run_id).status in ("queued", "running")
    at.button(key="train_stop_other").click().run()
    at = poll_until(at, lambda a: any("cancelled" in w.value for w in a.warning))
    assert not at.exception
    assert manager.store.load(run_id).status == "cancelled"


def test_the_pretrain_shortcut_says_what_it_changed(folder):
    at = open_page(folder)
    at.button(key="train_pretrain_demo").click().run()
    assert not at.exception
    backbone = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    draft = at.session_state["draft"]
    assert (draft.weights, draft.dataset, draft.num_classes, draft.preset) == (f"run:{backbone}", "demo-target", 4, "full")
    notice = next(s.value for s in at.success if "Queued the demo backbone" in s.value)
    for said in (f"starting weights none → run {backbone}", f"dataset {folder.name} → demo-target", "classes 3 → 4",
                 "strategy Head only → Full fine-tune", "input 32×32 → 64×64"):
        assert said in notice, notice
    # the shortcut again: the backbone on its way is offered, and no second one is queued
    assert at.button(key="train_pretrain_demo").label.startswith(f"Use the demo backbone you have (run {backbone}, ")
    at.button(key="train_pretrain_demo").click().run()
    assert [r.id for r in get_manager().store.list()] == [backbone]
    assert any(f"Using the demo backbone you have (run {backbone}" in s.value for s in at.success)
    get_manager().cancel(backbone)
    get_manager().wait(backbone, timeout=60)
    at.run()  # a cancelled backbone is not offered: pretraining one costs what the cost model says
    assert re.fullmatch(r"Pretrain a demo backbone \(ResNet-18, .*; [\d.]+ [GMT]?FLOP of work: minutes on a CPU\)",
                        at.button(key="train_pretrain_demo").label)


def test_a_finished_run_offers_its_downloads_on_the_train_page(folder):
    at = open_page(folder)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    run_id = shown_run(at)
    get_manager().wait(run_id, timeout=60)
    at = poll_until(at, lambda a: any("Freeze audit passed" in s.value for s in a.success))
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Weights (.pt state dict)", "Metrics (CSV)"]


def test_the_draft_and_the_owner_survive_a_refresh_of_the_tab(folder):
    """A refresh is a new session with the same URL: its ?tab= finds the draft and the runs again."""
    at = open_page(folder)
    at.number_input(key="train_epochs").set_value(2)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    run_id = shown_run(at)
    tab = at.session_state["owner"]
    draft = at.session_state["draft"]
    assert get_manager().store.load(run_id).owner == tab
    refreshed = AppTest.from_file(PAGE, default_timeout=60)
    refreshed.query_params["tab"] = tab
    refreshed.query_params["run"] = run_id
    refreshed.run()
    assert not refreshed.exception
    assert refreshed.session_state["draft"] == draft and draft.epochs == 2
    assert refreshed.session_state["owner"] == tab
    stranger = AppTest.from_file(PAGE, default_timeout=60).run()  # another tab: a fresh draft and a new id
    assert stranger.session_state["draft"] == RunConfig() and stranger.session_state["owner"] != tab
    get_manager().wait(run_id, timeout=60)


def test_the_run_a_tab_chose_to_show_stays_when_it_comes_back_from_another_page(folder):
    """Navigation clears the URL's ?run=: the tab then shows the run it showed last, not the newest."""
    store = get_manager().store
    config = RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32))
    older = store.create(config, name="older", owner="0123456789ab")
    time.sleep(1.1)  # ids and listing order follow the creation second
    newer = store.create(config, name="newer", owner="0123456789ab")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["owner"] = "0123456789ab"
    at.session_state["draft"] = config
    at.run()
    assert shown_run(at) == newer
    at.selectbox(key="train_show").set_value(older).run()
    assert shown_run(at) == older
    del at.query_params["run"]  # what a visit to another page does to the URL
    at.run()
    assert shown_run(at) == older and at.selectbox(key="train_show").value == older
