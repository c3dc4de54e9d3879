"""The feature cache: the forward chain, the frozen prefix, and features stored on disk for later runs."""

from __future__ import annotations

import os

import pytest
import torch
from torchvision.ops import StochasticDepth

from core import files
from core.config import SweepConfig
from core.engine import FAULT_ENV
from core.engine.features import prefix_fingerprint
from core.freezing import frozen_prefix, preset_frozen, set_frozen, set_train_mode
from core.models import build_model, build_skeleton, forward_chain, run_chain
from core.sweeps import member_configs, plan
from tests.test_training import CLASSES, config_for, draw_folder, run


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv(FAULT_ENV, raising=False)


@pytest.fixture
def folder(tmp_path):
    return draw_folder(tmp_path / "shapes", per_class=8)


def stored(tmp_path):
    return sorted((tmp_path / "data" / ".cache").glob("features-*.pt"))


# --------------------------------------------------------------------------- forward chain


@pytest.mark.parametrize(
    "arch", ["alexnet", "vgg11_bn", "resnet18", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "convnext_tiny"]
)
def test_forward_chain_reproduces_the_model(arch):
    torch.manual_seed(0)
    model = build_model(arch, 5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(run_chain(forward_chain(model, arch), x), model(x))


def test_forward_chain_names_follow_torchvision():
    model = build_skeleton("resnet18", 3)
    names = [n for n, _ in forward_chain(model, "resnet18")]
    assert names[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1.0"]
    assert names[-3:] == ["avgpool", "flatten", "fc"]
    vgg = [n for n, _ in forward_chain(build_skeleton("vgg11", 3), "vgg11")]
    assert vgg[0] == "features.0" and vgg[-9:] == ["avgpool", "flatten"] + [f"classifier.{i}" for i in range(7)]


def test_frozen_prefix_stops_at_training_parameters_dropout_and_moving_batchnorm():
    model = build_skeleton("resnet18", 3)
    set_frozen(model, preset_frozen(model, "resnet18", "head"))
    steps = forward_chain(model, "resnet18")
    set_train_mode(model, bn_frozen_eval=True)
    n, why = frozen_prefix(steps)
    assert steps[n - 1][0] == "flatten" and why == "fc trains"
    set_train_mode(model, bn_frozen_eval=False)  # frozen BN would update its statistics
    n, why = frozen_prefix(steps)
    assert n == 1 and "bn1" in why

    vgg = build_skeleton("vgg11", 3)
    set_frozen(vgg, preset_frozen(vgg, "vgg11", "head"))
    steps = forward_chain(vgg, "vgg11")
    set_train_mode(vgg)
    n, why = frozen_prefix(steps)
    assert steps[n - 1][0] == "classifier.1" and "Dropout" in why


@pytest.mark.parametrize("arch, prefix", [("efficientnet_b0", "flatten"), ("convnext_tiny", "classifier.1")])
def test_frozen_blocks_skip_stochastic_depth_so_the_whole_backbone_is_cached(arch, prefix):
    """A frozen residual block computes its fixed function: its stochastic depth runs in eval mode
    (with the same switch as frozen BatchNorm), so a head-only run caches the whole backbone instead
    of stopping at the first block (EfficientNet-B0 head only, 10 epochs at 64 px on 2 CPU cores:
    1.8 s -> 0.6 s; ConvNeXt-T: 6.1 s -> 1.2 s)."""
    model = build_skeleton(arch, 3)
    set_frozen(model, preset_frozen(model, arch, "head"))
    steps = forward_chain(model, arch)
    set_train_mode(model, bn_frozen_eval=True)
    n, _ = frozen_prefix(steps)
    assert steps[n - 1][0] == prefix
    set_train_mode(model, bn_frozen_eval=False)
    n, why = frozen_prefix(steps)
    assert n <= 3 and ("StochasticDepth" in why or "BatchNorm" in why)  # the switch off: random again

    # with the last two stages training, their blocks keep stochastic depth; the frozen ones skip it
    set_frozen(model, preset_frozen(model, arch, "last2"))
    set_train_mode(model, bn_frozen_eval=True)
    kinds = set()
    for block in model.modules():
        for child in block.children():
            if isinstance(child, StochasticDepth):
                trains = any(p.requires_grad for p in block.parameters())
                assert child.training == trains
                kinds.add(trains)
    assert kinds == {True, False}




# --------------------------------------------------------------------------- prefix fingerprint


def test_fingerprint_follows_every_bit_of_the_prefix():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    steps = forward_chain(model, "resnet18")[:6]
    before = prefix_fingerprint(steps)
    assert prefix_fingerprint(steps) == before
    w = model.layer1[0].conv1.weight.data.view(-1)
    w[7] = torch.nextafter(w[7], torch.tensor(float("inf")))  # one ulp
    assert prefix_fingerprint(steps) != before
    model.bn1.running_mean.data[0] += 1  # buffers count too
    changed = prefix_fingerprint(steps)
    assert changed != before and prefix_fingerprint(forward_chain(model, "resnet18")[:5]) != changed


# --------------------------------------------------------------------------- features on disk, across runs


def test_a_second_run_on_the_same_prefix_reads_the_features_from_disk(folder, tmp_path):
    first, first_monitor = run(config_for(folder, "head"), tmp_path)
    assert first.summary.feature_cache["source"] == "computed"
    assert len(stored(tmp_path)) == 2  # train and val
    # Another learning rate and epoch count on the same frozen backbone: the prefix does not run.
    second, _ = run(config_for(folder, "head", lr=0.05, epochs=3), tmp_path)
    assert second.summary.feature_cache["source"] == "disk"
    assert len(stored(tmp_path)) == 2
    # Features from disk are the same tensors: the same config trains to the same bits.
    again, again_monitor = run(config_for(folder, "head"), tmp_path)
    assert again.summary.feature_cache["source"] == "disk"
    assert again_monitor.losses == first_monitor.losses
    assert torch.equal(again.state_dict["fc.weight"], first.state_dict["fc.weight"])


def test_a_sweeps_first_member_stores_the_others_prefixes_in_one_pass(folder, tmp_path, monkeypatch):
    """Surgical members share features: the head-only member's pass stores every shorter prefix the
    others need, and each of them then trains exactly as it would on features it computed itself."""
    sweep = SweepConfig(base=config_for(folder, "full", epochs=1), kind="surgical", stages=("layer2", "layer4"))
    configs = {m.label: c for m, c in zip(plan(sweep), member_configs(sweep, plan(sweep)))}
    assert configs["head"].share_features == ("layer1.1", "layer3.1", "flatten")  # what layer2, layer4, head start from
    head, _ = run(configs["head"], tmp_path)
    assert head.summary.feature_cache["source"] == "computed"
    assert len(stored(tmp_path)) == 2 * 3  # train and val, at three boundaries, from one pass
    shared, shared_monitor = run(configs["layer4"], tmp_path)
    assert shared.summary.feature_cache["source"] == "disk"
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "alone"))  # an empty cache
    alone, alone_monitor = run(configs["layer4"].replace(share_features=()), tmp_path)
    assert alone.summary.feature_cache["source"] == "computed"
    assert shared_monitor.losses == alone_monitor.losses


