"""core.data (with its demo world): every source, every rejection, on inputs the tests build themselves."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import data
from core.data import (
    DatasetError,
    Sample,
    demo,
    folders,
    images,
    import_zip,
    load_dataset,
    open_image,
    preprocess_for,
    tensors,
    zips,
)


def png_bytes(colour=(200, 30, 30), size=(8, 8), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root: Path, classes=("a", "b"), n=5, split: str | None = None) -> Path:
    for c_i, c in enumerate(classes):
        for i in range(n):
            folder = root / split / c if split else root / c
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(png_bytes((c_i * 80, i * 20, 50)))
    return root


def make_zip(entries: dict[str, bytes], symlinks=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def good_entries(prefix="ds/", classes=("cat", "dog"), n=3) -> dict[str, bytes]:
    return {f"{prefix}{c}/{i}.png": png_bytes((i * 40, 0, 0)) for c in classes for i in range(n)}


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(d))
    return d


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


# --- open_image -------------------------------------------------------------------------------------


def test_open_image_accepts_path_bytes_and_file_like(tmp_path):
    raw = png_bytes(size=(5, 7))
    (tmp_path / "x.png").write_bytes(raw)
    for src in (tmp_path / "x.png", raw, io.BytesIO(raw)):
        img = open_image(src)
        assert img.mode == "RGB" and img.size == (5, 7)


def test_open_image_gif_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img = open_image(buf.getvalue())
    assert img.mode == "RGB"
    r, g, b = img.getpixel((0, 0))
    assert r > 200 and b < 50


def test_open_image_rejects_truncated_png():
    raw = png_bytes(size=(64, 64))
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        open_image(raw[: len(raw) // 2])


def test_open_image_rejects_text_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am not a picture")
    with pytest.raises(DatasetError, match="not an image in a supported format"):
        open_image(p)


def test_open_image_rejects_unlisted_format():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="TIFF")
    with pytest.raises(DatasetError, match="supported format"):
        open_image(buf.getvalue())


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (CRC fixed up): a decompression bomb header."""
    raw = bytearray(png_bytes(size=(1, 1)))
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    raw[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr : ihdr + 17])))
    return bytes(raw)


@pytest.mark.parametrize("side", [15_000, 25_000, 100_000])  # over our cap and Pillow's warning; Pillow's error zone; far over
def test_open_image_rejects_decompression_bomb(side):
    with pytest.raises(DatasetError, match="too large"):
        open_image(_png_with_declared_size(side, side))


def test_open_image_turns_pillow_bomb_warning_into_error(monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10**12)  # only Pillow's own warning is left to catch it
    with pytest.raises(DatasetError, match="too large"):
        open_image(_png_with_declared_size(15_000, 15_000))


def test_a_48_megapixel_phone_photo_is_an_image_not_a_bomb():
    # 8000 x 6000, as a 48 MP phone sensor takes it; decoded at a reduced scale for a small target.
    buf = io.BytesIO()
    Image.new("RGB", (8000, 6000), (30, 120, 200)).save(buf, format="JPEG", quality=70)
    img = open_image(buf.getvalue(), draft=(256, 256))
    assert img.mode == "RGB" and img.size == (1000, 750)  # JPEG's 1/8 scale: memory bounded by the target size
    assert img.getpixel((500, 375)) == pytest.approx((30, 120, 200), abs=3)


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped_to_white():
    values = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")  # a 16-bit grayscale PNG (Pillow opens it as I;16, older ones as I)
    out = np.asarray(open_image(buf.getvalue()))
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]
    as_i = images._to_8bit(Image.fromarray(values.astype(np.int32)))  # mode "I", as Pillow < 13 reads such files
    assert np.asarray(as_i).tolist() == [[0, 64], [128, 255]]
    assert (out[..., 0] == out[..., 2]).all()  # gray stays gray


# --- folders --------------------------------------------------------------------------------------


def test_folder_imagefolder_layout_with_skipped_files(tmp_path, data_dir):
    root = make_folder(tmp_path / "ds", n=5)
    (root / "a" / "broken.png").write_bytes(png_bytes()[:30])
    (root / "b" / "text.jpg").write_text("nope")
    (root / "b" / "readme.txt").write_text("nope")
    (root / "b" / ".DS_Store").write_bytes(b"\0")
    ds = load_dataset(str(root), data_dir=data_dir)
    assert ds.classes == ["a", "b"] and not ds.given
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10
    assert {f for f, _ in ds.skipped} == {"a/broken.png", "b/text.jpg", "b/readme.txt"}
    counts = ds.counts()
    assert list(counts.columns) == ["class", "train", "val", "test"]
    assert counts["test"].tolist() == [1, 1] and counts["val"].tolist() == [1, 1] and counts["train"].tolist() == [3, 3]
    assert all(isinstance(s, Sample) and s.path.is_absolute() or s.path.exists() for s in ds.train)


def test_folder_split_layout_is_used_as_given(tmp_path, data_dir):
    root = tmp_path / "hymenoptera"
    make_folder(root, ("ants", "bees"), n=4, split="train")
    make_folder(root, ("ants", "bees"), n=2, split="val")
    make_folder(root, ("ants", "bees"), n=3, split="test")
    ds = load_dataset(str(root), data_dir=data_dir, val_fraction=0.5)
    assert ds.given == ("train", "val", "test") and ds.classes == ["ants", "bees"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 6)
    assert all("/val/" in s.path.as_posix() for s in ds.val)
    assert all("/test/" in s.path.as_posix() for s in ds.test)


def test_a_folder_with_train_and_test_draws_validation_from_train_and_keeps_its_test(tmp_path, data_dir):
    root = tmp_path / "ds"
    make_folder(root, ("a", "b"), n=10, split="train")
    make_folder(root, ("a", "b"), n=3, split="test")
    one, other = (load_dataset(str(root), data_dir=data_dir, seed=seed) for seed in (0, 1))
    assert one.given == other.given == ("train", "test")
    assert one.test == other.test and all("/test/" in s.path.as_posix() for s in one.test)
    assert one.counts()["val"].tolist() == [2, 2] and one.val != other.val
    assert all("/train/" in s.path.as_posix() for s in one.val + one.train)


def test_the_test_split_is_disjoint_stratified_and_the_same_for_every_seed(tmp_path, data_dir):
    root = make_folder(tmp_path / "ds", ("a", "b", "c"), n=10)
    runs = [load_dataset(str(root), data_dir=data_dir, seed=seed) for seed in range(4)]
    test = {s.path for s in runs[0].test}
    for ds in runs:
        assert {s.path for s in ds.test} == test and ds.test_digest() == runs[0].test_digest()
        assert not test & {s.path for s in ds.train + ds.val}
        assert ds.counts()["test"].tolist() == [2, 2, 2]  # 20% of every class
        assert len({s.path for s in ds.train + ds.val + ds.test}) == 30
    assert len({tuple(s.path for s in ds.val) for ds in runs}) > 1  # the seed still draws validation
    wider = load_dataset(str(root), data_dir=data_dir, test_fraction=0.3)
    assert wider.counts()["test"].tolist() == [3, 3, 3] and wider.test_digest() != runs[0].test_digest()


def test_stratified_split_is_deterministic_from_seed(tmp_path, data_dir):
    root = make_folder(tmp_path / "ds", ("a", "b", "c"), n=10)
    one = load_dataset(str(root), data_dir=data_dir, seed=1)
    again = load_dataset(str(root), data_dir=data_dir, seed=1)
    other = load_dataset(str(root), data_dir=data_dir, seed=2)
    assert one.val == again.val and one.train == again.train
    assert one.val != other.val
    assert one.counts()["val"].tolist() == [2, 2, 2]  # stratified: 20% of what the test split left, per class
    assert not {s.path for s in one.train} & {s.path for s in one.val}


@pytest.mark.parametrize("classes", [(), ("only",)])
def test_folder_with_fewer_than_two_classes_is_rejected(tmp_path, data_dir, classes):
    root = make_folder(tmp_path / "ds", classes, n=3)
    root.mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match="class"):
        load_dataset(str(root), data_dir=data_dir)


def test_class_folder_without_usable_images_is_left_out(tmp_path, data_dir):
    root = make_folder(tmp_path / "ds", ("a", "b", "c"), n=3)
    for p in (root / "c").iterdir():
        p.write_text("garbage")
    ds = load_dataset(str(root), data_dir=data_dir)
    assert ds.classes == ["a", "b"]
    assert ("c/", "no usable images; class left out") in ds.skipped


