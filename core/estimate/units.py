"""Bytes, FLOPs and shares as people read them.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- formatting


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB" (binary units, like GPU memory tools)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_flops(n: float) -> str:
    """3.9e9 -> "3.90 GFLOP" (decimal units)."""
    n = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f} FLOP" if unit == "" else f"{n:.2f} {unit}FLOP"
        n /= 1000
    raise AssertionError("unreachable")


def human_share(part: float, whole: float) -> str:
    """part / whole as a percentage that never rounds a non-zero share to 0: 2,052 of 11,178,564 -> "0.018%"."""
    if not whole:
        return "0%"
    pct = 100.0 * part / whole
    if pct in (0, 100):
        return f"{pct:.0f}%"
    if pct > 99.95:  # nearly everything, but not all: say so
        return f"{min(pct, 99.99):.2f}%"
    if pct >= 1:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%" if pct >= 0.01 else "<0.01%"
