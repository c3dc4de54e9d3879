"""The training engine on tiny inputs: a generated 3-class folder of 32 px PNGs, resnet18, 1-2 epochs.

Each run takes a fraction of a second on a 2-core CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from core.config import RunConfig
from core.data import DatasetError
from core.data.tensors import normalize
from core.engine import FAULT_ENV, build_optimizer, inputs, train
from core.engine.augment import (
    augment_batch,
    color_jitter,
    random_flip,
    random_resized_crop,
)
from core.engine.best import KeptWeights, best_index, plateaued
from core.engine.inputs import Shipped, decode_dataset, shipped_weights, split_index
from core.engine.loop import batch_slices
from core.freezing import is_frozen_bn, preset_frozen, set_frozen
from core.jobs import RunCancelled
from core.models import build_model, build_skeleton, forward_chain, prepare_model, run_chain

CPU = torch.device("cpu")
CLASSES = ("disc", "box", "wedge")


def draw_folder(root, per_class=10, size=32, seed=0):
    """An ImageFolder of `per_class` noisy PNGs per class: a disc, a box or a wedge on clutter."""
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 70, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(image)
            x, y = (int(v) for v in rng.integers(2, size // 2, 2))
            s = int(rng.integers(size // 4, size // 2))
            colour = tuple(int(v) for v in rng.integers(140, 256, 3))
            if ci == 0:
                draw.ellipse([x, y, x + s, y + s], fill=colour)
            elif ci == 1:
                draw.rectangle([x, y, x + s, y + s], fill=colour)
            else:
                draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=colour)
            image.save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Decoded-image caches and the like go to the test's own folder; no fault is armed."""
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv(FAULT_ENV, raising=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return draw_folder(tmp_path_factory.mktemp("shapes"))


class Recorder:
    """A `Monitor` that keeps everything; `stop_at`: should_stop turns true at that call."""

    def __init__(self, stop_at: int | None = None):
        self.info, self.steps, self.epochs = None, [], []
        self.stop_at, self.stop_checks = stop_at, 0

    def on_start(self, info):
        self.info = info

    def on_step(self, step, epoch, loss):
        self.steps.append((step, epoch, loss))

    def on_epoch(self, record):
        self.epochs.append(record)

    def should_stop(self):
        self.stop_checks += 1
        return self.stop_at is not None and self.stop_checks >= self.stop_at

    @property
    def losses(self):
        return [loss for _, _, loss in self.steps]


def config_for(folder, preset="head", arch="resnet18", **changes) -> RunConfig:
    frozen = preset_frozen(build_skeleton(arch, len(CLASSES)), arch, preset)
    base = dict(arch=arch, num_classes=len(CLASSES), dataset=str(folder), image_size=(32, 32), preset=preset,
                frozen=frozen, epochs=2, batch_size=8, lr=0.01, seed=0)
    return RunConfig(**(base | changes))


def run(config, tmp_path, monitor=None):
    monitor = monitor or Recorder()
    return train(config, monitor, device=CPU, runs_dir=tmp_path / "runs"), monitor


# --------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("preset", ["full", "head", "classifier", "last2"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_holds_exactly_the_trainable_parameters(preset, optimizer):
    model = build_skeleton("resnet18", 3)
    set_frozen(model, preset_frozen(model, "resnet18", preset))
    config = RunConfig(arch="resnet18", num_classes=3, optimizer=optimizer, lr=0.1, backbone_lr_mult=0.1)
    opt, groups = build_optimizer(model, config)
    assert not opt.defaults["fused"]  # a meta-device model: no fused kernels there
    opt, groups = build_optimizer(model.to_empty(device="cpu"), config)
    assert opt.defaults["fused"]  # one kernel for the whole update on the CPU (and CUDA)
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(in_opt) == len(set(in_opt))
    assert set(in_opt) == {id(p) for p in model.parameters() if p.requires_grad}
    names = [g["name"] for g in opt.param_groups]
    assert names == (["head"] if preset in ("head", "classifier") else ["head", "backbone"])  # ResNet: classifier = fc
    assert [g["name"] for g in groups] == names
    for g in groups:
        assert g["lr"] == (0.1 if g["name"] == "head" else pytest.approx(0.01))
        assert g["num_params"] == sum(p.numel() for og in opt.param_groups if og["name"] == g["name"] for p in og["params"])


def test_nothing_trainable_is_refused():
    model = build_skeleton("resnet18", 3)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing would train"):
        build_optimizer(model, RunConfig(arch="resnet18", num_classes=3))


# --------------------------------------------------------------------------- runs


def test_head_only_run_keeps_frozen_weights_and_bn_statistics(folder, tmp_path):
    config = config_for(folder, "last1", feature_cache=False)
    result, monitor = run(config, tmp_path)
    audit = result.summary.freeze_audit
    assert audit == {"ok": True, "checked_tensors": audit["checked_tensors"], "changed": []}
    assert audit["checked_tensors"] > 0
    # Our own check against the same seeded starting model: frozen BN buffers untouched, trainable layer moved.
    torch.manual_seed(0)
    start = build_model("resnet18", 3)
    set_frozen(start, config.frozen)
    start_state = start.state_dict()
    frozen_bn_buffers = [f"{path}.{b}" for path, m in start.named_modules() if is_frozen_bn(m)
                         for b, _ in m.named_buffers(recurse=False)]
    assert frozen_bn_buffers
    for name in frozen_bn_buffers:
        assert torch.equal(result.state_dict[name], start_state[name]), name
    assert not torch.equal(result.state_dict["layer4.1.conv2.weight"], start_state["layer4.1.conv2.weight"])
    assert not torch.equal(result.state_dict["layer4.1.bn2.running_mean"], start_state["layer4.1.bn2.running_mean"])
    # The saved state: trainable parameters and all buffers, nothing frozen.
    trainable = {n for n, p in start.named_parameters() if p.requires_grad}
    assert set(result.state_dict) == trainable | {n for n, _ in start.named_buffers()}
    assert "conv1.weight" not in result.state_dict
    # The metrics contract.
    assert monitor.info["total_steps"] == len(monitor.steps) == 2 * len(batch_slices(monitor.info["train_size"], 8))
    record = monitor.epochs[-1]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "per_class_acc", "confusion",
                "epoch_time_s", "images_per_s", "peak_mem_bytes", "lr"):
        assert key in record, key
    assert len(record["per_class_acc"]) == 3 and len(record["confusion"]) == 3
    assert sum(map(sum, record["confusion"])) == monitor.info["val_size"]
    assert result.summary.classes == sorted(CLASSES)