def test_missing_folder_and_bad_val_fraction(tmp_path, data_dir):
    with pytest.raises(DatasetError, match="No folder"):
        load_dataset(str(tmp_path / "nowhere"), data_dir=data_dir)
    with pytest.raises(DatasetError, match="validation fraction"):
        load_dataset("demo-target", data_dir=data_dir, val_fraction=1.0)


def test_repeated_load_reuses_the_index(tmp_path, data_dir, monkeypatch):
    root = make_folder(tmp_path / "ds", n=4)
    load_dataset(str(root), data_dir=data_dir)
    assert list((data_dir / ".cache").glob("index-*.json"))
    calls = []
    real = folders.open_image
    monkeypatch.setattr(folders, "open_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    load_dataset(str(root), data_dir=data_dir)
    assert calls == []
    (root / "a" / "0.png").write_text("changed")  # a changed file is checked again
    ds = load_dataset(str(root), data_dir=data_dir)
    assert len(calls) == 1 and ds.skipped == [("a/0.png", ds.skipped[0][1])]


# --- zips -----------------------------------------------------------------------------------------


def test_import_zip_single_top_folder_is_root(tmp_path, data_dir):
    root = import_zip(make_zip(good_entries()), data_dir, name="pets.zip")
    assert root.name == "ds" and root.parent.parent == data_dir / "uploads"
    assert load_dataset(str(root), data_dir=data_dir).classes == ["cat", "dog"]
    assert import_zip(make_zip(good_entries()), data_dir, name="pets.zip") == root  # same zip, same folder


def test_import_zip_from_path_and_split_layout(tmp_path, data_dir):
    entries = {**good_entries("train/"), **good_entries("val/", n=1), "__MACOSX/train/cat/._0.png": b"junk"}
    z = tmp_path / "split.zip"
    z.write_bytes(make_zip(entries))
    root = import_zip(z, data_dir)
    ds = load_dataset(str(root), data_dir=data_dir)
    assert ds.given == ("train", "val") and len(ds.val) == 2 and not ds.skipped
    assert not (root / "__MACOSX").exists()
    assert load_dataset(str(z), data_dir=data_dir).classes == ["cat", "dog"]  # a .zip path as a ref


@pytest.mark.parametrize(
    "entries, symlinks, message",
    [
        ({**good_entries(), "../evil.png": b"x"}, (), "outside"),
        ({**good_entries(), "/etc/evil.png": b"x"}, (), "outside"),
        ({**good_entries(), "ds\\..\\..\\evil.png": b"x"}, (), "outside"),
        (good_entries(), [("ds/cat/link.png", "/etc/passwd")], "symbolic link"),
        (good_entries(classes=("cat",)), (), "at least two classes"),
        ({"readme.txt": b"hello"}, (), "No class folders"),
    ],
    ids=["dotdot", "absolute", "backslash", "symlink", "one-class", "no-classes"],
)
def test_import_zip_rejections_write_nothing(tmp_path, data_dir, entries, symlinks, message):
    earlier = import_zip(make_zip(good_entries(classes=("x", "y"))), data_dir, name="earlier")
    before = files_under(data_dir)
    with pytest.raises(DatasetError, match=message):
        import_zip(make_zip(entries, symlinks), data_dir, name="bad")
    assert files_under(data_dir) == before  # no temp folder left, earlier dataset intact
    assert load_dataset(str(earlier), data_dir=data_dir).classes == ["x", "y"]
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_import_zip_rejects_bomb_ratio(data_dir):
    entries = {**good_entries(), "ds/cat/bomb.png": b"\0" * (3 * 1024**2)}  # ~1000:1
    with pytest.raises(DatasetError, match="zip bomb"):
        import_zip(make_zip(entries), data_dir)
    assert not any((data_dir / "uploads").iterdir())


def test_import_zip_rejects_too_many_entries(data_dir, monkeypatch):
    monkeypatch.setattr(zips, "MAX_ZIP_ENTRIES", 5)
    with pytest.raises(DatasetError, match="entries"):
        import_zip(make_zip(good_entries(n=3)), data_dir)


def test_import_zip_rejects_total_size(data_dir, monkeypatch):
    monkeypatch.setattr(zips, "MAX_ZIP_TOTAL_BYTES", 100)
    with pytest.raises(DatasetError, match="unpack"):
        import_zip(make_zip(good_entries(n=3)), data_dir)


def test_import_zip_rejects_not_a_zip(data_dir):
    with pytest.raises(DatasetError, match="not a zip"):
        import_zip(b"PK\x03\x04 this is not really a zip", data_dir)


# --- demo world -------------------------------------------------------------------------------------


def test_demo_world_small_is_deterministic_and_balanced(data_dir):
    ds = load_dataset("demo-target", data_dir=data_dir, demo_per_class=5)
    assert ds.ref == "demo-target:5" and ds.root == data_dir / "demo-target-5"
    assert ds.classes == ["diamond", "pentagon", "star4", "tshape"]
    assert ds.counts()["train"].tolist() == [3] * 4 and ds.counts()["test"].tolist() == [1] * 4 and not ds.skipped
    again = load_dataset("demo-target:5", data_dir=data_dir)
    assert again.train == ds.train
    img = np.asarray(Image.open(ds.train[0].path))
    assert img.shape == (64, 64, 3)
    # same seed, same pixels, in a fresh folder
    other = demo.generate("demo-target", data_dir / "copy", 5)
    a = (ds.root / "pentagon" / "pentagon_00000.png").read_bytes()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(a))), np.asarray(Image.open(other / "pentagon" / "pentagon_00000.png")))


