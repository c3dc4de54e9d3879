"""core.analysis.inference: a finished run's model, classify, top-k, the device policy, the ImageNet model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.analysis import inference
from core.config import RunConfig
from core.data import preprocess_for
from core.jobs import execute
from core.models import (
    CheckpointError,
    WeightsUnavailableError,
    build_model,
    imagenet_cache_path,
)
from core.store import RunStore
from tests.test_training import CLASSES, draw_folder

_SHARED: dict = {}


def trained_runs() -> dict:
    """Two tiny finished runs, trained once per test process and shared by the inference,
    comparison and page tests: "full" (resnet18, random init, 32 px) and "head" (head only,
    starting from "full"'s weights: a chain run_state_dict must resolve).

    Returns {"root", "runs", "data", "folder", "full", "head"} (paths and run ids).
    """
    if not _SHARED:
        root = Path(tempfile.mkdtemp(prefix="freeze-lab-inference-"))
        runs, data = root / "runs", root / "data"
        folder = draw_folder(root / "shapes", per_class=8, size=32)
        old = os.environ.get("FREEZE_LAB_DATA_DIR")
        os.environ["FREEZE_LAB_DATA_DIR"] = str(data)
        try:
            store = RunStore(runs)
            base = RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32),
                             batch_size=8, epochs=2, preset="full")
            full = store.create(base, name="full fine-tune")
            assert execute(store, full, device=torch.device("cpu")).status == "finished"
            head = store.create(base.replace(weights=f"run:{full}", preset="head", lr=0.05, epochs=2,
                                             frozen=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")),
                                name="head only")
            assert execute(store, head, device=torch.device("cpu")).status == "finished"
        finally:
            if old is None:
                os.environ.pop("FREEZE_LAB_DATA_DIR", None)
            else:
                os.environ["FREEZE_LAB_DATA_DIR"] = old
        _SHARED.update(root=root, runs=runs, data=data, folder=folder, full=full, head=head)
    return _SHARED


@pytest.fixture(scope="module")
def shared():
    info = trained_runs()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREEZE_LAB_RUNS_DIR", str(info["runs"]))
        mp.setenv("FREEZE_LAB_DATA_DIR", str(info["data"]))
        mp.delenv("FREEZE_LAB_FAULT", raising=False)
        yield info


def images(folder: Path, n_per_class: int = 2) -> tuple[list[Image.Image], list[int]]:
    out, labels = [], []
    for label, name in enumerate(sorted(CLASSES)):
        for p in sorted((folder / name).iterdir())[:n_per_class]:
            out.append(Image.open(p).convert("RGB"))
            labels.append(label)
    return out, labels


def test_load_run_model_matches_the_stored_weights(shared):
    record = RunStore(shared["runs"]).load(shared["head"])
    clf = inference.load_run_model(record)
    assert clf.classes == sorted(CLASSES) and clf.label == "head only"
    assert not clf.model.training and clf.device.type == "cpu" and clf.precision == "fp32"
    stored = RunStore(shared["runs"]).load_weights(shared["head"])
    own = clf.model.state_dict()
    assert torch.equal(own["fc.weight"], stored["fc.weight"])
    # the frozen backbone came from the "full" run (the chain is resolved)
    first = RunStore(shared["runs"]).load_weights(shared["full"])
    assert torch.equal(own["layer1.0.conv1.weight"], first["layer1.0.conv1.weight"])
    assert clf.pre == preprocess_for("resnet18", f"run:{shared['full']}", (32, 32))


def test_classify_gives_probabilities(shared):
    record = RunStore(shared["runs"]).load(shared["head"])
    clf = inference.load_run_model(record)
    imgs, labels = images(shared["folder"], 8)
    probs = inference.classify(clf.model, imgs, clf.pre, clf.device, clf.precision)
    assert probs.shape == (len(imgs), 3)
    assert torch.allclose(probs.sum(1), torch.ones(len(imgs)), atol=1e-5)
    assert (probs >= 0).all()
    # an image classifies the same alone and in a batch (eval mode: BatchNorm uses running stats)
    alone = inference.classify(clf.model, imgs[:1], clf.pre, clf.device)
    assert torch.allclose(alone[0], probs[0], atol=1e-5)


def test_top_k():
    pairs = inference.top_k(torch.tensor([0.1, 0.6, 0.3]), ["a", "b", "c"], 2)
    assert pairs == [("b", pytest.approx(0.6)), ("c", pytest.approx(0.3))]
    assert len(inference.top_k([0.5, 0.5], ["a", "b"], 10)) == 2
    with pytest.raises(ValueError):
        inference.top_k([0.5, 0.5], ["a", "b", "c"], 1)


def test_unfinished_runs_are_refused_with_a_message(tmp_path):
    store = RunStore(tmp_path / "runs")
    run_id = store.create(RunConfig())
    with pytest.raises(CheckpointError, match="has not finished"):
        inference.load_run_model(store.load(run_id))
    assert inference.finished_runs(store) == []


def test_device_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    device, why = inference.inference_device("cuda:0", cuda, manager_busy=True)
    assert device.type == "cpu" and "training on CUDA" in why
    device, why = inference.inference_device("cpu", cpu, manager_busy=True)
    assert device.type == "cpu" and "shared" in why
    device, _ = inference.inference_device(None, cpu, manager_busy=False)
    assert device.type == "cpu"
    device, why = inference.inference_device("cuda:0", cuda, manager_busy=False)
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device.type == "cpu" and "no CUDA" in why


def test_imagenet_model_offline_is_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailableError, match="not on this machine"):
        inference.load_imagenet_model("resnet18")


def test_imagenet_model_with_cached_weights(tmp_path, monkeypatch):
    """A (random) state dict planted where torch's hub cache keeps the file stands in for the download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = imagenet_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(build_model("resnet18", 1000).state_dict(), path)
    clf = inference.load_imagenet_model("resnet18")
    assert len(clf.classes) == 1000 and clf.classes[0] == "tench"
    assert clf.pre.crop == (224, 224) and clf.pre.resize == (256, 256)
    probs = inference.classify(clf.model, [Image.new("RGB", (300, 200), "red")], clf.pre, "cpu")
    assert probs.shape == (1, 1000) and abs(probs.sum().item() - 1) < 1e-4


def test_a_run_from_random_init_with_frozen_layers_classifies_with_the_backbone_it_trained_on(shared, tmp_path):
    """Only trained tensors are stored; frozen ones are rebuilt. From random init that rebuild must draw
    the same values as the run did (its seed), or the head would sit on another backbone."""
    store = RunStore(shared["runs"])
    config = RunConfig(arch="resnet18", num_classes=3, dataset=str(shared["folder"]), image_size=(32, 32),
                       batch_size=8, epochs=1, preset="head", seed=7, weights="none",
                       frozen=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))
    run_id = store.create(config, name="head on random init")
    assert execute(store, run_id, device=torch.device("cpu")).status == "finished"
    torch.manual_seed(12345)  # whatever the global generator holds when the page loads the run
    clf = inference.load_run_model(store.load(run_id))
    torch.manual_seed(config.seed)  # what training built: the run's seed, then the model
    trained_on = build_model("resnet18", 3, "none")
    own = clf.model.state_dict()
    assert torch.equal(own["layer1.0.conv1.weight"], trained_on.state_dict()["layer1.0.conv1.weight"])
    assert torch.equal(own["fc.weight"], store.load_weights(run_id)["fc.weight"])
