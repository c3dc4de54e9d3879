"""Datasets for Freeze Lab: where images come from, how they are checked, split and decoded.

Every source ends up as a folder in the ImageFolder layout, so everything
downstream reads one format:

- ``"demo-source"`` / ``"demo-target"`` (optionally ``"demo-source:200"``, images
  per class): the built-in demo world, drawn offline by `core.demo`;
- a folder path: ``root/<class>/<image>`` or, as in the PyTorch tutorials,
  ``root/train/<class>/...`` + ``root/val/<class>/...`` (that split is used as given);
- a ``.zip`` path, or an upload through `import_zip`, extracted safely first;
- ``"cifar10"`` / ``"flowers102"``: torchvision datasets, downloaded into
  ``data_dir`` and exported once to a folder (offline this is a clear `DatasetError`).

Untrusted input (uploaded zips, user folders) never crashes the app: bad image
files are listed in `Dataset.skipped`, bad zips and unusable datasets raise
`DatasetError` whose message is what the UI shows.

For speed, image verdicts are cached in a small JSON index keyed on file name,
size and mtime, and decoded + resized pixels are cached on disk as one uint8
tensor (`decode_images`), so epochs and later runs never touch PIL again.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import random
import re
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core import config, demo
from core.diskcache import atomic_write, load_tensor, save_tensor

Progress = Callable[[int, int, str], None]

DEMO_DATASETS = ("demo-source", "demo-target")
TORCHVISION_DATASETS = ("cifar10", "flowers102")

# --- limits for untrusted input --------------------------------------------------------------
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # Pillow format names open_image accepts
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# 200 MP: the largest photos current phone sensors take (200 MP modes; 48-108 MP is common), far
# below a bomb's gigapixels. Only the header is read before this check; JPEGs then decode at the
# reduced scale that the wanted size allows (`Image.draft`), so a big photo costs little memory.
# Pillow's own bomb check (warning above its limit, error above twice it) uses the same number.
MAX_IMAGE_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
CHECK_DRAFT = (512, 512)  # the scale at which a dataset's JPEGs are checked (decoded fully, at 1/8 size at least)
MAX_IMAGE_BYTES = 64 * 1024**2  # one image file
MAX_ZIP_ENTRIES = 100_000
MAX_ZIP_TOTAL_BYTES = 4 * 1024**3  # uncompressed, all entries together
MAX_ZIP_ENTRY_BYTES = MAX_IMAGE_BYTES  # uncompressed, one entry
MAX_ZIP_RATIO = 100  # uncompressed / compressed, per entry ...
ZIP_RATIO_MIN_BYTES = 1024**2  # ... checked once an entry is larger than this (tiny files compress oddly);
# the same ratio bounds the whole archive: everything unpacked against the zip's own size
MAX_PATH_DEPTH = 32  # folders within a dataset (a zip entry's or a file's depth): datasets need two or three
MAX_OTHER_FILES = 10_000  # files that are not images, past which (and past the images) a folder is no dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INDEX_VERSION = 1
DECODE_VERSION = 2  # 2: ImageNet preprocessing keeps the aspect ratio
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_TRAIN_SPLIT_NAMES = ("train", "training")
_VAL_SPLIT_NAMES = ("val", "valid", "validation", "test", "testing")  # the first present is the validation split
SPLIT_NAMES = _TRAIN_SPLIT_NAMES + _VAL_SPLIT_NAMES


class DatasetError(ValueError):
    """A dataset, zip or image that cannot be used; the message is shown to the user as is."""


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of a checked image file
    label: int  # index into Dataset.classes


@dataclass
class Dataset:
    ref: str  # canonical reference: "demo-target", "demo-source:200", a folder path, "cifar10", ...
    root: Path  # the folder holding the class folders (or train/ and val/)
    classes: list[str]  # sorted class-folder names; a label is an index into this list
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file relative to root, reason)
    given_split: bool = False  # True when the folder had its own train/ and val/ split

    def split_gaps(self) -> dict[str, str]:
        """Classes missing from a split: class name -> "no training images" / "no validation images".

        Such a class cannot be learned (no training images) or measured (no validation images):
        the pages and the command line say so, and its validation accuracy is "no images".
        """
        gaps = {}
        for name, train, val in self.counts().itertuples(index=False, name=None):
            if not train:
                gaps[name] = "no training images"
            elif not val:
                gaps[name] = "no validation images"
        return gaps

    def counts(self) -> pd.DataFrame:
        """Images per class and split: one row per class, columns ``class``, ``train``, ``val``."""
        train = [0] * len(self.classes)
        val = [0] * len(self.classes)
        for s in self.train:
            train[s.label] += 1
        for s in self.val:
            val[s.label] += 1
        return pd.DataFrame({"class": self.classes, "train": train, "val": val})


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, float, float]  # per-channel normalisation of [0, 1] pixels
    std: tuple[float, float, float]
    resize: tuple[int, int]  # (h, w) every image is resized to first (to cover, with `keep_aspect`) ...
    crop: tuple[int, int]  # ... then center-cropped to: the network's input size
    interpolation: str = "bilinear"  # "bilinear" | "bicubic", as the weights were trained
    keep_aspect: bool = False  # scale to cover `resize` keeping the aspect ratio (torchvision's Resize(int)), not squash


# --- one untrusted image -------------------------------------------------------------------------


def _read_bytes(source: Path | str | bytes | io.IOBase) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise DatasetError(f"{path.name}: file is larger than {MAX_IMAGE_BYTES // 1024**2} MB")
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
    else:  # file-like, e.g. a Streamlit UploadedFile
        data = source.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise DatasetError(f"image file is larger than {MAX_IMAGE_BYTES // 1024**2} MB")
    if not data:
        raise DatasetError("the file is empty")
    return data


def _check_pixels(img: Image.Image) -> None:
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise DatasetError(
            f"image is too large: {w}x{h} pixels (limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels); "
            "a possible decompression bomb"
        )


def open_image(source: Path | str | bytes | io.IOBase, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open ONE untrusted image as RGB, or raise `DatasetError` with a clear reason.

    Only JPEG, PNG, WebP, BMP and GIF (first frame) are parsed; the size is
    capped before any pixel is decoded (Pillow's decompression-bomb warning is
    an error here, and our own limit is lower); the file is `verify()`-ed, then
    reopened and fully loaded, so truncated or corrupt files fail here rather
    than in the middle of an epoch. EXIF orientation is applied. `draft` (w, h)
    lets JPEG decode at a reduced scale when only a small image is needed.
    """
    data = _read_bytes(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
                _check_pixels(probe)
                probe.verify()
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            _check_pixels(img)
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a malformed EXIF block is no reason to reject the pixels
                pass
            return _to_8bit(img).convert("RGB")
        except DatasetError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DatasetError(
                f"image is too large (more than {Image.MAX_IMAGE_PIXELS:,} pixels declared); a possible decompression bomb"
            ) from None
        except UnidentifiedImageError:
            raise DatasetError("not an image in a supported format (JPEG, PNG, WebP, BMP or GIF)") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            raise DatasetError(f"corrupt or truncated image ({exc})") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image scaled to 8 bits; other images as they are.

    Pillow's `convert("RGB")` clips such pixels at 255 instead of scaling them, so a 16-bit
    PNG would come out white.
    """
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img
    x = np.asarray(img, dtype=np.float64) if img.mode == "I" else np.asarray(img).astype(np.float64)
    return Image.fromarray(np.clip(x / 257.0, 0, 255).round().astype(np.uint8), mode="L")


# --- folders ---------------------------------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_NAMES
    )


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _find_root(folder: Path) -> Path:
    """The folder that holds the classes: `folder` itself, or its single subfolder when that is all it has."""
    dirs = _visible_dirs(folder)
    loose = [p for p in folder.iterdir() if p.is_file() and _is_image_name(p.name)]
    if len(dirs) == 1 and not loose and _visible_dirs(dirs[0]):
        return dirs[0]
    return folder


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    """(train, val) folders when `root` has a split layout (`train/` or `training/` beside `val/`,
    `valid/`, `validation/`, `test/` or `testing/`, the first of those present), else None."""
    train = next((root / n for n in _TRAIN_SPLIT_NAMES if (root / n).is_dir()), None)
    val = next((root / n for n in _VAL_SPLIT_NAMES if (root / n).is_dir()), None)
    return (train, val) if train and val else None


def _refuse_split_names_as_classes(classes: list[str], root: Path) -> None:
    """A flat folder whose class folders carry split names (only `train/`, say, or `train/` and
    `dev/`) is a split layout we did not recognise: training on "train" vs "test" as classes is
    never what the user meant."""
    named = [c for c in classes if c.lower() in SPLIT_NAMES]
    if named:
        raise DatasetError(
            f"{root.name or root} has folders named {', '.join(named)}, which look like splits, not classes. "
            "Use root/<class>/<image>, or root/train/<class>/... with root/val/<class>/... "
            f"(a validation folder may be named {', '.join(_VAL_SPLIT_NAMES)})."
        )


def _list_files(folder: Path, root: Path) -> list[tuple[str, int, int]]:
    """(path relative to root, size, mtime_ns) of every visible file under `folder`, recursively, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        too_deep = len(Path(dirpath).relative_to(root).parts) >= MAX_PATH_DEPTH
        if too_deep and dirnames:
            raise DatasetError(
                f"{folder.name} nests folders more than {MAX_PATH_DEPTH} levels deep (under {Path(dirpath).relative_to(root).parts[0]}/); "
                "a dataset needs one folder per class."
            )
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _IGNORED_NAMES)
        for name in sorted(filenames):
            if name.startswith(".") or name in _IGNORED_NAMES:
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def _index_path(root: Path, data_dir: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return data_dir / ".cache" / f"index-{key}.json"


def _check_files(
    root: Path, files: list[tuple[str, int, int]], data_dir: Path, progress: Progress | None
) -> dict[str, str | None]:
    """Verdict per file (None = a good image, else the reason it is skipped), reusing the cached index."""
    index_file = _index_path(root, data_dir)
    try:
        cached = json.loads(index_file.read_text())
    except (OSError, ValueError):
        cached = None
    # A damaged or foreign index is rebuilt, never trusted (it only saves time).
    ok = isinstance(cached, dict) and cached.get("version") == INDEX_VERSION and isinstance(cached.get("entries"), dict)
    entries = cached["entries"] if ok else {}
    verdicts: dict[str, str | None] = {}
    fresh: dict[str, list] = {}
    todo = []
    for rel, size, mtime in files:
        entry = entries.get(rel)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [size, mtime]:
            verdicts[rel] = entry[2]
            fresh[rel] = entry
        else:
            todo.append((rel, size, mtime))
    for done, (rel, size, mtime) in enumerate(todo, 1):
        if not _is_image_name(rel):
            reason = f"not an image file type ({Path(rel).suffix or 'no extension'})"
        else:
            try:
                open_image(root / rel, draft=CHECK_DRAFT)
                reason = None
            except DatasetError as exc:
                reason = str(exc)
        verdicts[rel] = reason
        fresh[rel] = [size, mtime, reason]
        if progress and (done % 200 == 0 or done == len(todo)):
            progress(done, len(todo), f"Checking images: {done}/{len(todo)}")
    if todo or len(fresh) != len(entries):
        try:
            atomic_write(index_file, json.dumps({"version": INDEX_VERSION, "entries": fresh}).encode())
        except OSError:
            pass  # a read-only data_dir only costs speed
    return verdicts


def _scan_classes(folder: Path, root: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Files per class folder directly under `folder` (each class folder searched recursively).

    Stops with a DatasetError once the files that are not images pass both
    `MAX_OTHER_FILES` and the images found so far: a folder typed by mistake
    (``/``, a home folder, a source tree) would otherwise be walked, indexed
    and its stray pictures taken as classes. Image datasets hold few other
    files; one with an annotation file per image stays under the images.
    """
    groups, images, others = {}, 0, 0
    for d in _visible_dirs(folder):
        files = groups[d.name] = _list_files(d, root)
        n_images = sum(_is_image_name(rel) for rel, _, _ in files)
        images, others = images + n_images, others + len(files) - n_images
        if others > max(MAX_OTHER_FILES, images):
            example = next(rel for rel, _, _ in files if not _is_image_name(rel))
            raise DatasetError(
                f"{folder} does not look like an image dataset: it holds more than {MAX_OTHER_FILES:,} files that "
                f"are not images (such as {example}) and only {images:,} images. Type the folder that holds one "
                "subfolder of images per class."
            )
    return groups


def _stratified_split(
    per_class: dict[int, list[Path]], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per class, a seeded shuffle of the sorted files; the first share is val (at least one when a class has two)."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(per_class):
        paths = sorted(per_class[label])
        rng.shuffle(paths)
        n_val = round(len(paths) * val_fraction)
        if len(paths) >= 2:
            n_val = min(max(n_val, 1), len(paths) - 1)
        else:
            n_val = 0
        val += [Sample(p, label) for p in paths[:n_val]]
        train += [Sample(p, label) for p in paths[n_val:]]
    return train, val


def _too_few_classes(found: list[str], where: Path) -> DatasetError:
    if not found:
        return DatasetError(
            f"No class folders with images found in {where.name or where}. Put the images of each class in their "
            "own folder: root/<class>/<image>.jpg (or root/train/<class>/... and root/val/<class>/...)."
        )
    return DatasetError(
        f"A classifier needs at least two classes; found only {len(found)} ({', '.join(found)}) in "
        f"{where.name or where}. Add a folder of images for each further class."
    )


def load_folder(
    root: Path, *, ref: str, data_dir: Path, val_fraction: float = 0.2, seed: int = 0, progress: Progress | None = None,
    shown_as: str | None = None,
) -> Dataset:
    """Read an ImageFolder-style folder (flat or with train/ and val/), check its images and split it.

    `shown_as` names the folder in messages when its own name means nothing to the user ("the zip").
    """
    if not root.is_dir():
        raise DatasetError(f"No folder at {root}. Type the path of a folder that holds one subfolder per class.")
    try:
        root = _find_root(root)
        split = _split_dirs(root)
        if split:
            groups = {"train": _scan_classes(split[0], root), "val": _scan_classes(split[1], root)}
        else:
            groups = {"all": _scan_classes(root, root)}
    except OSError as exc:  # e.g. a folder this user may not read
        raise DatasetError(f"Cannot read the folder {root}: {exc.strerror or exc}.") from None
    all_files = [f for g in groups.values() for files in g.values() for f in files]
    if progress:
        progress(0, max(len(all_files), 1), f"Scanning {len(all_files)} files")
    verdicts = _check_files(root, all_files, data_dir, progress)
    skipped = sorted((rel, reason) for rel, reason in verdicts.items() if reason is not None)
    good: dict[str, dict[str, list[Path]]] = {
        name: {c: [root / rel for rel, _, _ in files if verdicts[rel] is None] for c, files in g.items()}
        for name, g in groups.items()
    }
    classes = sorted({c for g in good.values() for c, paths in g.items() if paths})
    for name, g in groups.items():  # class folders that hold no usable image at all
        skipped += [(f"{name}/{c}/" if split else f"{c}/", "no usable images; class left out") for c in g if c not in classes]
    where = Path(shown_as) if shown_as else root
    if not split:
        _refuse_split_names_as_classes(classes, where)
    if len(classes) < 2:
        raise _too_few_classes(classes, where)
    label = {c: i for i, c in enumerate(classes)}
    if split:
        train = [Sample(p, label[c]) for c, paths in good["train"].items() for p in sorted(paths) if c in label]
        val = [Sample(p, label[c]) for c, paths in good["val"].items() for p in sorted(paths) if c in label]
    else:
        per_class = {label[c]: paths for c, paths in good["all"].items() if c in label}
        train, val = _stratified_split(per_class, val_fraction, seed)
    return Dataset(ref=ref, root=root, classes=classes, train=train, val=val, skipped=skipped, given_split=bool(split))


# --- references ------------------------------------------------------------------------------------


def parse_demo_ref(ref: str) -> tuple[str, int] | None:
    """("demo-source", 1000) for "demo-source", ("demo-target", 50) for "demo-target:50"; None if not a demo ref."""
    name, _, size = ref.partition(":")
    if name not in DEMO_DATASETS:
        return None
    standard = demo.WORLDS[name][1]
    if not size:
        return name, standard
    if not (size.isascii() and size.isdigit()) or not 2 <= int(size) <= 100_000:
        raise DatasetError(f"Demo size must be a number of images per class from 2 to 100000, got {size!r}.")
    return name, int(size)


def dataset_name(ref: str) -> str:
    """A short name for a dataset reference: a folder's own name ("pets" for "/data/pets"), else the reference."""
    return (Path(ref).name or ref) if ("/" in ref or os.sep in ref) else ref


def demo_ref(world: str, per_class: int | None = None) -> str:
    """The canonical reference for a demo world of `per_class` images per class ("demo-source", "demo-source:200")."""
    standard = demo.WORLDS[world][1]
    return world if per_class in (None, standard) else f"{world}:{per_class}"


def _demo_root(world: str, per_class: int, data_dir: Path) -> Path:
    return data_dir / (world if per_class == demo.WORLDS[world][1] else f"{world}-{per_class}")


def prepare_dataset(
    ref: str, *, data_dir: Path | None = None, progress: Progress | None = None, demo_per_class: int | None = None
) -> tuple[str, Path]:
    """Make the folder behind `ref` exist (draw the demo, download, extract a zip); return (canonical ref, folder).

    Cheap when the folder is already there, so callers may run it on every
    page load with a progress bar and cache only `load_dataset`.
    """
    data_dir = Path(data_dir) if data_dir is not None else config.data_dir()
    ref = str(ref).strip()
    if not ref:
        raise DatasetError("No dataset chosen. Pick the demo dataset, a folder of images or a zip file.")
    parsed = parse_demo_ref(ref)
    if parsed is not None:
        world, per_class = parsed[0], demo_per_class or parsed[1]
        root = _demo_root(world, per_class, data_dir)
        try:
            demo.generate(world, root, per_class, progress=progress)
        except OSError as exc:
            raise DatasetError(f"Could not write the demo dataset under {data_dir}: {exc.strerror or exc}") from None
        return demo_ref(world, per_class), root
    if ref.lower() in TORCHVISION_DATASETS:
        return ref.lower(), _download_torchvision(ref.lower(), data_dir, progress)
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        return ref, import_zip(path, data_dir)
    if not path.is_dir():
        raise DatasetError(
            f"No folder at {ref}. Choose the demo dataset, a folder that holds one subfolder per class, or a zip file."
        )
    return ref, path


def load_dataset(
    ref: str,
    *,
    data_dir: Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: Progress | None = None,
    demo_per_class: int | None = None,
) -> Dataset:
    """Load the dataset `ref` as checked train/val samples.

    `ref`: "demo-source" / "demo-target" (or "demo-source:<images per class>"),
    a folder path, a .zip path, "cifar10" or "flowers102". A folder's own
    train/ + val/ split is used as given; otherwise each class is split
    `val_fraction` to validation, deterministically from `seed`.
    `demo_per_class` overrides the demo size (the same as "demo-source:<n>");
    each size lives in its own folder (data_dir/"demo-source-200"), and the
    returned `Dataset.ref` is the canonical string for it. `progress(done,
    total, message)` is called during slow steps. Unusable image files go to
    `Dataset.skipped`; anything that leaves no usable dataset raises `DatasetError`.
    """
    if not 0 < val_fraction < 1:
        raise DatasetError(f"The validation fraction must be between 0 and 1, got {val_fraction}.")
    data_dir = Path(data_dir) if data_dir is not None else config.data_dir()
    ref, root = prepare_dataset(ref, data_dir=data_dir, progress=progress, demo_per_class=demo_per_class)
    return load_folder(root, ref=ref, data_dir=data_dir, val_fraction=val_fraction, seed=seed, progress=progress)


# --- torchvision datasets --------------------------------------------------------------------------

_TV_NAMES = {"cifar10": "CIFAR-10", "flowers102": "Flowers102"}


def _download_torchvision(name: str, data_dir: Path, progress: Progress | None) -> Path:
    """Download a torchvision dataset (once) and export it to data_dir/<name>/{train,val}/<class>/*.png."""
    root = data_dir / name
    if (root / ".complete").exists():
        return root
    import torchvision.datasets as tvd

    downloads = data_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(0, 1, f"Downloading {_TV_NAMES[name]} into {downloads} (needs an internet connection)")
    try:
        if name == "cifar10":
            splits = {"train": tvd.CIFAR10(downloads, train=True, download=True), "val": tvd.CIFAR10(downloads, train=False, download=True)}
        else:  # Flowers102: its "train" and "val" splits (10 images per class each); "test" is left out
            splits = {"train": tvd.Flowers102(downloads, split="train", download=True), "val": tvd.Flowers102(downloads, split="val", download=True)}
    except Exception as exc:  # URLError, OSError, RuntimeError (checksum) ...: all mean "not available here"
        raise DatasetError(
            f"Could not download {_TV_NAMES[name]} ({type(exc).__name__}: {exc}). This needs an internet "
            "connection. Use the built-in demo dataset instead, or a folder or zip of your own images."
        ) from None
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=data_dir))
    try:
        total = sum(len(ds) for ds in splits.values())
        done = 0
        for split, ds in splits.items():
            classes = [str(c) for c in getattr(ds, "classes", [])] or [f"class_{i:03d}" for i in range(102)]
            classes = [re.sub(r"[^\w\- ]", "_", c) for c in classes]
            for i in range(len(ds)):
                img, label = ds[i]
                folder = tmp / split / classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                img.convert("RGB").save(folder / f"{i:06d}.png", compress_level=1)
                done += 1
                if progress and (done % 500 == 0 or done == total):
                    progress(done, total, f"Exporting {_TV_NAMES[name]} to a folder: {done}/{total}")
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# --- zips ------------------------------------------------------------------------------------------


