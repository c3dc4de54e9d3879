"""What a run trains on: its dataset decoded and placed on the device, and its starting weights.

On one machine a run reads both from disk itself (`prepare_data`, `core.store.resolve_weights`).
A run on another machine (a Ray cluster's worker: `core.jobs.ray_cluster`) shares no filesystem
with the app, so the app decodes the dataset once per sweep (`decode_dataset`: every image, CPU,
uint8), says which images each member trains and validates on (`split_index`, which depends on the
member's seed), resolves the starting weights (`shipped_weights`), and sends the three as
`Shipped`; the member places them on its device (`place_data`). Both ways give a run the same
tensors, so a seeded run trains to the same numbers either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import RunConfig
from core.data import Dataset, Preprocess, decode_images, decode_key, load_dataset, preprocess_for
from core.engine.loop import Split, place
from core.models import Checkpoint, read_state_dict
from core.store import resolve_weights

SPLITS = ("train", "val", "test")


@dataclass
class RunData:
    """A run's dataset as the loops read it: uint8 images on the device (or pinned), labels, keys."""

    classes: list[str]
    pre: Preprocess
    splits: dict[str, Split]  # "train", "val": what training reads (and the feature cache covers)
    keys: dict[str, str]  # each split's decoded-images key (`decode_key`), which names its stored features
    skipped: int  # image files the dataset left out
    test: Split  # held out: graded once, at the end, with the weights the run keeps
    test_digest: str  # which images the test split holds (`Dataset.test_digest`)


@dataclass
class DecodedDataset:
    """Every image of a dataset decoded once (on the CPU), in path order: what a sweep ships."""

    classes: list[str]
    pre: Preprocess
    paths: list[str]
    x: torch.Tensor  # uint8 [N, 3, H, W]
    y: torch.Tensor  # int64 [N]
    skipped: int


@dataclass(frozen=True)
class SplitIndex:
    """One run's split of a `DecodedDataset`: positions of its images, and each split's decode key."""

    index: dict[str, list[int]]
    keys: dict[str, str]
    test_digest: str


@dataclass
class Shipped:
    """A run's inputs made on another machine: the dataset (shared by a sweep), its split, its weights."""

    dataset: DecodedDataset
    split: SplitIndex
    weights: str | Checkpoint  # a Checkpoint, or "none" / "imagenet" (drawn or downloaded where the run trains)


def run_dataset(config: RunConfig) -> Dataset:
    """The run's dataset, split as its config says (test fixed, validation drawn from its seed)."""
    return load_dataset(config.dataset, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                        seed=config.seed)


def checked_dataset(config: RunConfig) -> Dataset:
    """The run's dataset and split; `ValueError` for one that does not fit the run's head or lacks a split."""
    dataset = run_dataset(config)
    if len(dataset.classes) != config.num_classes:
        raise ValueError(
            f"The dataset {config.dataset!r} has {len(dataset.classes)} classes but the run's head has "
            f"{config.num_classes}; set num_classes to {len(dataset.classes)}."
        )
    if not dataset.train or not dataset.val:
        raise ValueError(f"The dataset {config.dataset!r} needs images in both the training and the validation split.")
    return dataset


def prepare_data(config: RunConfig, device: torch.device) -> RunData:
    """The dataset decoded once per split (cached on disk) and placed on the device."""
    dataset = checked_dataset(config)
    pre = preprocess_for(config.arch, config.weights, config.image_size)
    splits, keys = {}, {}
    for name in SPLITS:
        samples = getattr(dataset, name)
        paths = [s.path for s in samples]
        keys[name] = decode_key(paths, pre)
        x = decode_images(paths, pre, key=keys[name])
        y = torch.tensor([s.label for s in samples], dtype=torch.long, device=device)
        splits[name] = Split(place(x, device), y)
    return _run_data(list(dataset.classes), pre, splits, keys, len(dataset.skipped), dataset.test_digest())


def _run_data(classes: list[str], pre: Preprocess, splits: dict[str, Split], keys: dict[str, str], skipped: int,
              test_digest: str) -> RunData:
    test = splits.pop("test")
    keys.pop("test")
    return RunData(classes, pre, splits, keys, skipped, test, test_digest)


def decode_dataset(config: RunConfig) -> DecodedDataset:
    """Every image of `config`'s dataset (its split with `config.seed`: every image is in one or the
    other) decoded with the run's preprocessing, in path order."""
    dataset = checked_dataset(config)
    pre = preprocess_for(config.arch, config.weights, config.image_size)
    samples = sorted(dataset.train + dataset.val + dataset.test, key=lambda s: str(s.path))
    x = decode_images([s.path for s in samples], pre)
    y = torch.tensor([s.label for s in samples], dtype=torch.long)
    return DecodedDataset(list(dataset.classes), pre, [str(s.path) for s in samples], x, y, len(dataset.skipped))


def split_index(config: RunConfig, decoded: DecodedDataset) -> SplitIndex:
    """Which of `decoded`'s images `config`'s run trains and validates on (its seed draws the split)."""
    dataset = checked_dataset(config)
    position = {path: i for i, path in enumerate(decoded.paths)}
    index, keys = {}, {}
    for name in SPLITS:
        samples = getattr(dataset, name)
        try:
            index[name] = [position[str(s.path)] for s in samples]
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]} is not among the decoded images: the dataset changed; start again.") from None
        keys[name] = decode_key([s.path for s in samples], decoded.pre)
    return SplitIndex(index, keys, dataset.test_digest())


def place_data(shipped: Shipped, device: torch.device) -> RunData:
    """A shipped dataset's split for this run, placed on the device as `prepare_data` places it."""
    decoded, splits = shipped.dataset, {}
    for name in SPLITS:
        idx = torch.tensor(shipped.split.index[name], dtype=torch.long)
        splits[name] = Split(place(decoded.x[idx].contiguous(), device), decoded.y[idx].to(device))
    return _run_data(decoded.classes, decoded.pre, splits, dict(shipped.split.keys), decoded.skipped,
                     shipped.split.test_digest)


def shipped_weights(config: RunConfig, runs_dir: Path) -> str | Checkpoint:
    """The run's starting weights as they travel: an earlier run's or a file's as a `Checkpoint`;
    "none" and "imagenet" as they are (drawn from the seed, or downloaded, where the run trains)."""
    weights = resolve_weights(config.weights, config.arch, runs_dir=runs_dir)
    if isinstance(weights, Checkpoint) or weights in ("none", "imagenet"):
        return weights
    return Checkpoint(read_state_dict(weights), Path(weights).name)
