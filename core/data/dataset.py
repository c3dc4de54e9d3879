"""A dataset as the rest of the code sees it: classes, checked samples per split, what was skipped.

`DatasetError` is the one error for every unusable dataset, zip or image; its message is what the
UI shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

Progress = Callable[[int, int, str], None]  # (done, total, what): download and decode progress


class DatasetError(ValueError):
    """A dataset, zip or image that cannot be used; the message is shown to the user as is."""


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of a checked image file
    label: int  # index into Dataset.classes


@dataclass
class Dataset:
    ref: str  # canonical reference: "demo-target", "demo-source:200", a folder path, "cifar10", ...
    root: Path  # the folder holding the class folders (or train/ beside val/ and/or test/)
    classes: list[str]  # sorted class-folder names; a label is an index into this list
    train: list[Sample]
    val: list[Sample]  # chooses: the best epoch, a sweep's strategy and rate
    test: list[Sample]  # held out from every choice; the same images for every seed (`core.data.folders`)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file relative to root, reason)
    given: tuple[str, ...] = ()  # the splits the folder had as folders of its own ("train", "val", "test")

    def split_gaps(self) -> dict[str, str]:
        """Classes missing from a split: class name -> "no training images" / "no validation images" /
        "no test images".

        Such a class cannot be learned (no training images) or measured (no validation or test
        images): the pages and the command line say so, and its accuracy there is "no images".
        """
        gaps = {}
        for name, train, val, test in self.counts().itertuples(index=False, name=None):
            if not train:
                gaps[name] = "no training images"
            elif not val:
                gaps[name] = "no validation images"
            elif not test:
                gaps[name] = "no test images"
        return gaps

    def counts(self) -> pd.DataFrame:
        """Images per class and split: one row per class, columns ``class``, ``train``, ``val``, ``test``."""
        counts = {"class": self.classes}
        for split in ("train", "val", "test"):
            column = counts[split] = [0] * len(self.classes)
            for s in getattr(self, split):
                column[s.label] += 1
        return pd.DataFrame(counts)

    def test_digest(self) -> str:
        """Which images the test split holds: a hash of their paths relative to the root and their
        labels, equal for every seed and on every machine that has the same files."""
        names = sorted(f"{s.path.relative_to(self.root).as_posix()}\t{s.label}" for s in self.test)
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
