"""The compute device: CUDA when present, else Apple MPS, else the CPU."""

from __future__ import annotations

import os
import resource
import sys

import torch

THREADS_ENV = "FREEZE_LAB_TRAIN_THREADS"


def pick_device() -> torch.device:
    """The device runs train on: the first CUDA GPU, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_device(text: str) -> torch.device:
    """The device named by `text` ("cpu", "cuda", "cuda:1", "mps") when this machine has it, else
    `ValueError` saying what it has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"Unknown device {text!r}; use cpu, cuda, cuda:<index> or mps.") from None
    there = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not there:
        raise ValueError(f"This machine has no {text} device; the best one here is {pick_device()}.")
    return device


def training_threads(cores: int | None = None) -> int:
    """CPU threads the app's training uses: every core but one, which stays with the web server and
    its viewers (on a 2-core machine, 1). `$FREEZE_LAB_TRAIN_THREADS` overrides it.

    With every core training, the server's script runs and the browsers compete with the OpenMP
    threads, which then wait on each other at every parallel region: `bench/threads.py` measures it.
    """
    if (value := os.environ.get(THREADS_ENV, "").strip()).isdigit() and int(value) > 0:
        return int(value)
    cores = cores or os.cpu_count() or 1
    return max(1, cores - 1)


def describe_device(device: torch.device | None = None) -> str:
    """A short human description, e.g. "CUDA: NVIDIA H100 80GB HBM3" or "CPU (2 threads)"."""
    device = device or pick_device()
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple MPS"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''})"


def supports_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is worth using on `device` (CUDA with native bf16)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run of `precision` ("auto", "bf16", "fp32") uses on `device`; None for fp32.

    "auto" is bf16 where the device supports it natively (`supports_bf16`), else fp32.
    """
    if precision == "bf16" or (precision == "auto" and supports_bf16(device)):
        return torch.bfloat16
    return None


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.3) -> bool:
    """Whether a tensor of `nbytes` that a run keeps for its whole length (the decoded images) should
    live in device memory: on CUDA when it takes at most `share` of the free memory (the rest is for
    training), elsewhere always (the device memory is the host's)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def peak_memory(device: torch.device) -> int:
    """Peak bytes so far: `torch.cuda.max_memory_allocated` on CUDA (reset when a run starts); elsewhere
    the peak resident set size of the whole process, which includes everything else it holds and
    never goes down."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux
