"""RunStore: runs on disk, every write atomic, unreadable folders skipped."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime

import pytest
import torch

from core.config import RunConfig
from core.store import RunStore, runs
from core.summary import RunSummary

CONFIG = RunConfig(arch="resnet18", preset="head", dataset="demo-target", epochs=2)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


def leftovers(store):
    """Temporary or half-made entries anywhere under the root."""
    return [p for p in store.root.rglob("*") if p.name.startswith(".")]


def test_create_and_load_round_trip(store):
    run_id = store.create(CONFIG, owner="alice")
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    record = store.load(run_id)
    assert record.id == run_id
    assert record.config == CONFIG
    assert record.name == "resnet18 · head · demo-target"
    assert record.owner == "alice"
    assert record.status == runs.QUEUED and record.reason is None
    assert record.started is None and record.finished is None
    assert datetime.fromisoformat(record.created).tzinfo is not None
    assert record.metrics == {"steps": [], "epochs": []}
    assert record.summary == RunSummary()
    assert not record.has_weights
    assert store.exists(run_id)
    meta = json.loads((store.root / run_id / "run.json").read_text())
    assert set(meta) >= {"id", "name", "owner", "created", "status", "reason", "started", "finished", "config"}
    assert leftovers(store) == []


def test_explicit_name_and_folder_dataset_name(store):
    run_id = store.create(CONFIG.replace(dataset="/data/my flowers"))
    assert store.load(run_id).name == "resnet18 · head · my flowers"
    assert store.load(store.create(CONFIG, name="  my   run ")).name == "my run"


def test_root_defaults_to_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert RunStore().root == tmp_path / "elsewhere"


@pytest.mark.parametrize("bad", ["nope", "../etc", "..", "", "a/b", "20261123-142501-a3f9/../x", None])
def test_unknown_or_malformed_ids_are_key_errors(store, bad):
    store.create(CONFIG)
    assert not store.exists(bad)
    with pytest.raises(KeyError):
        store.load(bad)
    with pytest.raises(KeyError):
        store.set_status(bad, runs.FAILED)


def test_list_newest_first_and_skips_unreadable_folders(store):
    ids = [store.create(CONFIG, name=f"run {i}") for i in range(3)]
    (store.root / "20200101-000000-dead").mkdir()  # no run.json
    (store.root / "20200101-000000-beef").mkdir()
    (store.root / "20200101-000000-beef" / "run.json").write_text("{not json")
    (store.root / "20200101-000000-f00d").mkdir()
    (store.root / "20200101-000000-f00d" / "run.json").write_text(json.dumps({"id": "x", "status": "weird"}))
    (store.root / "stray-file.txt").write_text("hello")
    assert [r.id for r in store.list()] == ids[::-1]


def test_list_on_missing_root_is_empty(tmp_path):
    assert RunStore(tmp_path / "absent").list() == []


def test_set_status_stamps_times_and_keeps_reason(store):
    run_id = store.create(CONFIG)
    store.set_status(run_id, runs.RUNNING)
    record = store.load(run_id)
    assert record.status == runs.RUNNING and record.started and record.finished is None
    store.set_status(run_id, runs.FAILED, "Out of GPU memory")
    record = store.load(run_id)
    assert record.status == runs.FAILED and record.reason == "Out of GPU memory"
    assert record.finished >= record.started
    assert record.elapsed_s() >= 0
    with pytest.raises(ValueError):
        store.set_status(run_id, "exploded")


def test_status_constants():
    assert runs.TERMINAL == {"finished", "failed", "cancelled", "interrupted"}
    assert set(runs.STATUSES) == runs.TERMINAL | {"queued", "running"}


def test_rename(store):
    run_id = store.create(CONFIG)
    store.rename(run_id, "baseline: head only")
    assert store.load(run_id).name == "baseline: head only"
    with pytest.raises(ValueError):
        store.rename(run_id, "   ")
    assert store.load(run_id).name == "baseline: head only"


def test_delete_refuses_active_runs(store):
    run_id = store.create(CONFIG)
    with pytest.raises(ValueError):
        store.delete(run_id)
    store.set_status(run_id, runs.RUNNING)
    with pytest.raises(ValueError):
        store.delete(run_id)
    store.set_status(run_id, runs.FINISHED)
    store.save_weights(run_id, {"w": torch.ones(2)})
    store.delete(run_id)
    assert not store.exists(run_id)
    with pytest.raises(KeyError):
        store.load(run_id)
    assert list(store.root.iterdir()) == []


def test_metrics_and_summary_round_trip(store):
    run_id = store.create(CONFIG)
    metrics = {
        "steps": [[1, 1, 2.5], [2, 1, float("nan")]],
        "epochs": [{"epoch": 1, "val_acc": 0.5, "confusion": [[1, 0], [1, 0]]}],
    }
    store.write_metrics(run_id, metrics)
    summary = RunSummary(val_acc=torch.tensor(0.75), trainable_params=1234, device=torch.device("cpu"),
                         param_groups=("fc",))
    store.write_summary(run_id, summary)
    record = store.load(run_id)
    assert record.metrics["steps"][0] == [1, 1, 2.5]
    assert record.metrics["epochs"] == metrics["epochs"]
    assert record.summary == RunSummary(val_acc=0.75, trainable_params=1234, device="cpu", param_groups=["fc"])


def test_record_reads_metrics_lazily_then_keeps_them(store):
    run_id = store.create(CONFIG)
    record = store.load(run_id)
    store.write_metrics(run_id, {"steps": [[1, 1, 1.0]], "epochs": []})
    assert record.metrics["steps"] == [[1, 1, 1.0]]  # first access reads now
    store.write_metrics(run_id, {"steps": [], "epochs": []})
    assert record.metrics["steps"] == [[1, 1, 1.0]]  # then it is kept
    assert store.load(run_id).metrics["steps"] == []


def test_weights_round_trip_weights_only(store):
    run_id = store.create(CONFIG)
    with pytest.raises(FileNotFoundError, match="no saved weights"):
        store.load_weights(run_id)
    state = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(7)}
    store.save_weights(run_id, state)
    assert store.weights_path(run_id) == store.root / run_id / "weights.pt"
    assert store.load(run_id).has_weights
    loaded = store.load_weights(run_id)
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key])
    with pytest.raises(KeyError):
        store.load_weights("20200101-000000-0000")


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (os.system, ("echo pwned",))


def test_load_weights_refuses_pickled_code(store):
    run_id = store.create(CONFIG)
    torch.save({"w": torch.ones(1), "x": _Payload()}, store.weights_path(run_id))
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        store.load_weights(run_id)


def test_crash_before_replace_keeps_old_file(store, monkeypatch):
    run_id = store.create(CONFIG)
    store.write_metrics(run_id, {"steps": [[1, 1, 1.0]], "epochs": []})

    def crash(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(runs.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.write_metrics(run_id, {"steps": [[1, 1, 1.0], [2, 1, 0.5]], "epochs": []})
    monkeypatch.undo()
    assert store.load(run_id).metrics["steps"] == [[1, 1, 1.0]]
    assert leftovers(store) == []


def test_crash_mid_write_keeps_old_file(store, monkeypatch):
    run_id = store.create(CONFIG)
    store.set_status(run_id, runs.RUNNING)
    store.save_weights(run_id, {"w": torch.ones(3)})

    def half_written_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")  # the first bytes land, then the process dies
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(runs.torch, "save", half_written_save)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        store.save_weights(run_id, {"w": torch.zeros(3)})

    def fsync_fails(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(runs.os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="disk gone"):
        store.set_status(run_id, runs.FINISHED)
    monkeypatch.undo()

    assert torch.equal(store.load_weights(run_id)["w"], torch.ones(3))
    assert store.load(run_id).status == runs.RUNNING
    assert leftovers(store) == []


def test_unserialisable_summary_changes_nothing(store):
    run_id = store.create(CONFIG)
    store.write_summary(run_id, RunSummary(val_acc=1.0))
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="(?i)circular"):
        store.write_summary(run_id, RunSummary(freeze_audit=circular))
    assert store.load(run_id).summary == RunSummary(val_acc=1.0)
    assert leftovers(store) == []


def test_mark_interrupted_keeps_metrics(store):
    running = store.create(CONFIG)
    store.set_status(running, runs.RUNNING)
    store.write_metrics(running, {"steps": [[1, 1, 0.9]], "epochs": [{"epoch": 1}]})
    queued = store.create(CONFIG)
    done = store.create(CONFIG)
    store.set_status(done, runs.FINISHED)

    assert sorted(store.mark_interrupted()) == sorted([running, queued])
    for run_id in (running, queued):
        record = store.load(run_id)
        assert record.status == runs.INTERRUPTED
        assert record.reason == "the app restarted while this run was in flight"
        assert record.finished
    assert store.load(running).metrics["steps"] == [[1, 1, 0.9]]
    assert store.load(done).status == runs.FINISHED
    assert store.mark_interrupted() == []


def test_readers_never_see_half_a_file(store):
    run_id = store.create(CONFIG)
    stop = threading.Event()
    bad = []

    def read():
        while not stop.is_set():
            try:
                metrics = store.load(run_id).metrics
            except KeyError as exc:  # run.json unreadable
                bad.append(exc)
                continue
            if "filler" not in metrics and metrics != {"steps": [], "epochs": []}:
                bad.append(metrics)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(60):
        store.write_metrics(run_id, {"steps": [[i, 1, 0.1]] * 200, "epochs": [], "filler": "x" * 20_000})
    stop.set()
    for t in readers:
        t.join()
    assert bad == []


def test_concurrent_rename_and_status_lose_nothing(store):
    run_id = store.create(CONFIG)

    def renamer():
        for i in range(40):
            store.rename(run_id, f"name {i}")

    def worker():
        for i in range(40):
            store.set_status(run_id, runs.RUNNING if i % 2 == 0 else runs.QUEUED, f"reason {i}")

    threads = [threading.Thread(target=renamer), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = store.load(run_id)
    assert record.name == "name 39"
    assert record.status == runs.QUEUED and record.reason == "reason 39"


def test_a_run_other_runs_start_from_cannot_be_deleted(tmp_path):
    store = RunStore(tmp_path)
    base = store.create(RunConfig())
    store.set_status(base, "finished")
    child = store.create(RunConfig(weights=f"run:{base}"))
    store.set_status(child, "finished")
    with pytest.raises(ValueError, match="start from this run's weights"):
        store.delete(base)
    assert store.exists(base)
    store.delete(child)
    store.delete(base)
    assert not store.list()


def test_a_run_written_before_runs_recorded_their_process_is_still_marked_at_start_up(store):
    old = store.create(CONFIG)
    store.set_status(old, runs.RUNNING)
    path = store.root / old / "run.json"
    meta = json.loads(path.read_text())
    del meta["process"]
    path.write_text(json.dumps(meta))
    assert store.load(old).process is None
    assert store.reap(store.load(old)).status == runs.RUNNING  # while the app runs: nothing can be said
    assert store.mark_interrupted() == [old]  # at start-up: as before, in flight means interrupted
