"""Bad inputs, one test per row of docs/bad_inputs.md that no other test file covers.

Each test feeds one bad input where a user meets it (a page through AppTest, or
the command line), asserts what the user sees, and asserts that nothing
changed: the draft `RunConfig` in the session, the data directory (no stored
file, no half-extracted folder), the run store. The inputs are built here, tiny;
limits are the real ones except where a test names the one it lowers.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import data
from core.config import MAX_SEED, RunConfig
from core.data import folders, zips
from core.jobs.ray_cluster import ClusterError, ClusterSettings, read_settings
from core.models import CheckpointError, build_model
from core.store import RunStore, StoreError, run_state_dict
from core.sweep import main as sweep_main
from core.train import main as cli_main
from ui.services import get_cluster, get_manager

PAGES = Path(__file__).resolve().parents[1] / "app_pages"
MB = 1024**2


# --- inputs ------------------------------------------------------------------------------------------


def png(colour=(200, 30, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height pixels (CRC fixed up): a decompression bomb."""
    raw = bytearray(png(size=(1, 1)))
    i = raw.index(b"IHDR")
    raw[i + 4 : i + 12] = struct.pack(">II", width, height)
    raw[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(raw[i : i + 17])))
    return bytes(raw)


def truncated_png() -> bytes:
    raw = png(size=(64, 64))
    return raw[: len(raw) // 2]


def make_folder(root: Path, classes=("a", "b"), n=3) -> Path:
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{i}.png").write_bytes(png((ci * 90, i * 40, 60)))
    root.mkdir(parents=True, exist_ok=True)
    return root


def good_entries(classes=("cat", "dog"), n=2) -> dict[str, bytes]:
    return {f"ds/{c}/{i}.png": png((ci * 90, i * 40, 0)) for ci, c in enumerate(classes) for i in range(n)}


def zip_of(entries: dict[str, bytes], *, modes: dict[str, int] | None = None, method=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of `entries` (name -> bytes); `modes` sets the Unix file type/mode recorded for some names."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            zf.writestr(info, content)
    return buf.getvalue()


def patch_central(blob: bytes, name: str, **fields: int) -> bytes:
    """Rewrite header fields of `name` in the zip's central directory (where zipfile reads them): a lying header."""
    at = {"flag_bits": (8, "<H"), "compress_size": (20, "<L"), "file_size": (24, "<L")}
    raw = bytearray(blob)
    start = 0
    while (i := raw.find(b"PK\x01\x02", start)) >= 0:
        length = struct.unpack_from("<H", raw, i + 28)[0]
        if raw[i + 46 : i + 46 + length] == name.encode():
            for key, value in fields.items():
                offset, fmt = at[key]
                struct.pack_into(fmt, raw, i + offset, value)
            return bytes(raw)
        start = i + 4
    raise AssertionError(f"{name} not in the zip")


def corrupt_first_entry(blob: bytes) -> bytes:
    """Flip bytes inside the compressed data of the first entry (its local header is 30 bytes + name)."""
    raw = bytearray(blob)
    start = 30 + struct.unpack_from("<H", raw, 26)[0] + 5
    for j in range(start, start + 30):
        raw[j] ^= 0x5A
    return bytes(raw)


def _zip_too_big_entry() -> bytes:
    # 65 MB that compresses only ~85:1 (random head, zero tail): under the ratio limit, over the 64 MB entry cap.
    head = np.random.default_rng(0).bytes(700_000)
    return zip_of({**good_entries(), "ds/cat/huge.png": head + bytes(65 * MB - len(head))})


def _duplicate_zip() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns "Duplicate name"
        for name, content in good_entries().items():
            zf.writestr(name, content)
        zf.writestr("ds/cat/0.png", png((1, 2, 3)))
    return buf.getvalue()


class Boom:
    """Unpickling this runs code: it would create the file named by $FREEZE_LAB_BOOM."""

    def __reduce__(self):
        return (exec, ("import os, pathlib; pathlib.Path(os.environ['FREEZE_LAB_BOOM']).write_text('ran')",))


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def files_under(path: Path) -> dict[str, int]:
    """Every file and folder under `path` with its size; caches (.cache) and the bare uploads/ folder aside."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): p.stat().st_size
        for p in path.rglob("*")
        if p != path / "uploads" and ".cache" not in p.relative_to(path).parts
    }


def readable_anyway(path: Path) -> bool:
    """True when this process reads `path` despite chmod 000 (root does): the test cannot make it unreadable."""
    try:
        os.listdir(path) if path.is_dir() else path.read_bytes()
        return True
    except OSError:
        return False


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("FREEZE_LAB_BOOM", str(tmp_path / "boom-side-effect"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet weights: nothing downloads


@pytest.fixture
def manager(in_process_training):
    """A fresh job manager on this test's runs directory, shut down afterwards."""
    get_manager.clear()
    yield get_manager()
    get_manager().shutdown(wait=True, timeout=30)
    get_manager.clear()


@pytest.fixture
def good_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "good", ("a", "b"))


@pytest.fixture
def data_page(tmp_path, good_folder):
    """The Data page showing a good folder dataset: the state every bad input must leave as it was."""
    at = AppTest.from_file(str(PAGES / "data.py"), default_timeout=60)
    at.session_state["draft"] = RunConfig(dataset=str(good_folder), num_classes=2)
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["dataset_classes"] == ["a", "b"]
    return at


def unchanged(at: AppTest, before: RunConfig, data_before: dict, tmp_path: Path) -> None:
    assert at.session_state["draft"] == before
    assert at.session_state["dataset_classes"] == ["a", "b"]
    assert files_under(tmp_path / "data") == data_before  # no temp folder left, nothing new stored
    assert not (tmp_path / "evil.png").exists() and not Path("/etc/evil.png").exists()


# --- Data page: an uploaded zip ------------------------------------------------------------------------

ZIPS = {
    # id: (zip bytes, limit lowered for the test or None, what the user reads)
    "traversal-dotdot": (lambda: zip_of({**good_entries(), "../evil.png": png()}), None,
                         "Rejected: the zip entry '../evil.png' points outside the dataset folder."),
    "traversal-backslash": (lambda: zip_of({**good_entries(), "ds\\..\\..\\evil.png": png()}), None,
                            "points outside the dataset folder"),
    "absolute-path": (lambda: zip_of({**good_entries(), "/etc/evil.png": png()}), None,
                      "Rejected: the zip entry '/etc/evil.png' points outside the dataset folder."),
    "drive-letter": (lambda: zip_of({**good_entries(), "C:/evil.png": png()}), None, "points outside the dataset folder"),
    "symlink": (lambda: zip_of({**good_entries(), "ds/cat/link.png": b"/etc/passwd"},
                               modes={"ds/cat/link.png": stat.S_IFLNK | 0o777}), None,
                "Rejected: the zip entry 'ds/cat/link.png' is a symbolic link."),
    "fifo-entry": (lambda: zip_of({**good_entries(), "ds/cat/pipe.png": b""}, modes={"ds/cat/pipe.png": stat.S_IFIFO | 0o644}),
                   None, "Rejected: the zip entry 'ds/cat/pipe.png' is not a regular file."),
    "encrypted": (lambda: patch_central(zip_of(good_entries()), "ds/cat/0.png", flag_bits=0x1), None,
                  "The zip is password-protected; upload an unencrypted zip."),
    "duplicate-entry": (_duplicate_zip, None, "Rejected: the zip holds 'ds/cat/0.png' twice."),
    "file-where-folder": (lambda: zip_of({"ds/cat": b"x", **good_entries()}), None,
                          "Rejected: the zip entry 'ds/cat/0.png' lies under a name that is also a file in the zip."),
    "name-too-long": (lambda: zip_of({**good_entries(), f"ds/{'x' * 300}/0.png": png()}), None,
                      "Could not extract ds/xxx"),
    "too-many-entries": (lambda: zip_of(good_entries(n=3)), ("MAX_ZIP_ENTRIES", 5), "The zip has 6 entries; the limit is 5."),
    "declared-total-too-big": (lambda: patch_central(patch_central(zip_of(good_entries()), "ds/cat/0.png", file_size=0xF0000000),
                                                     "ds/dog/0.png", file_size=0xF0000000), None,
                               "The zip would unpack to 7.5 GB; the limit is 4 GB."),
    "entry-over-64MB": (_zip_too_big_entry, None, "Rejected: 'ds/cat/huge.png' unpacks to more than 64 MB."),
    "ratio-bomb": (lambda: zip_of({**good_entries(), "ds/cat/bomb.png": bytes(3 * MB)}), None,
                   "Rejected: 'ds/cat/bomb.png' is compressed more than 100:1 (a possible zip bomb)."),
    "header-understates-size": (lambda: patch_central(zip_of({**good_entries(), "ds/cat/bomb.png": bytes(3 * MB)}),
                                                      "ds/cat/bomb.png", file_size=1000), None,
                                "The zip is damaged or uses an unsupported feature (ds/cat/bomb.png: Bad CRC-32"),
    "corrupt-deflate-data": (lambda: corrupt_first_entry(zip_of({k: v * 20 for k, v in good_entries().items()})), None,
                             "The zip is damaged or uses an unsupported feature (ds/cat/0.png:"),
    "corrupt-bzip2-data": (lambda: corrupt_first_entry(zip_of({k: v * 20 for k, v in good_entries().items()},
                                                              method=zipfile.ZIP_BZIP2)), None,
                           "Could not extract ds/cat/0.png from the zip: Invalid data stream."),
    "no-class-folders": (lambda: zip_of({"readme.txt": b"hello", "photo.png": png()}), None,
                         "No class folders with images found in the zip."),
    "one-class": (lambda: zip_of(good_entries(classes=("cat",))), None,
                  "A classifier needs at least two classes; found only 1 (cat) in the zip."),
    "small-entries-bomb": (lambda: zip_of({**good_entries(), **{f"ds/cat/z{i}.png": bytes(MB) for i in range(100)}}), None,
                           "unpacks to more than 100 times its size (a possible zip bomb)."),
    "deep-nesting": (lambda: zip_of({**good_entries(), "ds/cat/" + "d/" * 1100 + "x.png": png()}), None,
                     "nests folders more than 32 levels deep."),
    "unpacks-but-no-usable-images": (lambda: zip_of({f"ds/{c}/{i}.png": b"not an image" for c in "ab" for i in range(3)}),
                                     None, "No class folders with images found in the zip."),
    "split-names-as-classes": (lambda: zip_of({f"ds/{split}/{i}.png": png() for split in ("train", "dev") for i in range(2)}),
                               None, "has folders named train, which look like splits, not classes."),
    "not-a-zip": (lambda: b"GIF89a this is not a zip at all", None,
                  "This is not a zip file (or it is damaged). Upload a .zip of class folders."),
    "truncated-zip": (lambda: zip_of(good_entries())[:300], None, "This is not a zip file (or it is damaged)."),
    "empty-file": (lambda: b"", None, "This is not a zip file (or it is damaged)."),
}


@pytest.mark.parametrize("case", list(ZIPS))
def test_bad_zip_upload_is_refused_and_changes_nothing(case, data_page, tmp_path, monkeypatch):
    build, limit, message = ZIPS[case]
    blob = build()
    if limit:
        monkeypatch.setattr(zips, *limit)
    at = data_page
    before = at.session_state["draft"]
    at.radio(key="data_source").set_value("zip").run()
    data_before = files_under(tmp_path / "data")
    at.file_uploader(key="data_zip").set_value(("pets.zip", blob, "application/zip")).run()
    assert not at.exception
    assert len(errors(at)) == 1 and message in errors(at)[0], errors(at)
    unchanged(at, before, data_before, tmp_path)
    assert not list((tmp_path / "data" / "uploads").glob("pets-*"))


def test_zip_over_the_upload_limit_is_refused_before_reading_it(data_page, tmp_path):
    at = data_page
    before = at.session_state["draft"]
    at.radio(key="data_source").set_value("zip").run()
    data_before = files_under(tmp_path / "data")
    at.file_uploader(key="data_zip").set_value(("big.zip", bytes(201 * MB), "application/zip")).run()
    assert not at.exception
    assert errors(at) == ["The zip is 201 MB; the limit is 200 MB."]
    unchanged(at, before, data_before, tmp_path)


# --- Data page: bad image files inside a dataset are skipped and listed ------------------------------

BAD_FILES = {
    "a/notes.jpg": (b"hello, I am text with an image name", "not an image in a supported format (JPEG, PNG, WebP, BMP or GIF)"),
    "a/half.png": (None, "corrupt or truncated image"),
    "a/empty.png": (b"", "the file is empty"),
    "b/bomb.png": (None, "image is too large (more than 200,000,000 pixels declared); a possible decompression bomb"),
    "b/huge_bomb.png": (None, "image is too large (more than 200,000,000 pixels declared); a possible decompression bomb"),
    "b/readme.txt": (b"not a picture", "not an image file type (.txt)"),
    "c/only_bad.png": (b"\x89PNG\r\n\x1a\n broken", "not an image in a supported format"),
}


def bad_files() -> dict[str, bytes]:
    made = {"a/half.png": truncated_png(), "b/bomb.png": bomb_png(15_000, 15_000), "b/huge_bomb.png": bomb_png(100_000, 100_000)}
    return {name: made.get(name, content) for name, (content, _) in BAD_FILES.items()}


@pytest.mark.parametrize("source", ["folder", "zip"])
def test_bad_images_in_a_dataset_are_skipped_and_listed(source, data_page, tmp_path):
    at = data_page
    entries = {**{f"{c}/{i}.png": png((ci * 90, i * 40, 0)) for ci, c in enumerate("ab") for i in range(3)}, **bad_files()}
    if source == "folder":
        root = tmp_path / "mixed"
        for name, content in entries.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
        at.text_input(key="data_folder").input(str(root)).run()
    else:
        at.radio(key="data_source").set_value("zip").run()
        blob = zip_of({f"mixed/{name}": content for name, content in entries.items()})
        at.file_uploader(key="data_zip").set_value(("mixed.zip", blob, "application/zip")).run()
    assert not at.exception and not at.error
    assert at.session_state["dataset_classes"] == ["a", "b"]  # class c had no usable image
    assert at.session_state["draft"].num_classes == 2 and at.session_state["draft"].dataset.endswith("mixed")
    assert next(m.value for m in at.metric if m.label == "Skipped files") == str(len(BAD_FILES) + 1)
    assert any(e.label == f"{len(BAD_FILES) + 1} files skipped" for e in at.expander)
    table = dict(at.dataframe[0].value[["file", "reason"]].itertuples(index=False))
    for name, (_, reason) in BAD_FILES.items():
        assert reason in table[name], (name, table[name])
    assert table["c/"] == "no usable images; class left out"


# --- Data page: a folder path ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "a-file", "empty-folder", "one-class", "not-a-zip-named-zip", "not-a-dataset"])
def test_bad_folder_path_is_a_message_and_changes_nothing(case, data_page, tmp_path, monkeypatch):
    at = data_page
    before = at.session_state["draft"]
    target = tmp_path / case
    if case == "a-file":
        target.write_text("a file, not a folder")
    elif case == "empty-folder":
        target.mkdir()
    elif case == "one-class":
        make_folder(target, ("only",))
    elif case == "not-a-zip-named-zip":
        target = tmp_path / "photos.zip"
        target.write_bytes(b"not a zip")
    elif case == "not-a-dataset":  # e.g. a home folder: a few pictures among many other files
        monkeypatch.setattr(folders, "MAX_OTHER_FILES", 8)
        make_folder(target, ("Pictures", "Photos"))
        for i in range(9):
            (target / "src" / "pkg").mkdir(parents=True, exist_ok=True)
            (target / "src" / "pkg" / f"m{i}.py").write_text("pass\n")
    data_before = files_under(tmp_path / "data")
    at.text_input(key="data_folder").input(str(target)).run()
    assert not at.exception
    expected = {
        "missing": f"No folder at {target}. Choose the demo dataset, a folder that holds one subfolder per class, or a zip file.",
        "a-file": f"No folder at {target}.",
        "empty-folder": "No class folders with images found in empty-folder.",
        "one-class": "A classifier needs at least two classes; found only 1 (only) in one-class.",
        "not-a-zip-named-zip": "This is not a zip file (or it is damaged).",
        "not-a-dataset": f"{target} does not look like an image dataset: it holds more than 8 files that are not "
                         "images (such as src/pkg/m0.py) and only 6 images. Type the folder that holds one subfolder "
                         "of images per class.",
    }[case]
    assert len(errors(at)) == 1 and expected in errors(at)[0], errors(at)
    unchanged(at, before, data_before, tmp_path)


def test_unreadable_folder_is_a_message_and_changes_nothing(data_page, tmp_path):
    locked = make_folder(tmp_path / "locked")
    locked.chmod(0)
    try:
        if readable_anyway(locked):
            pytest.skip("this user reads a chmod 000 folder anyway (root): run the suite as a normal user")
        at = data_page
        before = at.session_state["draft"]
        data_before = files_under(tmp_path / "data")
        at.text_input(key="data_folder").input(str(locked)).run()
        assert not at.exception
        assert errors(at) == [f"Cannot read the folder {locked}: Permission denied."]
        unchanged(at, before, data_before, tmp_path)
    finally:
        locked.chmod(0o755)


def test_data_page_numbers_out_of_range_keep_the_last_valid_value(data_page):
    at = data_page
    before = at.session_state["draft"]
    for value in (0.0, 0.9, -1.0, math.inf):
        at.slider(key="data_val_fraction").set_value(value).run()
        assert not at.exception
        assert at.slider(key="data_val_fraction").value == pytest.approx(before.val_fraction)
        assert at.session_state["draft"] == before


# --- Model page: numbers ---------------------------------------------------------------------------


def model_page(**draft) -> AppTest:
    at = AppTest.from_file(str(PAGES / "model.py"), default_timeout=60)
    at.session_state["draft"] = RunConfig(**{"arch": "resnet18", "num_classes": 10, "image_size": (64, 64), **draft})
    return at.run()


def test_model_page_numbers_out_of_range_keep_the_last_valid_value():
    at = model_page()
    before = at.session_state["draft"]
    for key, values in {"model_classes": (1, 0, 10_001), "model_h": (8, 1025, 100_000),
                        "model_w": (0, -64, 2048)}.items():
        kept = at.number_input(key=key).value
        for value in values:
            at.number_input(key=key).set_value(value).run()
            assert not at.exception and not at.error
            assert at.number_input(key=key).value == kept, (key, value)
            assert at.session_state["draft"] == before, (key, value)
    for value in (-1, 6, 99):  # ResNet-18 has 5 blocks
        at.slider(key="preset_last_n").set_value(value).run()
        assert not at.exception and at.slider(key="preset_last_n").value == 2
        assert at.session_state["draft"] == before


def test_model_page_follows_a_dataset_of_more_than_10000_classes():
    """The Data page sets the draft to the dataset's class count; the Classes box (max 10,000) must not crash on it."""
    at = AppTest.from_file(str(PAGES / "model.py"), default_timeout=60)
    at.session_state["draft"] = RunConfig(num_classes=10_001, image_size=(64, 64))
    at.session_state["dataset_classes"] = [f"class_{i:05d}" for i in range(10_001)]
    at.run()
    assert not at.exception and not at.error
    box = at.number_input(key="model_classes")
    assert box.value == 10_001 and box.disabled
    assert at.session_state["draft"].num_classes == 10_001


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large"])
def test_model_page_small_input_in_range_does_not_crash_the_page(arch):
    """At 32x32 these shrink to 1x1 before a BatchNorm, which training mode refuses for a batch of
    one: the cost profile (a batch-of-one pass) records it in eval mode and the page shows the costs."""
    at = model_page(arch=arch)
    at.number_input(key="model_h").set_value(32)
    at.number_input(key="model_w").set_value(32).run()
    assert not at.exception and not at.error and not at.warning
    assert at.session_state["draft"].image_size == (32, 32)  # a valid size is taken
    at.session_state["model_tabs"] = "PyTorch code"
    assert any("num_classes" in c.value or "nn.Linear" in c.value for c in at.run().code)  # the rest of the page renders
    at.session_state["model_tabs"] = "Cost"
    assert any("of the compute" in m.value for m in at.run().markdown)  # the Cost tab has its estimate


# --- Model page: checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet_state():
    return build_model("alexnet", 4).state_dict()


@pytest.fixture(scope="module")
def resnet18_3_classes():
    return build_model("resnet18", 3).state_dict()


@functools.cache
def resnet18_4_classes() -> dict[str, torch.Tensor]:
    """A good ResNet-18 state dict for the Model page's default draft (4 classes), to spoil one tensor of."""
    return build_model("resnet18", 4).state_dict()


def open_checkpoint_source() -> tuple[AppTest, RunConfig]:
    at = model_page()
    at.selectbox(key="model_weights").set_value("checkpoint").run()
    assert not at.exception
    return at, at.session_state["draft"]


def checkpoint_unchanged(at: AppTest, before: RunConfig, tmp_path: Path) -> None:
    assert at.session_state["draft"] == before and before.weights == "none"
    assert not (tmp_path / "data" / "checkpoints").exists() or not any((tmp_path / "data" / "checkpoints").iterdir())
    assert not any("Checkpoint load report" in e.label for e in at.expander)
    assert not (tmp_path / "boom-side-effect").exists()  # no pickled code ran


def _safetensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


UPLOADS = {
    # id: (bytes, file name, what the user reads)
    "another-architecture": (lambda s: torch_bytes(s["alexnet"]), "alexnet.pt",
                             "This checkpoint does not fit ResNet-18: it covers 0 of the 11,186,112 backbone values"),
    "safetensors-wrong-keys": (lambda s: _safetensors({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}),
                               "other.safetensors", "This checkpoint does not fit ResNet-18"),
    "pickle-runs-code-zip": (lambda s: torch_bytes({"fc.weight": torch.zeros(2, 2), "x": Boom()}), "evil.pt",
                             "The checkpoint upload could not be read safely: it is not a plain state dict of tensors "
                             "(it refers to exec, which weights_only loading refuses: loading it could run code)."),
    "pickle-runs-code-protocol2": (lambda s: pickle.dumps(Boom(), protocol=2), "evil.pth",
                                   "(it refers to exec, which weights_only loading refuses: loading it could run code)"),
    "pickle-runs-code-protocol0": (lambda s: pickle.dumps(Boom(), protocol=0), "evil.pt",
                                   "is neither a PyTorch checkpoint (torch.save) nor a safetensors file"),
    "garbage": (lambda s: b"GARBAGE!" + np.random.default_rng(1).bytes(4088), "random.pt",
                "The file upload is neither a PyTorch checkpoint (torch.save) nor a safetensors file."),
    "truncated": (lambda s: torch_bytes(s["alexnet"])[:100_000], "half.pt",
                  "could not be read safely: it is not a plain state dict of tensors (RuntimeError: PytorchStreamReader"),
    "empty-file": (lambda s: b"", "empty.pt", "The checkpoint upload is empty."),
    "not-a-state-dict": (lambda s: torch_bytes([1, 2, 3]), "list.pt",
                         "does not hold a state dict (a mapping of names to tensors)"),
    "no-tensors": (lambda s: torch_bytes({"epoch": 3, "lr": 0.1}), "meta.pt", "holds no tensors"),
    "stride-0-view": (lambda s: torch_bytes({**s["resnet18"], "fc.weight": torch.zeros(1).expand(4, 512)}), "stride0.pt",
                      "the tensor 'fc.weight' is a view whose elements share memory (shape (4, 512), strides (0, 0))"),
    "overlapping-view": (lambda s: torch_bytes({**s["resnet18"], "fc.weight": torch.zeros(600).as_strided((4, 512), (1, 1))}),
                         "overlap.pt", "the tensor 'fc.weight' is a view whose elements share memory"),
    "nan-weights": (lambda s: torch_bytes({**s["resnet18"], "layer1.0.conv1.weight": torch.full((64, 64, 3, 3), float("nan"))}),
                    "nan.pt", "the tensor 'layer1.0.conv1.weight' holds 36,864 NaN or infinite values"),
    "inf-weights": (lambda s: torch_bytes({**s["resnet18"], "fc.bias": torch.tensor([1.0, float("inf"), 0.0, 0.0])}),
                    "inf.pt", "the tensor 'fc.bias' holds 1 NaN or infinite values"),
    "sparse-tensor": (lambda s: torch_bytes({**s["resnet18"], "fc.bias": torch.zeros(4).to_sparse()}), "sparse.pt",
                      "the tensor 'fc.bias' is not dense (sparse_coo)"),
    "integer-weights": (lambda s: torch_bytes({**s["resnet18"], "conv1.weight": torch.zeros(64, 3, 7, 7, dtype=torch.int32)}),
                        "ints.pt", "The checkpoint's tensor 'conv1.weight' holds int32 values where the model has floating-point weights"),
    "non-string-keys": (lambda s: torch_bytes({**s["resnet18"], 7: torch.zeros(3)}), "keys.pt",
                        "is not a state dict: the key 7 is not a parameter name."),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_bad_checkpoint_upload_is_refused_and_changes_nothing(case, tmp_path, alexnet_state):
    build, name, message = UPLOADS[case]
    blob = build({"alexnet": alexnet_state, "resnet18": resnet18_4_classes()})
    at, before = open_checkpoint_source()
    at.file_uploader(key="model_ckpt_upload").set_value((name, blob, "application/octet-stream")).run()
    assert not at.exception
    assert len(errors(at)) == 1 and message in errors(at)[0], errors(at)
    assert "\x1b" not in errors(at)[0]  # no terminal escape codes from torch's own message
    checkpoint_unchanged(at, before, tmp_path)


@pytest.mark.parametrize("case", ["missing", "a-folder", "device", "another-architecture", "pickle-runs-code", "too-large"])
def test_bad_checkpoint_path_is_refused_and_changes_nothing(case, tmp_path, alexnet_state):
    path = tmp_path / "ckpt.pt"
    if case == "a-folder":
        path.mkdir()
    elif case == "device":
        path = Path("/dev/zero")  # reading it would never end
        if not path.exists():
            pytest.skip("no /dev/zero here")
    elif case == "another-architecture":
        path.write_bytes(torch_bytes(alexnet_state))
    elif case == "pickle-runs-code":
        path.write_bytes(torch_bytes({"fc.weight": torch.zeros(2, 2), "x": Boom()}))
    elif case == "too-large":
        with path.open("wb") as f:  # a sparse 5 GB file: nothing is written, and nothing may be read
            f.truncate(5 * 1024**3)
    at, before = open_checkpoint_source()
    at.text_input(key="model_ckpt_path").input(str(path)).run()
    assert not at.exception
    expected = {
        "missing": f"No checkpoint file at {path} (No such file or directory).",
        "a-folder": f"{path} is not a checkpoint file (it is a folder or a special file).",
        "device": "/dev/zero is not a checkpoint file (it is a folder or a special file).",
        "another-architecture": "It is probably a checkpoint of another architecture; pick the architecture it was saved from.",
        "pickle-runs-code": f"The checkpoint {path} could not be read safely",
        "too-large": f"The checkpoint {path} is 5.0 GB; the limit is 4 GB.",
    }[case]
    assert len(errors(at)) == 1 and expected in errors(at)[0], errors(at)
    checkpoint_unchanged(at, before, tmp_path)


def test_unreadable_checkpoint_path_is_a_message(tmp_path, resnet18_3_classes):
    path = tmp_path / "locked.pt"
    path.write_bytes(torch_bytes(resnet18_3_classes))
    path.chmod(0)
    try:
        if readable_anyway(path):
            pytest.skip("this user reads a chmod 000 file anyway (root): run the suite as a normal user")
        at, before = open_checkpoint_source()
        at.text_input(key="model_ckpt_path").input(str(path)).run()
        assert not at.exception
        assert errors(at) == [f"Cannot read the checkpoint {path}: Permission denied."]
        checkpoint_unchanged(at, before, tmp_path)
    finally:
        path.chmod(0o644)


def test_checkpoint_with_a_head_of_another_size_loads_with_the_head_reported(tmp_path, resnet18_3_classes):
    """Not refused: fine-tuning replaces the head. The report says the head was skipped; the backbone loads."""
    path = tmp_path / "r18_3.pt"
    path.write_bytes(torch_bytes(resnet18_3_classes))
    at, _ = open_checkpoint_source()
    at.text_input(key="model_ckpt_path").input(str(path)).run()
    assert not at.exception and not at.error
    assert at.session_state["draft"].weights == str(path)
    report = next(e for e in at.expander if e.label.startswith("Checkpoint load report"))
    assert report.label == "Checkpoint load report — 120 tensors loaded, 2 missing, 0 unexpected, 2 shape-mismatched"
    mismatched = report.dataframe[0].value
    assert mismatched.to_dict("records") == [
        {"key": "fc.weight", "checkpoint": "(3, 512)", "model": "(10, 512)"},
        {"key": "fc.bias", "checkpoint": "(3,)", "model": "(10,)"},
    ]


# --- Train page: hyper-parameters out of range -------------------------------------------------------

TRAIN_FIELDS = {  # widget key: (RunConfig field, below the minimum, above the maximum)
    "train_lr": ("lr", 0.0, 50.0),
    "train_mult": ("backbone_lr_mult", -0.5, 11.0),
    "train_wd": ("weight_decay", -0.1, 1.5),
    "train_epochs": ("epochs", 0, 1001),
    "train_batch": ("batch_size", 0, 4097),
    "train_seed": ("seed", -1, MAX_SEED + 1),
    "train_unfreeze": ("unfreeze_after", -1, 1000),
}


@pytest.mark.parametrize("side", ["below", "above"])
def test_train_form_numbers_out_of_range_never_reach_a_run(side, manager, tmp_path):
    """The browser refuses to submit the form (see docs/bad_inputs.md); the server drops a value past the bounds."""
    at = AppTest.from_file(str(PAGES / "train.py"), default_timeout=60)
    at.session_state["draft"] = RunConfig(dataset=str(tmp_path / "no-such-folder"), num_classes=3, epochs=2)
    at.run()
    before = at.session_state["draft"]
    for key, (_, low, high) in TRAIN_FIELDS.items():
        at.number_input(key=key).set_value(low if side == "below" else high)
    at.button(key="FormSubmitter:train_form-Start training").click().run()
    assert not at.exception
    assert at.session_state["draft"] == before
    for key, (field, _, _) in TRAIN_FIELDS.items():
        assert at.number_input(key=key).value == getattr(before, field), key
    for record in manager.store.list():  # whatever was started, it uses the last valid values
        assert record.config == before


# --- RunConfig.validate: the safety net behind every form and the command line -----------------------

INVALID = [  # (changes, words of the message)
    ({"image_size": (8, 64)}, "image size must be 16-1024 px per side, got 8x64"),
    ({"image_size": (64, 2048)}, "image size must be 16-1024 px per side, got 64x2048"),
    ({"num_classes": 1}, "a classifier needs at least 2 classes, got 1"),
    ({"epochs": 0}, "epochs must be 1-1000, got 0"),
    ({"epochs": 1001}, "epochs must be 1-1000, got 1001"),
    ({"batch_size": 0}, "batch size must be 1-4096, got 0"),
    ({"batch_size": 4097}, "batch size must be 1-4096, got 4097"),
    ({"lr": 0.0}, "learning rate must be in (0, 10], got 0.0"),
    ({"lr": -0.01}, "learning rate must be in (0, 10], got -0.01"),
    ({"lr": 10.5}, "learning rate must be in (0, 10], got 10.5"),
    ({"lr": math.nan}, "learning rate must be in (0, 10], got nan"),
    ({"backbone_lr_mult": -0.1}, "backbone rate multiplier must be in [0, 10], got -0.1"),
    ({"backbone_lr_mult": 11.0}, "backbone rate multiplier must be in [0, 10], got 11.0"),
    ({"weight_decay": -0.1}, "weight decay must be in [0, 1], got -0.1"),
    ({"weight_decay": 1.5}, "weight decay must be in [0, 1], got 1.5"),
    ({"val_fraction": 0.0}, "validation fraction must be in (0, 1), got 0.0"),
    ({"val_fraction": 1.0}, "validation fraction must be in (0, 1), got 1.0"),
    ({"unfreeze_after": -1}, "gradual unfreezing must start before the last epoch"),
    ({"unfreeze_after": 3, "epochs": 3}, "gradual unfreezing must start before the last epoch"),
    ({"seed": -1}, f"seed must be 0-{MAX_SEED}, got -1"),
    ({"seed": 2**64}, f"seed must be 0-{MAX_SEED}, got {2**64}"),
]


def _config_id(changes: dict) -> str:
    return "+".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in changes.items())


@pytest.mark.parametrize("changes, message", INVALID, ids=[_config_id(c) for c, _ in INVALID])
def test_run_config_validate_rejects_out_of_range_fields(changes, message):
    with pytest.raises(ValueError) as info:
        RunConfig(**changes).validate()
    assert message in str(info.value)
    RunConfig().validate()  # the defaults are valid


def test_run_config_validate_lists_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        RunConfig(epochs=0, lr=99.0, seed=-5).validate()
    assert str(info.value).count(";") >= 2 and "epochs" in str(info.value) and "seed" in str(info.value)


# --- command line: python -m core.train ------------------------------------------------------------

CLI = [  # (arguments, what stderr says after "error: ")
    (["--epochs", "0"], "epochs must be 1-1000, got 0"),
    (["--epochs", "1001"], "epochs must be 1-1000, got 1001"),
    (["--batch-size", "0"], "batch size must be 1-4096, got 0"),
    (["--batch-size", "5000"], "batch size must be 1-4096, got 5000"),
    (["--lr", "0"], "learning rate must be in (0, 10], got 0.0"),
    (["--lr", "11"], "learning rate must be in (0, 10], got 11.0"),
    (["--lr", "nan"], "learning rate must be in (0, 10], got nan"),
    (["--backbone-lr-mult", "-1"], "backbone rate multiplier must be in [0, 10], got -1.0"),
    (["--backbone-lr-mult", "11"], "backbone rate multiplier must be in [0, 10], got 11.0"),
    (["--weight-decay", "-0.5"], "weight decay must be in [0, 1], got -0.5"),
    (["--weight-decay", "2"], "weight decay must be in [0, 1], got 2.0"),
    (["--image-size", "8"], "image size must be 16-1024 px per side, got 8x8"),
    (["--image-size", "64x2048"], "image size must be 16-1024 px per side, got 64x2048"),
    (["--unfreeze-after", "-1"], "gradual unfreezing must start before the last epoch"),
    (["--unfreeze-after", "3", "--epochs", "3"], "gradual unfreezing must start before the last epoch"),
    (["--seed", "-1"], f"seed must be 0-{MAX_SEED}, got -1"),
    (["--seed", str(2**64)], f"seed must be 0-{MAX_SEED}, got {2**64}"),
    (["--val-fraction", "0"], "The validation fraction must be between 0 and 1, got 0.0."),
    (["--val-fraction", "1.5"], "The validation fraction must be between 0 and 1, got 1.5."),
    (["--dataset", "/no/such/folder"], "No folder at /no/such/folder."),
    (["--dataset", "demo-target:1"], "Demo size must be a number of images per class from 2 to 100000, got '1'."),
    (["--dataset", "demo-target:100001"], "Demo size must be a number of images per class from 2 to 100000, got '100001'."),
]


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("cli") / "shapes", ("a", "b"), n=3)


