"""One fine-tuning run: data on the device, the loop, metrics, the freeze audit.

`train(config, monitor, *, device, runs_dir) -> TrainResult` is the whole
engine. The app's job manager calls it in a worker process (`core.worker`),
the command line (`python -m core.train`) in its own process, through the
same `core.jobs.execute`.
It reads like the torchvision classification reference: `build_optimizer`,
`train_one_epoch`, `evaluate`, and a straight loop over epochs.

Data path (DESIGN "Performance design")
    Every image is decoded and resized once (`core.data.decode_images`, cached
    on disk) into one uint8 tensor per split, kept on the device when it fits
    (else in pinned host memory). A batch is an index slice of that tensor,
    converted, augmented and normalised on the device: no PIL work per epoch.
    Augmentation works on whole batches with per-sample randomness: random
    resized crop through `torchvision.ops.roi_align` with one box per sample,
    horizontal flip through a per-sample mask, colour jitter through per-sample
    brightness / contrast / saturation factors.

Feature cache (`core.features`)
    The longest prefix of the forward pass that is frozen and behaves the same
    in train and eval mode is a fixed function of the image. Without
    augmentation its output is computed once per image, and the run trains
    only the remaining steps on those features: epochs after the first cost
    only the trainable tail. The features stay on the device for the run and
    are stored on disk for later runs with the same prefix and data, which
    then skip the prefix altogether. The summary says whether the cache was
    used, up to which step, whether it came from disk, and why not when not.

Timings
    ``summary["timings"]`` splits the run's wall time into data (index,
    decoded images, to the device), model (build, weights, to the device),
    features (prefix features computed or loaded), epochs (training and
    validation) and finish (audit, weights to the CPU).

Precision
    ``"auto"``: bf16 autocast on CUDA when the GPU supports it, else fp32;
    ``"bf16"``: bf16 autocast on any device; ``"fp32"``: no autocast. bf16 needs
    no loss scaling. ``torch.compile`` is deliberately not used: runs here are
    a few epochs long, and compilation (per architecture, input shape and
    frozen set) costs more than it saves; `bench/compile_cost.py` measures it
    (2-core CPU, ResNet-18 at 64 px: 48 s of compiling for a step that got
    slower, 122 -> 131 ms).

Peak memory
    ``peak_mem_bytes`` is ``torch.cuda.max_memory_allocated`` on CUDA (reset at
    the start of the run). On the CPU it is the peak resident set size of the
    whole process so far (``resource.getrusage``), which includes everything
    else the process holds and never goes down.

Fault injection (for tests of the failure paths)
    The environment variable ``FREEZE_LAB_FAULT`` makes a run fail on purpose
    at a global training step (1 = the first batch):

    - ``oom@<step>``: raise ``torch.OutOfMemoryError("CUDA out of memory (simulated) ...")``,
    - ``error@<step>``: raise ``RuntimeError("simulated failure ...")``,
    - ``segfault@<step>``: the process kills itself with SIGSEGV, as a native crash would.

    It is read when a run starts; anything else in the variable is an error.
"""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from core.config import RunConfig
from core.config import data_dir as default_data_dir
from core.config import runs_dir as default_runs_dir
from core.data import Preprocess, decode_images, decode_key, load_dataset, normalize, preprocess_for
from core.devices import amp_dtype as precision_dtype
from core.devices import fits_on_device, pick_device
from core.freezing import is_frozen_bn, param_counts, param_groups, preset_frozen, set_frozen, set_train_mode
from core.features import (
    feature_budget,
    feature_key,
    forward_chain,
    load_features,
    plan_features,
    prefix_fingerprint,
    run_chain,
    save_features,
)
from core.events import Monitor, RunCancelled
from core.models import prepare_model

FAULT_ENV = "FREEZE_LAB_FAULT"
JITTER = 0.4  # colour jitter strength: factors drawn from [1 - 0.4, 1 + 0.4] (torchvision's common choice)
CROP_SCALE = (0.6, 1.0)  # random resized crop: area fraction of the image
CROP_RATIO = (3 / 4, 4 / 3)  # random resized crop: aspect ratio of the box


@dataclass
class TrainResult:
    summary: dict  # JSON-able final figures (see `train`)
    state_dict: dict[str, Tensor]  # trainable parameters + all buffers, on the CPU


# --------------------------------------------------------------------------- augmentation


