"""Headless runs from the command line, through the same engine and run store as the app.

    python -m core.train --arch resnet18 --preset full --dataset demo-source \\
        --weights none --image-size 64 --epochs 3 --json
    python -m core.train --arch resnet18 --preset head --dataset demo-target \\
        --weights run:<id of the run above> --epochs 10 --json

The preset is resolved to frozen module paths (`core.freezing.preset_frozen`
on a meta-device skeleton; the class count comes from the dataset), the run is
created in the `RunStore` (``--runs-dir``, default ``$FREEZE_LAB_RUNS_DIR`` or
``./runs``) and trained synchronously by `core.jobs.execute`, exactly as the
job manager's worker does. The options are `RunConfig`'s fields, generated
(`core.cli`): ``python -m core.train --help`` lists them with the config's
defaults and comments. Progress goes to stderr; with ``--json`` stdout
carries only the JSON summary. Exit status: 0 finished, 1 failed (or bad
arguments: the reason is printed), 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from core.cli import add_config_arguments, add_run_options, config_fields
from core.config import AUTO_RGN, RunConfig
from core.devices import describe_device, parse_device, pick_device

if TYPE_CHECKING:
    from core.data import Dataset

SUMMARY_KEYS = (
    "val_acc", "best_val_acc", "best_epoch", "weights_epoch", "epochs_done", "last_val_acc", "test_acc",
    "test_per_class_acc", "test_confusion", "splits", "train_acc", "classes", "per_class_acc", "trainable_params",
    "frozen_params", "images_per_s", "peak_mem_bytes", "total_time_s", "device", "precision", "freeze_audit",
    "feature_cache", "param_groups", "gradual_unfreezing",
)  # fmt: skip


DERIVED = ("num_classes", "frozen", "auto_rgn")  # from the dataset's classes, and from --preset


def parser() -> argparse.ArgumentParser:
    """`RunConfig`'s fields as options (`core.cli`), and what a command-line run adds."""
    p = argparse.ArgumentParser(prog="python -m core.train", description=__doc__.split("\n\n")[0])
    add_config_arguments(p, RunConfig, derived=DERIVED)
    add_run_options(p, what="run")
    return p


def make_config(args: argparse.Namespace) -> tuple[RunConfig, Dataset]:
    """The `RunConfig` the arguments stand for, and the dataset, read to learn its classes; the preset
    is resolved to frozen module paths on a meta-device skeleton."""
    from core.data import load_dataset
    from core.freezing import preset_frozen
    from core.models import build_skeleton

    dataset = load_dataset(args.dataset, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                           seed=args.seed)
    num_classes = len(dataset.classes)
    frozen = preset_frozen(build_skeleton(args.arch, num_classes), args.arch, args.preset)
    fields = config_fields(args, RunConfig, derived=DERIVED)
    if args.preset == AUTO_RGN:  # Lee et al.'s Auto-RGN: its norm layers stay in training mode, as in their code
        fields |= {"auto_rgn": True, "bn_frozen_eval": False}
    config = RunConfig(**fields, num_classes=num_classes, frozen=frozen)
    config.validate()
    return config, dataset


def dataset_facts(dataset) -> dict:
    """What the JSON says about the data: split sizes, files skipped (with why), classes missing from a split."""
    return {
        "train_size": len(dataset.train),
        "val_size": len(dataset.val),
        "test_size": len(dataset.test),
        "skipped": [{"file": f, "reason": why} for f, why in dataset.skipped],
        "split_gaps": dataset.split_gaps(),
    }


def _progress(event: str, data: dict) -> None:
    """Human-readable progress on stderr (the RunMonitor's listener)."""
    if event == "start":
        cache = data.get("feature_cache") or {}
        cache_text = f"feature cache up to {cache.get('prefix')}" if cache.get("used") else f"no feature cache ({cache.get('reason')})"
        print(
            f"training on {data.get('device')} ({data.get('precision')}): {data.get('train_size')} train / "
            f"{data.get('val_size')} val / {data.get('test_size')} test images, {len(data.get('classes') or [])} classes, "
            f"{data.get('trainable_params', 0):,} trainable params, {data.get('total_steps')} steps; {cache_text}",
            file=sys.stderr, flush=True,
        )
    elif event == "epoch":
        print(
            f"epoch {data['epoch']}: train loss {data['train_loss']:.4f} acc {data['train_acc']:.3f} | "
            f"val loss {data['val_loss']:.4f} acc {data['val_acc']:.3f} | {data['epoch_time_s']:.1f}s, "
            f"{data['images_per_s']:.0f} img/s",
            file=sys.stderr, flush=True,
        )