@pytest.mark.parametrize("args, message", CLI, ids=["_".join(a).lstrip("-").replace("_--", "_").replace("/", "") for a, _ in CLI])
def test_cli_out_of_range_numbers_are_refused_before_any_run(args, message, cli_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["--dataset", str(cli_folder), "--epochs", "1", "--device", "cpu", "--runs-dir", str(runs), "--json"]
    assert cli_main(base + args) == 1
    out = capsys.readouterr()
    assert f"error: {message}" in out.err
    result = json.loads(out.out)
    assert result["status"] == "failed" and result["run_id"] is None and message in result["reason"]
    assert RunStore(runs).list() == []  # refused before a run was created


def test_cli_unreadable_dataset_folder_is_a_message(tmp_path, capsys):
    locked = make_folder(tmp_path / "locked")
    locked.chmod(0)
    try:
        if readable_anyway(locked):
            pytest.skip("this user reads a chmod 000 folder anyway (root): run the suite as a normal user")
        assert cli_main(["--dataset", str(locked), "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]) == 1
        assert f"error: Cannot read the folder {locked}: Permission denied." in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("weights", ["no-such.pt", "run:20990101-000000-dead"])
def test_cli_missing_starting_weights_are_refused_before_any_run(cli_folder, tmp_path, capsys, weights):
    """A checkpoint path that is not a file, or a run that does not exist: refused, no run is created."""
    runs = tmp_path / "runs"
    weights = weights if weights.startswith("run:") else str(tmp_path / weights)
    args = ["--dataset", str(cli_folder), "--weights", weights, "--epochs", "1", "--image-size", "32",
            "--device", "cpu", "--runs-dir", str(runs), "--json"]
    assert cli_main(args) == 1
    result = json.loads(capsys.readouterr().out)
    expected = "There is no run" if weights.startswith("run:") else f"No checkpoint file at {weights}"
    assert result["run_id"] is None and expected in result["reason"]
    assert RunStore(runs).list() == []


def test_cli_number_that_is_not_a_number_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--epochs", "ten"])
    assert exit_info.value.code == 2
    assert "argument --epochs: invalid int value: 'ten'" in capsys.readouterr().err


# --- Classify page ------------------------------------------------------------------------------------


@pytest.fixture
def classify_page(manager):
    at = AppTest.from_file(str(PAGES / "classify.py"), default_timeout=60).run()
    assert not at.exception
    return at


def test_bad_images_on_the_classify_page_are_named_one_by_one(classify_page):
    at = classify_page
    at.file_uploader(key="classify_files").set_value([
        ("notes.png", b"hello, I am text with an image name", "image/png"),
        ("half.png", truncated_png(), "image/png"),
        ("bomb.png", bomb_png(15_000, 15_000), "image/png"),
        ("huge_bomb.png", bomb_png(100_000, 100_000), "image/png"),
        ("empty.png", b"", "image/png"),
        ("fine.png", png(), "image/png"),
    ]).run()
    assert not at.exception
    assert errors(at) == [
        "**notes.png** cannot be classified: not an image in a supported format (JPEG, PNG, WebP, BMP or GIF)",
        "**half.png** cannot be classified: corrupt or truncated image (Truncated File Read)",
        "**bomb.png** cannot be classified: image is too large (more than 200,000,000 pixels declared); "
        "a possible decompression bomb",
        "**huge_bomb.png** cannot be classified: image is too large (more than 200,000,000 pixels declared); "
        "a possible decompression bomb",
        "**empty.png** cannot be classified: the file is empty",
    ]
    assert not [c for c in at.get("plotly_chart") if "classify_bar_" in c.proto.id]  # nothing classified


def test_classify_page_top_k_out_of_range_keeps_the_last_valid_value(classify_page):
    at = classify_page
    for value in (0, -3, 11, 1000):
        at.number_input(key="classify_k").set_value(value).run()
        assert not at.exception and at.number_input(key="classify_k").value == 3


# --- every uploader: a file of another type ------------------------------------------------------------

OTHER_TYPES = {  # page: (script, draft, how to reach the uploader, its key, the upload, what Streamlit's server says)
    "data": ("data.py", "good", lambda at: at.radio(key="data_source").set_value("zip").run(), "data_zip",
             ("pets.tar", b"not a zip", "application/x-tar"), "Invalid file extension: `.tar`. Allowed: ['.zip']"),
    "model": ("model.py", None, lambda at: at.selectbox(key="model_weights").set_value("checkpoint").run(),
              "model_ckpt_upload", ("weights.bin", b"\x80\x02}q\x00.", "application/octet-stream"),
              "Invalid file extension: `.bin`. Allowed: ['.pt', '.pth', '.safetensors']"),
    "classify": ("classify.py", None, lambda at: at, "classify_files", [("notes.txt", b"hello", "text/plain")],
                 "Invalid file extension: `.txt`. Allowed: ['.jpg', '.jpeg', '.png', '.webp', '.bmp']"),
}


@pytest.mark.parametrize("page", list(OTHER_TYPES))
def test_file_of_another_type_never_reaches_the_page(page, manager, good_folder):
    """The browser's uploader refuses it ("text/plain files are not allowed."); Streamlit's server refuses a
    crafted upload before the page script runs, so the page never reads it."""
    script, draft, reach, key, upload, message = OTHER_TYPES[page]
    at = AppTest.from_file(str(PAGES / script), default_timeout=60)
    at.session_state["draft"] = RunConfig(dataset=str(good_folder), num_classes=2) if draft else RunConfig()
    reach(at.run())
    before = at.session_state["draft"]
    at.file_uploader(key=key).set_value(upload).run()
    assert [e.message for e in at.exception] == [message]
    assert at.session_state["draft"] == before


# --- Round two: the process, the run store, the command line ----------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

_STRIDE0_CHILD = """
import sys
from core.jobs import execute
from core.models import CheckpointError
from core.store import RunStore

store = RunStore(sys.argv[1])
outcome = execute(store, sys.argv[2])  # the engine's own path, without the check a submit makes first
print(outcome.status, outcome.reason, sep="|")
"""


def test_a_stride_0_checkpoint_fails_its_run_in_a_child_process_not_with_a_signal(tmp_path):
    """Loaded with assign=True, `torch.zeros(1).expand(4, 512)` became a parameter and the fused CPU optimizer
    wrote 2,048 values through it into 4 bytes: exit 139, the server and every session gone."""
    state = build_model("resnet18", 2).state_dict()
    state["fc.weight"] = torch.zeros(1).expand(2, 512)
    torch.save(state, tmp_path / "stride0.pt")
    folder = make_folder(tmp_path / "ds", ("a", "b"), n=4)
    store = RunStore(tmp_path / "runs")
    run_id = store.create(RunConfig(dataset=str(folder), num_classes=2, weights=str(tmp_path / "stride0.pt"),
                                    image_size=(32, 32), epochs=1, batch_size=4))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", _STRIDE0_CHILD, str(store.root), run_id], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, (child.returncode, child.stderr[-3000:])
    status, reason = child.stdout.strip().splitlines()[-1].split("|")
    assert status == "failed"
    assert reason.endswith("cannot be used: the tensor 'fc.weight' is a view whose elements share memory "
                           "(shape (2, 512), strides (0, 0)).")
    assert (store.load(run_id).status, store.load(run_id).reason) == ("failed", reason)


def test_a_stride_0_checkpoint_path_is_refused_before_a_run_exists(tmp_path, manager):
    state = build_model("resnet18", 4).state_dict()
    state["fc.weight"] = torch.zeros(1).expand(4, 512)
    torch.save(state, tmp_path / "stride0.pt")
    with pytest.raises(CheckpointError, match="strides"):
        manager.submit(RunConfig(weights=str(tmp_path / "stride0.pt")))
    assert manager.store.list() == []


@pytest.mark.parametrize("prefix, extra", [("model.", {}), ("_orig_mod.", {}), ("module.", {"n_averaged": torch.tensor(5)}),
                                           ("_orig_mod.module.", {})],
                         ids=["lightning", "torch-compile", "averaged-model", "compiled-ddp"])
def test_checkpoints_of_common_wrappers_load_as_the_model(prefix, extra, tmp_path):
    state = build_model("resnet18", 4).state_dict()
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()} | extra, "epoch": 3}, tmp_path / "w.ckpt")
    model = build_model("resnet18", 4, tmp_path / "w.ckpt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# --- damaged files in the stores -------------------------------------------------------------------------------


def _spoil_run_json(store: RunStore, run_id: str, **fields) -> None:
    path = store.root / run_id / "run.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | fields))


@pytest.mark.parametrize("config", [None, [1, 2], "resnet18", {"epochs": "three", "frozen": None}],
                         ids=["null", "list", "string", "wrong-field-types"])
def test_a_damaged_run_json_is_skipped_and_reported_never_fatal(config, tmp_path, manager):
    store = manager.store
    good = store.create(RunConfig())
    bad = store.create(RunConfig())
    _spoil_run_json(store, bad, config=config, status="running")
    records, damaged = store.survey()
    assert [r.id for r in records] == [good]
    assert [name for name, _ in damaged] == [bad] and "unreadable run.json" in damaged[0][1]
    get_manager.clear()
    assert get_manager().store.list()[0].id == good  # a new manager (the app's start-up) is not stopped by it
    at = AppTest.from_file(str(PAGES / "compare.py"), default_timeout=60).run()
    assert not at.exception
    assert any("1 damaged run folder" in w.value and bad in w.value for w in at.warning), [w.value for w in at.warning]


def test_a_copied_run_folder_is_reported_and_never_acted_on(tmp_path):
    store = RunStore(tmp_path / "runs")
    original = store.create(RunConfig())
    store.set_status(original, "finished")
    copy = f"{original}-backup"
    shutil.copytree(store.root / original, store.root / copy)
    records, damaged = store.survey()
    assert [r.id for r in records] == [original]
    assert damaged == [(copy, f"unreadable run.json (run.json names the run {original!r}, not its folder's name (a copied folder?))")]
    with pytest.raises(KeyError):
        store.delete(copy)  # "Delete" on the copy never reaches the original
    assert store.load(original).status == "finished" and (store.root / copy).is_dir()


def test_damaged_metrics_and_timestamps_never_break_a_snapshot(tmp_path, manager):
    store = manager.store
    run_id = store.create(RunConfig())
    store.set_status(run_id, "finished")
    _spoil_run_json(store, run_id, started="yesterday-ish", finished=12)
    (store.root / run_id / "metrics.json").write_text(json.dumps(
        {"steps": [[1, 1, 0.5], "x", [2], [3, "e", 0.1], [4, 1, 0.25]], "epochs": [{"epoch": "one"}, 7], "info": [1]}))
    snap = manager.snapshot(run_id)
    assert snap.status == "finished" and snap.elapsed_s is None
    assert snap.metrics["steps"] == [[1, 1, 0.5], [4, 1, 0.25]] and snap.metrics["epochs"] == [{"epoch": "one"}]
    assert snap.step == 4 and snap.info == {}


def test_a_damaged_weights_file_of_a_finished_run_is_a_message_on_classify(tmp_path, manager):
    store = manager.store
    run_id = store.create(RunConfig())
    store.set_status(run_id, "finished")
    (store.root / run_id / "weights.pt").write_bytes(b"PK\x03\x04 this is no longer a checkpoint")
    at = AppTest.from_file(str(PAGES / "classify.py"), default_timeout=60).run()
    at.file_uploader(key="classify_files").set_value([("fine.png", png(), "image/png")]).run()
    assert not at.exception
    assert any("The weights file of run" in e and "is damaged" in e for e in errors(at)), errors(at)


def test_weights_that_do_not_fit_the_runs_configuration_are_a_message_on_classify(tmp_path, manager):
    """A run folder whose weights.pt holds a head of another size (a folder copied over another run's)."""
    store = manager.store
    run_id = store.create(RunConfig(num_classes=4))
    store.set_status(run_id, "finished")
    torch.save({"fc.weight": torch.zeros(7, 512), "fc.bias": torch.zeros(7)}, store.root / run_id / "weights.pt")
    with pytest.raises(CheckpointError, match="does not fit its configuration .*size mismatch for fc.weight"):
        run_state_dict(run_id, "resnet18", runs_dir=store.root)
    at = AppTest.from_file(str(PAGES / "classify.py"), default_timeout=60).run()
    at.file_uploader(key="classify_files").set_value([("fine.png", png(), "image/png")]).run()
    assert not at.exception
    assert any("does not fit its configuration" in e for e in errors(at)), errors(at)


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b'{"version": 1, "entries": [1]}', b"\x00\xff not json"],
                         ids=["list", "entries-list", "binary"])
