"""AppTest for the Classify page: upload images, classify them with two runs, bad files, ImageNet offline."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.test_inference import shared, trained_runs  # noqa: F401  (the shared tiny runs)
from ui.services import get_manager

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "classify.py")


@pytest.fixture
def at(shared, tmp_path, monkeypatch, in_process_training):  # noqa: F811
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet weights here
    get_manager.clear()
    yield AppTest.from_file(PAGE, default_timeout=60).run()
    get_manager().shutdown(wait=True, timeout=30)
    get_manager.clear()


def png(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return buf.getvalue()


def drawn_probabilities(at) -> dict[tuple[int, str], dict[str, float]]:
    """What the page drew: {(image index, run label): {class: probability}} from its top-k bar charts."""
    drawn = {}
    for chart in at.get("plotly_chart"):
        if "classify_bar_" in chart.proto.id:
            spec = json.loads(chart.proto.spec)
            image = int(chart.proto.id.rsplit("classify_bar_", 1)[1].split("_")[0])
            bars = spec["data"][0]
            drawn[(image, spec["layout"]["title"]["text"])] = dict(zip(bars["y"], bars["x"]))
    return drawn


def test_upload_and_classify_with_two_runs(at, shared):  # noqa: F811
    assert not at.exception
    assert at.multiselect(key="classify_runs").value == [shared["head"]]  # the newest finished run
    disc = sorted((shared["folder"] / "disc").iterdir())[0]
    wedge = sorted((shared["folder"] / "wedge").iterdir())[0]
    at.file_uploader(key="classify_files").set_value([
        ("disc.png", png(disc), "image/png"),
        ("wedge.png", png(wedge), "image/png"),
        ("broken.png", b"\x89PNG\r\n\x1a\n not really", "image/png"),
    ])
    at.multiselect(key="classify_runs").set_value([shared["full"], shared["head"]])
    at.run()
    assert not at.exception
    assert any("broken.png" in e.value and "cannot be classified" in e.value for e in at.error)
    results = drawn_probabilities(at)
    assert set(results) == {(0, "full fine-tune"), (0, "head only"), (1, "full fine-tune"), (1, "head only")}
    for probs in results.values():  # top 3 of 3 classes: every class, summing to one
        assert len(probs) == 3 and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert any("Inference runs on the CPU" in c.value for c in at.caption)

    # changing k re-renders from the memo: the same numbers, no recomputation needed
    at.number_input(key="classify_k").set_value(2).run()
    assert not at.exception
    top2 = drawn_probabilities(at)
    assert set(top2) == set(results)
    for key, probs in top2.items():  # two of the same bars (ties may swap), the most likely first among them
        assert len(probs) == 2 and probs.items() <= results[key].items()
        assert max(probs.values()) == max(results[key].values())


def test_imagenet_offline_is_a_message(at):
    at.toggle(key="classify_imagenet").set_value(True).run()
    assert not at.exception
    assert any("not on this machine" in i.value for i in at.info)
    assert at.button(key="classify_download")


def test_no_runs_no_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))
    get_manager.clear()
    try:
        at = AppTest.from_file(PAGE, default_timeout=60).run()
        assert not at.exception
        assert any("Upload one or more images" in i.value for i in at.info)
    finally:
        get_manager().shutdown(wait=True, timeout=30)
        get_manager.clear()


def test_uploads_and_runs_stay_when_the_tab_comes_back_from_another_page(at, shared):  # noqa: F811
    """A visit to another page drops Classify's widget state (the uploader's files, the runs box); the
    tab's own choices are kept as the draft is, and shown again."""
    disc = sorted((shared["folder"] / "disc").iterdir())[0]
    at.file_uploader(key="classify_files").set_value([("disc.png", png(disc), "image/png")])
    at.multiselect(key="classify_runs").set_value([shared["full"]])
    at.run()
    before = drawn_probabilities(at)
    assert set(before) == {(0, "full fine-tune")}
    back = AppTest.from_file(PAGE, default_timeout=60)  # the page drawn again without its widgets' state
    for key in ("classify_kept_uploads", "classify_kept_runs"):
        back.session_state[key] = at.session_state[key]
    back.run()
    assert not back.exception
    assert back.multiselect(key="classify_runs").value == [shared["full"]]  # not the newest run
    assert any("Showing the 1 image(s) you uploaded before: disc.png" in c.value for c in back.caption)
    assert drawn_probabilities(back) == before
    back.button(key="classify_clear").click().run()
    assert not drawn_probabilities(back) and not any("you uploaded before" in c.value for c in back.caption)