def test_timings_add_up_to_the_run(folder, tmp_path):
    result, _ = run(config_for(folder, "head"), tmp_path)
    t = result.summary.timings
    assert set(t) == {"data_s", "model_s", "features_s", "epochs_s", "finish_s"}
    assert all(v >= 0 for v in t.values()) and t["features_s"] > 0
    assert sum(t.values()) == pytest.approx(result.summary.total_time_s, abs=0.2)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},  # weights "none": another seed is another random backbone
        {"preset": "last1"},  # a shorter prefix (layer4 trains)
        {"image_size": (40, 40)},  # other decoded images
        {"precision": "bf16"},  # features in another dtype
    ],
)
def test_anything_the_features_depend_on_gives_new_ones(folder, tmp_path, change):
    run(config_for(folder, "head"), tmp_path)
    if "preset" in change:
        change = change | {"frozen": preset_frozen(build_skeleton("resnet18", len(CLASSES)), "resnet18", change["preset"])}
    result, _ = run(config_for(folder, **({"preset": "head"} | change)), tmp_path)
    assert result.summary.feature_cache["used"]
    assert result.summary.feature_cache["source"] == "computed"
    assert len(stored(tmp_path)) == 4


def test_an_edited_image_gives_new_features(folder, tmp_path):
    run(config_for(folder, "head"), tmp_path)
    image = next((folder / CLASSES[0]).glob("*.png"))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    result, _ = run(config_for(folder, "head"), tmp_path)
    assert result.summary.feature_cache["source"] == "computed"


def test_a_damaged_feature_file_is_recomputed_not_trusted(folder, tmp_path):
    first, first_monitor = run(config_for(folder, "head"), tmp_path)
    for path in stored(tmp_path):
        path.write_bytes(b"not a tensor")
    again, again_monitor = run(config_for(folder, "head"), tmp_path)
    assert again.summary.feature_cache["source"] == "computed"
    assert again_monitor.losses == first_monitor.losses


@pytest.mark.parametrize("spoil", [lambda x: x.double(), lambda x: x.half(), lambda x: x.index_fill(0, torch.tensor([0]), float("nan")),
                                   lambda x: x.index_fill(0, torch.tensor([1]), float("inf"))],
                         ids=["float64", "float16", "nan", "inf"])
def test_a_feature_file_of_the_right_shape_but_another_dtype_or_not_finite_is_recomputed(folder, tmp_path, spoil):
    """It failed every later run on that data and prefix until deleted by hand."""
    first, first_monitor = run(config_for(folder, "head"), tmp_path)
    for path in stored(tmp_path):
        torch.save(spoil(torch.load(path, weights_only=True)).contiguous(), path)
    again, again_monitor = run(config_for(folder, "head"), tmp_path)
    assert again.summary.feature_cache["source"] == "computed"
    assert again_monitor.losses == first_monitor.losses and again.summary.val_acc == first.summary.val_acc


def test_prune_evicts_least_recently_used_first(tmp_path):
    sizes = {}
    for i in range(4):
        path = tmp_path / f"features-{i}.pt"
        assert files.save_tensor(path, torch.zeros(1000, dtype=torch.uint8), budget=1 << 20)
        os.utime(path, ns=(i * 10**9, i * 10**9))
        sizes[path.name] = path.stat().st_size
    assert files.load_tensor(tmp_path / "features-0.pt") is not None  # a hit makes 0 the most recent
    (tmp_path / "decoded-x.pt").write_bytes(b"x" * 5000)  # another kind: never counted or deleted
    budget = sizes["features-0.pt"] + sizes["features-3.pt"]
    deleted = files.prune(tmp_path, "features-*.pt", budget)
    assert sorted(p.name for p in deleted) == ["features-1.pt", "features-2.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoded-x.pt", "features-0.pt", "features-3.pt"]


def test_a_tensor_over_half_the_budget_is_not_stored(tmp_path):
    assert not files.save_tensor(tmp_path / "features-big.pt", torch.zeros(600), budget=4000)
    assert not (tmp_path / "features-big.pt").exists()
