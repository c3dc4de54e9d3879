"""Comparing runs: pure functions from `RunRecord`s to tables the Compare page draws.

Nothing here touches Streamlit. Every function takes records as read from the
`RunStore` and returns a pandas DataFrame (or bytes for the exports), so each
is testable on its own:

- `runs_table`: one row per run with the figures people compare strategies by;
- `config_differences`: the configs side by side, optionally only the fields
  that differ;
- `freezing_map`: per run and per stage of its architecture (`core.freezing.stages`,
  then the classifier and the new head), the fraction of parameters that trained;
- `curves`: validation accuracy and loss per epoch and against wall-clock time
  (cumulative `epoch_time_s`);
- `per_class`, `per_class_difference`, `confusion`: per-class accuracy of the
  final epoch, the difference between two runs, the confusion matrix;
- `misclassified`: validation images the run gets wrong, highest loss first,
  recomputed with the run's own model (`core.analysis.inference`);
- `weights_bytes`, `metrics_csv`, `table_csv`: the exports.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from core.analysis.inference import (
    load_run_model,
    logits_of,
    per_sample_loss,
    run_classes,
)
from core.config import RunConfig
from core.data import decode_images, load_dataset
from core.freezing import model_parts, model_structure, strategy_label
from core.store import RunRecord, run_state_dict

MiB = 2**20


# --------------------------------------------------------------------------- labels


def run_labels(records: Sequence[RunRecord]) -> list[str]:
    """A unique, readable label per run: its name, with the id's tail where names repeat."""
    names = [r.name for r in records]
    return [f"{r.name} · {r.id[-4:]}" if names.count(r.name) > 1 else r.name for r in records]


def _epochs(record: RunRecord) -> list[dict]:
    return [e for e in record.metrics.get("epochs", []) if isinstance(e, dict)]


# --------------------------------------------------------------------------- the runs table


def trainable_params(record: RunRecord) -> int:
    """Trainable parameters of the run: as the engine counted them, else from its config."""
    for counted in (record.summary.trainable_params, (record.metrics.get("info") or {}).get("trainable_params")):
        if isinstance(counted, int):
            return counted
    tree, _ = model_structure(record.config.arch, record.config.num_classes)
    return tree.counts(record.config.frozen)[0]


def _time_s(record: RunRecord) -> float | None:
    if record.summary.total_time_s is not None:
        return float(record.summary.total_time_s)
    epochs = _epochs(record)
    return sum(e.get("epoch_time_s", 0.0) for e in epochs) if epochs else record.elapsed_s()


