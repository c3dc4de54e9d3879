"""Layer signals against hand computations: relative gradient norms, weight drift, Auto-RGN rates."""

from __future__ import annotations

import contextlib
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.data import normalize
from core.engine import Signals, build_optimizer, probe_rgn
from core.engine.inputs import prepare_data
from core.engine.signals import AutoRGN, LayerDrift, measure_rgn, relative_norm
from core.freezing import network_parts, norm_paths, set_frozen
from core.jobs import check_runnable
from core.jobs.probes import SignalProbes
from core.models import build_model
from core.store import RunStore
from tests.test_training import CLASSES, config_for, draw_folder, run

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return draw_folder(tmp_path_factory.mktemp("shapes"))


def test_signal_groups_are_the_stages_then_the_head():
    resnet = build_model("resnet18", 3, weights="none")
    groups = network_parts(resnet, "resnet18")
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert groups["head"] == ["fc.weight", "fc.bias"]
    assert groups["stem"] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert sum(len(v) for v in groups.values()) == len(list(resnet.parameters()))
    vgg = network_parts(build_model("vgg11", 3, weights="none"), "vgg11")
    assert list(vgg)[-2:] == ["classifier", "head"]
    assert vgg["classifier"] == ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]


def test_relative_norm_counts_a_group_as_one_vector():
    weight, bias = torch.tensor([3.0, 4.0]), torch.tensor([0.0])  # ‖θ‖ = 5
    grad_w, grad_b = torch.tensor([0.3, 0.0]), torch.tensor([0.4])  # ‖g‖ = 0.5
    grad_sq = float(grad_w.square().sum() + grad_b.square().sum())
    param_sq = float(weight.square().sum() + bias.square().sum())
    assert relative_norm(grad_sq, param_sq) == pytest.approx(0.1)
    assert relative_norm(1.0, 0.0) is None


class TwoLayer(nn.Module):
    """A model small enough to compute its signals by hand (its groups are given, not looked up)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_drift_and_gradient_norm_match_a_hand_computation():
    torch.manual_seed(0)
    model = TwoLayer()
    params = dict(model.named_parameters())
    model.b.requires_grad_(False)
    drift = LayerDrift(model, {"a": ["a.weight", "a.bias"], "b": ["b.weight", "b.bias"]})
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    grad_norms = []
    for step in range(3):
        x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grad_norms.append(math.sqrt(sum(float(params[n].grad.square().sum()) for n in ("a.weight", "a.bias"))))
        drift.after_backward(step == 0)
        optimizer.step()
    record = drift.epoch_record()
    moved = sum(float((params[n].detach() - theta0[n]).square().sum()) for n in ("a.weight", "a.bias"))
    start = sum(float(theta0[n].square().sum()) for n in ("a.weight", "a.bias"))
    assert record["groups"] == ["a", "b"]
    assert record["drift"][0] == pytest.approx(math.sqrt(moved) / math.sqrt(start), rel=1e-5)
    assert record["drift"][1] == 0.0  # frozen: did not move
    assert record["grad_norm"][0] == pytest.approx(math.sqrt(sum(g * g for g in grad_norms) / 3), rel=1e-5)
    assert record["grad_norm"][1] is None  # frozen: no gradient
    assert drift.epoch_record()["grad_norm"] == [None, None]  # the next epoch starts from nothing


def test_auto_rgn_rates_are_the_mean_rgn_over_batches_over_the_largest_with_a_fresh_optimizer():
    """Lee et al.'s `get_lr_weights`: per tensor ‖g‖/‖θ‖ on each batch, averaged; rate = base × RGN / max."""
    torch.manual_seed(0)
    model = TwoLayer()
    batches = [(torch.randn(6, 4), torch.randint(0, 2, (6,))) for _ in range(3)]
    by_hand = {n: 0.0 for n, _ in model.named_parameters()}
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        for (n, p), g in zip(model.named_parameters(), grads):
            by_hand[n] += float(g.norm() / p.detach().norm()) / len(batches)
    rgn = measure_rgn(model, model, batches, contextlib.nullcontext)
    assert rgn == pytest.approx(by_hand) and all(p.grad is None for p in model.parameters())  # no update, no .grad
    groups = [{"name": "backbone", "tensor": n, "params": [p], "lr": 0.1} for n, p in model.named_parameters()]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    F.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    optimizer.step()
    assert optimizer.state  # momentum from the last epoch...
    auto = AutoRGN(optimizer)
    auto.start_epoch(rgn)
    assert not optimizer.state  # ...forgotten: their code builds a new optimizer every epoch
    top = max(rgn.values())
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.1 * rgn[group["tensor"]] / top)
    assert max(auto.scales.values()) == pytest.approx(1.0)
    auto.end_epoch()
    assert [g["lr"] for g in optimizer.param_groups] == [0.1] * 4
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    a = (auto.scales["a.weight"] * 12 + auto.scales["a.bias"] * 3) / 15
    assert auto.group_scales({"a": ["a.weight", "a.bias"], "b": ["b.weight"]}, sizes)[0] == pytest.approx(a)


def test_auto_rgn_is_its_own_preset_that_freezes_the_norm_layers_and_groups_every_other_tensor(folder):
    with pytest.raises(ValueError, match="Auto-RGN is the auto-rgn preset"):
        config_for(folder, preset="full", auto_rgn=True).validate()
    config = config_for(folder, preset="auto-rgn", auto_rgn=True)
    model = build_model("resnet18", len(CLASSES), weights="none")
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert config.frozen == tuple(norms) == norm_paths(model) and len(norms) == 20  # bn1, 16 in blocks, 3 downsample.1
    with pytest.raises(ValueError, match="exactly the norm layers"):
        check_runnable(config.replace(frozen=norms[:-1]), RunStore(folder.parent / "runs"))
    set_frozen(model, config.frozen)
    optimizer, described = build_optimizer(model, config)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {g["tensor"] for g in optimizer.param_groups} == trained and not any(".bn" in n for n in trained)
    assert len(optimizer.param_groups) == len(trained) == 22  # every conv and the head's weight and bias
    assert {g["lr"] for g in optimizer.param_groups} == {config.lr}  # one base rate
    assert [d["name"] for d in described] == ["head", "backbone"]  # the summary names the usual groups


