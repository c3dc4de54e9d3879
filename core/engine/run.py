"""One fine-tuning run: `train(config, monitor) -> TrainResult`, a short orchestration of named steps.

`prepare_data` (decoded once, on the device) -> `prepare_network` (weights, frozen set, the audit's
snapshot) -> the phase plan (`core.freezing.phase_plan`, shared with the memory estimate) -> per
phase the optimizer and the feature cache (`start_phase`, `phase_inputs`) -> `run_epoch` per epoch
-> the kept weights (`core.engine.best`) graded on the held-out test split -> `summarize`. The
app's job manager calls `train` in a worker process (`core.jobs.worker`), the command line
(`python -m core.train`) in its own process, both through `core.jobs.execute`.

Feature cache (`core.engine.features`)
    The longest prefix of the forward pass that is frozen and behaves the same in train and eval
    mode is a fixed function of the image. Without augmentation its output is computed once per
    image, and the run trains only the remaining steps on those features. The summary says whether
    the cache was used, up to which step, whether it came from disk, and why not when not.

Precision
    ``"auto"``: bf16 autocast on CUDA when the GPU supports it, else fp32; ``"bf16"``: bf16 autocast
    on any device; ``"fp32"``: no autocast. bf16 needs no loss scaling. ``torch.compile`` is not
    used: runs here are a few epochs long, and compiling per architecture, input shape and frozen
    set costs more than it saves (`bench/compile_cost.py` measures it).

Layer signals (`core.engine.signals`)
    Every epoch's record carries ``layers``: per stage, how far its weights moved since the start and
    how large its gradients were. With ``config.auto_rgn`` every tensor's rate is scaled by its
    relative gradient norm, measured over the first batches of each epoch (`auto_rgn_batches`).

Best epoch, early stopping, test
    ``config.keep`` chooses the weights a run ends with (its best validation epoch's, or its last
    epoch's), ``config.early_stop`` ends it on a validation plateau. The test split is seen once,
    after training, by the kept weights: its accuracy is never what chose anything.

Timings
    ``summary.timings`` splits the run's wall time into data (index, decoded images, to the device),
    model (build, weights, to the device), features (prefix features computed or loaded), epochs
    (training and validation) and finish (audit, weights to the CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from core import models
from core.config import RunConfig
from core.config import data_dir as default_data_dir
from core.config import runs_dir as default_runs_dir
from core.devices import amp_dtype, peak_memory, pick_device
from core.engine.audit import freeze_audit, freeze_snapshot
from core.engine.best import KeptWeights, best_index, plateaued
from core.engine.events import Monitor, TrainResult
from core.engine.faults import with_faults
from core.engine.features import feature_key, prefix_features, prefix_fingerprint
from core.engine.inputs import RunData, Shipped, place_data, prepare_data
from core.engine.loop import (
    Feeder,
    Loop,
    Split,
    batch_slices,
    evaluate,
    train_one_epoch,
)
from core.engine.optim import build_optimizer, build_scheduler
from core.engine.signals import RGN_BATCHES, AutoRGN, LayerDrift, measure_rgn
from core.estimate import FeaturePlan, feature_budget, feature_shape, plan_features
from core.freezing import Phase, network_parts, param_counts, phase_plan, set_frozen, set_train_mode
from core.models import LoadReport, run_chain
from core.store import resolve_weights
from core.summary import RunStart, RunSummary


@dataclass
class RunNetwork:
    """The model of a run, its forward chain, and what its start is compared with at the end."""

    model: nn.Module
    chain: list[models.Step]
    load_report: LoadReport | None
    frozen_before: dict[str, Tensor]  # CPU copies of what must not move (`freeze_snapshot`)
    trainable_names: frozenset[str]  # the parameters some phase of the run trains
    trainable: int
    frozen: int
    drift: LayerDrift  # per stage: how far the weights moved, how large the gradients were


@dataclass
class PhaseState:
    """What one phase trains with: the optimizer, its groups and scheduler, the feature-cache plan."""

    optimizer: torch.optim.Optimizer
    groups: list[dict]
    scheduler: object | None
    plan: FeaturePlan
    auto_rgn: AutoRGN | None  # scales each tensor's rate at every epoch's start (`config.auto_rgn`)


@dataclass
class FeatureCache:
    """Prefix features of this run, per (split, prefix), and the seconds spent on them."""

    cache_dir: Path
    features: dict[tuple[str, str], Split] = field(default_factory=dict)
    seconds: float = 0.0


def train(config: RunConfig, monitor: Monitor, *, device: torch.device | None = None,
          runs_dir: Path | None = None, shipped: Shipped | None = None) -> TrainResult:
    """Train one run as `config` says, reporting to `monitor`; see the module docstring. `shipped`:
    the dataset and weights made by another machine (`core.engine.inputs`), instead of reading them.

    Raises `RunCancelled` when the monitor asks to stop, `DatasetError` / `CheckpointError` /
    `ValueError` for bad input (their message is for the user), `DivergedError` when the loss stops
    being finite, `torch.OutOfMemoryError` when the device runs out of memory.
    """
    t_start = time.perf_counter()
    config.validate()
    monitor = with_faults(monitor)
    device = _set_up(device)
    amp = amp_dtype(config.precision, device)
    data = prepare_data(config, device) if shipped is None else place_data(shipped, device)
    timings = {"data_s": time.perf_counter() - t_start}
    network = prepare_network(config, device, runs_dir, shipped.weights if shipped else None)
    timings["model_s"] = time.perf_counter() - t_start - timings["data_s"]
    loop = Loop(monitor, Feeder(device, data.pre, tuple(config.augment), torch.Generator(device=device).manual_seed(
        config.seed + 1)), amp, config.batch_size, pad_batches=device.type == "cuda")
    phases = phase_plan(network.model, config)
    state = start_phase(network, config, phases[0], data, loop)
    start = start_facts(config, data, network, state, loop)
    monitor.on_start(start.to_dict())

    features = FeatureCache(default_data_dir() / ".cache")
    history, plans, groups = [], [], []
    kept = KeptWeights(network.trainable_names)
    shuffle = torch.Generator().manual_seed(config.seed)
    for index, phase in enumerate(phases):
        if history and plateaued([r["val_acc"] for r in history], config.early_stop):
            break  # stopped early: later phases do not start
        if index > 0:
            state = start_phase(network, config, phase, data, loop)
            features.features = {k: f for k, f in features.features.items() if state.plan.used and k[1] == state.plan.prefix}
        groups.append(state.groups)
        plans.append(state.plan.to_dict())
        for epoch in range(phase.first_epoch, phase.last_epoch + 1):
            history.append(run_epoch(network, config, data, state, loop, features, epoch, shuffle))
            plans[-1] = state.plan.to_dict()
            if config.keep == "best":
                kept.offer(network.model, history[-1]["val_acc"])
            monitor.on_epoch(history[-1])
            if plateaued([r["val_acc"] for r in history], config.early_stop):
                break
    t_finish = time.perf_counter()
    if config.keep == "best":
        kept.restore(network.model)
    test = grade_test(network, config, data, loop)
    state_dict = final_weights(network.model)
    timings |= {"features_s": features.seconds,
                "epochs_s": sum(r["epoch_time_s"] for r in history) - features.seconds}
    summary = summarize(start, config, history, plans, groups, freeze_audit(network.model, network.frozen_before),
                        timings | {"finish_s": time.perf_counter() - t_finish}, time.perf_counter() - t_start,
                        kept_epoch=kept.epoch if config.keep == "best" else len(history), test=test,
                        test_digest=data.test_digest)
    return TrainResult(summary=summary, state_dict=state_dict)


def _set_up(device: torch.device | None) -> torch.device:
    """The run's device, with an explicit index on CUDA (so tensors' `.device` compares equal), cuDNN
    autotuning on and the peak-memory counter reset."""
    device = torch.device(device or pick_device())
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    return device


def prepare_network(config: RunConfig, device: torch.device, runs_dir: Path | None,
                    weights: str | models.Checkpoint | None = None) -> RunNetwork:
    """The model from the run's starting weights (`weights` when given, else an earlier run's through
    the store, or the config's), frozen as configured, snapshotted for the audit, on the device."""
    torch.manual_seed(config.seed)  # the new head's (or a random model's) init, then dropout
    if weights is None:
        weights = resolve_weights(config.weights, config.arch, runs_dir=runs_dir or default_runs_dir())
    model, report = models.prepare_model(config.arch, config.num_classes, weights)
    set_frozen(model, config.frozen)
    frozen_before = freeze_snapshot(model, config.bn_frozen_eval)  # CPU copies, for the audit at the end
    trainable, frozen = param_counts(model)
    drift = LayerDrift(model, network_parts(model, config.arch))  # its start copy: made on the CPU
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    trainable_names = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
    return RunNetwork(model, models.forward_chain(model, config.arch), report, frozen_before, trainable_names,
                      trainable, frozen, drift)


