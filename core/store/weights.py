"""The weights of earlier runs, as starting weights of later ones (``"run:<id>"``).

A run stores only what it changed (its trainable parameters and its buffers); the rest comes from
the run's own starting weights, rebuilt the same way, so a chain of runs (demo backbone -> target
run) resolves recursively.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.models import Checkpoint, CheckpointError, arch_spec, build_model, owned_tensors
from core.models.checkpoints import load_error_reason
from core.store.runs import RunStore

RUN_PREFIX = "run:"


def resolve_weights(weights: str, arch: str, *, runs_dir: Path | None = None) -> str | Checkpoint:
    """`weights` as `core.models.build_model` takes it: ``"run:<id>"`` becomes that run's final
    `Checkpoint`; anything else ("none", "imagenet", a path) is passed on as it is."""
    if not weights.startswith(RUN_PREFIX):
        return weights
    state, source = run_state_dict(weights.removeprefix(RUN_PREFIX), arch, runs_dir=runs_dir)
    return Checkpoint(state, source)


def run_state_dict(run_id: str, arch: str, *, runs_dir: Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The full final state dict of run `run_id` (see the module docstring), and its name for reports."""
    store = RunStore(runs_dir)
    try:
        record = store.load(run_id)
    except KeyError:
        raise CheckpointError(f"There is no run {run_id!r}.") from None
    config = record.config
    if config.arch != arch:
        raise CheckpointError(
            f"Run {record.name!r} trained a {arch_spec(config.arch).label}, not a {arch_spec(arch).label}."
        )
    if not store.weights_path(run_id).is_file():
        raise CheckpointError(f"Run {record.name!r} has no saved weights (status: {record.status}).")
    # The run's starting weights, rebuilt as its training built them: from random init the frozen
    # tensors (stored nowhere) are drawn again from the run's seed. fork_rng leaves the caller's
    # generator as it was.
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = build_model(config.arch, config.num_classes, resolve_weights(config.weights, config.arch, runs_dir=runs_dir))
    try:
        weights = store.load_weights(run_id)
    except Exception as exc:  # a damaged or foreign weights.pt: never run code, never crash the page
        raise CheckpointError(f"The weights file of run {record.name!r} is damaged ({load_error_reason(exc)}).") from None
    try:  # strict=False skips missing and unexpected keys, not shapes: a head of another size raises here
        model.load_state_dict(owned_tensors(weights, f"of run {record.name!r}"), strict=False)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise CheckpointError(f"The weights file of run {record.name!r} does not fit its configuration "
                              f"({first.rstrip('.')}).") from None
    return model.state_dict(), f"run {record.name}"