def test_every_epoch_records_the_layer_signals(folder, tmp_path):
    (result, monitor) = run(config_for(folder, preset="last2"), tmp_path)
    layers = [e["layers"] for e in monitor.epochs]
    assert layers[0]["groups"] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    for record in layers:
        assert record["drift"][:3] == [0.0, 0.0, 0.0]  # frozen stages did not move
        assert record["grad_norm"][:3] == [None, None, None]
        assert all(d > 0 for d in record["drift"][3:]) and all(g > 0 for g in record["grad_norm"][3:])
    assert layers[1]["drift"][-1] > layers[0]["drift"][-1]  # the head keeps moving away from its start
    assert "rgn_scale" not in layers[0]


def test_an_auto_rgn_run_trains_every_layer_but_the_norm_layers_at_scaled_rates(folder, tmp_path):
    config = config_for(folder, preset="auto-rgn", auto_rgn=True, bn_frozen_eval=False)
    (result, monitor) = run(config, tmp_path)
    scales = [e["layers"]["rgn_scale"] for e in monitor.epochs]
    assert all(0 < s <= 1 for epoch in scales for s in epoch)
    assert monitor.epochs[0]["lrs"] == {"head": 0.01, "backbone": 0.01}  # one base rate, before scaling
    assert all(d > 0 for d in monitor.epochs[-1]["layers"]["drift"])
    assert result.summary.freeze_audit["ok"] and result.summary.freeze_audit["checked_tensors"] == 40  # the norms
    assert not set(result.state_dict) & {f"{p}.{w}" for p in config.frozen for w in ("weight", "bias")}  # not saved:
    # they did not train


def test_the_drift_only_reads(folder, tmp_path, monkeypatch):
    """A run with the drift's hooks gives exactly the losses of one without them."""
    config = config_for(folder, preset="last2")
    (_, measured) = run(config, tmp_path / "a")
    monkeypatch.setattr(LayerDrift, "after_backward", lambda self, first_step: None)
    (_, plain) = run(config, tmp_path / "b")
    assert measured.losses == plain.losses


# --------------------------------------------------------------------------- the RGN probe


def test_the_probe_measures_the_mean_gradient_of_a_few_batches_without_an_update(folder, tmp_path):
    config = config_for(folder, preset="head", batch_size=8, seed=2)
    signals = probe_rgn(config, device=CPU, runs_dir=tmp_path / "runs", batches=2)
    # the same by hand: the model as a run builds it, the same two batches, the mean of their mean losses
    torch.manual_seed(2)
    model = build_model("resnet18", len(CLASSES), weights="none").train()
    data = prepare_data(config, CPU)
    order = torch.randperm(len(data.splits["train"]), generator=torch.Generator().manual_seed(2))
    for idx in order[:16].split(8):
        x = normalize(data.splits["train"].x[idx].float() / 255, data.pre)
        (F.cross_entropy(model(x), data.splits["train"].y[idx]) / 2).backward()
    assert signals.images == 16
    assert list(signals.tensors) == [n for n, _ in model.named_parameters()]  # every tensor, though the config froze most
    for name, p in model.named_parameters():
        grad_sq, param_sq = signals.tensors[name]
        assert grad_sq == pytest.approx(float(p.grad.square().sum()), rel=1e-4)
        assert param_sq == pytest.approx(float(p.detach().square().sum()), rel=1e-6)
    by_hand = math.sqrt(sum(float(p.grad.square().sum()) for n, p in model.named_parameters() if n.startswith("layer4."))) / \
        math.sqrt(sum(float(p.detach().square().sum()) for n, p in model.named_parameters() if n.startswith("layer4.")))
    assert signals.group_rgn()["layer4"] == pytest.approx(by_hand, rel=1e-4)
    assert signals.rgn(signals.under(["layer4"])) == signals.group_rgn()["layer4"]
    assert Signals.from_dict(json.loads(json.dumps(signals.to_dict()))) == signals


def test_probes_run_in_a_worker_and_are_remembered(folder, tmp_path):
    store = RunStore(tmp_path / "runs")
    probes = SignalProbes(store, tmp_path / "signals", CPU, threads=1)
    try:
        config = config_for(folder, preset="head", batch_size=8)
        key = probes.request(config)
        assert probes.state(key).status in ("running", "done")
        deadline = time.monotonic() + 180
        while probes.state(key).status == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        state = probes.state(key)
        assert state.status == "done", state.reason
        assert set(state.signals.group_rgn()) == {"stem", "layer1", "layer2", "layer3", "layer4", "head"}
        assert probes._trainer.pid is None  # no torch process idles after a probe
        # the same question (whatever is frozen) is answered from disk, also by a new server
        assert probes.request(config.replace(frozen=(), preset="full")) == key
        assert SignalProbes(store, tmp_path / "signals", CPU).state(key) == state
        with pytest.raises(ValueError, match="no run"):
            probes.request(config.replace(weights="run:nope"))
        bad = probes.request(config.replace(dataset=str(tmp_path / "missing")))
        while probes.state(bad).status == "running":
            time.sleep(0.1)
        assert probes.state(bad).status == "failed" and "missing" in probes.state(bad).reason
    finally:
        probes.close()
