"""AppTest for the Compare page: two runs side by side, differences only, per-class, gallery, exports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.models import prepare_model
from core.store import RunStore, resolve_weights
from tests.test_inference import shared, trained_runs  # noqa: F401  (the shared tiny runs)
from ui.services import get_manager

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "compare.py")


@pytest.fixture
def at(shared, in_process_training):  # noqa: F811
    get_manager.clear()
    yield AppTest.from_file(PAGE, default_timeout=60).run()
    get_manager().shutdown(wait=True, timeout=30)
    get_manager.clear()


def config_table(at):
    return next(d.value for d in at.dataframe if d.value.index.name == "field")


def test_compare_two_runs(at, shared):  # noqa: F811
    assert not at.exception
    assert set(at.multiselect(key="compare_runs").value) == {shared["full"], shared["head"]}
    # differences only (the default): exactly the fields that differ
    table = config_table(at)
    assert list(table.index) == ["weights", "frozen", "preset", "lr"]
    assert list(table.columns) == ["head only", "full fine-tune"]  # newest first, as picked
    at.toggle(key="compare_diff_only").set_value(False).run()
    assert not at.exception and len(config_table(at)) > 10

    labels = {b.label for b in at.get("download_button")}
    assert {"Comparison table (CSV)", "Weights (.pt state dict)", "Metrics (CSV)"} <= labels
    assert at.selectbox(key="compare_diff_a").value != at.selectbox(key="compare_diff_b").value


def test_gallery_of_mistakes(at):
    at.button(key="compare_gallery_go").click().run()
    assert not at.exception
    shown = [d.value for d in at.dataframe if "loss" in getattr(d.value, "columns", [])]
    success = [s.value for s in at.success]
    assert shown or any("No validation image is misclassified" in s for s in success)
    if shown:
        assert shown[0]["loss"].is_monotonic_decreasing


def test_one_run_only_and_none(at, shared):  # noqa: F811
    at.multiselect(key="compare_runs").set_value([shared["head"]]).run()
    assert not at.exception
    at.multiselect(key="compare_runs").set_value([]).run()
    assert not at.exception
    assert any("Pick two or more runs" in i.value for i in at.info)


def drawn_heatmap(at, key: str) -> dict:
    """The heat map the page drew under `key`: its rows, columns and cell texts."""
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key))
    trace = json.loads(chart.proto.spec)["data"][0]
    return {"rows": trace["y"], "columns": trace["x"], "text": trace["text"]}


def test_which_parts_moved_matches_the_weights_themselves(at, shared):  # noqa: F811
    """The drift map's numbers against the runs' stored weights and their rebuilt starting weights."""
    drawn = drawn_heatmap(at, "compare_drift")
    assert drawn["columns"] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    by_run = dict(zip(drawn["rows"], drawn["text"]))
    assert by_run["head only"][:5] == ["frozen"] * 5  # its trunk never moved
    # the full run started from a random init drawn with its seed: rebuild it, compare with what it saved
    store = RunStore(shared["runs"])
    record = store.load(shared["full"])
    torch.manual_seed(record.config.seed)
    start, _ = prepare_model("resnet18", 3, resolve_weights("none", "resnet18", runs_dir=shared["runs"]))
    start = dict(start.named_parameters())
    final = store.load_weights(shared["full"])
    for part, cell in zip(drawn["columns"], by_run["full fine-tune"]):
        names = [n for n in start if n == part or n.split(".")[0] in PARTS[part]]
        moved = sum(float((final[n] - start[n].detach()).square().sum()) for n in names)
        size = sum(float(start[n].detach().square().sum()) for n in names)
        assert cell == f"{math.sqrt(moved / size):.2%}", part
    one = drawn_heatmap(at, "compare_drift_epochs")
    assert one["columns"] == ["epoch 1", "epoch 2"] and one["rows"] == drawn["columns"]


PARTS = {"stem": ("conv1", "bn1"), "layer1": ("layer1",), "layer2": ("layer2",), "layer3": ("layer3",),
         "layer4": ("layer4",), "head": ("fc",)}
