"""core.codegen: the generated snippet runs as is and trains exactly what Freeze Lab would train."""

import contextlib
import io
import os

import pytest
import torch
from torchvision import models as tvm

from core.codegen import attr_path, generate_code
from core.config import RunConfig
from core.engine import build_optimizer
from core.engine.signals import AutoRGN, measure_rgn
from core.freezing import preset_frozen, set_frozen, set_train_mode
from core.models import build_model, build_skeleton

NUM_CLASSES = 3


def run_snippet(code: str) -> tuple[dict, str]:
    """Execute the snippet in a fresh namespace; return the namespace and what it printed."""
    out = io.StringIO()
    namespace: dict = {"__name__": "__snippet__"}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<snippet>", "exec"), namespace)
    return namespace, out.getvalue()


def config_for(arch, preset, **changes):
    frozen = preset_frozen(build_skeleton(arch, NUM_CLASSES), arch, preset)
    return RunConfig(**{"arch": arch, "num_classes": NUM_CLASSES, "weights": "none", "frozen": frozen,
                        "preset": preset, **changes})


def check_against_core(config: RunConfig, namespace: dict, reference: torch.nn.Module | None = None) -> None:
    model = namespace["model"]
    if reference is None:
        reference = build_model(config.arch, config.num_classes, "none")
    set_frozen(reference, config.frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in reference.named_parameters() if p.requires_grad}
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in reference.named_parameters()}
    # the optimizer holds exactly the trainable parameters, in core's groups and at core's rates
    optimizer = namespace["optimizer"]
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    got = [({names[id(p)] for p in g["params"]}, g["lr"]) for g in optimizer.param_groups]
    ref_names = {id(p): n for n, p in reference.named_parameters()}
    engine_optimizer, _ = build_optimizer(reference, config)  # what the engine trains with
    want = [({ref_names[id(p)] for p in g["params"]}, g["lr"]) for g in engine_optimizer.param_groups]
    assert got == want
    assert optimizer.defaults["weight_decay"] == config.weight_decay
    # BatchNorm modes after the snippet's train_mode match core's set_train_mode
    set_train_mode(reference, config.bn_frozen_eval)
    if "train_mode" in namespace:
        namespace["train_mode"](model)
    else:
        model.train()
    modes = {n: m.training for n, m in model.named_modules()}
    assert modes == {n: m.training for n, m in reference.named_modules()}


@pytest.mark.parametrize(
    "arch, preset",
    [
        ("resnet18", "full"),
        ("resnet18", "head"),
        ("resnet18", "last2"),
        ("vgg11", "classifier"),
        ("vgg11", "fc1_fc2"),
        ("alexnet", "classifier"),
        ("mobilenet_v3_large", "head"),
        ("mobilenet_v3_large", "last2"),
        ("efficientnet_b0", "head"),  # BatchNorm and the stochastic depth of frozen blocks
        ("convnext_tiny", "last2"),  # stochastic depth only
    ],
)
def test_snippet_trains_what_core_trains(arch, preset):
    config = config_for(arch, preset)
    namespace, printed = run_snippet(generate_code(config))
    check_against_core(config, namespace)
    trainable = sum(p.numel() for p in namespace["model"].parameters() if p.requires_grad)
    assert f"trainable parameters: {trainable:,} of" in printed


