"""AppTest for the Data page: demo preview, a zip upload, a bad zip."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import RunConfig

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "data.py")


@pytest.fixture
def at(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    app = AppTest.from_file(PAGE, default_timeout=60)
    app.session_state["draft"] = RunConfig(dataset="demo-target:10")
    return app


def zip_of(classes, n=3) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in classes:
            for i in range(n):
                img = io.BytesIO()
                Image.new("RGB", (12, 12), (i * 60, 100, 0)).save(img, format="PNG")
                zf.writestr(f"pets/{c}/{i}.png", img.getvalue())
    return buf.getvalue()


def images_shown(app) -> int:
    return sum(len(el.proto.imgs) for el in app.get("image"))


def test_demo_dataset_shows_preview_and_sets_the_draft(at):
    at.run()
    assert not at.exception and not at.error
    assert at.radio(key="data_source").value == "demo-target"
    assert images_shown(at) == 4 * 6  # the training images: 10 per class, less 2 for test and 2 for validation
    assert [m.value for m in at.metric][1:4] == ["24", "8", "8"]  # train, validation, test
    draft = at.session_state["draft"]
    assert (draft.dataset, draft.num_classes) == ("demo-target:10", 4)
    assert at.session_state["dataset_classes"] == ["diamond", "pentagon", "star4", "tshape"]
    assert at.metric[4].value == "0"  # skipped files


def test_uploaded_zip_becomes_the_dataset(at):
    at.run()
    at.radio(key="data_source").set_value("zip").run()
    at.file_uploader(key="data_zip").set_value(("pets.zip", zip_of(["cat", "dog", "fox"]), "application/zip")).run()
    assert not at.exception and not at.error
    draft = at.session_state["draft"]
    assert draft.num_classes == 3 and draft.dataset.endswith("pets")
    assert at.session_state["dataset_classes"] == ["cat", "dog", "fox"]
    assert images_shown(at) == 3 * 1  # 3 images per class: 1 train, 1 validation, 1 test


def test_bad_zip_shows_the_error_and_changes_nothing(at):
    at.run()
    before = at.session_state["draft"]
    at.radio(key="data_source").set_value("zip").run()
    at.file_uploader(key="data_zip").set_value(("one.zip", zip_of(["cat"]), "application/zip")).run()
    assert not at.exception
    assert "at least two classes" in at.error[0].value
    assert at.session_state["draft"] == before
    at.file_uploader(key="data_zip").set_value(("junk.zip", b"not a zip at all", "application/zip")).run()
    assert "not a zip file" in at.error[0].value and at.session_state["draft"] == before


def test_an_offline_download_leaves_its_message_and_no_empty_progress_bar(at, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    at.run()
    at.radio(key="data_source").set_value("cifar10").run()
    at.button(key="data_download").click().run()
    assert not at.exception
    assert any("internet connection" in e.value for e in at.error)
    assert not at.get("progress")  # the "Downloading CIFAR-10…" bar is gone with the error
    assert at.session_state["draft"].dataset == "demo-target:10"


def test_a_class_in_one_split_only_is_said_on_the_page(at, tmp_path):
    root = tmp_path / "ds"
    for split, classes in (("train", ("a", "b")), ("val", ("a", "b", "c"))):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 90, 10, 10)).save(root / split / c / f"{i}.png")
    at.session_state["draft"] = RunConfig(dataset=str(root))
    at.run()
    assert not at.exception
    assert any("**c**: no training images" in w.value for w in at.warning)