def _date(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(iso)


def runs_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: name, date, status, arch, strategy, trainable params, val acc (of the kept
    weights; the best so far while it trains), test acc (held out, once finished), time, images/s,
    peak memory. Figures a run has not produced yet are empty (NaN)."""
    rows = []
    for label, r in zip(run_labels(records), records):
        epochs = _epochs(r)
        ips = r.summary.images_per_s
        if ips is None and epochs:  # in flight: training images over training time so far
            seconds = sum(e["train_time_s"] for e in epochs if "train_time_s" in e)
            images = sum(e["images_per_s"] * e["train_time_s"] for e in epochs if "train_time_s" in e)
            ips = images / seconds if seconds else None
        peak = max((e.get("peak_mem_bytes", 0) for e in epochs), default=None)
        rows.append({
            "id": r.id,
            "run": label,
            "date": _date(r.created),
            "status": r.status,
            "arch": r.config.arch,
            "strategy": strategy_label(r.config),
            "trainable params": trainable_params(r),
            "val acc": r.summary.val_acc if r.summary.val_acc is not None else
            max((e["val_acc"] for e in epochs if "val_acc" in e), default=None),
            "test acc": r.summary.test_acc,
            "time (s)": _time_s(r),
            "images/s": round(ips) if ips else None,  # a whole number of images a second, shown with separators
            "peak memory (MiB)": peak / MiB if peak else None,
        })
    columns = ["id", "run", "date", "status", "arch", "strategy", "trainable params", "val acc", "test acc",
               "time (s)", "images/s", "peak memory (MiB)"]
    return pd.DataFrame(rows, columns=columns)


def table_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


# --------------------------------------------------------------------------- configs


def _config_value(value) -> str:
    if isinstance(value, (list, tuple)):
        if not value:
            return "—"
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return f"{value[0]}×{value[1]}"
        return ", ".join(str(v) for v in value)
    return str(value)


def config_differences(records: Sequence[RunRecord], only_differences: bool = True) -> pd.DataFrame:
    """The runs' configs side by side: one row per `RunConfig` field, one column per run.

    With `only_differences`, only the fields whose values are not all equal.
    Values are shown as text (tuples joined with commas, sizes as HxW).
    """
    fields = list(RunConfig.__dataclass_fields__)
    data = {label: [_config_value(r.config.to_dict()[f]) for f in fields]
            for label, r in zip(run_labels(records), records)}
    table = pd.DataFrame(data, index=pd.Index(fields, name="field"))
    if only_differences:
        differs = [f for f in fields if len({repr(r.config.to_dict()[f]) for r in records}) > 1]
        table = table.loc[differs]
    return table


# --------------------------------------------------------------------------- freezing picture


def freezing_map(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Trainable fraction per run (rows) and part of the network (columns, in forward order).

    Parts are `core.freezing.network_parts`: the architecture's stages ("stem", "layer1", ... or
    "block1", ...), then "classifier" (whatever lies between the trunk and the head, when it has
    parameters) and "head". Runs of different architectures share a column only where the part's
    name is the same; other cells are NaN.
    """
    rows = {}
    for label, r in zip(run_labels(records), records):
        tree, _ = model_structure(r.config.arch, r.config.num_classes)
        trains = dict(zip(tree.param_names, (not m for m in tree.frozen_mask(r.config.frozen))))
        sizes = dict(zip(tree.param_names, tree.param_sizes))
        rows[label] = {part: sum(sizes[n] for n in names if trains[n]) / sum(sizes[n] for n in names)
                       for part, names in model_parts(r.config.arch, r.config.num_classes) if sum(sizes[n] for n in names)}
    return _parts_frame(rows)


def layer_drift(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Each run's weight drift ‖θ − θ₀‖ / ‖θ₀‖ per part of the network for the weights it kept (the
    epoch they are from; the last recorded epoch while it trains) (rows: runs, columns: parts in
    forward order, as `freezing_map`); runs recorded before the engine measured drift are left out."""
    rows = {}
    for label, r in zip(run_labels(records), records):
        epochs = _epochs(r)[: r.summary.weights_epoch or None]
        layers = next((e["layers"] for e in reversed(epochs) if isinstance(e.get("layers"), dict)), None)
        if layers:
            rows[label] = dict(zip(layers.get("groups", []), layers.get("drift", [])))
    return _parts_frame(rows)


def _parts_frame(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Rows of {part: value} as one frame, columns in the order the parts first appear."""
    columns = list(dict.fromkeys(part for row in rows.values() for part in row))
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


# --------------------------------------------------------------------------- curves and metrics


def curves(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Long table: run, epoch, time_s (cumulative wall-clock at the epoch's end), val/train acc and loss."""
    rows = []
    for label, r in zip(run_labels(records), records):
        elapsed = 0.0
        for e in _epochs(r):
            elapsed += float(e.get("epoch_time_s", 0.0))
            rows.append({"run": label, "epoch": e.get("epoch"), "time_s": elapsed,
                         "val_acc": e.get("val_acc"), "val_loss": e.get("val_loss"),
                         "train_acc": e.get("train_acc"), "train_loss": e.get("train_loss")})
    return pd.DataFrame(rows, columns=["run", "epoch", "time_s", "val_acc", "val_loss", "train_acc", "train_loss"])


def _kept_per_class(record: RunRecord) -> list | None:
    """Per-class validation accuracy of the weights a finished run kept, else of its last epoch so far."""
    if record.summary.per_class_acc is not None:
        return record.summary.per_class_acc
    epochs = _epochs(record)
    return epochs[-1].get("per_class_acc") if epochs else None


def per_class(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Long table: run, class, accuracy (validation, of the kept weights), test accuracy (held out)."""
    rows = []
    for label, r in zip(run_labels(records), records):
        accs = _kept_per_class(r)
        if accs is None:
            continue
        tests = r.summary.test_per_class_acc or [None] * len(accs)
        for name, acc, test in zip(run_classes(r), accs, tests):
            rows.append({"run": label, "class": name, "accuracy": acc, "test accuracy": test})
    return pd.DataFrame(rows, columns=["run", "class", "accuracy", "test accuracy"])


def per_class_difference(a: RunRecord, b: RunRecord) -> pd.DataFrame:
    """Per class: accuracy of `a`, of `b`, and b - a. `ValueError` if the runs' classes differ."""
    classes_a, classes_b = run_classes(a), run_classes(b)
    if classes_a != classes_b:
        raise ValueError(f"{a.name!r} and {b.name!r} were trained on different classes; "
                         "per-class accuracy can only be compared on the same classes.")
    acc_a, acc_b = _kept_per_class(a), _kept_per_class(b)
    if acc_a is None or acc_b is None:
        raise ValueError("both runs need at least one finished epoch")
    label_a, label_b = run_labels([a, b])
    return pd.DataFrame({"class": classes_a, label_a: acc_a, label_b: acc_b,  # None: no validation images
                         "difference": [None if x is None or y is None else y - x for x, y in zip(acc_a, acc_b)]})


def confusion(record: RunRecord) -> tuple[list[str], list[list[int]]] | None:
    """(classes, validation matrix with rows = true class) of the epoch whose weights a finished run
    kept, else of the last epoch so far; None before the first epoch."""
    epochs = _epochs(record)
    kept = epochs[record.summary.weights_epoch - 1] if record.summary.weights_epoch and epochs else \
        (epochs[-1] if epochs else {})
    return (run_classes(record), kept["confusion"]) if "confusion" in kept else None


# --------------------------------------------------------------------------- misclassified images


def misclassified(record: RunRecord, *, device: torch.device | str = "cpu", limit: int | None = 24,
                  runs_dir: Path | None = None, data_dir: Path | None = None) -> pd.DataFrame:
    """The run's misclassified validation images, highest loss first (the weights it kept).

    The validation split is rebuilt as the run made it (`load_dataset` with the
    run's dataset, split fractions and seed) and classified with the run's final
    model and its evaluation transform. Columns: path, true, predicted, loss,
    confidence (the predicted class's probability).
    """
    config = record.config
    clf = load_run_model(record, device, record.summary.precision or "fp32", runs_dir=runs_dir)
    dataset = load_dataset(config.dataset, data_dir=data_dir, val_fraction=config.val_fraction,
                           test_fraction=config.test_fraction, seed=config.seed)
    if list(dataset.classes) != clf.classes:
        raise ValueError(f"The dataset {config.dataset!r} now has other classes than run {record.name!r} was trained on.")
    columns = ["path", "true", "predicted", "loss", "confidence"]
    if not dataset.val:
        return pd.DataFrame(columns=columns)
    x = decode_images([s.path for s in dataset.val], clf.pre, data_dir=data_dir)
    labels = torch.tensor([s.label for s in dataset.val])
    logits = logits_of(clf.model, x, clf.pre, clf.device, clf.precision)
    losses = per_sample_loss(logits, labels)
    probs = logits.softmax(1)
    predicted = logits.argmax(1)
    rows = [
        {"path": str(s.path), "true": clf.classes[s.label], "predicted": clf.classes[p],
         "loss": float(loss), "confidence": float(probs[i, p])}
        for i, (s, p, loss) in enumerate(zip(dataset.val, predicted.tolist(), losses.tolist()))
        if p != s.label
    ]
    table = pd.DataFrame(rows, columns=columns).sort_values("loss", ascending=False, ignore_index=True)
    return table.head(limit) if limit else table


# --------------------------------------------------------------------------- exports


def weights_bytes(record: RunRecord, *, runs_dir: Path | None = None) -> bytes:
    """The run's full final state dict as `torch.save` bytes: `model.load_state_dict(torch.load(f))`
    works on `build_model(arch, num_classes)` without any Freeze Lab code."""
    runs_dir = Path(runs_dir) if runs_dir is not None else record.path.parent
    state, _ = run_state_dict(record.id, record.config.arch, runs_dir=runs_dir)
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


def metrics_table(record: RunRecord) -> pd.DataFrame:
    """One row per epoch: the scalar metrics, per-class accuracy as `acc <class>` columns,
    learning rates per group as `lr <group>` (the confusion matrix is left out)."""
    classes = run_classes(record)
    rows = []
    for e in _epochs(record):
        row = {k: v for k, v in e.items() if not isinstance(v, (list, dict))}
        for name, acc in zip(classes, e.get("per_class_acc") or []):
            row[f"acc {name}"] = acc
        for group, rate in (e.get("lrs") or {}).items():
            row[f"lr {group}"] = rate
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_csv(record: RunRecord) -> bytes:
    return metrics_table(record).to_csv(index=False).encode()