def start_phase(network: RunNetwork, config: RunConfig, phase: Phase, data: RunData, loop: Loop) -> PhaseState:
    """Freeze for the phase, build its optimizer and scheduler, and plan its feature cache."""
    set_frozen(network.model, phase.frozen)
    optimizer, groups = build_optimizer(network.model, config)
    scheduler = build_scheduler(optimizer, config.scheduler, phase.epochs)
    set_train_mode(network.model, config.bn_frozen_eval)
    plan = plan_features(network.chain, config, images=sum(len(s) for s in data.splits.values()),
                         elem_bytes=loop.amp_dtype.itemsize if loop.amp_dtype else 4,
                         budget=feature_budget(loop.feeder.device))
    return PhaseState(optimizer, groups, scheduler, plan, AutoRGN(optimizer) if config.auto_rgn else None)


def start_facts(config: RunConfig, data: RunData, network: RunNetwork, state: PhaseState, loop: Loop) -> RunStart:
    """What the run knows before its first batch (`Monitor.on_start`), carried on into its summary."""
    steps_per_epoch = _steps_per_epoch(data, config)
    return RunStart(
        total_steps=steps_per_epoch * config.epochs, steps_per_epoch=steps_per_epoch, epochs=config.epochs,
        classes=data.classes, device=str(loop.feeder.device), precision="bf16" if loop.amp_dtype else "fp32",
        param_groups=state.groups, feature_cache=state.plan.to_dict(), train_size=len(data.splits["train"]),
        val_size=len(data.splits["val"]), test_size=len(data.test), skipped=data.skipped, trainable_params=network.trainable,
        frozen_params=network.frozen, load_report=network.load_report.to_dict() if network.load_report else None,
    )