def test_frozen_bn_statistics_move_when_the_switch_is_off(folder, tmp_path):
    config = config_for(folder, "head", bn_frozen_eval=False, epochs=1)
    result, _ = run(config, tmp_path)
    torch.manual_seed(0)
    start = build_model("resnet18", 3).state_dict()
    assert not torch.equal(result.state_dict["bn1.running_mean"], start["bn1.running_mean"])
    audit = result.summary.freeze_audit
    assert audit["ok"] and "bn1.running_mean" not in audit["changed"]  # not supposed to stay: not checked
    with_switch, _ = run(config.replace(bn_frozen_eval=True), tmp_path)
    assert with_switch.summary.freeze_audit["checked_tensors"] > audit["checked_tensors"]
    assert torch.equal(with_switch.state_dict["bn1.running_mean"], start["bn1.running_mean"])


def test_seeded_runs_repeat_exactly(folder, tmp_path):
    config = config_for(folder, "last1", augment=("crop", "flip", "jitter"))
    _, first = run(config, tmp_path)
    _, second = run(config, tmp_path)
    assert first.losses == second.losses
    assert [r["val_loss"] for r in first.epochs] == [r["val_loss"] for r in second.epochs]
    _, other = run(config.replace(seed=1), tmp_path)
    assert other.losses != first.losses


