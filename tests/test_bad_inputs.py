"""Bad inputs, one test per row of docs/bad_inputs.md that no other test file covers.

Each test feeds one bad input where a user meets it (a page through AppTest, or
the command line), asserts what the user sees, and asserts that nothing
changed: the draft `RunConfig` in the session, the data directory (no stored
file, no half-extracted folder), the run store. The inputs are built here, tiny;
limits are the real ones except where a test names the one it lowers.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import stat
import struct
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
from core.models import build_model
from core.runs import RunStore
from core.train import main as cli_main
from ui.manager import get_manager

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
def manager():
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
        monkeypatch.setattr(data, *limit)
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
    "b/bomb.png": (None, "image is too large: 8000x8000 pixels (limit 40 megapixels); a possible decompression bomb"),
    "b/huge_bomb.png": (None, "image is too large (more than 89,478,485 pixels declared); a possible decompression bomb"),
    "b/readme.txt": (b"not a picture", "not an image file type (.txt)"),
    "c/only_bad.png": (b"\x89PNG\r\n\x1a\n broken", "not an image in a supported format"),
}


def bad_files() -> dict[str, bytes]:
    made = {"a/half.png": truncated_png(), "b/bomb.png": bomb_png(8000, 8000), "b/huge_bomb.png": bomb_png(100_000, 100_000)}
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
        monkeypatch.setattr(data, "MAX_OTHER_FILES", 8)
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
    assert any("num_classes" in c.value or "nn.Linear" in c.value for c in at.code)  # the rest of the page renders
    assert any("of the compute" in m.value for m in at.markdown)  # the Cost tab has its estimate


# --- Model page: checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet_state():
    return build_model("alexnet", 4).state_dict()


@pytest.fixture(scope="module")
def resnet18_3_classes():
    return build_model("resnet18", 3).state_dict()


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
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_bad_checkpoint_upload_is_refused_and_changes_nothing(case, tmp_path, alexnet_state):
    build, name, message = UPLOADS[case]
    blob = build({"alexnet": alexnet_state})
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
        ("bomb.png", bomb_png(8000, 8000), "image/png"),
        ("huge_bomb.png", bomb_png(100_000, 100_000), "image/png"),
        ("empty.png", b"", "image/png"),
        ("fine.png", png(), "image/png"),
    ]).run()
    assert not at.exception
    assert errors(at) == [
        "**notes.png** cannot be classified: not an image in a supported format (JPEG, PNG, WebP, BMP or GIF)",
        "**half.png** cannot be classified: corrupt or truncated image (Truncated File Read)",
        "**bomb.png** cannot be classified: image is too large: 8000x8000 pixels (limit 40 megapixels); "
        "a possible decompression bomb",
        "**huge_bomb.png** cannot be classified: image is too large (more than 89,478,485 pixels declared); "
        "a possible decompression bomb",
        "**empty.png** cannot be classified: the file is empty",
    ]
    assert at.session_state["classify_results"] == {}


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