def phase_inputs(network: RunNetwork, config: RunConfig, data: RunData, state: PhaseState, loop: Loop,
                 features: FeatureCache) -> tuple[dict[str, Split], Callable[[Tensor], Tensor]]:
    """The splits the phase trains on and the function it trains: the images and the whole model, or
    the prefix's features (computed, or read from disk, in the phase's first epoch) and the tail."""
    plan = state.plan
    if not plan.used:
        return data.splits, network.model
    t_build = time.perf_counter()
    network.model.eval()
    prefix = network.chain[: plan.length]
    if any((name, plan.prefix) not in features.features for name in data.splits):
        fingerprints = {k: prefix_fingerprint(network.chain[:k]) for k in [plan.length, *shared_lengths(network, config, plan, data, loop)]}
        sources = []
        for name, split in data.splits.items():
            keys = {k: feature_key(data.keys[name], data.pre, f, loop.amp_dtype, loop.feeder.device) for k, f in fingerprints.items()}
            features.features[(name, plan.prefix)], source = prefix_features(
                prefix, split, loop, cache_dir=features.cache_dir, key=keys.pop(plan.length), shape=plan.shape, share=keys)
            sources.append(source)
        plan.source = "disk" if set(sources) == {"disk"} else "computed"
    spent = time.perf_counter() - t_build
    plan.build_s += spent
    features.seconds += spent
    tail = network.chain[plan.length:]
    return {name: features.features[(name, plan.prefix)] for name in data.splits}, lambda x: run_chain(tail, x)


def shared_lengths(network: RunNetwork, config: RunConfig, plan: FeaturePlan, data: RunData, loop: Loop) -> list[int]:
    """The shorter prefixes (as numbers of steps) whose outputs this run's feature pass also stores:
    the steps of `config.share_features` it passes, deepest first, while their features together fit
    the feature budget (they are gathered on the host during the pass)."""
    names = [name for name, _ in network.chain[: plan.length - 1]]
    lengths = sorted((names.index(n) + 1 for n in config.share_features if n in names), reverse=True)
    budget, images = feature_budget(torch.device("cpu")), max(len(s) for s in data.splits.values())
    chosen = []
    for length in lengths:
        need = math.prod(feature_shape(config.arch, config.num_classes, config.image_size, length)) * images * \
            (loop.amp_dtype.itemsize if loop.amp_dtype else 4)
        if need <= budget:
            chosen.append(length)
            budget -= need
    return chosen


def run_epoch(network: RunNetwork, config: RunConfig, data: RunData, state: PhaseState, loop: Loop,
              features: FeatureCache, epoch: int, shuffle: torch.Generator) -> dict:
    """One epoch: train, evaluate, step the scheduler; returns the epoch's record (see `Monitor.on_epoch`).
    In a phase's first epoch with the feature cache, the time includes building it."""
    t_epoch = time.perf_counter()
    inputs, forward = phase_inputs(network, config, data, state, loop, features)
    set_train_mode(network.model, config.bn_frozen_eval)
    lr = {g["name"]: g["lr"] for g in state.optimizer.param_groups}  # per named group (Auto-RGN: before scaling)
    if state.auto_rgn is not None:
        batches = auto_rgn_batches(inputs["train"], loop, config, epoch, features=state.plan.used)
        state.auto_rgn.start_epoch(measure_rgn(network.model, forward, batches, loop.autocast))
    stats, _ = train_one_epoch(forward, state.optimizer, inputs["train"], loop, features=state.plan.used, epoch=epoch,
                               step=(epoch - 1) * _steps_per_epoch(data, config), generator=shuffle,
                               after_backward=[network.drift.after_backward])
    train_time = time.perf_counter() - t_epoch
    layers = layer_record(network, state)
    network.model.eval()
    stats |= evaluate(forward, inputs["val"], loop, config.num_classes, features=state.plan.used)
    if state.scheduler is not None:
        state.scheduler.step()
    return {
        "epoch": epoch,
        **stats,
        "epoch_time_s": time.perf_counter() - t_epoch,
        "train_time_s": train_time,  # the training pass (and, in a phase's first epoch, the feature pass)
        "images_per_s": len(inputs["train"]) / train_time,
        "peak_mem_bytes": peak_memory(loop.feeder.device),
        "lr": lr.get("head", max(lr.values())),
        "lrs": lr,
        "feature_cache": state.plan.used,
        "layers": layers,
    }


