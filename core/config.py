"""`RunConfig`: everything that defines a fine-tuning run, and nothing else.

A run is reproducible from its config alone: the training engine, the run
store, the command line and the pages all pass this one object around. It is
a frozen dataclass so a draft in the UI is replaced, never mutated in place,
and it round-trips through JSON (`to_json` / `from_json`) for the run store.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step")
PRECISIONS = ("auto", "fp32", "bf16")
AUGMENTATIONS = ("crop", "flip", "jitter")
SWEEP_KINDS = ("depth", "surgical", "grid")
KEEPS = ("best", "last")
CHOICES = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "precision": PRECISIONS, "augment": AUGMENTATIONS,
           "kind": SWEEP_KINDS, "keep": KEEPS}
MAX_SEED = 2**31 - 1  # torch generators take at most 64 bits (and seed + 1 is used); the Train page's limit


@dataclass(frozen=True)
class RunConfig:
    # --- model -------------------------------------------------------------
    arch: str = "resnet18"  # torchvision builder name: "vgg19", "alexnet", "resnet50", ...
    weights: str = "none"  # "imagenet" | "none" (random init) | checkpoint path | "run:<id>"
    num_classes: int = 4  # size of the new head; follows the dataset's class count
    # --- freezing ----------------------------------------------------------
    frozen: tuple[str, ...] = ()  # dotted module paths frozen (with everything under them)
    preset: str = "full"  # what trains: full | head | classifier | fc1_fc2 (VGG) | last<N> | auto-rgn | custom (ticked by hand)
    auto_rgn: bool = False  # Auto-RGN (preset auto-rgn): each tensor's rate scaled by its relative gradient norm each epoch
    bn_frozen_eval: bool = True  # frozen BatchNorm layers and frozen blocks' stochastic depth stay in eval mode
    unfreeze_after: int = 0  # gradual unfreezing: >0 trains only the head for this many epochs first
    # --- data --------------------------------------------------------------
    dataset: str = "demo-target"  # demo-source | demo-target | demo-shift | demo-flip | a folder path | cifar10 | flowers102
    val_fraction: float = 0.2  # stratified validation share (of what the test split leaves) when the dataset has no val/
    test_fraction: float = 0.2  # stratified test share, carved with a fixed seed, when the dataset has no test/
    image_size: tuple[int, int] = (64, 64)  # input height, width
    augment: tuple[str, ...] = ()  # subset of AUGMENTATIONS, applied on the device per batch
    # --- optimisation ------------------------------------------------------
    optimizer: str = "sgd"  # one of OPTIMIZERS (SGD uses momentum 0.9)
    lr: float = 0.01  # learning rate of the new head
    backbone_lr_mult: float = 0.1  # rate multiplier for unfrozen pretrained layers (discriminative rates)
    weight_decay: float = 1e-4  # L2 penalty on the trainable parameters
    scheduler: str = "none"  # one of SCHEDULERS, stepped per epoch
    epochs: int = 3  # passes over the training split
    keep: str = "best"  # the weights a run ends with: "best" (its best validation epoch's) or "last"
    early_stop: int = 0  # patience: end the run after this many epochs without a better validation accuracy (0: off)
    batch_size: int = 32  # images per optimizer step (evaluation uses the same batch shape)
    seed: int = 0  # split, head init, shuffling and augmentation: the same seed gives the same run
    precision: str = "auto"  # "auto": bf16 autocast on CUDA when supported, else fp32
    feature_cache: bool = True  # train on cached outputs of a frozen prefix when possible
    share_features: tuple[str, ...] = ()  # steps whose outputs the feature pass also stores: sweep members share one pass

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so the config stays hashable and comparable.
        object.__setattr__(self, "frozen", tuple(self.frozen))
        object.__setattr__(self, "augment", tuple(self.augment))
        object.__setattr__(self, "share_features", tuple(self.share_features))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))

    def validate(self) -> None:
        """Raise `ValueError` with a message fit for the UI if a field has the wrong type or is out of range."""
        if problems := self._type_problems():
            raise ValueError("; ".join(problems))
        problems = []
        h, w = self.image_size
        if not (16 <= h <= 1024 and 16 <= w <= 1024):
            problems.append(f"image size must be 16-1024 px per side, got {h}x{w}")
        if self.num_classes < 2:
            problems.append(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if not 1 <= self.epochs <= 1000:
            problems.append(f"epochs must be 1-1000, got {self.epochs}")
        if not 1 <= self.batch_size <= 4096:
            problems.append(f"batch size must be 1-4096, got {self.batch_size}")
        if not 0 < self.lr <= 10:
            problems.append(f"learning rate must be in (0, 10], got {self.lr}")
        if not 0 <= self.backbone_lr_mult <= 10:
            problems.append(f"backbone rate multiplier must be in [0, 10], got {self.backbone_lr_mult}")
        if not 0 <= self.weight_decay <= 1:
            problems.append(f"weight decay must be in [0, 1], got {self.weight_decay}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"validation fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 < self.test_fraction < 1:
            problems.append(f"test fraction must be in (0, 1), got {self.test_fraction}")
        if self.keep not in KEEPS:
            problems.append(f"keep must be one of {', '.join(KEEPS)}, got {self.keep!r}")
        if not 0 <= self.early_stop < self.epochs:
            problems.append(f"early stopping's patience must be 0 (off) to {self.epochs - 1} epochs, got {self.early_stop}")
        if not 0 <= self.unfreeze_after < self.epochs:
            problems.append("gradual unfreezing must start before the last epoch")
        if self.auto_rgn != (self.preset == AUTO_RGN):
            problems.append(f"Auto-RGN is the {AUTO_RGN} preset (every layer but the norm layers trains, at rates it "
                            f"sets): use preset {AUTO_RGN} with Auto-RGN on, or neither")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be 0-{MAX_SEED}, got {self.seed}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"unknown optimizer {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"unknown scheduler {self.scheduler!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"unknown precision {self.precision!r}")
        if unknown := set(self.augment) - set(AUGMENTATIONS):
            problems.append(f"unknown augmentation {sorted(unknown)}")
        if problems:
            raise ValueError("; ".join(problems))

    def _type_problems(self) -> list[str]:
        """Fields whose value is not of the annotated kind (a config read from JSON or built by hand)."""
        kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type.startswith("tuple"):
                inner = kinds["int" if "int" in f.type else "str"]
                ok = all(isinstance(v, inner) and not isinstance(v, bool) for v in value)
            else:
                ok = isinstance(value, kinds[f.type]) and (f.type == "bool" or not isinstance(value, bool))
            if not ok:
                problems.append(f"{f.name} must be of type {f.type}, got {value!r}")
        return problems

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


AUTO_RGN = "auto-rgn"  # a sweep's strategy: every layer trains, at rates scaled by relative gradient norms
MAX_SWEEP_MEMBERS = 200  # a sweep is a question, not a search: past this it is a mistake in the grid


@dataclass(frozen=True)
class SweepConfig:
    """A set of runs from one base config that differ in what trains (and optionally rate and seed)."""

    base: RunConfig = RunConfig()  # what every member shares; its frozen set and preset are replaced
    kind: str = "surgical"  # depth | surgical | grid
    seeds: int = 1  # seeds per strategy: the base seed, the next, ... (3 for a real answer)
    lrs: tuple[float, ...] = ()  # learning rates of the head to try (empty: the base config's)
    stages: tuple[str, ...] = ()  # stages the sweep spans: surgical tunes each, depth goes down to the first (empty: all)
    presets: tuple[str, ...] = ()  # grid: the strategies, presets (head, last2, full, ...), stage names or auto-rgn
    with_auto_rgn: bool = False  # depth, surgical: also a member with every layer at Auto-RGN rates (after full)

    def __post_init__(self) -> None:
        for name in ("lrs", "stages", "presets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.base, dict):
            object.__setattr__(self, "base", RunConfig.from_dict(self.base))

    def validate(self) -> None:
        """`ValueError` with a message for the UI when the sweep cannot be planned."""
        self.base.validate()
        problems = []
        if self.kind not in SWEEP_KINDS:
            problems.append(f"unknown sweep kind {self.kind!r}; choose one of {', '.join(SWEEP_KINDS)}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= 20:
            problems.append(f"seeds must be 1-20, got {self.seeds!r}")
        if any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 10 for lr in self.lrs):
            problems.append(f"learning rates must be in (0, 10], got {list(self.lrs)[:10]}")
        for name, values in (("learning rate", self.lrs), ("strategy", self.presets), ("stage", self.stages)):
            if twice := _first_repeat(values):
                problems.append(f"the {name} {twice!r} is listed twice: each trains once (a copy is not a seed)")
        at_least = len(self.lrs) * self.seeds * max(1, len(self.presets)) if not problems else 0
        if at_least > MAX_SWEEP_MEMBERS:
            problems.append(f"this sweep would train at least {at_least} runs; the limit is {MAX_SWEEP_MEMBERS}. "
                            "Use fewer rates, seeds or strategies.")
        if self.kind == "grid" and not self.presets:
            problems.append("a grid sweep needs at least one preset (e.g. head, last2, full)")
        if not isinstance(self.with_auto_rgn, bool):
            problems.append(f"with_auto_rgn must be true or false, got {self.with_auto_rgn!r}")
        elif self.with_auto_rgn and self.kind == "grid":
            problems.append(f"a grid sweep lists {AUTO_RGN} among its presets")
        if self.kind != "grid" and self.presets:
            problems.append(f"presets are for grid sweeps; a {self.kind} sweep chooses its own")
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, **changes) -> SweepConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: (self.base.to_dict() if f.name == "base" else _jsonable(getattr(self, f.name)))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> SweepConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# The built-in demo story: pretrain a small backbone on demo-source, then transfer it to demo-target.
DEMO_BACKBONE = RunConfig(arch="resnet18", weights="none", num_classes=6, dataset="demo-source", preset="full",
                          image_size=(64, 64), epochs=3, batch_size=32, lr=0.01)
DEMO_BACKBONE_NAME = "demo backbone · resnet18 · demo-source"


def transfer_from_demo_backbone(run_id: str, draft: RunConfig) -> RunConfig:
    """`draft` set up to fine-tune the demo backbone `run_id` on demo-target: its architecture, weights,
    input size and dataset, every layer trainable (the hyper-parameters stay as they were)."""
    return draft.replace(arch=DEMO_BACKBONE.arch, weights=f"run:{run_id}", dataset="demo-target", num_classes=4,
                         frozen=(), preset="full", image_size=DEMO_BACKBONE.image_size)


def changed_fields(before: RunConfig, after: RunConfig) -> dict[str, tuple]:
    """{field: (before, after)} for every field whose value differs, in the dataclass's order."""
    return {f.name: (getattr(before, f.name), getattr(after, f.name)) for f in dataclasses.fields(before)
            if getattr(before, f.name) != getattr(after, f.name)}


def _first_repeat(values):
    """The first value that appears a second time in `values` (None when each appears once)."""
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def dataset_name(ref: str) -> str:
    """A short name for a dataset reference: a folder's own name ("pets" for "/data/pets"), else the reference."""
    return (Path(ref).name or ref) if ("/" in ref or os.sep in ref) else ref


def runs_dir() -> Path:
    """Where runs live: `$FREEZE_LAB_RUNS_DIR`, else `./runs`."""
    return Path(os.environ.get("FREEZE_LAB_RUNS_DIR", "runs"))


def data_dir() -> Path:
    """Where datasets (demo world, imported zips, downloads) live: `$FREEZE_LAB_DATA_DIR`, else `./data`."""
    return Path(os.environ.get("FREEZE_LAB_DATA_DIR", "data"))