def test_a_damaged_dataset_index_is_rebuilt(content, tmp_path):
    folder = make_folder(tmp_path / "ds", ("a", "b"))
    first = data.load_dataset(str(folder), data_dir=tmp_path / "data")
    for index in (tmp_path / "data" / ".cache").glob("index-*.json"):
        index.write_bytes(content)
    again = data.load_dataset(str(folder), data_dir=tmp_path / "data")
    assert again.classes == first.classes and len(again.train) == len(first.train)


def test_a_checkpoint_upload_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    import core.files

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.files.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    from core.models import CheckpointError, store_checkpoint

    with pytest.raises(CheckpointError, match="No space left on device"):
        store_checkpoint(b"checkpoint bytes", "w.pt", tmp_path / "data")
    assert list((tmp_path / "data" / "checkpoints").iterdir()) == []


# --- zips and folders -------------------------------------------------------------------------------------------


def test_the_entry_limit_is_read_from_the_end_record_before_the_central_directory_is_parsed(tmp_path, monkeypatch):
    blob = bytearray(zip_of(good_entries(n=3)))
    at = blob.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", blob, at + 8, 6, 6)  # what the record says: 6 entries
    monkeypatch.setattr(zips, "MAX_ZIP_ENTRIES", 5)
    monkeypatch.setattr(zips.zipfile, "ZipFile", lambda *a, **k: pytest.fail("the central directory was parsed"))
    with pytest.raises(data.DatasetError, match="The zip has 6 entries; the limit is 5."):
        data.import_zip(bytes(blob), tmp_path / "data")


