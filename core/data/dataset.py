"""A dataset as the rest of the code sees it: classes, checked samples per split, what was skipped.

`DatasetError` is the one error for every unusable dataset, zip or image; its message is what the
UI shows.
"""

from __future__ import annotations

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