def random_resized_crop(x: Tensor, generator: torch.Generator, scale=CROP_SCALE, ratio=CROP_RATIO) -> Tensor:
    """Per-sample random resized crop of a float batch [N, C, H, W], resized back to H x W.

    Each sample gets its own box (area fraction in `scale`, aspect ratio in
    `ratio`, log-uniform like torchvision's RandomResizedCrop) and
    `roi_align` resamples all boxes bilinearly in one call.
    """
    n, _, h, w = x.shape
    u = torch.rand(n, 4, device=x.device, generator=generator)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * (h * w)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    box_w = torch.sqrt(area * torch.exp(log_r)).clamp(max=w)
    box_h = torch.sqrt(area / torch.exp(log_r)).clamp(max=h)
    x0 = (w - box_w) * u[:, 2]
    y0 = (h - box_h) * u[:, 3]
    index = torch.arange(n, device=x.device, dtype=x.dtype)
    boxes = torch.stack([index, x0, y0, x0 + box_w, y0 + box_h], dim=1).to(x.dtype)
    return roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def color_jitter(x: Tensor, generator: torch.Generator, strength: float = JITTER) -> Tensor:
    """Per-sample brightness, contrast and saturation factors in [1-s, 1+s] on a [0, 1] batch."""
    f = 1 + strength * (2 * torch.rand(x.shape[0], 3, 1, 1, 1, device=x.device, generator=generator) - 1)
    brightness, contrast, saturation = f.unbind(1)
    x = (x * brightness).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    gray = _gray(x)
    return ((x - gray) * saturation + gray).clamp(0, 1)


def augment_batch(x: Tensor, ops: tuple[str, ...], generator: torch.Generator) -> Tensor:
    """Apply the configured augmentations (`RunConfig.augment`) to a float [0, 1] batch."""
    if "crop" in ops:
        x = random_resized_crop(x, generator)
    if "flip" in ops:
        x = random_flip(x, generator)
    if "jitter" in ops:
        x = color_jitter(x, generator)
    return x


# --------------------------------------------------------------------------- data on the device


@dataclass
class Split:
    """One split as the trainable part of the network reads it."""

    x: Tensor  # uint8 images [N, 3, H, W], or cached prefix features [N, ...]
    y: Tensor  # int64 labels [N], on the device

    def __len__(self) -> int:
        return len(self.y)


class Feeder:
    """Turns index batches of a `Split` into model inputs on the device.

    Images: gather, to float, augment (training only), normalise, channels_last
    on CUDA. Features: gather only (a gathered batch is a copy, so an in-place
    first step of the tail never writes into the cache).
    """

    def __init__(self, device: torch.device, pre: Preprocess, augment: tuple[str, ...], generator: torch.Generator):
        self.device, self.pre, self.augment, self.generator = device, pre, augment, generator
        self.channels_last = device.type == "cuda"

    def gather(self, x: Tensor, idx: Tensor) -> Tensor:
        if x.device.type == self.device.type:  # resident on the device: gather there
            return x[idx.to(x.device)]
        return x[idx].pin_memory().to(self.device, non_blocking=True)  # host-resident: copy asynchronously

    def images(self, x: Tensor, idx: Tensor, train: bool) -> Tensor:
        batch = self.gather(x, idx)
        if train and self.augment:
            batch = augment_batch(batch.float().div_(255), self.augment, self.generator)
        return self._layout(normalize(batch, self.pre))

    def features(self, x: Tensor, idx: Tensor) -> Tensor:
        return self._layout(self.gather(x, idx))

    def _layout(self, batch: Tensor) -> Tensor:
        if self.channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch


def place(t: Tensor, device: torch.device) -> Tensor:
    """Keep `t` on the device when it fits (`fits_on_device`), else in pinned host memory."""
    if fits_on_device(t.nbytes, device):
        return t.to(device)
    return t.pin_memory()


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) bounds of the batches; a last batch of one sample joins the one before
    (a BatchNorm in training mode cannot normalise a single sample)."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


# --------------------------------------------------------------------------- optimizer