def test_cancel_stops_at_the_next_batch(folder, tmp_path):
    monitor = Recorder(stop_at=3)  # true at the third batch boundary
    with pytest.raises(RunCancelled):
        run(config_for(folder, "full", feature_cache=False), tmp_path, monitor)
    assert monitor.stop_checks == 3
    assert [s for s, _, _ in monitor.steps] == [1, 2]


def test_feature_cache_for_head_only_matches_the_full_forward(folder, tmp_path):
    cached, with_cache = run(config_for(folder, "head"), tmp_path)
    plain, without = run(config_for(folder, "head", feature_cache=False), tmp_path)
    assert cached.summary.feature_cache["used"] and cached.summary.feature_cache["prefix"] == "flatten"
    assert with_cache.info["feature_cache"]["used"]
    assert not plain.summary.feature_cache["used"] and plain.summary.feature_cache["reason"]
    assert with_cache.losses == pytest.approx(without.losses, rel=1e-4)
    assert cached.summary.val_acc == plain.summary.val_acc
    assert torch.allclose(cached.state_dict["fc.weight"], plain.state_dict["fc.weight"], atol=1e-5)


def test_feature_cache_is_off_with_augmentation(folder, tmp_path):
    result, monitor = run(config_for(folder, "head", augment=("flip",), epochs=1), tmp_path)
    cache = result.summary.feature_cache
    assert not cache["used"] and "augmentation" in cache["reason"]
    assert monitor.info["feature_cache"] == cache | {"build_s": cache["build_s"]}


def test_gradual_unfreezing_switches_groups(folder, tmp_path):
    result, monitor = run(config_for(folder, "full", unfreeze_after=1, epochs=2), tmp_path)
    unfreezing = result.summary.gradual_unfreezing
    assert unfreezing["after_epoch"] == 1
    assert [g["name"] for g in unfreezing["head_only_groups"]] == ["head"]
    assert [g["name"] for g in unfreezing["groups"]] == ["head", "backbone"]
    assert unfreezing["head_only_feature_cache"]["used"]  # the head-only phase trains on cached features
    assert list(monitor.epochs[0]["lrs"]) == ["head"] and list(monitor.epochs[1]["lrs"]) == ["head", "backbone"]
    assert monitor.epochs[1]["lrs"]["backbone"] == pytest.approx(0.001)
    assert result.summary.freeze_audit["checked_tensors"] == 0  # nothing is frozen at the end
    assert "conv1.weight" in result.state_dict


@pytest.mark.parametrize(("fault", "error"), [("oom@2", torch.OutOfMemoryError), ("error@1", RuntimeError)])
def test_fault_injection(folder, tmp_path, monkeypatch, fault, error):
    monkeypatch.setenv(FAULT_ENV, fault)
    monitor = Recorder()
    with pytest.raises(error, match="simulated"):
        run(config_for(folder, "head", epochs=1), tmp_path, monitor)
    assert len(monitor.steps) <= int(fault.split("@")[1])


def test_a_bad_fault_spec_is_an_error(folder, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "boom")
    with pytest.raises(ValueError, match=FAULT_ENV):
        run(config_for(folder, "head", epochs=1), tmp_path)


def test_image_corrupted_after_the_check_is_a_dataset_error(tmp_path, monkeypatch):
    root = draw_folder(tmp_path / "fragile", per_class=6)
    real_load = inputs.load_dataset

    def load_then_corrupt(*args, **kwargs):
        dataset = real_load(*args, **kwargs)
        dataset.train[0].path.write_bytes(b"\x89PNG\r\n\x1a\n not a png any more")
        return dataset

    monkeypatch.setattr(inputs, "load_dataset", load_then_corrupt)
    with pytest.raises(DatasetError):
        run(config_for(root, "head", epochs=1), tmp_path)


