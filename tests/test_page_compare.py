"""AppTest for the Compare page: two runs side by side, differences only, per-class, gallery, exports."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_inference import shared, trained_runs  # noqa: F401  (the shared tiny runs)
from ui.services import get_manager

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "compare.py")


@pytest.fixture
def at(shared):  # noqa: F811
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
