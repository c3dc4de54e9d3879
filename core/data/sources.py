"""Dataset references and where their images come from.

- ``"demo-source"`` / ``"demo-target"`` / ``"demo-shift"`` / ``"demo-flip"`` (optionally
  ``"demo-source:200"``, images per class): the built-in demo world, drawn offline by `core.data.demo`;
- a folder path (`core.data.folders`), or a ``.zip`` path extracted safely first (`core.data.zips`);
- ``"cifar10"`` / ``"flowers102"``: torchvision datasets, downloaded into ``data_dir`` and exported
  once to a folder (offline this is a clear `DatasetError`).

Every source ends up as a folder in the ImageFolder layout, so everything downstream reads one format.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from core import config
from core.data.demo import WORLDS, generate
from core.data.dataset import Dataset, DatasetError, Progress
from core.data.folders import load_folder
from core.data.zips import import_zip

DEMO_DATASETS = tuple(WORLDS)  # demo-source, demo-target, demo-shift, demo-flip
TORCHVISION_DATASETS = ("cifar10", "flowers102")

# --- references ------------------------------------------------------------------------------------


def parse_demo_ref(ref: str) -> tuple[str, int] | None:
    """("demo-source", 1000) for "demo-source", ("demo-target", 50) for "demo-target:50"; None if not a demo ref."""
    name, _, size = ref.partition(":")
    if name not in DEMO_DATASETS:
        return None
    standard = WORLDS[name][1]
    if not size:
        return name, standard
    if not (size.isascii() and size.isdigit()) or not 2 <= int(size) <= 100_000:
        raise DatasetError(f"Demo size must be a number of images per class from 2 to 100000, got {size!r}.")
    return name, int(size)


def demo_ref(world: str, per_class: int | None = None) -> str:
    """The canonical reference for a demo world of `per_class` images per class ("demo-source", "demo-source:200")."""
    standard = WORLDS[world][1]
    return world if per_class in (None, standard) else f"{world}:{per_class}"


def _demo_root(world: str, per_class: int, data_dir: Path) -> Path:
    return data_dir / (world if per_class == WORLDS[world][1] else f"{world}-{per_class}")


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
            generate(world, root, per_class, progress=progress)
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
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: Progress | None = None,
    demo_per_class: int | None = None,
) -> Dataset:
    """Load the dataset `ref` as checked train/val samples.

    `ref`: "demo-source" / "demo-target" (or "demo-source:<images per class>"),
    a folder path, a .zip path, "cifar10" or "flowers102". A folder's own
    train/, val/ and test/ folders are used as given; a missing test split is
    a stratified `test_fraction` carved with a fixed seed (the same images for
    every `seed`), a missing validation split `val_fraction` of the rest,
    drawn from `seed` (`core.data.folders`).
    `demo_per_class` overrides the demo size (the same as "demo-source:<n>");
    each size lives in its own folder (data_dir/"demo-source-200"), and the
    returned `Dataset.ref` is the canonical string for it. `progress(done,
    total, message)` is called during slow steps. Unusable image files go to
    `Dataset.skipped`; anything that leaves no usable dataset raises `DatasetError`.
    """
    if not 0 < val_fraction < 1:
        raise DatasetError(f"The validation fraction must be between 0 and 1, got {val_fraction}.")
    if not 0 < test_fraction < 1:
        raise DatasetError(f"The test fraction must be between 0 and 1, got {test_fraction}.")
    data_dir = Path(data_dir) if data_dir is not None else config.data_dir()
    ref, root = prepare_dataset(ref, data_dir=data_dir, progress=progress, demo_per_class=demo_per_class)
    return load_folder(root, ref=ref, data_dir=data_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                       seed=seed, progress=progress)


# --- torchvision datasets --------------------------------------------------------------------------

_TV_NAMES = {"cifar10": "CIFAR-10", "flowers102": "Flowers102"}


def _download_torchvision(name: str, data_dir: Path, progress: Progress | None) -> Path:
    """Download a torchvision dataset (once) and export its own splits to data_dir/<name>/<split>/<class>/*.png:
    CIFAR-10's train and test (validation is then carved from train), Flowers102's train, val and test."""
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
            splits = {"train": tvd.CIFAR10(downloads, train=True, download=True),
                      "test": tvd.CIFAR10(downloads, train=False, download=True)}
        else:  # Flowers102: 10 training and 10 validation images per class, the rest (6149) its test set
            splits = {split: tvd.Flowers102(downloads, split=split, download=True) for split in ("train", "val", "test")}
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