def test_class_count_must_match_the_head(folder, tmp_path):
    with pytest.raises(ValueError, match="3 classes"):
        run(config_for(folder, "head").replace(num_classes=5, frozen=()), tmp_path)


# --------------------------------------------------------------------------- augmentation and batching


def test_full_box_crop_is_the_identity():
    x = torch.rand(3, 3, 16, 20)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(random_resized_crop(x, g, scale=(1, 1), ratio=(20 / 16, 20 / 16)), x, atol=1e-4)


def test_augmentations_are_per_sample():
    x = torch.rand(1, 3, 16, 16).expand(64, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(0)
    flipped = random_flip(x, g)
    is_flipped = [torch.equal(f, x[0].flip(-1)) for f in flipped]
    assert 10 < sum(is_flipped) < 54 and all(f or torch.equal(s, x[0]) for f, s in zip(is_flipped, flipped))
    crops = random_resized_crop(x, g)
    assert crops.shape == x.shape and len({round(c.sum().item(), 3) for c in crops}) > 32
    jittered = color_jitter(x, g)
    assert jittered.min() >= 0 and jittered.max() <= 1
    assert len({round(j.mean().item(), 4) for j in jittered}) > 32
    out = augment_batch(x, ("crop", "flip", "jitter"), g)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_batch_slices_never_leave_a_single_sample():
    assert batch_slices(17, 8) == [(0, 8), (8, 17)]
    assert batch_slices(16, 8) == [(0, 8), (8, 16)]
    assert batch_slices(3, 8) == [(0, 3)]
    assert sum(e - s for s, e in batch_slices(101, 10)) == 101
    assert math.ceil(18 / 8) == len(batch_slices(18, 8))


def test_padded_batches_without_autograd_give_the_same_results():
    """On CUDA the passes without autograd pad their last batch to the training batch size (one input
    shape per run for cuDNN's autotuning); the padding must not change a single result."""
    from core.data import preprocess_for
    from core.engine.features import compute_features
    from core.engine.loop import Feeder, Loop, Split, evaluate

    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    split = Split(torch.randint(0, 256, (13, 3, 32, 32), dtype=torch.uint8), torch.arange(13) % 3)
    feeder = Feeder(CPU, preprocess_for("resnet18", "none", (32, 32)), (), torch.Generator())
    plain, padded = (Loop(Recorder(), feeder, None, 4, pad_batches=pad) for pad in (False, True))
    assert [(len(i), r) for i, r in padded.no_grad_batches(13)] == [(4, 4), (4, 4), (4, 4), (4, 1)]
    assert [(len(i), r) for i, r in plain.no_grad_batches(13)] == [(4, 4), (4, 4), (4, 4), (1, 1)]
    a, b = (evaluate(model, split, loop, 3, features=False) for loop in (plain, padded))
    assert a["confusion"] == b["confusion"] and a["val_acc"] == b["val_acc"]
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    prefix = forward_chain(model, "resnet18")[:8]  # up to layer2.1
    fa, fb = (compute_features(prefix, split, loop)[0].x for loop in (plain, padded))
    assert fa.shape == fb.shape == (13, 128, 4, 4)
    assert torch.allclose(fa, fb, atol=1e-5)


def test_chain_prefix_output_feeds_the_tail(folder):
    # The cached prefix's output, run through the remaining steps, is the model's output.
    model = build_model("resnet18", 3).eval()
    steps = forward_chain(model, "resnet18")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(run_chain(steps[6:], run_chain(steps[:6], x)), model(x))
    assert isinstance(steps[-1][1], nn.Linear)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["head", "last1"])