def build_optimizer(model: nn.Module, config: RunConfig) -> tuple[torch.optim.Optimizer, list[dict]]:
    """The optimizer over `param_groups` (trainable parameters only, named groups), and their description.

    Like nanoGPT's `configure_optimizers`: only `requires_grad` parameters go
    in, each group says how many tensors and parameters it holds, and on CUDA
    and the CPU the fused implementation (one kernel for the whole update) is
    used. The new head trains at `lr`, other trainable layers at
    `lr * backbone_lr_mult`.
    """
    groups = param_groups(model, config.arch, config.lr, config.backbone_lr_mult)
    if not groups:
        raise ValueError("Every parameter is frozen: nothing would train. Unfreeze at least the new head.")
    device_type = groups[0]["params"][0].device.type
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay, "fused": device_type in ("cuda", "cpu")}
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=0.9, **kwargs)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, **kwargs)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, **kwargs)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    described = [{"name": g["name"], "num_tensors": g["num_tensors"], "num_params": g["num_params"], "lr": g["lr"]} for g in groups]
    return optimizer, described


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int):
    """None / CosineAnnealingLR over `epochs` / StepLR (step max(1, epochs // 3), gamma 0.1); stepped per epoch."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    return None


# --------------------------------------------------------------------------- the loops


class _Fault:
    """The `FREEZE_LAB_FAULT` hook (see the module docstring)."""

    def __init__(self, spec: str | None) -> None:
        spec = (spec or "").strip()
        m = re.fullmatch(r"(oom|error|segfault)@(\d+)", spec)
        if spec and not m:
            raise ValueError(f"{FAULT_ENV}={spec!r}: expected 'oom@<step>', 'error@<step>' or 'segfault@<step>'")
        self.kind, self.step = (m.group(1), int(m.group(2))) if m else (None, -1)

    def check(self, step: int) -> None:
        if step != self.step:
            return
        if self.kind == "segfault":  # the process dies as a native crash kills it: only the worker may
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.kind == "oom":
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (simulated by {FAULT_ENV} at step {step}). Tried to allocate 2.00 GiB."
            )
        raise RuntimeError(f"simulated failure ({FAULT_ENV} at step {step})")


class DivergedError(ValueError):
    """The training loss became NaN or infinite: the run fails with this message (written for the user)."""


class _StepReporter:
    """Reports each step's loss one step late, so reading it (`.item()`) does not stall the GPU
    queue: by the time step k's loss is read, step k+1 has been queued behind it.

    A loss that is not finite ends the run (`DivergedError`): the weights are then NaN too, and a
    run that went on would "finish" at chance accuracy.
    """

    def __init__(self, monitor: Monitor) -> None:
        self.monitor, self.pending = monitor, None

    def push(self, step: int, epoch: int, loss: Tensor) -> None:
        self.flush()
        self.pending = (step, epoch, loss)

    def flush(self) -> None:
        if self.pending is not None:
            step, epoch, loss = self.pending
            self.pending = None
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(
                    f"The loss became {'NaN' if math.isnan(value) else 'infinite'} at step {step}: lower the learning rate "
                    "(or check the starting weights and the data)."
                )
            self.monitor.on_step(step, epoch, value)


@dataclass
class Loop:
    """What every batch needs, fixed for a run."""

    monitor: Monitor
    feeder: Feeder
    amp_dtype: torch.dtype | None  # bf16 autocast, or None for fp32
    batch_size: int
    fault: _Fault
    pad_batches: bool = False  # passes without autograd pad their last batch to the full size (CUDA: autotuning)

    def autocast(self):
        device_type = self.feeder.device.type
        return torch.autocast(device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def inputs(self, split: Split, idx: Tensor, *, features: bool, train: bool) -> Tensor:
        return self.feeder.features(split.x, idx) if features else self.feeder.images(split.x, idx, train)

    def no_grad_batches(self, n: int):
        """Index batches of `n` samples for a pass without autograd (evaluation, the feature pass), and
        how many of each batch are real.

        Every batch has the training batch size: the forward shapes the training steps already ran.
        With cuDNN autotuning (CUDA) each new input shape tunes every convolution again, so the last
        batch is padded up to the full size by repeating its last sample and the padding's outputs are
        dropped; every module here is in eval mode, so a sample's output does not depend on the rest of
        its batch. On other devices nothing is tuned and the last batch stays short (`pad_batches`).
        """
        for start in range(0, n, self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, n))
            real = len(idx)
            if self.pad_batches and real < self.batch_size:
                idx = torch.cat([idx, idx[-1:].expand(self.batch_size - real)])
            yield idx, real


def train_one_epoch(
    forward: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    data: Split,
    loop: Loop,
    *,
    features: bool,
    epoch: int,
    step: int,
    generator: torch.Generator,
) -> tuple[dict, int]:
    """One pass over the shuffled training split. Returns ({train_loss, train_acc}, global step).

    The caller has put the model in training mode. Raises `RunCancelled` at the
    first batch boundary after `monitor.should_stop()` turns true.
    """
    order = torch.randperm(len(data), generator=generator)
    reporter = _StepReporter(loop.monitor)
    loss_sum = torch.zeros((), device=loop.feeder.device)
    correct = torch.zeros((), device=loop.feeder.device, dtype=torch.long)
    for start, end in batch_slices(len(data), loop.batch_size):
        if loop.monitor.should_stop():
            reporter.flush()
            raise RunCancelled(f"stopped at step {step}")
        step += 1
        loop.fault.check(step)
        idx = order[start:end]
        x = loop.inputs(data, idx, features=features, train=True)
        y = data.y[idx.to(data.y.device)]
        with loop.autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        reporter.push(step, epoch, loss.detach())
    reporter.flush()
    n = max(1, len(data))
    return {"train_loss": loss_sum.item() / n, "train_acc": correct.item() / n}, step


def evaluate(forward: Callable[[Tensor], Tensor], data: Split, loop: Loop, num_classes: int, *, features: bool) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix (rows = true class) on a split.

    The caller has put the model in eval mode.
    """
    device = loop.feeder.device
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    with torch.inference_mode():
        for idx, real in loop.no_grad_batches(len(data)):
            x = loop.inputs(data, idx, features=features, train=False)
            y = data.y[idx[:real].to(data.y.device)]
            with loop.autocast():
                logits = forward(x)[:real]
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes).cpu()
    per_class_total = confusion.sum(1)
    correct = confusion.diag()
    n = max(1, len(data))
    return {
        "val_loss": loss_sum.item() / n,
        "val_acc": correct.sum().item() / n,
        # A class without validation images has no accuracy (None, "no images"), not 0%.
        "per_class_acc": [(c / t if t else None) for c, t in zip(correct.tolist(), per_class_total.tolist())],
        "confusion": confusion.tolist(),
    }