def test_a_zip64_entry_count_is_read_too(tmp_path, monkeypatch):
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)  # zipfile then writes zip64 end records
    blob = bytearray(zip_of(good_entries(n=3)))
    assert blob.find(b"PK\x06\x06") >= 0
    at = blob.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", blob, at + 8, 0xFFFF, 0xFFFF)  # the classic record says "see zip64"
    monkeypatch.setattr(zips, "MAX_ZIP_ENTRIES", 5)
    with pytest.raises(data.DatasetError, match="The zip has 6 entries; the limit is 5."):
        data.import_zip(bytes(blob), tmp_path / "data")


def test_a_folder_nested_1100_levels_deep_is_a_message(tmp_path):
    folder = make_folder(tmp_path / "ds", ("a", "b"))
    deep = folder / "a"
    for _ in range(40):  # past the 32-level limit; 1,100 levels hit RecursionError in pathlib before the limit
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "x.png").write_bytes(png())
    with pytest.raises(data.DatasetError, match="nests folders more than 32 levels deep"):
        data.load_dataset(str(folder), data_dir=tmp_path / "data")


def test_a_class_in_only_one_split_is_reported(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", ("a", "b"))
    make_folder(root / "val", ("a", "b", "c"))
    ds = data.load_dataset(str(root), data_dir=tmp_path / "data")
    assert ds.classes == ["a", "b", "c"]
    assert ds.split_gaps() == {"c": "no training images"}


@pytest.mark.parametrize("ref", ["demo-target:²", "demo-target:٣", "demo-target:1e3", "demo-target:-5"])
def test_a_demo_size_that_is_not_a_plain_number_is_a_message(ref, tmp_path):
    with pytest.raises(data.DatasetError, match="Demo size must be a number of images per class"):
        data.load_dataset(ref, data_dir=tmp_path / "data")


# --- runs that cannot run, and the processes that own runs ------------------------------------------------------

UNRUNNABLE = [
    (dict(arch="alexnet", image_size=(16, 16)), "An input of 16x16 is too small for this architecture"),
    (dict(frozen=("layer9",)), "ResNet-18 has no module 'layer9' to freeze."),
    (dict(epochs=1.5), "epochs must be of type int, got 1.5"),
    (dict(arch="resnet9000"), "unknown architecture 'resnet9000'"),
]


@pytest.mark.parametrize("changes, message", UNRUNNABLE, ids=["alexnet-16px", "unknown-frozen-path", "epochs-1.5", "unknown-arch"])
def test_a_config_that_cannot_run_creates_no_run(changes, message, manager):
    with pytest.raises(ValueError, match=re.escape(message)):
        manager.submit(RunConfig(**changes))
    assert manager.store.list() == [] and manager.store.survey()[1] == []


def test_a_read_only_runs_folder_is_a_message_not_an_os_error(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "a-file")
    store.root.write_text("not a folder")
    with pytest.raises(StoreError, match="Cannot create a run in .*a-file"):
        store.create(RunConfig())


@pytest.mark.parametrize("args, message", [
    (["--name", "   "], "a run name cannot be empty"),
    (["--runs-dir", "FILE"], "Cannot create a run in"),
    (["--device", "mps"], "This machine has no mps device"),
    (["--device", "tpu"], "Unknown device 'tpu'"),
], ids=["blank-name", "runs-dir-is-a-file", "mps-without-mps", "unknown-device"])
def test_cli_store_and_device_problems_are_messages_not_tracebacks(args, message, cli_folder, tmp_path, capsys):
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    code = cli_main(["--dataset", str(cli_folder), "--epochs", "1", "--image-size", "32", "--json", *args])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert message in json.loads(out)["reason"]


_CLI_RUN_THAT_HANGS = """
import sys, time
from core.config import RunConfig
from core.store import RunStore
store = RunStore(sys.argv[1])
run_id = store.create(RunConfig(), owner="cli")
store.set_status(run_id, "running")
print(run_id, flush=True)
time.sleep(600)
"""


def test_a_cli_run_killed_with_kill_9_becomes_interrupted_in_the_app(tmp_path, manager):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _CLI_RUN_THAT_HANGS, str(manager.store.root)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().strip()
    assert manager.snapshot(run_id).status == "running"  # alive: the app leaves it alone
    get_manager.clear()
    assert get_manager().interrupted == []  # nor does an app (re)starting beside it
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    snap = get_manager().snapshot(run_id)
    assert snap.status == "interrupted"
    assert snap.reason == f"the process that was training it (pid {child.pid} on {socket.gethostname()}) is gone"
    get_manager().delete(run_id)  # and, no longer "running", it can be deleted
    assert not manager.store.exists(run_id)


def test_a_loss_that_becomes_nan_fails_the_run_with_a_message():
    from core.engine.loop import DivergedError, _StepReporter

    seen = []

    class Monitor:
        def on_step(self, step, epoch, loss):
            seen.append(loss)

    reporter = _StepReporter(Monitor())
    reporter.push(1, 1, torch.tensor(0.7))
    reporter.push(2, 1, torch.tensor(float("nan")))
    with pytest.raises(DivergedError, match=r"^The loss became NaN at step 2: lower the learning rate"):
        reporter.flush()
    assert seen == [pytest.approx(0.7)]


def test_a_diverging_run_is_failed_not_finished(tmp_path, monkeypatch):
    """A real run whose loss overflows (finite but huge starting weights: the logits become infinite)
    ends "failed" with the step and the advice, instead of "finishing" at chance accuracy."""
    folder = make_folder(tmp_path / "ds", ("a", "b"), n=8)
    state = build_model("resnet18", 2).state_dict()
    state["fc.weight"] = torch.full((2, 512), 3e38)
    torch.save(state, tmp_path / "huge.pt")
    store = RunStore(tmp_path / "runs")
    config = RunConfig(dataset=str(folder), num_classes=2, image_size=(32, 32), epochs=2, batch_size=4,
                       weights=str(tmp_path / "huge.pt"), preset="head", frozen=())
    from core.jobs import execute

    run_id = store.create(config)
    outcome = execute(store, run_id)
    assert outcome.status == "failed"
    assert re.fullmatch(r"The loss became (NaN|infinite) at step \d+: lower the learning rate .*", outcome.reason)
    assert not store.load(run_id).has_weights


def test_a_runs_folder_that_cannot_be_written_is_a_message_on_the_train_page(tmp_path, monkeypatch, good_folder):
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "not-a-folder"))
    get_manager.clear()
    try:
        at = AppTest.from_file(str(PAGES / "train.py"), default_timeout=60)
        at.session_state["draft"] = RunConfig(dataset=str(good_folder), num_classes=2, image_size=(32, 32))
        at.run()
        at.button(key="FormSubmitter:train_form-Start training").click().run()
        assert not at.exception
        assert any("Cannot create a run in" in e for e in errors(at)), errors(at)
        assert "run" not in at.query_params
    finally:
        get_manager().shutdown(wait=True, timeout=30)
        get_manager.clear()


