"""Sweeps from the command line: a set of runs that differ in what trains, and the answer.

    python -m core.sweep --kind surgical --arch resnet18 --dataset demo-target \\
        --weights run:<id of a backbone> --image-size 64 --epochs 10 --seeds 3 --json

The base run is given by `RunConfig`'s fields as in ``python -m core.train`` (its frozen set comes
from each member), the sweep by `SweepConfig`'s (``--kind``, ``--seeds``, ``--lrs 0.01,0.001``,
``--stages``, ``--presets head,last2,full``); both generated (`core.cli`). Every member is checked
before any run is created (`core.sweeps.submit_sweep`, the app's path too); members then train one
after another in this process (`core.jobs.executor.InlineExecutor`, through the same
`core.jobs.execute` as the app's queue) into the run store (``--runs-dir``); with ``--ray-address``
(or ``$FREEZE_LAB_RAY_ADDRESS``) they train side by side on a Ray cluster instead
(`core.jobs.ray_cluster.RayExecutor`), ``--gpus-per-member`` GPUs each, and the JSON is the same. Progress goes to
stderr; with ``--json`` stdout carries only the sweep's JSON: ``{"sweep_id", "kind", "members",
"summary", "recommendation", "pareto_front"}``. Ctrl-C cancels the member in training and those
not started, and still prints the JSON. Exit status: 0 when every member finished, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from core.cli import add_config_arguments, add_run_options, config_fields
from core.config import RunConfig, SweepConfig
from core.devices import describe_device, parse_device, pick_device

RUN_DERIVED = ("num_classes", "frozen", "preset", "auto_rgn")  # from the dataset, and from each member
SWEEP_DERIVED = ("base",)  # the RunConfig options above


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.sweep", description=__doc__.split("\n\n")[0])
    add_config_arguments(p, SweepConfig, derived=SWEEP_DERIVED)
    add_config_arguments(p, RunConfig, derived=RUN_DERIVED)
    add_run_options(p, what="sweep")
    ray = p.add_argument_group("on a Ray cluster (README, \"Sweeps on a Ray cluster\")")
    ray.add_argument("--ray-address", default=os.environ.get("FREEZE_LAB_RAY_ADDRESS"),
                     help="auto, host:port, ray://host:port, or local (a Ray instance in this process); "
                          "default: $FREEZE_LAB_RAY_ADDRESS, else this machine's queue")
    ray.add_argument("--gpus-per-member", type=float, default=1.0,
                     help="GPUs each member asks of the cluster (0.5: two small runs share one; default 1)")
    return p


def make_sweep(args: argparse.Namespace) -> SweepConfig:
    """The `SweepConfig` the arguments stand for; the class count is read from the dataset."""
    from core.data import load_dataset

    dataset = load_dataset(args.dataset, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                           seed=args.seed)
    base = RunConfig(**config_fields(args, RunConfig, derived=RUN_DERIVED), num_classes=len(dataset.classes))
    sweep = SweepConfig(base=base, **config_fields(args, SweepConfig, derived=SWEEP_DERIVED))
    sweep.validate()
    return sweep


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from core.store import FINISHED, RunStore, SweepStore
    from core.sweeps import submit_sweep, sweep_report

    store = RunStore(args.runs_dir)
    try:
        sweep = make_sweep(args)
        executor = make_executor(args, store)
    except (ValueError, RuntimeError) as exc:  # a bad sweep, dataset, device, runs folder or cluster
        return fail(args, exc)
    try:
        sweep_id = submit_sweep(executor, sweep, owner="cli", name=args.name)
        record = SweepStore(store).load(sweep_id)
        print(f"sweep {sweep_id}: {len(record.run_ids)} runs in {store.root}, {where(args)}", file=sys.stderr, flush=True)
        train_members(executor, record)
    except (ValueError, RuntimeError) as exc:  # a member that cannot run: nothing was queued
        return fail(args, exc)
    finally:
        executor.shutdown()  # members it did not train (Ctrl-C) end as cancelled
    record = SweepStore(store).load(sweep_id)
    report = sweep_report(record, {run_id: store.load(run_id) for run_id in record.run_ids})
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else describe(report))
    return 0 if all(m.status == FINISHED for m in report.members) else 1


def make_executor(args: argparse.Namespace, store):
    """Where the members train: a Ray cluster at `--ray-address`, side by side; else this process,
    one after another (`InlineExecutor`)."""
    if args.ray_address:
        from core.jobs.ray_cluster import RayExecutor

        return RayExecutor(store, args.ray_address, gpus_per_member=args.gpus_per_member)
    from core.jobs.executor import InlineExecutor

    return InlineExecutor(store, parse_device(args.device) if args.device else pick_device())


def where(args: argparse.Namespace) -> str:
    if args.ray_address:
        return f"on Ray at {args.ray_address}"
    return f"on {describe_device(parse_device(args.device) if args.device else pick_device())}"


def train_members(executor, record) -> None:
    """Wait for every member in the plan's order (an inline executor trains each in its wait); Ctrl-C
    cancels the member in training and those not started."""
    try:
        for i, (entry, run_id) in enumerate(zip(record.members, record.run_ids), 1):
            print(f"[{i}/{len(record.run_ids)}] {entry['label']} · seed {entry['seed']} (run {run_id})",
                  file=sys.stderr, flush=True)
            print(f"[{i}/{len(record.run_ids)}] {executor.wait(run_id)}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        for run_id in record.run_ids:
            executor.cancel(run_id)


def fail(args: argparse.Namespace, exc: Exception) -> int:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"error: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"sweep_id": None, "status": "failed", "reason": reason}, indent=2))
    return 1


def describe(report) -> str:
    """The summary table and the recommendation, for a terminal."""
    lines = [f"sweep {report.sweep.id} ({report.sweep.config.kind}):"]
    for row in report.rows:
        error = f" ± {row.sem_acc:.3f}" if row.sem_acc is not None else ""
        test = "none" if row.test_mean_acc is None else f"{row.test_mean_acc:.3f}" + (
            f" ± {row.test_sem_acc:.3f}" if row.test_sem_acc is not None else "")
        lines.append(f"  {row.label:<14} @ {row.lr:<7g} val {row.mean_acc:.3f}{error}  test {test} (n={row.n})  "
                     f"{row.trainable_params:>12,} trainable  {row.mean_train_s:7.1f} s")
    rec = report.recommendation
    lines.append(f"best on validation: {rec['best']}; cheapest within one standard error: {rec['cheapest_within_error']}")
    if rec.get("answer"):
        lines.append(rec["answer"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