def compute_features(prefix: list[tuple[str, nn.Module]], split: Split, loop: Loop) -> Split:
    """The prefix's output for every image of a split, in the run's precision, kept on the device.

    Runs under `no_grad` rather than `inference_mode`: inference tensors could
    not be saved for the backward pass of the trainable tail that reads them.
    The prefix's modules are in eval mode here (and behave the same in training
    mode, which is what made them a prefix).
    """
    out = None
    with torch.no_grad():
        for idx, real in loop.no_grad_batches(len(split)):
            if loop.monitor.should_stop():
                raise RunCancelled("stopped while computing the feature cache")
            x = loop.inputs(split, idx, features=False, train=False)
            with loop.autocast():
                f = run_chain(prefix, x)[:real]
            if out is None:
                out = torch.empty((len(split), *f.shape[1:]), dtype=f.dtype, device=f.device)
            start = int(idx[0])
            out[start:start + real] = f
    return Split(out.contiguous(), split.y)


def prefix_features(
    prefix: list[tuple[str, nn.Module]], split: Split, loop: Loop, *, cache_dir: Path, key: str,
    shape: tuple[int, ...],
) -> tuple[Split, str]:
    """One split's prefix features (one image's are of `shape`) and where they came from: "disk"
    (an earlier run stored them under `key`) or "computed" (then stored under `key` for later runs)."""
    stored = load_features(cache_dir, key, (len(split), *shape))
    if stored is not None:
        return Split(stored.to(loop.feeder.device), split.y), "disk"
    features = compute_features(prefix, split, loop)
    save_features(cache_dir, key, features.x)
    return features, "computed"


# --------------------------------------------------------------------------- audit


def freeze_snapshot(model: nn.Module, bn_frozen_eval: bool) -> dict[str, Tensor]:
    """CPU copies of every frozen parameter, and of frozen BatchNorm buffers when they must not move."""
    snapshot = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if not p.requires_grad}
    if bn_frozen_eval:
        for path, module in model.named_modules():
            if is_frozen_bn(module):
                for name, buffer in module.named_buffers(prefix=path, recurse=False):
                    snapshot[name] = buffer.detach().to("cpu", copy=True)
    return snapshot


def freeze_audit(model: nn.Module, snapshot: dict[str, Tensor]) -> dict:
    """Compare the model with `freeze_snapshot`: bit-identical or listed as changed."""
    current = dict(model.named_parameters())
    current.update(model.named_buffers())
    changed = [name for name, before in snapshot.items() if not torch.equal(current[name].detach().cpu(), before)]
    return {"ok": not changed, "checked_tensors": len(snapshot), "changed": changed}


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- the run