def _safe_parts(name: str) -> list[str] | None:
    """The path components of a zip entry, or None when it would leave the target folder."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def _skip_entry(parts: list[str]) -> bool:
    """Entries we do not extract: macOS resource forks, hidden files, desktop junk."""
    return any(p.startswith(".") or p in _IGNORED_NAMES for p in parts)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "-", name).strip("-")[:40] or "dataset"


def import_zip(source: Path | str | bytes, data_dir: Path, *, name: str | None = None) -> Path:
    """Extract an uploaded zip safely to data_dir/"uploads"/<name>-<hash> and return the dataset root.

    Checks everything before anything becomes visible: path traversal
    (``..``, absolute names), symlink and other non-regular entries, encrypted
    entries, the number of entries, the total uncompressed size, and each
    entry's compression ratio while streaming it with a hard byte cap (header
    sizes can lie). It extracts into a temporary folder inside `data_dir`,
    requires at least two class folders with images, then renames it into
    place: a rejected zip writes nothing outside `data_dir` and changes no
    earlier dataset. The same zip imported twice returns the same folder. If
    the zip has a single top-level folder, that folder is the root.
    """
    data_dir = Path(data_dir)
    if isinstance(source, (bytes, bytearray, memoryview)):
        blob = io.BytesIO(bytes(source))
        digest = hashlib.sha256(blob.getbuffer()).hexdigest()[:10]
        stem = name or "upload"
    else:
        path = Path(source)
        try:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()[:10]
        except OSError as exc:
            raise DatasetError(f"Cannot read {path.name}: {exc.strerror or exc}") from None
        blob = path
        stem = name or path.stem
    stem = _slug(Path(stem).stem if stem.lower().endswith(".zip") else stem)
    uploads = data_dir / "uploads"
    dest = uploads / f"{stem}-{digest}"
    if dest.is_dir():
        return _find_root(dest)
    archive_bytes = _check_entry_count(blob)
    try:
        zf = zipfile.ZipFile(blob)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DatasetError("This is not a zip file (or it is damaged). Upload a .zip of class folders.") from None
    uploads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=uploads))
    tmp_index = None
    try:
        with zf:
            _extract_checked(zf, tmp, archive_bytes)
        # The whole dataset is checked before it becomes visible: a zip that unpacks but holds no
        # usable dataset leaves nothing behind. Its image index moves with it (same relative names).
        tmp_root = _find_root(tmp)
        tmp_index = _index_path(tmp_root, data_dir)
        load_folder(tmp_root, ref=str(tmp_root), data_dir=data_dir, shown_as="the zip")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not merely the same upload finishing first in another session
                raise
        try:
            os.replace(tmp_index, _index_path(dest / tmp_root.relative_to(tmp), data_dir))
        except OSError:
            pass  # only costs a second check of the images
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp_index is not None:
            tmp_index.unlink(missing_ok=True)
    return _find_root(dest)


def _check_entry_count(blob: Path | io.BytesIO) -> int:
    """Refuse a zip that declares more than `MAX_ZIP_ENTRIES` entries, from its end-of-central-directory
    record alone, before `zipfile` parses (and keeps in memory) the whole central directory.
    Returns the archive's size in bytes."""
    try:
        f = blob.open("rb") if isinstance(blob, Path) else blob
        try:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 16) - 22))
            tail = f.read()
            at = tail.rfind(b"PK\x05\x06")
            count = struct.unpack_from("<H", tail, at + 10)[0] if at >= 0 and len(tail) >= at + 22 else 0
            locator = tail.rfind(b"PK\x06\x07", 0, max(at, 0))
            if count == 0xFFFF and locator >= 0:  # zip64: the count is in the zip64 record
                f.seek(struct.unpack_from("<Q", tail, locator + 8)[0])
                record = f.read(56)
                if record[:4] == b"PK\x06\x06" and len(record) == 56:
                    count = struct.unpack_from("<Q", record, 32)[0]
        finally:
            f.seek(0)
            if isinstance(blob, Path):
                f.close()
    except (OSError, struct.error, ValueError):
        raise DatasetError("This is not a zip file (or it is damaged). Upload a .zip of class folders.") from None
    if count > MAX_ZIP_ENTRIES:
        raise DatasetError(f"The zip has {count:,} entries; the limit is {MAX_ZIP_ENTRIES:,}.")
    return size