def test_cuda_run_bf16_channels_last(folder, tmp_path, preset):
    for augment in ((), ("crop", "flip", "jitter")):
        monitor = Recorder()
        config = config_for(folder, preset, augment=augment)
        result = train(config, monitor, device=torch.device("cuda"), runs_dir=tmp_path / "runs")
        summary = result.summary
        assert summary.device.startswith("cuda") and summary.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
        assert summary.freeze_audit["ok"] and summary.freeze_audit["checked_tensors"] > 0
        assert summary.feature_cache["used"] == (not augment)
        assert summary.peak_mem_bytes > 0 and all(math.isfinite(loss) for loss in monitor.losses)
        assert all(t.device.type == "cpu" for t in result.state_dict.values())


def test_images_per_second_is_images_over_training_time_not_a_mean_of_rates(folder):
    """The mean of per-epoch rates let short epochs dominate (1,700 reported, 199 real for one run)."""
    config = RunConfig(dataset=str(folder), num_classes=3, image_size=(32, 32), epochs=3, batch_size=8,
                       preset="head", frozen=preset_frozen(build_skeleton("resnet18", 3), "resnet18", "head"))
    rec = Recorder()
    summary = train(config, rec, device=CPU).summary
    epochs = rec.epochs
    n_train = summary.train_size
    assert all(e["images_per_s"] == pytest.approx(n_train / e["train_time_s"]) for e in epochs)
    assert summary.images_per_s == pytest.approx(n_train * 3 / sum(e["train_time_s"] for e in epochs))
    assert epochs[0]["train_time_s"] > epochs[1]["train_time_s"]  # the first epoch computes the cached features


def test_a_class_without_validation_images_has_no_accuracy_not_zero(tmp_path):
    root = draw_folder(tmp_path / "ds", per_class=4)
    (root / "train").mkdir()
    (root / "val").mkdir()
    for name in CLASSES:
        (root / name).rename(root / "train" / name)
    (root / "val" / "disc").mkdir()
    (root / "val" / "box").mkdir()
    for name in ("disc", "box"):  # wedge has training images only
        for f in sorted((root / "train" / name).iterdir())[:2]:
            f.rename(root / "val" / name / f.name)
    config = RunConfig(dataset=str(root), num_classes=3, image_size=(32, 32), epochs=1, batch_size=4)
    rec = Recorder()
    summary = train(config, rec, device=CPU).summary
    acc = summary.per_class_acc
    assert summary.classes == ["box", "disc", "wedge"] and acc[2] is None
    assert all(a is not None for a in acc[:2])
    confusion = rec.epochs[-1]["confusion"]
    assert summary.val_acc == pytest.approx((confusion[0][0] + confusion[1][1]) / 4)


def test_a_run_on_shipped_inputs_trains_as_the_run_that_reads_them(folder, tmp_path):
    """What a Ray member gets (the dataset decoded once, its split, its weights) trains to the same bits."""
    config = config_for(folder, "head", seed=3, epochs=1)
    local, local_monitor = run(config, tmp_path)
    decoded = decode_dataset(config)
    shipped = Shipped(decoded, split_index(config, decoded), shipped_weights(config, tmp_path / "runs"))
    remote_monitor = Recorder()
    remote = train(config, remote_monitor, device=CPU, shipped=shipped)
    assert remote_monitor.losses == local_monitor.losses
    assert torch.equal(remote.state_dict["fc.weight"], local.state_dict["fc.weight"])
    assert remote.summary.val_acc == local.summary.val_acc
    assert len(decoded.paths) == remote.summary.train_size + remote.summary.val_size + remote.summary.test_size
    assert remote.summary.test_acc == local.summary.test_acc and remote.summary.splits == local.summary.splits
    other_seed = split_index(config.replace(seed=4), decoded)
    assert other_seed.index["val"] != shipped.split.index["val"]  # the seed draws the split; the images stay


# --------------------------------------------------------------------------- kept weights, early stop, test


