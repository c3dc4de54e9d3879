"""The reference loop `bench/speed.py` compares the engine with: fine-tuning as the tutorials teach it.

This is the loop of PyTorch's transfer-learning tutorial
(https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html),
kept as written there, with only timing added:

- `torchvision.datasets.ImageFolder` over ``root/train`` and ``root/val``,
  images opened from disk with PIL every epoch;
- PIL transforms per image; the tutorial's augmentation
  (RandomResizedCrop + RandomHorizontalFlip) is replaced by Resize +
  CenterCrop here because the compared engine runs have no augmentation;
- `DataLoader(batch_size, shuffle=True, num_workers, pin_memory)`, workers
  started anew every epoch (no persistent workers, as in the tutorial);
- fp32 (PyTorch's defaults otherwise: no autocast, no channels_last, no
  `cudnn.benchmark`);
- per epoch a train phase (`model.train()`, `zero_grad`, forward, loss,
  `backward`, `step`, `loss.item()` per batch) and a val phase
  (`model.eval()`, `torch.set_grad_enabled(False)`), then `scheduler.step()`.

Frozen layers are frozen the tutorial's way: ``requires_grad = False`` and an
optimizer over the parameters that still require grad; BatchNorm layers stay
in training mode under `model.train()` (the tutorial does not treat them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tutorial_loaders(
    root: Path, size: int, batch_size: int, num_workers: int, pin_memory: bool
) -> tuple[dict[str, datasets.ImageFolder], dict[str, DataLoader]]:
    """ImageFolder datasets and DataLoaders for root/train and root/val, as in the tutorial."""
    data_transforms = {
        phase: transforms.Compose([
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        for phase in ("train", "val")
    }
    image_datasets = {x: datasets.ImageFolder(Path(root) / x, data_transforms[x]) for x in ("train", "val")}
    dataloaders = {
        x: DataLoader(image_datasets[x], batch_size=batch_size, shuffle=True, num_workers=num_workers, pin_memory=pin_memory)
        for x in ("train", "val")
    }
    return image_datasets, dataloaders


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_model(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    dataloaders: dict[str, DataLoader],
    dataset_sizes: dict[str, int],
    device: torch.device,
    num_epochs: int,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The tutorial's `train_model` (without keeping the best weights); one timing record per epoch."""
    history = []
    for epoch in range(num_epochs):
        t_epoch = time.perf_counter()
        record = {"epoch": epoch + 1}
        for phase in ["train", "val"]:
            if phase == "train":
                model.train()
            else:
                model.eval()
            t_phase = time.perf_counter()
            running_loss = 0.0
            running_corrects = 0
            for inputs, labels in dataloaders[phase]:
                inputs = inputs.to(device)
                labels = labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data)
            if phase == "train" and scheduler is not None:
                scheduler.step()
            _sync(device)
            elapsed = time.perf_counter() - t_phase
            record[f"{phase}_loss"] = running_loss / dataset_sizes[phase]
            record[f"{phase}_acc"] = float(running_corrects) / dataset_sizes[phase]
            if phase == "train":
                record["train_time_s"] = elapsed
                record["images_per_s"] = dataset_sizes["train"] / elapsed
        record["epoch_time_s"] = time.perf_counter() - t_epoch
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return history
