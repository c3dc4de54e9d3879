"""Which process owns a run: recorded in run.json, so a run whose process is gone is known to be dead.

A record names the host, the pid and the pid's start time (a reused pid is not mistaken for the
original process). The store marks a run "interrupted" only when its process is known to be gone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def this_process() -> dict:
    """This process, as recorded in run.json: host name, pid and the pid's start time (so a reused
    pid is not mistaken for the original process)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def process_alive(process: dict | None) -> bool:
    """Whether the recorded process still runs. A process on another host, or one recorded
    without a pid (a run written before this field existed), counts as alive: nothing here can say."""
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return True
    pid = process.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    stat_ = _proc_stat(pid)
    if stat_ is None:
        return True
    state, start = stat_
    return state not in ("Z", "X") and process.get("start") in (None, start)


def describe_process(process: dict | None) -> str:
    if not isinstance(process, dict):
        return "unknown"
    return f"pid {process.get('pid')} on {process.get('host')}"


def _process_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot; None where /proc is not there."""
    stat_ = _proc_stat(pid)
    return stat_[1] if stat_ else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of `pid` from Linux's /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None
