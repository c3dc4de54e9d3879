"""Sweeps from the command line: a set of runs that differ in what trains, and the answer.

    python -m core.sweep --kind surgical --arch resnet18 --dataset demo-target \\
        --weights run:<id of a backbone> --image-size 64 --epochs 10 --seeds 3 --json

The base run is given by `RunConfig`'s fields as in ``python -m core.train`` (its frozen set comes
from each member), the sweep by `SweepConfig`'s (``--kind``, ``--seeds``, ``--lrs 0.01,0.001``,
``--stages``, ``--presets head,last2,full``); both generated (`core.cli`). Every member is checked
before any run is created; members then train one after another in this process, through the same
`core.jobs.execute` as the app's queue, into the run store (``--runs-dir``); with ``--ray-address``
(or ``$FREEZE_LAB_RAY_ADDRESS``) they train side by side on a Ray cluster instead
(`core.jobs.ray_cluster`), ``--gpus-per-member`` GPUs each, and the JSON is the same. Progress goes to
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
    from core.sweeps import checked_members, default_sweep_name, sweep_report

    store = RunStore(args.runs_dir)
    try:
        sweep = make_sweep(args)
        members = checked_members(sweep, store)
        name = " ".join((args.name or "").split()) or default_sweep_name(sweep)
        if args.ray_address:
            sweep_id = on_ray(args, store, sweep, members, name)
        else:
            sweep_id = here(args, store, sweep, members, name)
    except (ValueError, RuntimeError) as exc:  # a bad sweep, dataset, checkpoint, device, runs folder or cluster
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {reason}", file=sys.stderr)
        if args.json:
            print(json.dumps({"sweep_id": None, "status": "failed", "reason": reason}, indent=2))
        return 1
    record = SweepStore(store).load(sweep_id)
    report = sweep_report(record, {run_id: store.load(run_id) for run_id in record.run_ids})
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else describe(report))
    return 0 if all(m.status == FINISHED for m in report.members) else 1


def here(args, store, sweep, members, name) -> str:
    """Every member in this process, one after another; the sweep's id."""
    from core.jobs import execute
    from core.store import CANCELLED, QUEUED
    from core.sweeps import member_name, record_sweep

    device = parse_device(args.device) if args.device else pick_device()
    created = [(m, c, store.create(c, name=member_name(name, m), owner="cli")) for m, c in members]
    sweep_id = record_sweep(store, sweep, created, name=name, owner="cli")
    print(f"sweep {sweep_id}: {len(created)} runs in {store.root} on {describe_device(device)}", file=sys.stderr)
    try:
        for i, (member, _, run_id) in enumerate(created, 1):
            print(f"[{i}/{len(created)}] {member.label} · seed {member.seed} (run {run_id})", file=sys.stderr, flush=True)
            outcome = execute(store, run_id, device=device)
            print(f"[{i}/{len(created)}] {outcome.status}" + (f": {outcome.reason}" if outcome.reason else ""),
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # the member in training is recorded as cancelled by execute; the rest never start
        for _, _, run_id in created:
            if store.load(run_id).status == QUEUED:
                store.set_status(run_id, CANCELLED, "the sweep was stopped from the keyboard")
    return sweep_id


def on_ray(args, store, sweep, members, name) -> str:
    """Every member as a Ray task on the cluster at `--ray-address`, side by side; the sweep's id."""
    from core.jobs.ray_cluster import RayExecutor, cluster_info
    from core.sweeps import member_name, record_sweep

    executor = RayExecutor(store, args.ray_address, gpus_per_member=args.gpus_per_member)
    info = cluster_info(args.ray_address)
    created = []
    try:
        created += [(m, c, executor.submit(c, owner="cli", name=member_name(name, m))) for m, c in members]
        sweep_id = record_sweep(store, sweep, created, name=name, owner="cli")
        print(f"sweep {sweep_id}: {len(created)} runs on Ray at {args.ray_address} ({info.nodes} nodes, "
              f"{info.cpus:g} CPUs, {info.gpus:g} GPUs)", file=sys.stderr, flush=True)
        for member, _, run_id in created:
            status = executor.wait(run_id)
            print(f"{member.label} · seed {member.seed}: {status}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        for _, _, run_id in created:
            executor.cancel(run_id)
    finally:
        executor.shutdown()
    return sweep_id


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