def accuracy_of(state_dict, config, split):
    """`split`'s accuracy (as `prepare_data` builds it) for the weights a run saved, evaluated apart
    from the engine: the run's starting model with the saved tensors loaded, batch by batch."""
    torch.manual_seed(config.seed)
    model, _ = prepare_model(config.arch, config.num_classes, "none")
    model.load_state_dict(state_dict, strict=False)
    model.eval()
    data = inputs.prepare_data(config, CPU)
    images = data.test if split == "test" else data.splits[split]
    with torch.no_grad():
        predicted = torch.cat([model(normalize(images.x[i:i + config.batch_size], data.pre)).argmax(1)
                               for i in range(0, len(images), config.batch_size)])
    return (predicted == images.y).sum().item() / len(images)


def test_keep_best_ends_with_the_best_validation_epochs_weights(folder, tmp_path):
    config = config_for(folder, "head", epochs=5, lr=0.1, keep="best")
    result, monitor = run(config, tmp_path)
    accs = [e["val_acc"] for e in monitor.epochs]
    summary = result.summary
    assert accs.index(max(accs)) < len(accs) - 1  # the best epoch is not the last: the choice is a real one
    assert summary.weights_epoch == summary.best_epoch == accs.index(max(accs)) + 1
    assert summary.val_acc == summary.best_val_acc == max(accs) and summary.last_val_acc == accs[-1]
    assert summary.per_class_acc == monitor.epochs[summary.weights_epoch - 1]["per_class_acc"]
    assert accuracy_of(result.state_dict, config, "val") == summary.val_acc  # re-evaluated: the kept weights


def test_keep_last_ends_with_the_last_epochs_weights(folder, tmp_path):
    config = config_for(folder, "head", epochs=5, lr=0.1, keep="last")
    result, monitor = run(config, tmp_path)
    assert result.summary.weights_epoch == result.summary.epochs_done == 5
    assert result.summary.val_acc == monitor.epochs[-1]["val_acc"]
    assert accuracy_of(result.state_dict, config, "val") == result.summary.val_acc


def test_kept_weights_are_restored_exactly():
    model = build_model("resnet18", 3, weights="none")  # real values (an emptied skeleton may hold NaNs)
    set_frozen(model, preset_frozen(model, "resnet18", "head"))
    kept = KeptWeights(frozenset(n for n, p in model.named_parameters() if p.requires_grad))
    kept.offer(model, 0.5)
    best = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        model.fc.weight.add_(1.0)
        model.bn1.running_mean.add_(1.0)
    kept.offer(model, 0.4)  # worse: not copied
    kept.restore(model)
    assert kept.epoch == 1
    assert all(torch.equal(t, best[n]) for n, t in model.state_dict().items())


def test_early_stopping_ends_a_run_on_a_plateau(folder, tmp_path):
    config = config_for(folder, "head", epochs=6, lr=1e-9, early_stop=2)  # too small a rate to move anything
    result, monitor = run(config, tmp_path)
    assert [e["epoch"] for e in monitor.epochs] == [1, 2, 3]  # epoch 1 the best, two more without a better one
    assert result.summary.epochs_done == 3 and result.summary.epochs == 6 and result.summary.weights_epoch == 1
    assert plateaued([0.5, 0.6, 0.6, 0.6], 2) and not plateaued([0.5, 0.6, 0.6], 2)
    assert not plateaued([0.5, 0.5, 0.5], 0) and best_index([0.2, 0.7, 0.7]) == 1


def test_a_run_is_graded_once_on_the_held_out_test_split(folder, tmp_path):
    config = config_for(folder, "head", epochs=2)
    result, _ = run(config, tmp_path)
    summary = result.summary
    assert summary.splits["train"] + summary.splits["val"] + summary.splits["test"] == 30
    assert summary.splits["test"] == summary.test_size == 6 and len(summary.test_per_class_acc) == 3
    assert summary.test_acc == accuracy_of(result.state_dict, config, "test")
    assert sum(map(sum, summary.test_confusion)) == 6
    other = run(config.replace(seed=1), tmp_path)[0].summary
    assert other.splits["test_digest"] == summary.splits["test_digest"]  # the same test images for every seed
    assert other.splits["val"] == summary.splits["val"]