def test_demo_source_classes_and_refs(data_dir):
    ds = load_dataset("demo-source:3", data_dir=data_dir, progress=lambda *a: None)
    assert ds.classes == sorted(("circle", "square", "triangle", "star", "cross", "ring"))
    assert data.demo_ref("demo-source", 1000) == "demo-source" and data.parse_demo_ref("demo-source") == ("demo-source", 1000)
    assert data.parse_demo_ref("demo-target") == ("demo-target", 80) and data.demo_ref("demo-target", 80) == "demo-target"
    with pytest.raises(DatasetError, match="Demo size"):
        load_dataset("demo-source:lots", data_dir=data_dir)


def test_demo_classes_differ_by_shape_not_by_colour_statistics():
    """Mean brightness and colour spread must not give the class away (a random net would use them)."""
    stats = {}
    for c, name in enumerate(demo.SHAPES):
        imgs = np.stack([np.asarray(demo.draw_image(np.random.default_rng([9, c, i]), name), dtype=np.float32) for i in range(60)])
        stats[name] = imgs.mean()
    spread = max(stats.values()) - min(stats.values())
    assert spread < 12, stats


# --- torchvision datasets ---------------------------------------------------------------------------


def test_torchvision_download_offline_is_a_clear_error(data_dir, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DatasetError, match="internet connection.*demo dataset"):
        load_dataset("cifar10", data_dir=data_dir)


def test_torchvision_dataset_is_exported_to_a_folder(data_dir, monkeypatch):
    import torchvision.datasets as tvd

    class FakeCifar:
        classes = ["airplane", "automobile"]

        def __init__(self, root, train, download):
            self.items = [(Image.new("RGB", (32, 32), (i * 30, 0, 0)), i % 2) for i in range(8 if train else 2)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    monkeypatch.setattr(tvd, "CIFAR10", FakeCifar)
    ds = load_dataset("cifar10", data_dir=data_dir)
    assert ds.given == ("train", "test") and ds.classes == ["airplane", "automobile"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 2)  # its own test set; validation from train
    monkeypatch.setattr(tvd, "CIFAR10", None)  # exported once: no second download
    assert load_dataset("cifar10", data_dir=data_dir).classes == ["airplane", "automobile"]


# --- transforms and decoding --------------------------------------------------------------------


def test_preprocess_for_imagenet_none_and_rectangular():
    p = preprocess_for("resnet18", "imagenet", (224, 224))
    assert p.mean == pytest.approx((0.485, 0.456, 0.406)) and p.resize == (256, 256) and p.crop == (224, 224)
    p = preprocess_for("resnet18", "imagenet", (448, 224))
    assert p.resize == (512, 256) and p.crop == (448, 224)
    p = preprocess_for("efficientnet_b3", "imagenet", (300, 300))
    assert p.resize == (320, 320) and p.interpolation == "bicubic"
    for weights in ("none", "/tmp/ckpt.pt", "run:abc123"):
        p = preprocess_for("vgg19", weights, (64, 96))
        assert p.resize == p.crop == (64, 96) and p.std == pytest.approx((0.229, 0.224, 0.225))


def test_decode_images_shape_and_cache_hit(tmp_path, data_dir, monkeypatch):
    root = make_folder(tmp_path / "ds", n=2)
    paths = sorted(root.rglob("*.png"))
    (paths[0]).write_bytes(png_bytes((255, 0, 0), size=(20, 10)))
    pre = preprocess_for("resnet18", "imagenet", (16, 8))
    x = data.decode_images(paths, pre, data_dir=data_dir)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 8)
    assert x[0, 0].float().mean() > 250 and x[0, 1].float().mean() < 5
    assert len(list((data_dir / ".cache").glob("decoded-*.pt"))) == 1

    def no_pil(*a, **k):
        raise AssertionError("PIL was opened on a cache hit")

    monkeypatch.setattr(tensors, "open_image", no_pil)
    monkeypatch.setattr(Image, "open", no_pil)
    assert torch.equal(data.decode_images(paths, pre, data_dir=data_dir), x)


