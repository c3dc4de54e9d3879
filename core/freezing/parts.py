"""The network's parts, the unit in which runs are compared and layer signals are reported.

A part is a trunk stage (`core.models.stages`: "stem", "layer1", ... or "block1", ...), then
"classifier" (what the classifier holds besides its head, when it holds parameters), then "head"
(the new last layer). The Compare page's "which parts trained" and the layer signals of a run
(`core.engine.signals`) use the same parts, so their columns line up.
"""

from __future__ import annotations

import functools

from torch import nn

from core.models import arch_spec, build_skeleton, stages

HEAD, CLASSIFIER = "head", "classifier"


def network_parts(model: nn.Module, arch: str) -> dict[str, list[str]]:
    """{part: parameter names}, parts in forward order and names in the model's order; parts without
    parameters are left out."""
    spec = arch_spec(arch)
    prefixes = [(s.name, s.paths) for s in stages(model, arch)] + [(HEAD, (spec.head,))]
    parts: dict[str, list[str]] = {name: [] for name, _ in prefixes[:-1]} | {CLASSIFIER: [], HEAD: []}
    for name, _ in model.named_parameters():
        part = next((p for p, paths in prefixes if any(name == q or name.startswith(q + ".") for q in paths)), CLASSIFIER)
        parts[part].append(name)
    return {p: names for p, names in parts.items() if names}


@functools.lru_cache(maxsize=32)
def model_parts(arch: str, num_classes: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`network_parts` of the architecture (built on the meta device, remembered): ((part, names), ...)."""
    return tuple((part, tuple(names)) for part, names in network_parts(build_skeleton(arch, num_classes), arch).items())