def auto_rgn_batches(split: Split, loop: Loop, config: RunConfig, epoch: int, *, features: bool):
    """The batches Auto-RGN measures at an epoch's start: `RGN_BATCHES` of the run's batch size, drawn
    (as a shuffled loader's first batches) from a generator of their own, so the training order does
    not depend on whether Auto-RGN is on."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
    for start, end in batch_slices(len(split), config.batch_size)[:RGN_BATCHES]:
        idx = order[start:end]
        yield loop.inputs(split, idx, features=features, train=True), split.y[idx.to(split.y.device)]


def layer_record(network: RunNetwork, state: PhaseState) -> dict:
    """The epoch's layer signals (`LayerDrift.epoch_record`); with Auto-RGN also each group's rate
    scale (its tensors' scales weighted by size), after which the unscaled rates are put back."""
    record = network.drift.epoch_record()
    if state.auto_rgn is not None:
        sizes = {n: p.numel() for n, p in network.model.named_parameters()}
        record["rgn_scale"] = state.auto_rgn.group_scales(network.drift.groups, sizes)
        state.auto_rgn.end_epoch()
    return record


def _steps_per_epoch(data: RunData, config: RunConfig) -> int:
    return len(batch_slices(len(data.splits["train"]), config.batch_size))


def grade_test(network: RunNetwork, config: RunConfig, data: RunData, loop: Loop) -> dict | None:
    """The kept weights on the held-out test split, through the whole model (`evaluate`'s figures
    under `test_` names); None when the dataset has no test images."""
    if not len(data.test):
        return None
    network.model.eval()
    stats = evaluate(network.model, data.test, loop, config.num_classes, features=False)
    return {"test_acc": stats["val_acc"], "test_loss": stats["val_loss"], "test_per_class_acc": stats["per_class_acc"],
            "test_confusion": stats["confusion"]}


def final_weights(model: nn.Module) -> dict[str, Tensor]:
    """What the store saves: the trainable parameters and every buffer, as CPU copies of their own
    (the frozen rest comes back from the run's starting weights)."""
    model.eval()
    state = {name: p.detach().cpu().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}
    return state | {name: b.detach().cpu().contiguous().clone() for name, b in model.named_buffers()}


def summarize(start: RunStart, config: RunConfig, history: list[dict], plans: list[dict], groups: list[list[dict]],
              audit: dict, timings: dict, total_s: float, *, kept_epoch: int, test: dict | None,
              test_digest: str) -> RunSummary:
    """The run's `RunSummary`: its start facts, the kept epoch's figures (validation and test), the
    best epoch, and where the time went.

    images/s is the training images over the training passes' time (validation excluded; a phase's
    first epoch includes computing its cached features), not a mean of per-epoch rates, which short
    epochs would dominate.
    """
    final, best = history[kept_epoch - 1], history[best_index([r["val_acc"] for r in history])]
    unfreezing = None
    if len(groups) > 1:
        unfreezing = {"after_epoch": config.unfreeze_after, "head_only_groups": groups[0], "groups": groups[-1],
                      "head_only_feature_cache": plans[0]}
    return RunSummary(
        **(start.to_dict() | {"param_groups": groups[-1], "feature_cache": plans[-1]}),
        val_acc=final["val_acc"], best_val_acc=best["val_acc"], best_epoch=best["epoch"],
        train_acc=final["train_acc"], train_loss=final["train_loss"], val_loss=final["val_loss"],
        per_class_acc=final["per_class_acc"], last_val_acc=history[-1]["val_acc"], weights_epoch=kept_epoch,
        epochs_done=len(history), **(test or {}),
        splits={"train": start.train_size, "val": start.val_size, "test": start.test_size, "test_digest": test_digest},
        images_per_s=start.train_size * len(history) / sum(r["train_time_s"] for r in history),
        total_time_s=total_s, peak_mem_bytes=max(r["peak_mem_bytes"] for r in history),
        gradual_unfreezing=unfreezing, freeze_audit=audit,
        timings={k: round(v, 4) for k, v in timings.items()},
    )