def test_decode_images_names_a_file_corrupted_after_the_check(tmp_path, data_dir):
    root = make_folder(tmp_path / "ds", n=2)
    ds = load_dataset(str(root), data_dir=data_dir)
    ds.train[0].path.write_bytes(b"\x89PNG\r\n\x1a\n no longer a png")
    pre = preprocess_for("resnet18", "none", (8, 8))
    with pytest.raises(DatasetError, match=ds.train[0].path.name):
        data.decode_images([s.path for s in ds.train], pre, data_dir=data_dir)


def test_normalize_uint8_and_float():
    pre = preprocess_for("resnet18", "none", (2, 2))
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = data.normalize(x, pre)
    assert y.dtype == torch.float32
    assert y[0, :, 0, 0].tolist() == pytest.approx([(1 - m) / s for m, s in zip(pre.mean, pre.std)])
    assert torch.allclose(data.normalize(x.float() / 255, pre), y)
    assert data.normalize(x.bfloat16() / 255, pre).dtype == torch.bfloat16


@pytest.mark.parametrize("ref, name", [("demo-target", "demo-target"), ("demo-source:200", "demo-source:200"),
                                       ("/data/pets", "pets"), ("/data/pets/", "pets"), ("/", "/")])
def test_dataset_name_is_a_folder_s_own_name(ref, name):
    assert data.dataset_name(ref) == name


@pytest.mark.parametrize("train, val", [("train", "val"), ("training", "validation"), ("train", "valid")])
def test_train_and_val_folders_are_a_split(train, val, tmp_path):
    """A folder with train/ and test/ was read as two classes named "train" and "test"."""
    root = tmp_path / "ds"
    for split, n in ((train, 3), (val, 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                (root / split / c / f"{i}.png").write_bytes(png_bytes())
    ds = load_dataset(str(root), data_dir=tmp_path / "data")
    assert ds.classes == ["cat", "dog"] and ds.given == ("train", "val")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 4, 2)  # the test share comes out of train


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])  # bilinear 256/224; bicubic 256/224
def test_imagenet_preprocessing_of_a_non_square_image_matches_the_weights_own_transforms(arch):
    """Both sides were squashed to 256 before the crop; `weights.transforms()` resizes the shorter side
    and keeps the aspect ratio."""
    import torchvision.transforms.v2.functional as F
    from torchvision.models import get_model_weights

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    reference = get_model_weights(arch).DEFAULT.transforms()(F.pil_to_tensor(img))
    pre = preprocess_for(arch, "imagenet", (224, 224))
    ours = data.normalize(data.image_tensor(img, pre)[None], pre)[0]
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)  # the same pixels, up to float rounding


def test_a_non_square_input_covers_its_box_keeping_the_aspect_ratio():
    pre = preprocess_for("resnet18", "imagenet", (448, 224))
    assert (pre.resize, pre.crop, pre.keep_aspect) == ((512, 256), (448, 224), True)
    img = Image.new("RGB", (300, 300), (10, 20, 30))  # square image into a tall box: scaled to 512x512, cropped
    assert tuple(data.image_tensor(img, pre).shape) == (3, 448, 224)
    assert tensors._resized_size((300, 300), pre) == (512, 512)
    assert tensors._resized_size((600, 300), pre) == (512, 256)
