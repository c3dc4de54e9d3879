"""The loops of one run: batches fed from tensors on the device, one training epoch, evaluation.

It reads like the torchvision classification reference (`train_one_epoch`, `evaluate`). Every
image is decoded once into a uint8 tensor per split, kept on the device when it fits (else in pinned
host memory); a batch is an index slice of it, converted, augmented and normalised on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.data import Preprocess, normalize
from core.devices import fits_on_device
from core.engine.augment import augment_batch
from core.engine.events import Monitor, RunCancelled

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
    after_backward: Sequence[Callable[[bool], None]] = (),
) -> tuple[dict, int]:
    """One pass over the shuffled training split. Returns ({train_loss, train_acc}, global step).

    The caller has put the model in training mode. Each of `after_backward` is called after every
    backward pass, before the update, with whether it is the epoch's first step (the layer signals,
    `core.engine.signals`). Raises `RunCancelled` at the first batch boundary after
    `monitor.should_stop()` turns true.
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
        idx = order[start:end]
        x = loop.inputs(data, idx, features=features, train=True)
        y = data.y[idx.to(data.y.device)]
        with loop.autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for hook in after_backward:
            hook(start == 0)
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
