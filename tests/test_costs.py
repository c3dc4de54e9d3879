"""core.estimate (costs, profile, exact, units): the per-click estimate against the whole-graph measurement, memory lines, formatting."""

import time

import pytest
import torch

from core.estimate import (
    Costs,
    LiveBytes,
    compare_to_full,
    cost_profile,
    estimate,
    human_bytes,
    human_flops,
    measure_exact,
)
from core.freezing import layer_tree, preset_frozen, set_frozen, set_train_mode
from core.models import build_model, build_skeleton

SIZE = (64, 64)
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def profiles():
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = cost_profile(arch, NUM_CLASSES, SIZE)
        return cache[arch]

    return get


def frozen_for(arch, preset):
    return preset_frozen(build_skeleton(arch, NUM_CLASSES), arch, preset)


def close(a, b, rel=0.05):
    return a == b or abs(a - b) <= rel * max(abs(b), 1)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "mobilenet_v3_large"])
@pytest.mark.parametrize("preset", ["full", "head", "classifier", "last2"])
def test_estimate_matches_the_whole_graph_measurement(profiles, arch, preset):
    frozen = frozen_for(arch, preset)
    est = estimate(profiles(arch), frozen, batch_size=2)
    exact = measure_exact(arch, NUM_CLASSES, SIZE, frozen, batch_size=2)
    assert est.fwd_flops == exact.fwd_flops  # every matmul/conv lives in a leaf module: exact
    assert close(est.bwd_flops, exact.bwd_flops)
    assert close(est.activations_bytes, exact.activations_bytes)
    # what we actually observe: equal to the FLOP and (up to BatchNorm statistics x batch) the byte
    assert est.bwd_flops == exact.bwd_flops
    assert close(est.activations_bytes, exact.activations_bytes, rel=0.001)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large", "densenet121"])
def test_small_inputs_whose_maps_shrink_to_one_pixel(arch):
    """At 32 px these nets end in 1x1 maps: a BatchNorm there sees one value per channel in the
    batch-of-one profile pass, which training mode refuses (the Model page used to fail here)."""
    profile = cost_profile(arch, NUM_CLASSES, (32, 32))
    assert profile.residual_bytes == 0
    for preset in ("full", "last2", "head"):
        frozen = frozen_for(arch, preset)
        est = estimate(profile, frozen, batch_size=2)
        exact = measure_exact(arch, NUM_CLASSES, (32, 32), frozen, batch_size=2)
        assert (est.fwd_flops, est.bwd_flops, est.activations_bytes) == (
            exact.fwd_flops, exact.bwd_flops, exact.activations_bytes)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "mobilenet_v3_large"])
def test_profile_misses_nothing_in_the_all_trainable_graph(profiles, arch):
    assert profiles(arch).residual_bytes == 0


def test_custom_set_inside_a_residual_block_is_exact(profiles):
    # only layer3.0.conv2 trains: the shortcut (downsample) input needs no grad, the chain rule would say it does
    tree = layer_tree(build_skeleton("resnet18", NUM_CLASSES), "resnet18")
    frozen = tree.canonical([not n.startswith("layer3.0.conv2.") for n in tree.param_names])
    est = estimate(profiles("resnet18"), frozen, batch_size=1)
    exact = measure_exact("resnet18", NUM_CLASSES, SIZE, frozen)
    assert (est.fwd_flops, est.bwd_flops, est.activations_bytes) == (
        exact.fwd_flops, exact.bwd_flops, exact.activations_bytes)


@pytest.mark.parametrize("bn_frozen_eval", [True, False])
def test_frozen_batchnorm_with_gradient_flowing_through(profiles, bn_frozen_eval):
    tree = layer_tree(build_skeleton("resnet18", NUM_CLASSES), "resnet18")
    frozen = tuple(n.path for n in tree.nodes if n.kind == "BatchNorm2d")
    est = estimate(profiles("resnet18"), frozen, batch_size=1, bn_frozen_eval=bn_frozen_eval)
    exact = measure_exact("resnet18", NUM_CLASSES, SIZE, frozen, bn_frozen_eval=bn_frozen_eval)
    assert est.bwd_flops == exact.bwd_flops
    assert est.activations_bytes == exact.activations_bytes