def train(
    config: RunConfig, monitor: Monitor, *, device: torch.device | None = None, runs_dir: Path | None = None
) -> TrainResult:
    """Train one run as `config` says, reporting to `monitor`; see the module docstring.

    Raises `RunCancelled` when the monitor asks to stop, `DatasetError` /
    `CheckpointError` / `ValueError` for bad input (their message is for the
    user), `torch.OutOfMemoryError` when the device runs out of memory.
    """
    t_start = time.perf_counter()
    config.validate()
    device = torch.device(device or pick_device())
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # so tensors' .device compares equal
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    fault = _Fault(os.environ.get(FAULT_ENV))
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    augment_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    amp_dtype = precision_dtype(config.precision, device)

    # --- data: decoded once, kept on the device
    dataset = load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
    classes = list(dataset.classes)
    if len(classes) != config.num_classes:
        raise ValueError(
            f"The dataset {config.dataset!r} has {len(classes)} classes but the run's head has "
            f"{config.num_classes}; set num_classes to {len(classes)}."
        )
    if not dataset.train or not dataset.val:
        raise ValueError(f"The dataset {config.dataset!r} needs images in both the training and the validation split.")
    pre = preprocess_for(config.arch, config.weights, config.image_size)
    images, images_keys = {}, {}
    for split_name, samples in (("train", dataset.train), ("val", dataset.val)):
        paths = [s.path for s in samples]
        images_keys[split_name] = decode_key(paths, pre)
        x = decode_images(paths, pre, key=images_keys[split_name])
        y = torch.tensor([s.label for s in samples], dtype=torch.long, device=device)
        images[split_name] = Split(place(x, device), y)
    loop = Loop(monitor, Feeder(device, pre, tuple(config.augment), augment_gen), amp_dtype, config.batch_size, fault,
                pad_batches=device.type == "cuda")
    timings = {"data_s": time.perf_counter() - t_start}

    # --- model
    t_model = time.perf_counter()
    torch.manual_seed(config.seed)  # the new head's (or a random model's) init, then dropout
    model, load_report = prepare_model(config.arch, config.num_classes, config.weights, runs_dir=runs_dir)
    set_frozen(model, config.frozen)
    snapshot = freeze_snapshot(model, config.bn_frozen_eval)  # CPU copies, for the audit at the end
    trainable, frozen = param_counts(model)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    steps = forward_chain(model, config.arch)
    timings["model_s"] = time.perf_counter() - t_model

    # Gradual unfreezing (fastai's fine_tune): the first `unfreeze_after` epochs train only the head.
    head_only = preset_frozen(model, config.arch, "head")
    phases = [(1, config.epochs, config.frozen)]
    if config.unfreeze_after > 0:
        phases = [(1, config.unfreeze_after, head_only), (config.unfreeze_after + 1, config.epochs, config.frozen)]

    def start_phase(frozen_paths, phase_epochs):
        """Freeze, build the optimizer and scheduler, and plan the feature cache for one phase."""
        set_frozen(model, frozen_paths)
        optimizer, groups = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config.scheduler, phase_epochs)
        set_train_mode(model, config.bn_frozen_eval)
        plan = plan_features(steps, config, images=len(images["train"]) + len(images["val"]),
                             elem_bytes=amp_dtype.itemsize if amp_dtype else 4, budget=feature_budget(device))
        return optimizer, groups, scheduler, plan

    first, last, frozen_paths = phases[0]
    optimizer, groups, scheduler, plan = start_phase(frozen_paths, last - first + 1)
    steps_per_epoch = len(batch_slices(len(images["train"]), config.batch_size))
    monitor.on_start({
        "total_steps": steps_per_epoch * config.epochs,
        "steps_per_epoch": steps_per_epoch,
        "epochs": config.epochs,
        "classes": classes,
        "device": str(device),
        "precision": "bf16" if amp_dtype else "fp32",
        "param_groups": groups,
        "feature_cache": plan.to_dict(),
        "train_size": len(images["train"]),
        "val_size": len(images["val"]),
        "skipped": len(dataset.skipped),
        "trainable_params": trainable,
        "frozen_params": frozen,
        "load_report": load_report.to_dict() if load_report else None,
    })

    history: list[dict] = []
    unfreezing = None
    cache: dict[tuple[str, str], Split] = {}  # (split, prefix) -> features, for this run
    cache_dir = default_data_dir() / ".cache"
    features_s = 0.0
    step = 0
    for phase_index, (first, last, frozen_paths) in enumerate(phases):
        if phase_index > 0:  # unfreeze: the configured frozen set, discriminative rates, a fresh optimizer
            head_groups = groups
            optimizer, groups, scheduler, plan = start_phase(frozen_paths, last - first + 1)
            cache = {key: f for key, f in cache.items() if key[-1] == plan.prefix and plan.used}  # free the old ones
            unfreezing = {"after_epoch": first - 1, "head_only_groups": head_groups, "groups": groups}
        for epoch in range(first, last + 1):
            t_epoch = time.perf_counter()
            # Feature cache: built in the phase's first epoch, whose time includes it.
            if plan.used:
                t_build = time.perf_counter()
                model.eval()
                prefix = steps[: plan.length]
                if any((split_name, plan.prefix) not in cache for split_name in images):
                    fingerprint = prefix_fingerprint(prefix)
                    sources = []
                    for split_name in images:
                        key = feature_key(images_keys[split_name], pre, fingerprint, amp_dtype, device)
                        cache[(split_name, plan.prefix)], source = prefix_features(
                            prefix, images[split_name], loop, cache_dir=cache_dir, key=key, shape=plan.shape)
                        sources.append(source)
                    plan.source = "disk" if set(sources) == {"disk"} else "computed"
                inputs = {split_name: cache[(split_name, plan.prefix)] for split_name in images}
                plan.build_s += time.perf_counter() - t_build
                features_s += time.perf_counter() - t_build
                tail = steps[plan.length:]
                forward = lambda x: run_chain(tail, x)  # noqa: E731
            else:
                inputs, forward = images, model
            set_train_mode(model, config.bn_frozen_eval)
            lr = {g["name"]: g["lr"] for g in optimizer.param_groups}
            stats, step = train_one_epoch(
                forward, optimizer, inputs["train"], loop, features=plan.used, epoch=epoch, step=step, generator=shuffle_gen
            )
            train_time = time.perf_counter() - t_epoch
            model.eval()
            stats |= evaluate(forward, inputs["val"], loop, config.num_classes, features=plan.used)
            if scheduler is not None:
                scheduler.step()
            record = {
                "epoch": epoch,
                **stats,
                "epoch_time_s": time.perf_counter() - t_epoch,
                "train_time_s": train_time,  # the training pass (and, in a phase's first epoch, the feature pass)
                "images_per_s": len(inputs["train"]) / train_time,
                "peak_mem_bytes": _peak_memory(device),
                "lr": lr.get("head", max(lr.values())),
                "lrs": lr,
                "feature_cache": plan.used,
            }
            history.append(record)
            monitor.on_epoch(record)
        if phase_index == 0:
            first_plan = plan.to_dict()

    # --- the end: audit, weights, summary
    t_finish = time.perf_counter()
    model.eval()
    audit = freeze_audit(model, snapshot)
    state_dict = {name: p.detach().cpu().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}
    state_dict |= {name: b.detach().cpu().contiguous().clone() for name, b in model.named_buffers()}
    final = history[-1]
    best = max(history, key=lambda r: r["val_acc"])
    feature_cache = plan.to_dict()
    if unfreezing is not None:
        unfreezing["head_only_feature_cache"] = first_plan
    timings |= {
        "features_s": features_s,
        "epochs_s": sum(r["epoch_time_s"] for r in history) - features_s,
        "finish_s": time.perf_counter() - t_finish,
    }
    summary = {
        "val_acc": final["val_acc"],
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "train_acc": final["train_acc"],
        "train_loss": final["train_loss"],
        "val_loss": final["val_loss"],
        "per_class_acc": final["per_class_acc"],
        "trainable_params": trainable,
        "frozen_params": frozen,
        # Training images over the training passes' time (validation excluded; a phase's first epoch
        # includes computing its cached features): not a mean of per-epoch rates, which short epochs dominate.
        "images_per_s": len(images["train"]) * len(history) / sum(r["train_time_s"] for r in history),
        "total_time_s": time.perf_counter() - t_start,
        "peak_mem_bytes": max(r["peak_mem_bytes"] for r in history),
        "classes": classes,
        "device": str(device),
        "precision": "bf16" if amp_dtype else "fp32",
        "epochs": config.epochs,
        "train_size": len(images["train"]),
        "val_size": len(images["val"]),
        "param_groups": groups,
        "gradual_unfreezing": unfreezing,
        "feature_cache": feature_cache,
        "freeze_audit": audit,
        "load_report": load_report.to_dict() if load_report else None,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    return TrainResult(summary=summary, state_dict=state_dict)