def describe(result: dict) -> str:
    """A few human lines for the end of a run without --json."""
    lines = [f"run {result['run_id']}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else "")]
    if result.get("val_acc") is not None:
        audit = result.get("freeze_audit") or {}
        cache = result.get("feature_cache") or {}
        test = "no test images" if result["test_acc"] is None else f"{result['test_acc']:.3f}"
        lines += [
            f"  test acc {test}, val acc {result['val_acc']:.3f} (weights of epoch {result['weights_epoch']} of "
            f"{result['epochs_done']}; best val {result['best_val_acc']:.3f}), train acc {result['train_acc']:.3f}",
            "  per class: " + ", ".join(f"{c} {'no images' if a is None else f'{a:.3f}'}"
                                        for c, a in zip(result["classes"] or [], result["per_class_acc"] or [])),
            f"  {result['trainable_params']:,} trainable / {result['frozen_params']:,} frozen parameters",
            f"  {result['images_per_s']:.0f} images/s, {result['total_time_s']:.1f} s, "
            f"peak memory {result['peak_mem_bytes'] / 2**20:.0f} MiB on {result['device']} ({result['precision']})",
            f"  freeze audit: {'ok' if audit.get('ok') else 'CHANGED ' + ', '.join(audit.get('changed', []))} "
            f"({audit.get('checked_tensors', 0)} tensors checked)",
            "  feature cache: " + (f"up to {cache.get('prefix')}" if cache.get("used") else f"off ({cache.get('reason')})"),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from core.jobs import RunMonitor, check_runnable, execute
    from core.store import FINISHED, RunStore

    def fail(reason: str, run_id: str | None = None, status: str = "failed") -> int:
        print(f"error: {reason}", file=sys.stderr)
        if args.json:
            print(json.dumps({"run_id": run_id, "status": status, "reason": reason}, indent=2))
        return 1

    store = RunStore(args.runs_dir)
    try:
        device = parse_device(args.device) if args.device else pick_device()
        config, dataset = make_config(args)
        check_runnable(config, store)
        run_id = store.create(config, name=args.name, owner="cli")  # StoreError, or an empty --name
    except (ValueError, RuntimeError) as exc:  # DatasetError, CheckpointError, unknown preset/arch/device
        return fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    print(f"run {run_id} in {store.root} on {describe_device(device)}", file=sys.stderr, flush=True)
    facts = dataset_facts(dataset)
    for name, why in facts["split_gaps"].items():
        print(f"warning: class {name!r} has {why}", file=sys.stderr)
    if facts["skipped"]:
        print(f"warning: {len(facts['skipped'])} files skipped (see \"skipped\" in --json)", file=sys.stderr)
    monitor = RunMonitor(store, run_id, listener=_progress)
    try:
        outcome = execute(store, run_id, device=device, monitor=monitor)
    except KeyboardInterrupt:  # execute has recorded the run as cancelled: say so, in JSON too
        outcome = None
    record = store.load(run_id)
    result = {"run_id": run_id, "status": record.status, "reason": record.reason}
    result |= {key: getattr(record.summary, key) for key in SUMMARY_KEYS}
    epochs = record.metrics["epochs"]
    kept = (record.summary.weights_epoch or len(epochs)) - 1
    result["confusion"] = epochs[kept].get("confusion") if epochs else None  # the kept epoch's; rows: true class
    result["epochs_done"] = len(epochs)
    result |= facts
    result["config"] = config.to_dict()
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(describe(result))
    if record.status == FINISHED:
        return 0
    print(f"error: run {run_id} {record.status}: {record.reason}", file=sys.stderr)
    return 130 if outcome is None or record.status == "cancelled" else 1


if __name__ == "__main__":
    sys.exit(main())
