"""AppTest for the Classify page: upload images, classify them with two runs, bad files, ImageNet offline."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.test_inference import shared, trained_runs  # noqa: F401  (the shared tiny runs)
from ui.manager import get_manager

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "classify.py")


@pytest.fixture
def at(shared, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet weights here
    get_manager.clear()
    yield AppTest.from_file(PAGE, default_timeout=60).run()
    get_manager().shutdown(wait=True, timeout=30)
    get_manager.clear()


def png(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return buf.getvalue()


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
    results = at.session_state["classify_results"]
    assert set(results) == {"disc.png", "wedge.png"}
    for per_model in results.values():
        assert set(per_model) == {"full fine-tune", "head only"}
        for probs in per_model.values():
            assert len(probs) == 3 and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert any("Inference runs on the CPU" in c.value for c in at.caption)

    # changing k re-renders from the memo: the same numbers, no recomputation needed
    at.number_input(key="classify_k").set_value(2).run()
    assert not at.exception and at.session_state["classify_results"] == results


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
