"""core.freezing: presets, set_frozen, counts, BatchNorm handling, pre-flight and the layer tree."""

import pytest
import torch
from torch import nn

from core.freezing import (
    apply_preset,
    layer_tree,
    param_counts,
    param_groups,
    preflight,
    preset_frozen,
    presets_for,
    set_frozen,
    set_train_mode,
    stages,
)
from core.models import CATALOG, build_model, build_skeleton


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def vgg19():
    return build_skeleton("vgg19", 10)


@pytest.fixture(scope="module")
def resnet50():
    return build_skeleton("resnet50", 10)


def test_vgg19_fc1_fc2_and_head_counts_from_the_issue(vgg19):
    apply_preset(vgg19, "vgg19", "fc1_fc2")
    assert param_counts(vgg19)[0] == 119_586_826
    assert trainable_names(vgg19) == {
        "classifier.0.weight", "classifier.0.bias",
        "classifier.3.weight", "classifier.3.bias",
        "classifier.6.weight", "classifier.6.bias",
    }
    apply_preset(vgg19, "vgg19", "head")
    assert param_counts(vgg19)[0] == 40_970
    assert trainable_names(vgg19) == {"classifier.6.weight", "classifier.6.bias"}


def test_full_preset_trains_everything(vgg19):
    apply_preset(vgg19, "vgg19", "full")
    assert param_counts(vgg19) == (sum(p.numel() for p in vgg19.parameters()), 0)


def test_alexnet_classifier_preset_freezes_features_only():
    model = build_skeleton("alexnet", 10)
    assert apply_preset(model, "alexnet", "classifier") == ("features",)
    assert trainable_names(model) == {f"classifier.{i}.{k}" for i in (1, 4, 6) for k in ("weight", "bias")}


def test_resnet50_presets_exact_names(resnet50):
    apply_preset(resnet50, "resnet50", "head")
    assert trainable_names(resnet50) == {"fc.weight", "fc.bias"}
    apply_preset(resnet50, "resnet50", "classifier")  # for ResNet the classifier is fc
    assert trainable_names(resnet50) == {"fc.weight", "fc.bias"}
    apply_preset(resnet50, "resnet50", "last2")
    names = trainable_names(resnet50)
    assert {n.split(".")[0] for n in names} == {"layer3", "layer4", "fc"}
    assert names == {n for n, _ in resnet50.named_parameters() if n.startswith(("layer3.", "layer4.", "fc."))}
    assert preset_frozen(resnet50, "resnet50", "last2") == ("conv1", "bn1", "layer1", "layer2")


def test_last_n_covers_vgg_conv_blocks(vgg19):
    blocks = stages(vgg19, "vgg19")
    assert [b.name for b in blocks] == ["block1", "block2", "block3", "block4", "block5"]
    assert blocks[0].paths == ("features.0", "features.1", "features.2", "features.3", "features.4")
    apply_preset(vgg19, "vgg19", "last1")
    convs = {n.rsplit(".", 1)[0] for n in trainable_names(vgg19) if n.startswith("features.")}
    assert convs == {"features.28", "features.30", "features.32", "features.34"}
    assert preset_frozen(vgg19, "vgg19", "last5") == ()
    assert preset_frozen(vgg19, "vgg19", "last0") == ("features",) or all(
        p.startswith("features.") for p in preset_frozen(vgg19, "vgg19", "last0")
    )


def test_fc1_fc2_only_for_vgg(resnet50):
    assert "fc1_fc2" in presets_for("vgg16") and "fc1_fc2" not in presets_for("resnet50")
    with pytest.raises(ValueError, match="VGG"):
        preset_frozen(resnet50, "resnet50", "fc1_fc2")


@pytest.mark.parametrize("arch", list(CATALOG))
def test_every_preset_keeps_the_head_trainable(arch):
    model = build_skeleton(arch, 5)
    n_stages = len(stages(model, arch))
    for preset in presets_for(arch):
        for name in ([f"last{n}" for n in (0, 1, n_stages)] if preset == "last" else [preset]):
            apply_preset(model, arch, name)
            assert preflight(model, arch)[0].ok, (arch, name)