def test_vgg19_fc1_fc2_snippet_reads_like_the_tutorials():
    config = config_for("vgg19", "fc1_fc2", optimizer="adam", scheduler="step", epochs=6)
    code = generate_code(config)
    assert "model = models.vgg19(weights=None)" in code
    assert "model.classifier[6] = nn.Linear(model.classifier[6].in_features, NUM_CLASSES)" in code
    assert "model.features.requires_grad_(False)" in code
    assert "model.classifier[0].requires_grad_" not in code and "model.classifier[3].requires_grad_" not in code
    assert "torch.optim.Adam(param_groups" in code
    assert "StepLR(optimizer, step_size=2, gamma=0.1)" in code
    namespace, printed = run_snippet(code)
    # the reference from the meta skeleton: names and requires_grad need no real weights (saves ~2 s)
    model = namespace["model"]
    reference = build_skeleton("vgg19", NUM_CLASSES)
    set_frozen(reference, config.frozen)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, p in reference.named_parameters() if p.requires_grad} == {
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
        "classifier.6.weight", "classifier.6.bias"}
    assert "trainable parameters: 119,558,147 of" in printed
    assert isinstance(namespace["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_convnext_custom_set_with_a_parameter_path():
    frozen = ("features.0", "features.1.0.layer_scale", "features.1.1.block", "features.2")
    config = RunConfig(arch="convnext_tiny", num_classes=NUM_CLASSES, weights="none", frozen=frozen,
                       preset="custom", optimizer="adamw")
    code = generate_code(config)
    assert "model.features[1][0].layer_scale.requires_grad_(False)" in code
    assert "model.features[1][1].block.requires_grad_(False)" in code
    assert "def train_mode" in code and "nn.BatchNorm2d" not in code  # ConvNeXt: stochastic depth, no BatchNorm
    namespace, _ = run_snippet(code)
    check_against_core(config, namespace)
    assert isinstance(namespace["optimizer"], torch.optim.AdamW)


def test_imagenet_weights_code():
    config = config_for("vgg19", "fc1_fc2").replace(weights="imagenet")
    code = generate_code(config)
    assert "model = models.vgg19(weights=models.VGG19_Weights.DEFAULT)" in code
    compile(code, "<snippet>", "exec")
    code = generate_code(config_for("mobilenet_v3_large", "head").replace(weights="imagenet"))
    assert "models.mobilenet_v3_large(weights=models.MobileNet_V3_Large_Weights.DEFAULT)" in code
    assert "model.classifier[3] = nn.Linear(model.classifier[3].in_features, NUM_CLASSES)" in code
    code = generate_code(RunConfig(arch="densenet121", weights="imagenet", num_classes=1000))
    assert "model.classifier = nn.Linear" not in code  # a 1000-class head is kept


def test_checkpoint_snippet_loads_a_real_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = tvm.resnet18(weights=None)  # a 1000-class head: shape-mismatched for NUM_CLASSES
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(2)
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": state}, path)
    config = config_for("resnet18", "last2", weights=str(path))
    code = generate_code(config)
    assert "torch.load(CHECKPOINT, map_location=\"cpu\", weights_only=True)" in code
    assert "model.load_state_dict(state, strict=False)" in code
    namespace, printed = run_snippet(code)
    model = namespace["model"]
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert torch.equal(model.bn1.running_var, source.bn1.running_var)
    assert model.fc.out_features == NUM_CLASSES
    assert "unexpected keys (ignored): ['extra.weight']" in printed
    assert "skipped, shape differs: ['fc.weight', 'fc.bias']" in printed
    assert "missing keys (keep their fresh values): ['fc.weight', 'fc.bias']" in printed
    check_against_core(config, namespace)


def test_run_weights_snippet_reads_the_exported_full_state_dict(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path))
    run_id = "20261123-142501-a3f9"
    torch.manual_seed(2)
    trained = build_model("alexnet", NUM_CLASSES, "none")
    (tmp_path / run_id).mkdir()
    torch.save(trained.state_dict(), tmp_path / run_id / "model.pt")
    config = config_for("alexnet", "classifier", weights=f"run:{run_id}")
    code = generate_code(config)
    assert "run_state_dict(" in code  # how to export the file
    namespace, printed = run_snippet(code)
    assert torch.equal(namespace["model"].classifier[6].weight, trained.classifier[6].weight)
    assert "missing keys (keep their fresh values): []" in printed


def test_batchnorm_switch_off_and_bad_paths():
    code = generate_code(config_for("resnet18", "head", bn_frozen_eval=False))
    assert "def train_mode" not in code and "running statistics will still move" in code
    with pytest.raises(ValueError, match="layer9"):
        generate_code(RunConfig(arch="resnet18", frozen=("layer9",)))


def test_attr_path():
    assert attr_path("layer3.1.conv2") == "model.layer3[1].conv2"
    assert attr_path("features.0") == "model.features[0]"
    assert attr_path("features.denseblock1") == "model.features.denseblock1"
    assert attr_path("classifier.6") == "model.classifier[6]"
    assert attr_path("odd-name.0") == "getattr(model, 'odd-name')[0]"


def test_head_only_percentage_is_not_rounded_to_zero():
    _, printed = run_snippet(generate_code(config_for("resnet18", "head")))
    trainable = 512 * NUM_CLASSES + NUM_CLASSES
    total = sum(p.numel() for p in build_model("resnet18", NUM_CLASSES, "none").parameters())
    assert f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3g}%)" in printed
    assert "(0.0%)" not in printed


def test_run_snippet_names_the_runs_folder_so_it_works_from_anywhere(tmp_path, monkeypatch):
    """With a relative runs folder (the default ./runs), the export line and CHECKPOINT named paths that only
    resolved in the Freeze Lab folder, and only with its FREEZE_LAB_RUNS_DIR set."""
    import subprocess
    from pathlib import Path

    from core.store import RunStore

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", "my-runs")
    store = RunStore()
    run_id = store.create(RunConfig(arch="alexnet", num_classes=NUM_CLASSES))
    torch.manual_seed(3)
    trained = build_model("alexnet", NUM_CLASSES, "none")
    store.save_weights(run_id, trained.state_dict())
    store.set_status(run_id, "finished")
    code = generate_code(config_for("alexnet", "classifier", weights=f"run:{run_id}"))
    export = next(line for line in code.splitlines() if "run_state_dict(" in line).removeprefix("#   ")
    assert str(tmp_path / "my-runs") in export
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "FREEZE_LAB_RUNS_DIR"}  # as a user's shell would be
    subprocess.run(export, shell=True, cwd=root, env=env, check=True, timeout=300)
    monkeypatch.chdir(root)
    namespace, printed = run_snippet(code)
    assert torch.equal(namespace["model"].features[0].weight, trained.features[0].weight)


def test_auto_rgn_snippet_scales_rates_as_the_engine_does():
    config = config_for("resnet18", "auto-rgn", auto_rgn=True, bn_frozen_eval=False)
    namespace, _ = run_snippet(generate_code(config))
    check_against_core(config, namespace)
    model, optimizer = namespace["model"], namespace["optimizer"]
    assert len(optimizer.param_groups) == sum(p.requires_grad for p in model.parameters()) == 22  # no norm layer
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    engine_groups = [{"name": "g", "tensor": n, "params": [p], "lr": config.lr}
                     for n, p in model.named_parameters() if p.requires_grad]
    engine = AutoRGN(torch.optim.SGD(engine_groups, lr=1.0))
    engine.start_epoch(measure_rgn(model, model, batches, contextlib.nullcontext))
    namespace["set_rgn_rates"](optimizer, model, batches)
    rates = {id(g["params"][0]): g["lr"] for g in optimizer.param_groups}
    assert [rates[id(g["params"][0])] for g in engine.optimizer.param_groups] == pytest.approx(
        [g["lr"] for g in engine.optimizer.param_groups])
    namespace["restore_rates"](optimizer)
    assert {g["lr"] for g in optimizer.param_groups} == {config.lr}


