"""core.estimate.memory: a whole run's device memory, estimated before it starts and held against a real run.

The runs are the engine's own (`core.engine.train`) on the CPU at 64 px,
measured with `core.estimate.LiveBytes` (the peak of live tensor bytes, what
`torch.cuda.max_memory_allocated` reports on a GPU).
"""

from __future__ import annotations

import pytest
import torch

from core.data import load_dataset
from core.engine import train
from core.estimate import LiveBytes, cached_calls, cost_profile, run_memory
from tests.test_training import Recorder, _isolated, config_for, draw_folder  # noqa: F401 (an autouse fixture)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return draw_folder(tmp_path_factory.mktemp("shapes"), per_class=12, size=64)


def estimate_for(config, device=CPU):
    ds = load_dataset(config.dataset, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                      seed=config.seed)
    profile = cost_profile(config.arch, config.num_classes, config.image_size)
    return run_memory(profile, config, train_images=len(ds.train), val_images=len(ds.val), device=device,
                      test_images=len(ds.test))


@pytest.mark.parametrize("arch,preset,changes", [
    ("resnet18", "head", {}),  # feature cache: peaks while computing the features
    ("resnet18", "head", {"feature_cache": False}),  # the whole frozen backbone runs every step
    ("resnet18", "full", {}),
    ("resnet18", "classifier", {"precision": "bf16"}),
    ("mobilenet_v3_large", "classifier", {"augment": ("flip",)}),  # augmentation: no cache
    ("densenet121", "head", {}),
])
def test_run_estimate_matches_the_peak_of_a_real_run(folder, tmp_path, arch, preset, changes):
    config = config_for(folder, preset=preset, arch=arch, image_size=(64, 64), **changes)
    est = estimate_for(config)
    with LiveBytes(device_type="cpu") as mem:  # meta tensors (shape checks on skeletons) hold no memory
        result = train(config, Recorder(), device=CPU, runs_dir=tmp_path / "runs")
    assert est.feature_cache.used == result.summary.feature_cache["used"]
    assert est.feature_cache.prefix == result.summary.feature_cache["prefix"]
    assert est.peak_bytes == pytest.approx(mem.peak, rel=0.03)


def test_parts_of_the_estimate(folder):
    config = config_for(folder, preset="head", arch="resnet18", image_size=(64, 64))
    est = estimate_for(config)
    n = est.images  # training and validation images: what the feature cache covers
    assert n == 30
    assert est.data_bytes == (n + 6) * 3 * 64 * 64  # uint8, the 6 test images too
    assert est.feature_cache.used and est.feature_cache.prefix == "flatten"
    assert est.features_bytes == n * 512 * 4  # ResNet-18's pooled features, fp32 on the CPU
    assert est.step.cached_calls == len(cost_profile("resnet18", 3, (64, 64)).calls) - 1  # all but fc
    assert est.audit_bytes == 4 * est.step.frozen + sum(  # frozen weights and the frozen BatchNorms' buffers
        b.numel() * b.element_size() for name, b in torch.nn.Module.named_buffers(_resnet18()))
    assert est.checkpoint_bytes == 4 * est.step.trainable + est.step.weights_bytes - 4 * est.step.total
    assert est.drift_bytes == 4 * est.step.trainable  # the layer drift's start copy of the trainable fc
    assert est.drift_diff_bytes == 4 * 512 * 3  # fc.weight, the largest trainable tensor
    assert est.best_bytes == est.drift_bytes + est.checkpoint_bytes - 4 * est.step.trainable  # trainable + buffers
    assert estimate_for(config.replace(keep="last")).best_bytes == 0
    assert set(est.moments) == {"training step", "evaluation", "feature pass", "layer drift", "saving"}
    assert est.peak_bytes == max(est.moments.values())
    assert est.peak_moment in est.moments
    rows = est.to_rows()
    assert rows[-1]["quantity"].startswith("Peak for the run (during ")

    # without the cache the features are neither stored nor computed, and every step runs the backbone
    off = estimate_for(config.replace(feature_cache=False))
    assert not off.feature_cache.used and off.features_bytes == off.feature_pass_bytes == 0
    assert "feature pass" not in off.moments
    assert off.step.working_bytes > est.step.working_bytes


def test_on_a_gpu_only_device_memory_counts(folder):
    """The audit and checkpoint copies live in host memory when training on a GPU (device type only
    matters here: the estimate reads free memory from CUDA only when CUDA is there)."""
    config = config_for(folder, preset="head", arch="resnet18", image_size=(64, 64))
    mps = estimate_for(config, device=torch.device("mps"))
    assert mps.audit_bytes == mps.checkpoint_bytes == mps.drift_bytes == mps.drift_diff_bytes == 0
    assert "saving" not in mps.moments and "layer drift" not in mps.moments


def test_cached_calls_counts_leading_calls_inside_the_prefix():
    profile = cost_profile("resnet18", 3, (64, 64))
    assert cached_calls(profile, []) == 0
    assert cached_calls(profile, ["conv1", "bn1", "relu", "maxpool"]) == 4
    layer1 = cached_calls(profile, ["conv1", "bn1", "relu", "maxpool", "layer1"])
    assert profile.calls[layer1].path.startswith("layer2.")
    assert all(c.path.startswith("layer1.") for c in profile.calls[4:layer1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["full", "head"])
def test_run_estimate_on_cuda(folder, tmp_path, preset):
    """On a GPU the measured peak also holds cuDNN/cuBLAS workspaces, which the estimate leaves out."""
    config = config_for(folder, preset=preset, arch="resnet18", image_size=(64, 64))
    device = torch.device("cuda")
    est = estimate_for(config, device=device)
    result = train(config, Recorder(), device=device, runs_dir=tmp_path / "runs")
    assert est.peak_bytes == pytest.approx(result.summary.peak_mem_bytes, rel=0.25)


def _resnet18():
    from core.models import build_skeleton
    return build_skeleton("resnet18", 3)
