"""`python -m core.train`: a tiny folder dataset, resnet18 at 32 px, one epoch, then a run from its weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import image_size
from core.store import RunStore
from core.train import main
from tests.test_training import draw_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path, monkeypatch):
    values = {"FREEZE_LAB_DATA_DIR": str(tmp_path / "data"), "FREEZE_LAB_RUNS_DIR": str(tmp_path / "runs")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FREEZE_LAB_FAULT", raising=False)
    return values


def test_cli_trains_then_reuses_the_run_as_weights(tmp_path, env, capsys):
    folder = draw_folder(tmp_path / "shapes", per_class=8)
    runs = tmp_path / "runs"
    common = ["--arch", "resnet18", "--dataset", str(folder), "--image-size", "32", "--epochs", "1",
              "--batch-size", "8", "--runs-dir", str(runs), "--device", "cpu", "--json"]
    # The real command line, in a child process: stdout is only the JSON.
    child_env = os.environ | env | {"PYTHONPATH": str(ROOT)}
    child_env.pop("FREEZE_LAB_FAULT", None)
    done = subprocess.run([sys.executable, "-m", "core.train", "--preset", "full", "--weights", "none", *common],
                          cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    assert first["status"] == "finished" and first["reason"] is None
    assert 0 <= first["val_acc"] <= 1 and first["trainable_params"] > 11_000_000
    assert first["freeze_audit"]["ok"] and first["images_per_s"] > 0 and first["peak_mem_bytes"] > 0
    assert "epoch 1" in done.stderr  # progress goes to stderr
    assert first["classes"] == ["box", "disc", "wedge"] and len(first["per_class_acc"]) == 3
    assert sum(map(sum, first["confusion"])) == first["val_size"] and first["skipped"] == []
    assert first["split_gaps"] == {}
    assert first["splits"]["train"] + first["splits"]["val"] + first["splits"]["test"] == 24
    assert first["splits"]["test"] == first["test_size"] == 6 and len(first["splits"]["test_digest"]) == 16
    assert 0 <= first["test_acc"] <= 1 and len(first["test_per_class_acc"]) == 3
    assert first["weights_epoch"] == first["best_epoch"] == 1 and first["epochs_done"] == 1
    record = RunStore(runs).load(first["run_id"])
    assert record.status == "finished" and record.has_weights and record.config.preset == "full"

    # Head-only from that run's weights, in process, with the options of the honest answer.
    assert main(["--preset", "head", "--weights", f"run:{first['run_id']}", *common, "--epochs", "3", "--keep", "last",
                 "--early-stop", "1", "--test-fraction", "0.4"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["config"]["keep"] == "last" and second["config"]["early_stop"] == 1
    assert second["weights_epoch"] == second["epochs_done"] and second["splits"]["test"] == 9  # 40% of 8 per class: 3
    assert second["status"] == "finished"
    assert second["trainable_params"] == 512 * 3 + 3
    assert second["freeze_audit"]["ok"] and second["freeze_audit"]["checked_tensors"] > 0
    assert second["feature_cache"]["used"] and second["feature_cache"]["prefix"] == "flatten"
    config = RunStore(runs).load(second["run_id"]).config
    assert config.weights == f"run:{first['run_id']}" and config.num_classes == 3 and "layer4" in config.frozen


def test_cli_reports_failures(tmp_path, env, capsys, monkeypatch):
    folder = draw_folder(tmp_path / "shapes", per_class=4)
    args = ["--dataset", str(folder), "--image-size", "32", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"),
            "--device", "cpu", "--json"]
    assert main(["--preset", "fc1_fc2", *args]) == 1  # a VGG preset on a ResNet: refused before any run
    out = capsys.readouterr()
    assert json.loads(out.out)["status"] == "failed" and "VGG" in out.err
    assert main(["--preset", "head", "--weights", "run:nope", *args]) == 1  # no such run: refused before any run
    refused = json.loads(capsys.readouterr().out)
    assert refused["run_id"] is None and "nope" in refused["reason"]
    assert RunStore(tmp_path / "runs").list() == []
    monkeypatch.setenv("FREEZE_LAB_FAULT", "error@1")
    assert main(["--preset", "head", *args]) == 1  # fails inside the run: recorded with its reason
    failed = json.loads(capsys.readouterr().out)
    assert failed["status"] == "failed" and "simulated failure" in failed["reason"]
    assert RunStore(tmp_path / "runs").load(failed["run_id"]).status == "failed"


def test_image_size_accepts_square_and_hxw():
    assert image_size("64") == (64, 64)
    assert image_size("448x224") == (448, 224)


def test_ctrl_c_on_a_json_run_prints_json_that_says_cancelled(tmp_path, env):
    import signal
    import time

    folder = draw_folder(tmp_path / "shapes", per_class=30)
    (folder / "disc" / "notes.txt").write_text("not an image")  # one skipped file, said in the JSON
    child_env = os.environ | env | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "core.train", "--preset", "full", "--dataset", str(folder), "--image-size", "32",
         "--epochs", "200", "--batch-size", "4", "--device", "cpu", "--no-feature-cache", "--json"],
        cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while "training on" not in (line := child.stderr.readline()) and time.monotonic() < deadline:
        assert line or child.poll() is None, "the run ended before it trained"
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-2000:]
    result = json.loads(out)
    assert result["status"] == "cancelled" and result["reason"] == "stopped from the keyboard"
    assert result["skipped"] == [{"file": "disc/notes.txt", "reason": "not an image file type (.txt)"}]
    assert RunStore(env["FREEZE_LAB_RUNS_DIR"]).load(result["run_id"]).status == "cancelled"


def test_every_config_field_is_an_option_with_the_configs_default_and_comment():
    """The command line is generated from RunConfig (core.cli): it cannot drift from the config."""
    import dataclasses

    from core.cli import field_comments
    from core.config import RunConfig
    from core.train import DERIVED, parser

    p = parser()
    defaults = p.parse_args([])
    comments = field_comments(RunConfig)
    options = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(RunConfig):
        if f.name in DERIVED:
            assert f.name not in options
            continue
        default = getattr(defaults, f.name)
        assert (tuple(default) if isinstance(default, list) else default) == f.default, f.name
        assert options[f.name].help.startswith(comments[f.name]) and comments[f.name], f.name
    assert p.parse_args(["--image-size", "448x224", "--no-feature-cache", "--augment", "flip", "crop"]).image_size == (448, 224)