def _extract_checked(zf: zipfile.ZipFile, target: Path, archive_bytes: int) -> None:
    """Extract every acceptable entry of `zf` under `target`, enforcing the zip limits, or raise `DatasetError`.

    Expansion is bounded per entry (`MAX_ZIP_ENTRY_BYTES`, `MAX_ZIP_RATIO` against its compressed
    size) and for the whole archive (`MAX_ZIP_TOTAL_BYTES`, `MAX_ZIP_RATIO` against
    `archive_bytes`, the zip's real size: many small entries of zeros stay under the per-entry check).
    """
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise DatasetError(f"The zip has {len(infos):,} entries; the limit is {MAX_ZIP_ENTRIES:,}.")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_ZIP_TOTAL_BYTES:
        raise DatasetError(
            f"The zip would unpack to {declared / 1024**3:.1f} GB; the limit is {MAX_ZIP_TOTAL_BYTES / 1024**3:.0f} GB."
        )
    for info in infos:  # check every name before writing anything
        if _safe_parts(info.filename) is None:
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} points outside the dataset folder.")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} is a symbolic link.")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded (most zip tools)
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} is not a regular file.")
        if info.flag_bits & 0x1:
            raise DatasetError("The zip is password-protected; upload an unencrypted zip.")
        if len(_safe_parts(info.filename)) > MAX_PATH_DEPTH + 1:
            raise DatasetError(
                f"Rejected: the zip entry {info.filename[:80]!r}… nests folders more than {MAX_PATH_DEPTH} levels deep."
            )
    total = 0
    for info in infos:
        parts = _safe_parts(info.filename)
        if not parts or info.is_dir() or _skip_entry(parts):
            continue
        out = target.joinpath(*parts)
        if not out.resolve().is_relative_to(target.resolve()):
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} points outside the dataset folder.")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # an earlier entry is a file where this one needs a folder
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} lies under a name that is also a file in the zip.") from None
        except OSError as exc:  # e.g. a folder name too long for this file system
            raise DatasetError(f"Could not extract {info.filename} from the zip: {exc.strerror or exc}.") from None
        written = 0
        try:
            with zf.open(info) as src, open(out, "xb") as dst:
                while chunk := src.read(1024 * 1024):
                    written += len(chunk)
                    total += len(chunk)
                    if written > MAX_ZIP_ENTRY_BYTES:
                        raise DatasetError(
                            f"Rejected: {info.filename!r} unpacks to more than {MAX_ZIP_ENTRY_BYTES // 1024**2} MB."
                        )
                    if written > ZIP_RATIO_MIN_BYTES and written > MAX_ZIP_RATIO * max(info.compress_size, 1):
                        raise DatasetError(
                            f"Rejected: {info.filename!r} is compressed more than {MAX_ZIP_RATIO}:1 "
                            "(a possible zip bomb)."
                        )
                    if total > MAX_ZIP_TOTAL_BYTES:
                        raise DatasetError(
                            f"Rejected: the zip unpacks to more than {MAX_ZIP_TOTAL_BYTES / 1024**3:.0f} GB."
                        )
                    dst.write(chunk)
        except FileExistsError:
            raise DatasetError(f"Rejected: the zip holds {info.filename!r} twice.") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError,
                zlib.error, lzma.LZMAError) as exc:  # zlib/lzma: a corrupt compressed stream
            raise DatasetError(f"The zip is damaged or uses an unsupported feature ({info.filename}: {exc}).") from None
        except OSError as exc:  # a corrupt bzip2 stream ("Invalid data stream"), or the disk is full
            raise DatasetError(f"Could not extract {info.filename} from the zip: {exc.strerror or exc}.") from None
        # Checked per entry, after each one's own limits: it overshoots by one entry at most.
        if total > ZIP_RATIO_MIN_BYTES and total > MAX_ZIP_RATIO * archive_bytes:
            raise DatasetError(
                f"Rejected: the zip ({archive_bytes / 1024:,.0f} KB) unpacks to more than {MAX_ZIP_RATIO} "
                "times its size (a possible zip bomb)."
            )


