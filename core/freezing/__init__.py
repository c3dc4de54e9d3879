"""Which layers train: presets, applying a frozen set to a model, the layer tree, checks.

A freezing choice is a set of dotted module paths (torchvision's own names, e.g. ``"features"``,
``"layer3.1"``, ``"classifier.0"``): everything under a frozen path has ``requires_grad=False``,
everything else trains. The same set drives the tree in the UI (`tree`), the real model and the
optimizer (`rules`), the presets (`presets`), the checks before training (`preflight`) and the
frozen prefix the feature cache may skip (`prefix`).
"""

from core.freezing.parts import CLASSIFIER, HEAD, model_parts, network_parts
from core.freezing.phases import Phase, phase_plan
from core.freezing.prefix import frozen_prefix
from core.freezing.preflight import Check, preflight
from core.freezing.presets import (
    PRESET_HELP,
    PRESET_LABELS,
    apply_preset,
    frozen_complement,
    preset_frozen,
    preset_label,
    preset_of,
    presets_for,
    strategy_label,
)
from core.freezing.rules import (
    frozen_stochastic_depth,
    is_frozen_bn,
    norm_paths,
    param_counts,
    param_groups,
    set_frozen,
    set_train_mode,
)
from core.freezing.tree import (
    LayerNode,
    LayerTree,
    layer_tree,
    model_structure,
    output_shapes,
)
from core.models import Stage, stages

__all__ = [
    "CLASSIFIER", "HEAD", "PRESET_HELP", "PRESET_LABELS", "Check", "LayerNode", "LayerTree", "Phase", "Stage",
    "apply_preset", "frozen_complement", "frozen_prefix", "frozen_stochastic_depth", "is_frozen_bn", "layer_tree",
    "model_parts", "model_structure", "network_parts", "norm_paths", "output_shapes", "param_counts", "param_groups", "phase_plan",
    "preflight", "preset_frozen", "preset_label", "preset_of", "presets_for", "set_frozen", "set_train_mode", "stages",
    "strategy_label",
]