def test_convnext_layer_scale_and_blocks():
    arch = "convnext_tiny"
    profile = cost_profile(arch, NUM_CLASSES, (32, 32))
    assert profile.residual_bytes == 0
    tree = layer_tree(build_skeleton(arch, NUM_CLASSES), arch)
    only_layer_scales = tuple(n for n in tree.param_names if "layer_scale" not in n)  # freeze all but layer_scale
    for frozen in [only_layer_scales, ("features.0", "features.1.0.layer_scale", "features.1.1.block"),
                   frozen_for(arch, "last1")]:
        est = estimate(profile, frozen, batch_size=1)
        exact = measure_exact(arch, NUM_CLASSES, (32, 32), frozen)
        assert (est.fwd_flops, est.bwd_flops) == (exact.fwd_flops, exact.bwd_flops), frozen[:3]
        assert close(est.activations_bytes, exact.activations_bytes, rel=0.01), frozen[:3]


def test_flops_follow_the_arithmetic_of_vgg_linear_layers(profiles):
    profile = profiles("vgg11")
    n = NUM_CLASSES
    head = estimate(profile, frozen_for("vgg11", "head"))
    assert head.bwd_flops == 2 * 4096 * n  # grad of the head's weight only: no grad-input, nothing else
    classifier = estimate(profile, frozen_for("vgg11", "classifier"))
    assert classifier.bwd_flops == (
        2 * 25088 * 4096  # FC1: weight grad only (its input comes from the frozen trunk)
        + 2 * 2 * 4096 * 4096  # FC2: input and weight grads
        + 2 * 2 * 4096 * n  # head: input and weight grads
    )
    full = estimate(profile, ())
    assert head.fwd_flops == classifier.fwd_flops == full.fwd_flops  # the frozen trunk still runs forward
    # the first convolution needs no grad-input: backward is a bit less than twice the forward
    first_conv_fwd = 2 * 64 * 3 * 9 * 64 * 64
    assert full.bwd_flops == 2 * full.fwd_flops - first_conv_fwd


def test_memory_lines(profiles):
    profile = profiles("vgg11")
    frozen = frozen_for("vgg11", "head")
    sgd = estimate(profile, frozen, optimizer="sgd", batch_size=8)
    adam = estimate(profile, frozen, optimizer="adam", batch_size=8)
    assert sgd.trainable == 4096 * NUM_CLASSES + NUM_CLASSES
    assert sgd.trainable + sgd.frozen == sgd.total == profile.total
    assert sgd.weights_bytes == 4 * sgd.total  # VGG-11 has no buffers
    assert sgd.grads_bytes == 4 * sgd.trainable
    assert sgd.optimizer_bytes == 4 * sgd.trainable
    assert adam.optimizer_bytes == 2 * 4 * sgd.trainable
    assert sgd.activations_bytes == 8 * 4096 * 4  # the head saves its input, nothing else
    assert sgd.casts_bytes == 0  # fp32: autocast makes no copies
    # the frozen convolutions still run: their widest input and output are in flight at once
    assert sgd.working_bytes > 10 * sgd.activations_bytes
    assert sgd.total_bytes == (sgd.weights_bytes + sgd.grads_bytes + sgd.optimizer_bytes + sgd.activations_bytes
                               + sgd.working_bytes)
    bf16 = estimate(profile, frozen, optimizer="sgd", batch_size=8, precision="bf16")
    assert bf16.casts_bytes == 2 * sgd.trainable  # the head's weight and bias, in bf16


def test_batch_and_precision_scale_activations(profiles):
    profile = profiles("resnet18")
    one = estimate(profile, (), batch_size=1)
    two = estimate(profile, (), batch_size=2)
    many = estimate(profile, (), batch_size=16)
    bf16 = estimate(profile, (), batch_size=16, precision="bf16")
    # linear in the batch, plus BatchNorm's per-channel statistics once per batch
    per_image = two.activations_bytes - one.activations_bytes
    assert many.activations_bytes == one.activations_bytes + 15 * per_image
    assert 0 < one.activations_bytes - per_image < 0.1 * per_image
    assert many.activations_bytes == measure_exact("resnet18", NUM_CLASSES, SIZE, (), batch_size=16).activations_bytes
    assert many.fwd_flops == one.fwd_flops  # per image
    # float activations halve; max-pool indices (int64) keep their size
    assert many.activations_bytes / 2 < bf16.activations_bytes < 0.55 * many.activations_bytes
    assert bf16.weights_bytes == many.weights_bytes and bf16.grads_bytes == many.grads_bytes