# --- round three: cluster settings ------------------------------------------------------------------------


@pytest.mark.parametrize("address, gpus, message", [
    ("127.0.0.1:²", "1", "is not a Ray address"),  # a digit isdigit accepts and int refuses
    ("h" * 300 + ":6379", "1", "is not a Ray address"),  # longer than any host name
    ("10.0.0.1:99999", "1", "is not a Ray address"),
    ("local", "abc", "FREEZE_LAB_RAY_GPUS_PER_MEMBER must be a share of one GPU"),
    ("local", "nan", "FREEZE_LAB_RAY_GPUS_PER_MEMBER must be"),
    ("local", "-1", "FREEZE_LAB_RAY_GPUS_PER_MEMBER must be"),
    ("local", "inf", "FREEZE_LAB_RAY_GPUS_PER_MEMBER must be"),
    ("local", "1.5", "FREEZE_LAB_RAY_GPUS_PER_MEMBER must be"),
])
def test_a_malformed_cluster_setting_is_one_message_read_once(address, gpus, message):
    env = {"FREEZE_LAB_RAY_ADDRESS": address, "FREEZE_LAB_RAY_GPUS_PER_MEMBER": gpus}
    with pytest.raises(ClusterError, match=re.escape(message)):
        read_settings(env)


def test_good_cluster_settings_are_read_into_a_typed_value():
    assert read_settings({}) is None and read_settings({"FREEZE_LAB_RAY_ADDRESS": "  "}) is None
    assert read_settings({"FREEZE_LAB_RAY_ADDRESS": "ray://head:10001", "FREEZE_LAB_RAY_GPUS_PER_MEMBER": "0.5"}) == \
        ClusterSettings("ray://head:10001", 0.5)
    assert read_settings({"FREEZE_LAB_RAY_ADDRESS": "auto"}) == ClusterSettings("auto", 1.0)