# --- transforms and decoded tensors ---------------------------------------------------------------


def preprocess_for(arch: str, weights: str, image_size: tuple[int, int]) -> Preprocess:
    """The evaluation transform that matches the starting weights, scaled to `image_size` (h, w).

    ImageNet weights: torchvision's own metadata (`get_model_weights(arch).DEFAULT.transforms()`):
    its mean/std/interpolation, and its resize/crop ratio (256/224 for most
    models) applied per side, with its semantics: the image is scaled, aspect
    ratio kept, to cover that size (for a square input, its shorter side
    becomes 256, exactly `Resize(256)`), then center-cropped; so a 448x224
    input covers 512x256 and crops 448x224. Random init, checkpoints and earlier runs ("none", a path,
    "run:<id>"): ImageNet statistics, resize straight to `image_size`, no crop.
    An architecture torchvision has no weights for falls back to the same.
    """
    h, w = (int(s) for s in image_size)
    if weights == "imagenet":
        try:
            from torchvision.models import get_model_weights

            t = get_model_weights(arch).DEFAULT.transforms()
            resize, crop = float(t.resize_size[0]), float(t.crop_size[0])
            interp = getattr(t.interpolation, "value", str(t.interpolation)).lower()
            return Preprocess(
                mean=tuple(float(m) for m in t.mean),
                std=tuple(float(s) for s in t.std),
                resize=(round(h * resize / crop), round(w * resize / crop)),
                crop=(h, w),
                interpolation="bicubic" if interp == "bicubic" else "bilinear",
                keep_aspect=True,
            )
        except (ValueError, KeyError, AttributeError, TypeError, IndexError):
            pass
    return Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=(h, w), crop=(h, w))


