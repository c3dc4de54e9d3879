"""The compute device: CUDA when present, else Apple MPS, else the CPU."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    """The device runs train on: the first CUDA GPU, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