def test_a_malformed_cluster_setting_leaves_every_page_working(monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_RAY_ADDRESS", "127.0.0.1:²")
    get_cluster.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        assert not at.exception
        assert any("Ray cluster setting" in e.value and "is not a Ray address" in e.value for e in at.sidebar.error)
        assert any("What trains" in h.value for h in at.subheader)  # the Model page drew below it
        assert get_cluster() is None  # sweeps stay on this machine
    finally:
        get_cluster.clear()
        get_manager().shutdown(wait=True, timeout=30)
        get_manager.clear()


def test_the_command_line_refuses_a_gpu_share_of_inf_before_joining_anything(tmp_path, capsys):
    args = ["--kind", "grid", "--presets", "head", "--dataset", "demo-target:10", "--runs-dir", str(tmp_path / "runs"),
            "--ray-address", "local", "--gpus-per-member", "inf", "--json"]
    assert sweep_main(args) == 1
    assert "--gpus-per-member must be a share of one GPU" in json.loads(capsys.readouterr().out)["reason"]
    assert RunStore(tmp_path / "runs").list() == []


# --- round three: drafts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", [
    {"arch": "resnet9000"}, {"frozen": ["layer9"]}, {"lr": "Infinity"}, {"epochs": 1.5},
], ids=["unknown-arch", "unknown-module", "infinity", "float-epochs"])
def test_a_saved_draft_that_is_not_usable_is_ignored_and_never_breaks_the_tab(damage, tmp_path):
    from ui import session

    path = session._path("0123456789ab")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(RunConfig().to_dict() | damage).replace('"Infinity"', "Infinity")
    path.write_text(text)
    assert session._load("0123456789ab") is None  # the page then starts from the default draft
    at = AppTest.from_file(str(PAGES / "model.py"), default_timeout=60)
    at.query_params["tab"] = "0123456789ab"
    at.run()
    assert not at.exception and at.session_state["draft"].arch == "resnet18"


def test_a_draft_that_does_not_validate_is_never_saved_over_a_good_one(tmp_path):
    from ui import session

    good = RunConfig(epochs=7)
    session._save("0123456789ab", good)
    session._save("0123456789ab", good.replace(auto_rgn=True))  # Auto-RGN on a stage answer: not a usable draft
    session._save("0123456789ab", good.replace(frozen=("layer9",)))
    assert session._load("0123456789ab") == good


# --- round three: sweep records ---------------------------------------------------------------------------


GOOD_MEMBER = {"label": "head", "strategy": "head", "preset": "head", "frozen": ["conv1"], "lr": 0.01, "seed": 0,
               "run_id": "20261207-120000-abcd"}


@pytest.mark.parametrize("members", [
    [], [{k: v for k, v in GOOD_MEMBER.items() if k != "label"}], [GOOD_MEMBER | {"run_id": ["x"]}],
    [GOOD_MEMBER | {"frozen": [3]}], [GOOD_MEMBER | {"seed": True}], "head", [GOOD_MEMBER] * 201,
], ids=["empty", "no-label", "list-run-id", "numeric-frozen", "bool-seed", "not-a-list", "too-many"])
def test_a_malformed_sweep_record_is_skipped_and_never_breaks_the_sweep_page(members, manager):
    from core.config import SweepConfig
    from core.store import SweepStore

    sweeps = SweepStore(manager.store)  # the store the page reads
    good = sweeps.create(SweepConfig(), [GOOD_MEMBER], name="good", owner="x")
    bad = sweeps.create(SweepConfig(), [GOOD_MEMBER], name="bad", owner="x")
    record = json.loads(sweeps.path(bad).read_text())
    sweeps.path(bad).write_text(json.dumps(record | {"members": members}))
    with pytest.raises(KeyError, match="unreadable sweep record"):
        sweeps.load(bad)
    assert [r.id for r in sweeps.list()] == [good]
    at = AppTest.from_file(str(PAGES / "sweep.py"), default_timeout=60).run()
    assert not at.exception and at.selectbox(key="sweep_shown").options == [f"good ({good})"]


def test_a_sweep_record_larger_than_any_sweep_writes_is_not_read(tmp_path):
    from core.config import SweepConfig
    from core.store import SweepStore

    sweeps = SweepStore(RunStore(tmp_path / "runs"))
    big = sweeps.create(SweepConfig(), [GOOD_MEMBER], name="big")
    record = json.loads(sweeps.path(big).read_text())
    sweeps.path(big).write_text(json.dumps(record | {"padding": "x" * (2 << 20)}))  # a 2 MiB record
    with pytest.raises(KeyError, match="larger than 1,048,576 bytes"):
        sweeps.load(big)
