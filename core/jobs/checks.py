"""Everything about a `RunConfig` that can be checked before a run exists: a run that passes can still
fail on its data or device, but never on its own configuration.
"""

from __future__ import annotations

import torch

from core.config import RunConfig
from core.freezing import norm_paths, output_shapes
from core.models import arch_spec, build_skeleton, checkpoint_report, read_state_dict
from core.store import (
    FINISHED,
    QUEUED,
    RUNNING,
    RunStore,
)


def check_runnable(config: RunConfig, store: RunStore) -> None:
    """Everything about `config` that can be checked before a run exists, else `ValueError` for the user.

    The fields' ranges (`RunConfig.validate`), the architecture, the frozen paths (each a module of
    the model), the input size (a forward pass on a meta-device skeleton: milliseconds, no memory)
    and the starting weights (`check_weights`). A run that passes can still fail on its data or
    device, but never on its own configuration.
    """
    config.validate()
    skeleton = build_skeleton(config.arch, config.num_classes)  # ValueError naming the choices
    names = {name for name, _ in skeleton.named_modules() if name}
    if unknown := [p for p in config.frozen if p not in names]:
        raise ValueError(f"{arch_spec(config.arch).label} has no module {unknown[0]!r} to freeze.")
    if config.auto_rgn and set(config.frozen) != set(norm_paths(skeleton)):
        raise ValueError("Auto-RGN trains every layer but the norm layers: its frozen set is exactly the norm layers.")
    output_shapes(skeleton, config.image_size)  # ValueError: too small for this architecture
    check_weights(config, store, skeleton)


def check_weights(config: RunConfig, store: RunStore, skeleton: torch.nn.Module | None = None) -> None:
    """The run's starting weights exist and fit, else ValueError (`CheckpointError`) before any run is created.

    A checkpoint path must be a regular file of sane size that holds a state
    dict of the run's architecture (read safely and compared on a meta-device
    skeleton: a checkpoint chosen for another architecture, still in the
    draft after the architecture changed, is refused here rather than failing
    the run when it starts); ``run:<id>`` a finished run of `store` of the same
    architecture (queued or running is fine: the queue trains it first; a failed
    or cancelled one has no weights). ImageNet weights are downloaded when the run starts.
    """
    if config.weights.startswith("run:"):
        run_id = config.weights.removeprefix("run:")
        if not store.exists(run_id):
            raise ValueError(f"There is no run {run_id!r} to start from.")
        source = store.load(run_id)
        if source.status not in (FINISHED, QUEUED, RUNNING):
            raise ValueError(f"Run {source.name!r} {source.status}: it has no weights to start from.")
        if source.config.arch != config.arch:
            raise ValueError(f"Run {source.name!r} trained a {arch_spec(source.config.arch).label}, "
                             f"not a {arch_spec(config.arch).label}.")
    elif config.weights not in ("none", "imagenet"):
        state = read_state_dict(config.weights)
        skeleton = skeleton if skeleton is not None else build_skeleton(config.arch, config.num_classes)
        checkpoint_report(skeleton, config.arch, state, source=config.weights)
