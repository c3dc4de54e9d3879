"""core.analysis.compare: tables, freezing picture, curves, per-class figures, misclassified images, exports."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.analysis import compare
from core.config import RunConfig
from core.models import build_model
from core.store import RunRecord, RunStore
from tests.test_inference import shared, trained_runs  # noqa: F401  (the shared tiny runs)


@pytest.fixture(scope="module")
def records(shared):  # noqa: F811
    store = RunStore(shared["runs"])
    return [store.load(shared["full"]), store.load(shared["head"])]


def test_runs_table(records):
    table = compare.runs_table(records)
    assert list(table["run"]) == ["full fine-tune", "head only"]
    assert list(table["strategy"]) == ["Full fine-tune", "Head only"]
    assert list(table["trainable params"]) == [11_178_051, 512 * 3 + 3]
    assert (table["status"] == "finished").all() and (table["arch"] == "resnet18").all()
    for r, (_, row) in zip(records, table.iterrows()):
        assert row["val acc"] == r.metrics["epochs"][r.summary.weights_epoch - 1]["val_acc"]  # the kept epoch's
        assert row["val acc"] == max(e["val_acc"] for e in r.metrics["epochs"])  # keep="best"
        assert row["test acc"] == r.summary.test_acc and 0 <= row["test acc"] <= 1
        assert row["time (s)"] > 0 and row["images/s"] > 0 and row["peak memory (MiB)"] > 0
    csv = pd.read_csv(io.BytesIO(compare.table_csv(table)))
    assert list(csv.columns) == list(table.columns) and len(csv) == 2


def test_config_differences_shows_exactly_the_fields_that_differ(records):
    diff = compare.config_differences(records)
    assert set(diff.index) == {"weights", "frozen", "preset", "lr"}
    assert list(diff.columns) == ["full fine-tune", "head only"]
    assert diff.loc["preset"].tolist() == ["full", "head"]
    assert diff.loc["frozen", "full fine-tune"] == "—"
    every = compare.config_differences(records, only_differences=False)
    assert len(every) == len(RunConfig.__dataclass_fields__)
    assert every.loc["image_size"].tolist() == ["32×32", "32×32"]


def test_labels_stay_unique_for_equal_names(records):
    twin = dataclasses.replace(records[1], name="full fine-tune")
    labels = compare.run_labels([records[0], twin])
    assert len(set(labels)) == 2 and all(label.startswith("full fine-tune · ") for label in labels)


def test_freezing_map(records):
    table = compare.freezing_map(records)
    assert list(table.columns) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert table.loc["full fine-tune"].tolist() == [1.0] * 6
    assert table.loc["head only"].tolist() == [0.0] * 5 + [1.0]


def test_freezing_map_partial_and_vgg():
    cfg = RunConfig(arch="vgg11", num_classes=3, frozen=("features", "classifier.0.weight"), preset="custom")
    record = RunRecord("x", "vgg", "", "2026-01-01T00:00:00+00:00", "queued", None, None, None, cfg, Path("/nonexistent"))
    table = compare.freezing_map([record])
    assert list(table.columns) == ["block1", "block2", "block3", "block4", "block5", "classifier", "head"]
    row = table.loc["vgg"]
    assert row["block1"] == 0 and row["head"] == 1 and 0 < row["classifier"] < 1
    # a queued run's counts come from its config
    assert compare.runs_table([record])["trainable params"].iloc[0] > 0


def test_curves_use_cumulative_epoch_time(records):
    table = compare.curves(records)
    assert len(table) == 4 and set(table["run"]) == {"full fine-tune", "head only"}
    full = table[table["run"] == "full fine-tune"]
    times = [e["epoch_time_s"] for e in records[0].metrics["epochs"]]
    assert full["time_s"].tolist() == pytest.approx([times[0], times[0] + times[1]])
    assert full["epoch"].tolist() == [1, 2]


def test_per_class_and_difference(records):
    table = compare.per_class(records)
    assert len(table) == 6 and set(table["class"]) == {"box", "disc", "wedge"}
    diff = compare.per_class_difference(*records)
    a, b = records[0].summary.per_class_acc, records[1].summary.per_class_acc  # of the kept weights
    assert diff["difference"].tolist() == pytest.approx([y - x for x, y in zip(a, b)])
    classes, matrix = compare.confusion(records[1])
    assert classes == ["box", "disc", "wedge"] and sum(map(sum, matrix)) == records[1].summary.val_size


def test_misclassified_agrees_with_the_recorded_validation_accuracy(records, shared):  # noqa: F811
    record = records[1]
    wrong = compare.misclassified(record, limit=None)
    val_size = record.summary.val_size
    recorded_errors = round((1 - record.summary.val_acc) * val_size)  # the weights the run kept
    assert len(wrong) == recorded_errors
    assert list(wrong.columns) == ["path", "true", "predicted", "loss", "confidence"]
    assert wrong["loss"].is_monotonic_decreasing
    assert (wrong["true"] != wrong["predicted"]).all()
    assert len(compare.misclassified(record, limit=1)) == min(1, recorded_errors)


def test_exports(records):
    state = torch.load(io.BytesIO(compare.weights_bytes(records[1])), weights_only=True)
    model = build_model("resnet18", 3)
    model.load_state_dict(state)  # strict: a complete state dict
    stored = RunStore(records[1].path.parent).load_weights(records[1].id)
    assert torch.equal(state["fc.weight"], stored["fc.weight"])
    metrics = pd.read_csv(io.BytesIO(compare.metrics_csv(records[0])))
    assert metrics["epoch"].tolist() == [1, 2]
    assert {"val_acc", "val_loss", "epoch_time_s", "acc box", "acc disc", "acc wedge", "lr head"} <= set(metrics.columns)
    assert "confusion" not in metrics.columns


def test_empty_charts_say_they_wait_and_a_class_without_images_says_so():
    from ui import charts

    empty = charts.accuracy_figure({"epochs": []})
    assert [a.text for a in empty.layout.annotations] == ["Waiting for the first data…"]
    assert empty.layout.xaxis.visible is False
    drawn = charts.accuracy_figure({"epochs": [{"epoch": 1, "train_acc": 0.5, "val_acc": 0.4}]})
    assert not drawn.layout.annotations
    bars = charts.per_class_figure({"per_class_acc": [0.5, None]}, ["a", "b"])
    assert list(bars.data[0].text) == ["50%", "no images"]
