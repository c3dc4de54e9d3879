"""Presets: named freezing choices (full, head, classifier, VGG's FC1+FC2, last N blocks) as frozen paths.
"""

from __future__ import annotations

import re

from torch import nn

from core.config import AUTO_RGN, RunConfig
from core.freezing.rules import norm_paths, set_frozen
from core.freezing.tree import LayerTree
from core.models import arch_spec, get_module, stages

# --------------------------------------------------------------------------- presets

PRESET_LABELS = {
    "full": "Full fine-tune",
    "head": "Head only",
    "classifier": "Classifier only",
    "fc1_fc2": "FC1 + FC2 + head",
    "last": "Last N blocks",
    "custom": "Custom",  # ticked by hand in the layer tree
    "auto-rgn": "Auto-RGN",  # every layer but the norm layers, each at a rate scaled by its relative gradient norm
}

PRESET_HELP = {
    "full": "Train every layer, starting from the chosen weights.",
    "head": "Feature extractor: everything frozen except the new last layer.",
    "classifier": "The convolutional trunk is frozen; the whole classifier (or fc) trains, "
                  "as in freezing AlexNet's `features`.",
    "fc1_fc2": "VGG: FC1 (classifier.0) and FC2 (classifier.3) fine-tune with the new head (classifier.6); "
               "the convolutional features are frozen.",
    "last": "Train the last N blocks of the trunk and everything after them.",
    "auto-rgn": "Lee et al.'s Auto-RGN: every layer but the norm layers trains; at each epoch's start every "
                "tensor's relative gradient norm ‖g‖/‖θ‖ is measured over 5 batches and its rate set to the base "
                "rate × its RGN / the largest RGN.",
}


def presets_for(arch: str) -> list[str]:
    """Preset names that make sense for `arch` ("last" stands for "last<N>")."""
    names = ["full", "head", "classifier", "last"]
    if arch_spec(arch).family.fc_layers:
        names.insert(3, "fc1_fc2")
    return names


def preset_label(preset: str) -> str:
    """"last2" -> "Last 2 blocks"; known names -> their label; anything else as is."""
    if m := re.fullmatch(r"last(\d+)", preset):
        return f"Last {m.group(1)} block{'s' if m.group(1) != '1' else ''}"
    return PRESET_LABELS.get(preset, preset)


def strategy_label(config: RunConfig) -> str:
    """What a run's strategy is called: its preset's label, or "Auto-RGN" (every layer trains, at rates
    its relative gradient norms set)."""
    return PRESET_LABELS[AUTO_RGN] if config.auto_rgn else preset_label(config.preset)


def preset_frozen(model: nn.Module, arch: str, preset: str) -> tuple[str, ...]:
    """The frozen module paths a preset stands for (the model is not changed).

    - ``"full"``: nothing frozen.
    - ``"head"``: everything but the new head (`ArchSpec.head`).
    - ``"classifier"``: the convolutional trunk; the whole classifier / ``fc`` trains.
    - ``"fc1_fc2"`` (VGG): everything but ``classifier.0`` (FC1), ``classifier.3`` (FC2)
      and the new head ``classifier.6``.
    - ``"last<N>"``: the trunk's stages except the last N; the rest trains.
    - ``"auto-rgn"``: the normalisation layers, which Lee et al.'s Auto-RGN neither measures nor
      trains (`core.engine.signals.AutoRGN` sets every other tensor's rate).
    """
    spec = arch_spec(arch)
    if preset == "full":
        return ()
    if preset == AUTO_RGN:
        return norm_paths(model)
    if preset == "head":
        return frozen_complement(model, [spec.head])
    if preset == "classifier":
        return frozen_complement(model, [spec.classifier])
    if preset == "fc1_fc2":
        if not spec.family.fc_layers:
            raise ValueError(f"the FC1+FC2 preset is for VGG models, not {spec.label}")
        return frozen_complement(model, [*spec.family.fc_layers, spec.head])
    if m := re.fullmatch(r"last(\d+)", preset):
        trunk = stages(model, arch)
        n = int(m.group(1))
        if not 0 <= n <= len(trunk):
            raise ValueError(f"{spec.label} has {len(trunk)} blocks; cannot train the last {n}")
        paths = [p for stage in trunk[: len(trunk) - n] for p in stage.paths]
        return tuple(p for p in paths if _has_params(get_module(model, p)))
    raise ValueError(f"unknown preset {preset!r}")


def preset_of(model: nn.Module, arch: str, tree: LayerTree, frozen) -> str:
    """The preset that freezes exactly the parameters `frozen` freezes, else "custom".

    Ticking every box by hand is "full", not "custom": the name follows what trains, not how it
    was chosen. Checked in the order of `presets_for`, then "last1", "last2", ...
    """
    mask = tree.frozen_mask(frozen)
    names = [p for p in presets_for(arch) if p != "last"] + [f"last{n}" for n in range(1, len(stages(model, arch)))]
    return next((name for name in names if tree.frozen_mask(preset_frozen(model, arch, name)) == mask), "custom")


def apply_preset(model: nn.Module, arch: str, preset: str) -> tuple[str, ...]:
    """Freeze `model` according to `preset` (see `preset_frozen`); returns the frozen paths."""
    frozen = preset_frozen(model, arch, preset)
    set_frozen(model, frozen)
    return frozen


def frozen_complement(model: nn.Module, trainable: list[str]) -> tuple[str, ...]:
    """The fewest module paths to freeze so that exactly the `trainable` subtrees train.

    Walks down from the root: a child that holds a trainable path is entered,
    a child inside one is left alone, any other child with parameters is frozen
    whole.
    """
    for path in trainable:
        get_module(model, path)  # validate
    out: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if any(path == t or t.startswith(path + ".") for t in trainable):
                if path not in trainable:
                    visit(child, path + ".")
            elif _has_params(child):
                out.append(path)

    visit(model, "")
    return tuple(out)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None