def test_compare_to_full_and_rows(profiles):
    profile = profiles("resnet18")
    full = estimate(profile, ())
    head = estimate(profile, frozen_for("resnet18", "head"))
    assert compare_to_full(full, full)["compute_pct"] == pytest.approx(100)
    cmp = compare_to_full(head, full)
    assert 30 < cmp["compute_pct"] < 40  # forward only, plus the head: about a third of fwd+bwd
    assert cmp["memory_pct"] < 50
    rows = head.to_rows()
    assert [r["quantity"] for r in rows][:3] == ["Trainable parameters", "Frozen parameters", "Total parameters"]
    assert len(rows) == 11 and all(isinstance(r["value"], str) for r in rows)
    assert isinstance(head, Costs)


def test_bad_arguments(profiles):
    with pytest.raises(ValueError, match="optimizer"):
        estimate(profiles("vgg11"), (), optimizer="lbfgs")
    with pytest.raises(ValueError, match="precision"):
        estimate(profiles("vgg11"), (), precision="fp8")
    with pytest.raises(ValueError, match="too small"):
        cost_profile("alexnet", NUM_CLASSES, (16, 16))


def test_estimate_is_fast_enough_for_every_click():
    profile = cost_profile("resnet50", NUM_CLASSES, (224, 224))
    frozen = frozen_for("resnet50", "last2")
    start = time.perf_counter()
    for _ in range(50):
        estimate(profile, frozen)
    assert (time.perf_counter() - start) / 50 < 0.005


def test_human_share_never_rounds_a_real_share_away():
    from core.estimate import human_share

    assert human_share(2_052, 11_178_564) == "0.018%"  # ResNet-18's 4-class head: not "0.0%"
    assert human_share(11_176_512, 11_178_564) == "99.98%"  # all but the head: not "100.0%"
    assert human_share(119_586_826, 139_611_210) == "85.7%"
    assert (human_share(0, 5), human_share(5, 5), human_share(1, 10**9), human_share(1, 0)) == ("0%", "100%", "<0.01%", "0%")


def test_human_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"
    assert human_flops(3.9e9) == "3.90 GFLOP"
    assert human_flops(12) == "12 FLOP"


def test_counting_flops_registers_no_global_module_hooks():
    # FlopCounterMode's module tracker would hook every module call in every thread (a training worker's too)
    from torch.nn.modules import module as module_globals

    from core.estimate.profile import flop_counter as _flop_counter

    with _flop_counter() as counter:
        assert not module_globals._global_forward_pre_hooks and not module_globals._global_forward_hooks
        torch.nn.Linear(4, 3, device="meta")(torch.empty(2, 4, device="meta"))
    assert counter.get_total_flops() == 2 * 2 * 4 * 3


def live_step_peak(arch: str, preset: str, size: int, batch: int, precision: str) -> int:
    """Peak tensor bytes of two real SGD steps on the CPU, weights included (`LiveBytes`)."""
    torch.manual_seed(0)
    model = build_model(arch, NUM_CLASSES)
    set_frozen(model, preset_frozen(model, arch, preset))
    set_train_mode(model, True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    y = torch.arange(batch) % NUM_CLASSES
    with LiveBytes() as mem:
        mem.track(list(model.parameters()), list(model.buffers()))
        for _ in range(2):  # the second step runs with the gradients and momentum of the first alive
            x = torch.randn(batch, 3, size, size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            del x, logits, loss
    return mem.peak


@pytest.mark.parametrize("arch,preset,size,precision", [
    ("resnet18", "full", 64, "fp32"),
    ("resnet18", "head", 96, "bf16"),
    ("mobilenet_v3_large", "classifier", 64, "fp32"),
    ("efficientnet_b0", "full", 64, "bf16"),
    ("densenet121", "head", 64, "fp32"),
])
def test_step_memory_matches_live_tensors_of_a_real_step(arch, preset, size, precision):
    """The estimate's total for one step against the peak of live tensors in real CPU steps: weights,
    gradients, momentum, saved activations, the working set and bf16 weight copies together."""
    batch = 8
    measured = live_step_peak(arch, preset, size, batch, precision)
    frozen = frozen_for(arch, preset)
    est = estimate(cost_profile(arch, NUM_CLASSES, (size, size)), frozen, batch_size=batch, precision=precision)
    assert est.total_bytes == pytest.approx(measured, rel=0.02)
    # and the part that is not weights, which the frozen presets used to miss
    assert est.total_bytes - est.weights_bytes == pytest.approx(measured - est.weights_bytes, rel=0.04)