def test_set_frozen_exact_paths_and_unknown_path():
    model = build_skeleton("resnet18", 10)
    set_frozen(model, ["layer1.0.conv1", "bn1"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"layer1.0.conv1.weight", "bn1.weight", "bn1.bias"}
    set_frozen(model, ["layer4"])  # unfreezes what was frozen before
    assert "bn1.weight" in trainable_names(model)
    with pytest.raises(ValueError, match="layer9"):
        set_frozen(model, ["layer9"])
    assert not any(n.startswith("layer4") for n in trainable_names(model))  # unchanged by the failed call


def test_set_frozen_accepts_a_container_parameter():
    model = build_skeleton("convnext_tiny", 10)
    set_frozen(model, ["features.1.0.layer_scale"])
    assert not model.features[1][0].layer_scale.requires_grad
    assert model.features[1][0].block[0].weight.requires_grad


def _tiny_bn_net():
    # Lightning-style: a tiny Sequential with a BatchNorm, checked layer by layer.
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_frozen_batchnorm_keeps_running_stats_by_default():
    net = _tiny_bn_net()
    net(torch.randn(2, 3, 8, 8))  # materialise the lazy layer
    set_frozen(net, ["0", "1"])
    set_train_mode(net, bn_frozen_eval=True)
    assert net.training and not net[1].training
    before = net[1].running_mean.clone()
    net(torch.randn(4, 3, 8, 8) + 3)
    assert torch.equal(net[1].running_mean, before)

    set_train_mode(net, bn_frozen_eval=False)  # the visible switch
    assert net[1].training
    net(torch.randn(4, 3, 8, 8) + 3)
    assert not torch.equal(net[1].running_mean, before)


def test_param_groups_hold_exactly_the_trainable_parameters():
    model = build_skeleton("vgg11", 10)
    apply_preset(model, "vgg11", "fc1_fc2")
    groups = param_groups(model, "vgg11", lr=0.01, backbone_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert groups[0]["lr"] == 0.01 and groups[1]["lr"] == pytest.approx(0.001)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    assert groups[0]["num_params"] == 4096 * 10 + 10


def test_preflight_reports_problems():
    model = build_skeleton("resnet18", 10)
    set_frozen(model, ["fc", "layer1"])
    checks = {c.name: c for c in preflight(model, "resnet18")}
    assert not checks["New head trains"].ok
    assert checks["Frozen BatchNorm in eval mode"].ok
    assert checks["Optimizer gets exactly the trainable parameters"].ok
    checks = {c.name: c for c in preflight(model, "resnet18", bn_frozen_eval=False)}
    assert not checks["Frozen BatchNorm in eval mode"].ok
    set_frozen(model, [n for n, _ in model.named_children()])
    assert not {c.name: c for c in preflight(model, "resnet18")}["Something trains"].ok


# --------------------------------------------------------------------------- layer tree


def test_tree_counts_agree_with_the_real_model(resnet50):
    tree = layer_tree(resnet50, "resnet50")
    for preset in ["full", "head", "classifier", "last1", "last3"]:
        frozen = apply_preset(resnet50, "resnet50", preset)
        assert tree.counts(frozen) == param_counts(resnet50)
        assert set(tree.trainable_names(frozen)) == trainable_names(resnet50)


def test_tree_states_and_toggle(resnet50):
    tree = layer_tree(resnet50, "resnet50")
    frozen = preset_frozen(resnet50, "resnet50", "last2")
    states = dict(zip((n.path for n in tree.nodes), tree.states(frozen)))
    assert states["layer1"] == "frozen" and states["layer4"] == "trainable" and states["relu"] == ""
    # untick one conv inside layer4: layer4 becomes partial
    frozen2 = tree.with_node(frozen, "layer4.0.conv1", train=False)
    states = dict(zip((n.path for n in tree.nodes), tree.states(frozen2)))
    assert states["layer4"] == "partial" and states["layer4.0"] == "partial" and states["layer4.1"] == "trainable"
    assert tree.counts(frozen2)[0] == tree.counts(frozen)[0] - resnet50.layer4[0].conv1.weight.numel()
    # tick it again: back to the same canonical set
    assert tree.with_node(frozen2, "layer4.0.conv1", train=True) == frozen
    # freeze a whole container by unticking it, then its children collapse into it
    frozen3 = tree.with_node((), "layer2", train=False)
    assert frozen3 == ("layer2",)
    # untick every child of layer3 one by one: the set collapses to "layer3"
    f = ()
    for child in ["layer3.0", "layer3.1", "layer3.2", "layer3.3", "layer3.4", "layer3.5"]:
        f = tree.with_node(f, child, train=False)
    assert f == ("layer3",)


def test_tree_canonical_names_container_parameters():
    model = build_skeleton("convnext_tiny", 10)
    tree = layer_tree(model, "convnext_tiny")
    frozen = tree.with_node(("features.1.0",), "features.1.0.block.0", train=True)
    set_frozen(model, frozen)
    assert "features.1.0.layer_scale" in frozen
    assert model.features[1][0].block[0].weight.requires_grad
    assert not model.features[1][0].layer_scale.requires_grad


def test_output_shapes_for_non_square_input(vgg19):
    tree = layer_tree(vgg19, "vgg19", input_size=(448, 224))
    shapes = {n.path: n.out_shape for n in tree.nodes}
    assert shapes["features"] == (512, 14, 7)
    assert shapes["avgpool"] == (512, 7, 7)
    assert shapes["classifier.6"] == (10,)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        layer_tree(build_skeleton("alexnet", 10), "alexnet", input_size=(16, 16))


def test_real_model_training_step_respects_the_frozen_set():
    model = build_model("resnet18", 3)
    apply_preset(model, "resnet18", "last1")
    set_train_mode(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(param_groups(model, "resnet18", lr=0.1), lr=0.1)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p)
        assert changed == n.startswith(("layer4.", "fc.")), n


def test_preset_of_names_what_trains_not_how_it_was_ticked():
    from core.freezing import layer_tree, preset_of

    model = build_skeleton("resnet18", 4)
    tree = layer_tree(model, "resnet18")
    assert preset_of(model, "resnet18", tree, ()) == "full"
    assert preset_of(model, "resnet18", tree, preset_frozen(model, "resnet18", "head")) == "head"
    # the same parameters frozen, spelled module by module instead of by the preset's paths
    by_hand = tuple(n.path for n in tree.nodes if n.depth == 1 and n.path.startswith(("layer1", "layer2", "layer3")))
    assert preset_of(model, "resnet18", tree, ("conv1", "bn1") + by_hand) == "last1"
    assert preset_of(model, "resnet18", tree, ("layer2",)) == "custom"
