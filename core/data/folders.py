"""Folders of images in the ImageFolder layout: scanning, checking every file, splitting.

Three splits. **test** is held out from every choice (a sweep's strategy, a rate, a run's best
epoch): a folder's own ``test/`` as it is, else a stratified share carved with the fixed
`TEST_SEED`, so it is the same images for every seed and every run on the dataset. **val** chooses:
a folder's own ``val/``, else a stratified share of what the test left, drawn with the run's seed.
**train** is the rest. ``root/<class>/<image>`` and ``root/train/<class>/...`` (beside ``val/`` and/or
``test/``, as in the PyTorch tutorials) are both read. Image verdicts are cached in a small JSON
index keyed on file name, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
from pathlib import Path

from core.data.dataset import Dataset, DatasetError, Progress, Sample
from core.data.images import CHECK_DRAFT, IMAGE_EXTENSIONS, open_image
from core.files import atomic_write

MAX_PATH_DEPTH = 32  # folders within a dataset (a zip entry's or a file's depth): datasets need two or three
MAX_OTHER_FILES = 10_000  # files that are not images, past which (and past the images) a folder is no dataset

INDEX_VERSION = 1

IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_TRAIN_SPLIT_NAMES = ("train", "training")
_VAL_SPLIT_NAMES = ("val", "valid", "validation")  # the first present is the validation split
_TEST_SPLIT_NAMES = ("test", "testing")
SPLIT_NAMES = _TRAIN_SPLIT_NAMES + _VAL_SPLIT_NAMES + _TEST_SPLIT_NAMES
TEST_SEED = 20230  # carves a dataset's test share: fixed, so no run seed ever moves an image into or out of it

# --- folders ---------------------------------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_NAMES
    )


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_root(folder: Path) -> Path:
    """The folder that holds the classes: `folder` itself, or its single subfolder when that is all it has."""
    dirs = _visible_dirs(folder)
    loose = [p for p in folder.iterdir() if p.is_file() and _is_image_name(p.name)]
    if len(dirs) == 1 and not loose and _visible_dirs(dirs[0]):
        return dirs[0]
    return folder


def _split_dirs(root: Path) -> dict[str, Path] | None:
    """{"train": folder, "val": folder, "test": folder} (the given ones) when `root` has a split layout:
    `train/` or `training/` beside `val/` (`valid/`, `validation/`) and/or `test/` (`testing/`), the
    first present of each; else None."""
    found = {split: next((root / n for n in names if (root / n).is_dir()), None) for split, names in
             (("train", _TRAIN_SPLIT_NAMES), ("val", _VAL_SPLIT_NAMES), ("test", _TEST_SPLIT_NAMES))}
    given = {split: folder for split, folder in found.items() if folder is not None}
    return given if "train" in given and len(given) > 1 else None


def _refuse_split_names_as_classes(classes: list[str], root: Path) -> None:
    """A flat folder whose class folders carry split names (only `train/`, say, or `train/` and
    `dev/`) is a split layout we did not recognise: training on "train" vs "test" as classes is
    never what the user meant."""
    named = [c for c in classes if c.lower() in SPLIT_NAMES]
    if named:
        raise DatasetError(
            f"{root.name or root} has folders named {', '.join(named)}, which look like splits, not classes. "
            "Use root/<class>/<image>, or root/train/<class>/... with root/val/<class>/... and/or "
            f"root/test/<class>/... (a validation folder may be named {', '.join(_VAL_SPLIT_NAMES)})."
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
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in IGNORED_NAMES)
        for name in sorted(filenames):
            if name.startswith(".") or name in IGNORED_NAMES:
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def index_path(root: Path, data_dir: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return data_dir / ".cache" / f"index-{key}.json"


def _check_files(
    root: Path, files: list[tuple[str, int, int]], data_dir: Path, progress: Progress | None
) -> dict[str, str | None]:
    """Verdict per file (None = a good image, else the reason it is skipped), reusing the cached index."""
    index_file = index_path(root, data_dir)
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
    per_class: dict[int, list[Path]], fraction: float, seed: int, *, keep: int = 1
) -> tuple[dict[int, list[Path]], dict[int, list[Path]]]:
    """(rest, share) per class: a seeded shuffle of the sorted files, its first `fraction` the share, at
    least one image when the class has more than `keep` and never so many that fewer than `keep` stay."""
    rng = random.Random(seed)
    rest, share = {}, {}
    for label in sorted(per_class):
        paths = sorted(per_class[label])
        rng.shuffle(paths)
        n = share_count(len(paths), fraction, keep)
        share[label], rest[label] = paths[:n], paths[n:]
    return rest, share


def share_count(n: int, fraction: float, keep: int) -> int:
    """How many of a class's `n` images a stratified share of `fraction` takes (see `_stratified_split`)."""
    return min(max(round(n * fraction), 1), n - keep) if n > keep else 0


def split_sizes(per_class: int, classes: int, val_fraction: float = 0.2, test_fraction: float = 0.2) -> tuple[int, int, int]:
    """(train, val, test) images of a flat folder of `classes` classes with `per_class` images each,
    as `load_folder` splits it, without reading it (a demo world's sizes before it is drawn)."""
    test = share_count(per_class, test_fraction, keep=2)
    val = share_count(per_class - test, val_fraction, keep=1)
    return (per_class - test - val) * classes, val * classes, test * classes


def _samples(per_class: dict[int, list[Path]]) -> list[Sample]:
    return [Sample(p, label) for label in sorted(per_class) for p in per_class[label]]


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
    root: Path, *, ref: str, data_dir: Path, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
    progress: Progress | None = None, shown_as: str | None = None,
) -> Dataset:
    """Read an ImageFolder-style folder (flat, or with train/ beside val/ and/or test/), check its
    images and split it into train, val and test (see the module docstring).

    `shown_as` names the folder in messages when its own name means nothing to the user ("the zip").
    """
    if not root.is_dir():
        raise DatasetError(f"No folder at {root}. Type the path of a folder that holds one subfolder per class.")
    try:
        root = find_root(root)
        split = _split_dirs(root)
        if split:
            groups = {name: _scan_classes(folder, root) for name, folder in split.items()}
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
    per_split = {name: {label[c]: sorted(paths) for c, paths in g.items() if c in label} for name, g in good.items()}
    pool = per_split.get("train", per_split.get("all"))
    if "test" not in per_split:
        pool, per_split["test"] = _stratified_split(pool, test_fraction, TEST_SEED, keep=2)
    if "val" not in per_split:
        pool, per_split["val"] = _stratified_split(pool, val_fraction, seed)
    return Dataset(ref=ref, root=root, classes=classes, train=_samples(pool), val=_samples(per_split["val"]),
                   test=_samples(per_split["test"]), skipped=skipped, given=tuple(split or ()))
