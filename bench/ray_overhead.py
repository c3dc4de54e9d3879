"""What a member costs on Ray beyond its training, against the app's local queue (a worker process).

A tiny sweep (ResNet-18, 32 px, a generated 3-class folder, head / layer4 / full, `--epochs` each)
runs twice per executor on this machine: members one at a time (submit, wait, next), which gives
each member's overhead, its wall time from submit to end minus the engine's own time
(`summary.total_time_s`: data, model, epochs); then the whole sweep at once, which gives the sweep's
wall time (on Ray members run side by side, one CPU each, on a local instance of `--cpus` CPUs).

    python bench/ray_overhead.py --epochs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import RunConfig, SweepConfig  # noqa: E402
from core.jobs import JobManager  # noqa: E402
from core.jobs.ray_cluster import RUNTIME_ENV, RayExecutor  # noqa: E402
from core.store import RunStore, SweepStore  # noqa: E402
from core.sweeps import checked_members, submit_sweep  # noqa: E402
from tests.test_training import draw_folder  # noqa: E402


def one_at_a_time(runner, sweep: SweepConfig) -> list[tuple[str, float, float]]:
    """(label, wall s, engine s) per member, each submitted after the one before has ended."""
    out = []
    for member, config in checked_members(sweep, runner.store):
        t0 = time.perf_counter()
        run_id = runner.submit(config, name=member.label)
        assert runner.wait(run_id, 600) == "finished", runner.store.load(run_id).reason
        out.append((member.label, time.perf_counter() - t0, runner.store.load(run_id).summary.total_time_s))
    return out


def all_at_once(runner, sweep: SweepConfig) -> float:
    t0 = time.perf_counter()
    record_id = submit_sweep(runner, sweep)
    for run_id in SweepStore(runner.store).load(record_id).run_ids:
        assert runner.wait(run_id, 600) == "finished"
    return time.perf_counter() - t0


def report(name: str, members: list[tuple[str, float, float]], sweep_s: float) -> None:
    print(f"\n{name}")
    for label, wall, engine in members:
        print(f"  {label:7s} wall {wall:6.2f} s  engine {engine:6.2f} s  overhead {wall - engine:5.2f} s")
    print(f"  overhead per member: median {statistics.median(w - e for _, w, e in members):.2f} s; "
          f"the whole sweep at once: {sweep_s:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="freeze-lab-ray-bench-"))
    os.environ["FREEZE_LAB_DATA_DIR"] = str(root / "data")
    folder = draw_folder(root / "shapes", per_class=20)
    base = RunConfig(dataset=str(folder), num_classes=3, image_size=(32, 32), batch_size=8, epochs=args.epochs)
    sweep = SweepConfig(base=base, kind="grid", presets=("head", "layer4", "full"))

    local = JobManager(RunStore(root / "local"), device=torch.device("cpu"), threads=1)
    try:
        one_at_a_time(local, sweep)  # warm: the worker process, its torch import, the decoded images
        report("local queue (a worker process, 1 thread)", one_at_a_time(local, sweep), all_at_once(local, sweep))
    finally:
        local.shutdown(wait=True, timeout=60)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, runtime_env=RUNTIME_ENV)
    print(f"\nray.init (a local instance, {args.cpus} CPUs): {time.perf_counter() - t0:.1f} s")
    executor = RayExecutor(RunStore(root / "ray"), "local")
    try:
        first = one_at_a_time(executor, sweep)
        print("  first members on fresh Ray workers (torch imported in each): "
              + ", ".join(f"{label} {wall - engine:.2f} s" for label, wall, engine in first))
        report(f"Ray (members one CPU each, {args.cpus} CPUs)", one_at_a_time(executor, sweep), all_at_once(executor, sweep))
    finally:
        executor.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