def decode_key(paths: Sequence[Path], pre: Preprocess) -> str:
    """Identity of a decoded image tensor: the files (path, size, mtime) and the geometry of `pre`."""
    h = hashlib.sha256()
    h.update(json.dumps([DECODE_VERSION, list(pre.resize), list(pre.crop), pre.interpolation, pre.keep_aspect]).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            raise DatasetError(f"{Path(p).name}: the file is gone or unreadable; reload the dataset.") from None
    return h.hexdigest()[:32]


def decode_one(path: Path, pre: Preprocess) -> torch.Tensor:
    """One image file as a uint8 [3, crop_h, crop_w] tensor: resized to `pre.resize`, then center-cropped."""
    try:
        img = open_image(path, draft=(pre.resize[1], pre.resize[0]))
    except DatasetError as exc:
        raise DatasetError(f"{Path(path).name}: {exc}") from None
    return image_tensor(img, pre)


def image_tensor(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """An open image as a uint8 [3, crop_h, crop_w] tensor: RGB, resized to `pre.resize`, center-cropped.

    The one place the evaluation geometry is applied, for the decoded cache and for inference alike.
    """
    # The functional API that torchvision's own `weights.transforms()` (ImageClassification) calls, so
    # that ImageNet inputs match it pixel for pixel (v2's uint8 bicubic kernel rounds differently).
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    x = F.pil_to_tensor(img.convert("RGB"))
    mode = InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else InterpolationMode.BILINEAR
    size = _resized_size(tuple(x.shape[-2:]), pre)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.resize(x, list(size), interpolation=mode, antialias=True)
    if tuple(pre.crop) != tuple(x.shape[-2:]):
        x = F.center_crop(x, list(pre.crop))
    return x


def _resized_size(image_hw: tuple[int, int], pre: Preprocess) -> tuple[int, int]:
    """The (h, w) an image of `image_hw` is resized to before the crop.

    Squashed to `pre.resize`, or with `keep_aspect` scaled to cover it: for a square `resize` the
    shorter side becomes its side and the longer one is computed as torchvision's `Resize(int)` does.
    """
    if not pre.keep_aspect:
        return pre.resize
    (h, w), (rh, rw) = image_hw, pre.resize
    if rh == rw:
        short, long = (h, w) if h <= w else (w, h)
        other = int(rh * long / short)
        return (rh, other) if h <= w else (other, rh)
    scale = max(rh / h, rw / w)
    return max(rh, round(h * scale)), max(rw, round(w * scale))


def decode_images(
    paths: Sequence[Path],
    pre: Preprocess,
    *,
    key: str | None = None,
    data_dir: Path | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Decode, resize and crop every image once into a uint8 tensor [N, 3, crop_h, crop_w].

    The result is cached in data_dir/".cache" under a hash of (paths, sizes,
    mtimes, resize, crop) (`core.diskcache`: written atomically, least recently
    used evicted first); a later call with the same files and sizes loads the
    tensor without opening a single image. A file that no longer decodes
    raises `DatasetError` naming it. `key` is `decode_key(paths, pre)` when
    the caller keys more on these images (the feature cache): one stat per
    file, and one identity for all of it.
    """
    data_dir = Path(data_dir) if data_dir is not None else config.data_dir()
    cache = data_dir / ".cache" / f"decoded-{key or decode_key(paths, pre)}.pt"
    x = load_tensor(cache, shape=(len(paths), 3, *pre.crop), dtype=torch.uint8)
    if x is not None:
        return x
    out = torch.empty((len(paths), 3, *pre.crop), dtype=torch.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_one(p, pre)
        if progress and ((i + 1) % 500 == 0 or i + 1 == len(paths)):
            progress(i + 1, len(paths), f"Decoding images: {i + 1}/{len(paths)}")
    save_tensor(cache, out)  # no cache on a read-only or full disk: slower, still correct
    return out


def normalize(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """[N, 3, H, W] uint8 (0-255) or float (0-1) pixels -> normalised float, on the batch's device.

    uint8 becomes float32; a floating batch keeps its dtype (e.g. bf16).
    """
    x = batch.float().div_(255) if batch.dtype == torch.uint8 else batch
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def preview(ds: Dataset, per_class: int = 5, max_classes: int = 12, size: int = 96) -> dict[str, list[Image.Image]]:
    """A few training images per class as small RGB thumbnails, for the Data page (first images, stable)."""
    out: dict[str, list[Image.Image]] = {}
    for label, name in enumerate(ds.classes[:max_classes]):
        picks = [s.path for s in ds.train if s.label == label][:per_class]
        thumbs = []
        for p in picks:
            try:
                img = open_image(p, draft=(size, size))
            except DatasetError:
                continue
            img.thumbnail((size, size))
            thumbs.append(img)
        out[name] = thumbs
    return out
