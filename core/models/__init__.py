"""Models: the architecture registry, building a classifier with a fresh head, weights and checkpoints.

`registry` (one entry per family: head, stages, forward chain, FC layers), `build` (torchvision
models with the weights a run asks for), `checkpoints` (reading, checking and reporting state dicts
safely), `weights` (torchvision's ImageNet weights, downloaded with progress).
"""

from core.models.build import build_model, build_skeleton, prepare_model, replace_head
from core.models.checkpoints import (
    MAX_CHECKPOINT_BYTES,
    Checkpoint,
    CheckpointError,
    LoadReport,
    check_checkpoint_path,
    checkpoint_report,
    load_checkpoint,
    owned_tensors,
    read_state_dict,
    store_checkpoint,
    strip_wrapper_prefixes,
)
from core.models.registry import (
    CATALOG,
    FAMILIES,
    ArchSpec,
    Family,
    Stage,
    Step,
    arch_spec,
    forward_chain,
    get_module,
    imagenet_weights,
    published_num_params,
    run_chain,
    stages,
)
from core.models.weights import (
    ProgressFn,
    WeightsUnavailableError,
    download_imagenet_weights,
    imagenet_available,
    imagenet_cache_path,
)

__all__ = [
    "CATALOG", "FAMILIES", "MAX_CHECKPOINT_BYTES", "ArchSpec", "Checkpoint", "CheckpointError", "Family",
    "LoadReport", "ProgressFn", "Stage", "Step", "WeightsUnavailableError", "arch_spec", "build_model", "build_skeleton",
    "check_checkpoint_path", "checkpoint_report", "download_imagenet_weights", "forward_chain", "get_module",
    "imagenet_available", "imagenet_cache_path", "imagenet_weights", "load_checkpoint", "owned_tensors",
    "prepare_model", "published_num_params", "read_state_dict", "replace_head", "run_chain", "stages",
    "store_checkpoint", "strip_wrapper_prefixes",
]
