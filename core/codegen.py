"""The plain PyTorch snippet that reproduces a `RunConfig`'s model, freezing and optimizer.

`generate_code(config)` returns a script that runs as is with only torch and
torchvision (no Freeze Lab import), written the way torchvision users write it:

- weights: ``models.vgg19(weights=models.VGG19_Weights.DEFAULT)`` for
  ``"imagenet"``, ``weights=None`` for ``"none"``; a checkpoint path is read
  with ``torch.load(path, weights_only=True)``, entries whose shape does not
  fit (the old 1000-class head) are dropped, and the rest is loaded with
  ``model.load_state_dict(state, strict=False)``, printing the missing and
  unexpected keys;
- ``"run:<id>"``: a Freeze Lab run saves only what it changed (trainable
  parameters and buffers) in ``<runs dir>/<id>/weights.pt``; the snippet
  loads the run's *full* state dict from ``<runs dir>/<id>/model.pt`` (the
  runs folder's absolute path is written into the snippet) the same
  way as a checkpoint, and a comment gives the one line that exports that file
  (``core.store.run_state_dict``), since the frozen part comes from the run's
  own starting weights;
- the head is replaced as in the tutorials
  (``model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)``), with dotted
  paths turned into attribute and index syntax (``"layer3.1.conv2"`` ->
  ``model.layer3[1].conv2``);
- one ``requires_grad_(False)`` line per frozen path (a module, or a parameter
  held by a container such as ConvNeXt's ``layer_scale``);
- with ``bn_frozen_eval``, a small ``train_mode(model)`` that keeps frozen
  BatchNorm layers, and the stochastic depth of frozen blocks, in eval mode;
- the optimizer over trainable parameters only, in "head" and "backbone"
  groups (discriminative rate ``lr * backbone_lr_mult``), the same class,
  momentum, weight decay and scheduler as `core.engine`, and a printout of
  the trainable parameter count.
"""

from __future__ import annotations

import functools
import keyword
from pathlib import Path

from torch import nn
from torchvision import models as tvm
from torchvision.ops import StochasticDepth

from core.config import RunConfig, runs_dir
from core.models import arch_spec, build_skeleton


def generate_code(config: RunConfig) -> str:
    """A runnable PyTorch script for `config`'s model, frozen layers and optimizer.

    Raises `ValueError` for an unknown architecture or a frozen path the model does not have.
    """
    spec = arch_spec(config.arch)
    param_names, module_names, has_bn, has_sd = _structure(config.arch)
    params, modules = [], []
    for path in config.frozen:
        if path in param_names:
            params.append(path)
        elif path in module_names:
            modules.append(path)
        else:
            raise ValueError(f"{spec.label} has no module or parameter {path!r}")
    head = attr_path(spec.head)
    h, w = config.image_size

    out = [
        f"# Freeze Lab: {spec.label}, {config.num_classes} classes, {h}x{w} input, preset {config.preset!r}.",
        "import torch",
        "from torch import nn",
        "from torchvision import models",
        *(["from torchvision.ops import StochasticDepth"] if has_sd and config.bn_frozen_eval else []),
        "",
        f"NUM_CLASSES = {config.num_classes}",
        f"LR = {config.lr!r}  # learning rate of the new head",
        f"BACKBONE_LR_MULT = {config.backbone_lr_mult!r}  # other trainable layers learn at LR * BACKBONE_LR_MULT",
        "",
        f"torch.manual_seed({config.seed})",
    ]
    out += _weights_lines(config, head)
    out += _freeze_lines(modules, params)
    out += _mode_lines(config, has_bn, has_sd)
    out += _optimizer_lines(config, spec.head)
    out += [
        "",
        f"# A training step, with images of shape [batch, 3, {h}, {w}]"
        " (other sizes work too; the models pool adaptively):",
        "#   train_mode(model)" if (has_bn or has_sd) and config.bn_frozen_eval else "#   model.train()",
        "#   loss = nn.functional.cross_entropy(model(images), labels)",
        "#   optimizer.zero_grad()",
        "#   loss.backward()",
        "#   optimizer.step()",
    ]
    if config.precision in ("bf16", "auto"):
        out.append("# bf16 on a GPU: compute the loss inside `with torch.autocast(\"cuda\", dtype=torch.bfloat16):`")
    return "\n".join(out) + "\n"


@functools.cache  # one entry per catalog architecture, immutable
def _structure(arch: str) -> tuple[frozenset[str], frozenset[str], bool, bool]:
    """(parameter names, module paths, has BatchNorm, has stochastic depth) of `arch`; the head size
    changes none of them."""
    skeleton = build_skeleton(arch, 2)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in skeleton.modules())
    has_sd = any(isinstance(m, StochasticDepth) for m in skeleton.modules())
    return (frozenset(n for n, _ in skeleton.named_parameters()),
            frozenset(n for n, _ in skeleton.named_modules() if n), has_bn, has_sd)


def attr_path(path: str, root: str = "model") -> str:
    """Python access syntax for a dotted module path: "layer3.1.conv2" -> "model.layer3[1].conv2"."""
    out = root
    for part in path.split(".") if path else []:
        if part.isdigit():
            out += f"[{part}]"
        elif part.isidentifier() and not keyword.iskeyword(part):
            out += f".{part}"
        else:
            out = f"getattr({out}, {part!r})"
    return out


def _weights_lines(config: RunConfig, head: str) -> list[str]:
    arch = config.arch
    enum = tvm.get_model_weights(arch).__name__
    replace = [
        "",
        "# Replace the last layer with a fresh one for our classes (it trains from scratch).",
        f"{head} = nn.Linear({head}.in_features, NUM_CLASSES)",
    ]
    if config.weights == "imagenet":
        lines = ["", "# ImageNet weights (downloaded once into torch's hub cache).",
                 f"model = models.{arch}(weights=models.{enum}.DEFAULT)"]
        if config.num_classes == 1000:
            return lines + ["# 1000 classes: the pretrained ImageNet head is kept."]
        return lines + replace
    lines = ["", "# Random initialisation (no pretrained weights).", f"model = models.{arch}(weights=None)"]
    if config.num_classes != 1000:
        lines += replace
    if config.weights in ("none", "", None):
        return lines
    if config.weights.startswith("run:"):
        run_id = config.weights.removeprefix("run:")
        folder = str(runs_dir().resolve())  # absolute: the snippet works from any folder
        path = str(Path(folder) / run_id / "model.pt")
        lines[1] = f"# Weights of the Freeze Lab run {run_id}."
        source = [
            "",
            "# The run's full state dict. A run saves only what it changed (weights.pt);",
            "# export the full one once, in the Freeze Lab folder, with",
            f"#   python -c \"import torch; from pathlib import Path; from core.store import run_state_dict; "
            f"torch.save(run_state_dict({run_id!r}, {arch!r}, runs_dir=Path({folder!r}))[0], {path!r})\"",
            f"CHECKPOINT = {path!r}",
        ]
    else:
        lines[1] = "# A checkpoint's weights, loaded over a randomly initialised model."
        source = ["", f"CHECKPOINT = {str(Path(config.weights))!r}"]
    return lines + source + [
        "state = torch.load(CHECKPOINT, map_location=\"cpu\", weights_only=True)  # tensors only: never runs code",
        "state = state.get(\"state_dict\", state.get(\"model\", state))  # training checkpoints wrap the weights",
        "state = {k.removeprefix(\"module.\"): v for k, v in state.items()}  # saved from DataParallel",
        "own = model.state_dict()",
        "mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]",
        "state = {k: v for k, v in state.items() if k not in mismatched}  # e.g. an old head of another size",
        "result = model.load_state_dict(state, strict=False)",
        "print(\"missing keys (keep their fresh values):\", result.missing_keys)",
        "print(\"unexpected keys (ignored):\", result.unexpected_keys)",
        "print(\"skipped, shape differs:\", mismatched)",
    ]


def _freeze_lines(modules: list[str], params: list[str]) -> list[str]:
    if not modules and not params:
        return ["", "# Full fine-tuning: every parameter trains."]
    lines = ["", "# Freeze: no gradients, no updates for these layers (everything under them)."]
    lines += [f"{attr_path(p)}.requires_grad_(False)" for p in modules]
    if params:
        lines.append("# single parameters held by a container")
        lines += [f"{attr_path(p)}.requires_grad_(False)" for p in params]
    return lines


def _mode_lines(config: RunConfig, has_bn: bool, has_sd: bool) -> list[str]:
    """`train_mode(model)`, as `core.freezing.set_train_mode`: frozen BatchNorm layers and the
    stochastic depth of frozen blocks in eval mode."""
    if not (has_bn or has_sd):
        return []
    if not config.bn_frozen_eval:
        what = ["their running statistics will still move"] if has_bn else []
        what += ["frozen blocks still drop their branch at random (stochastic depth)"] if has_sd else []
        return ["", f"# Frozen layers are left in train mode: {'; '.join(what)}."]
    kept = ["BatchNorm keeps its running statistics"] if has_bn else []
    kept += ["a frozen block skips stochastic depth"] if has_sd else []
    lines = [
        "",
        "",
        "def train_mode(model):",
        f"    \"\"\"model.train(), but frozen layers stay in eval mode: {', '.join(kept)}.\"\"\"",
        "    model.train()",
        "    for m in model.modules():",
    ]
    if has_bn:
        lines += [
            "        if isinstance(m, nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters()):",
            "            m.eval()",
        ]
    if has_sd:
        lines += [
            "        params = list(m.parameters())",
            "        if params and not any(p.requires_grad for p in params):",
            "            for child in m.children():",
            "                if isinstance(child, StochasticDepth):",
            "                    child.eval()",
        ]
    return lines + ["    return model", "", "", "train_mode(model)"]


AUTO_RGN_LINES = [
    "",
    "# Auto-RGN (Lee et al., ICLR 2023, as their code does it): the norm layers are frozen above; every other",
    "# tensor has a group of its own at the one base rate LR. At each epoch's start call",
    "# set_rgn_rates(optimizer, model, batches) with the epoch's first 5 batches [(x, y), ...] (model in train",
    "# mode); at its end, restore_rates(optimizer), before any scheduler.step().",
    "param_groups = [{\"params\": [p], \"lr\": LR} for g in param_groups for p in g[\"params\"]]",
    "",
    "",
    "def set_rgn_rates(optimizer, model, batches):",
    "    \"\"\"Each rate x (mean over the batches of ||grad|| / ||weight||) / the largest such mean; fresh optimizer state.\"\"\"",
    "    params = [g[\"params\"][0] for g in optimizer.param_groups]",
    "    rgn = [0.0] * len(params)",
    "    for x, y in batches:",
    "        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params, allow_unused=True)",
    "        for i, (p, grad) in enumerate(zip(params, grads)):",
    "            if grad is not None and p.norm() > 0:",
    "                rgn[i] += (grad.norm() / p.norm()).item() / len(batches)",
    "    top = max(rgn)",
    "    optimizer.state.clear()  # their code builds a new optimizer every epoch",
    "    for g, p, r in zip(optimizer.param_groups, params, rgn):",
    "        g[\"unscaled_lr\"] = g[\"lr\"]",
    "        g[\"lr\"] *= r / top if top > 0 and p.norm() > 0 else 1.0  # an all-zero weight: the base rate",
    "",
    "",
    "def restore_rates(optimizer):",
    "    for g in optimizer.param_groups:",
    "        g[\"lr\"] = g.pop(\"unscaled_lr\", g[\"lr\"])",
    "",
    "",
]


def _optimizer_lines(config: RunConfig, head_path: str) -> list[str]:
    if config.optimizer == "sgd":
        make = "torch.optim.SGD(param_groups, lr=LR, momentum=0.9, weight_decay={wd!r})"
    elif config.optimizer == "adam":
        make = "torch.optim.Adam(param_groups, lr=LR, weight_decay={wd!r})"
    elif config.optimizer == "adamw":
        make = "torch.optim.AdamW(param_groups, lr=LR, weight_decay={wd!r})"
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    lines = [
        "",
        "# The optimizer gets trainable parameters only: the new head at LR, other trainable layers at a lower rate.",
        "head, backbone = [], []",
        "for name, p in model.named_parameters():",
        "    if p.requires_grad:",
        f"        (head if name.startswith({head_path + '.'!r}) else backbone).append(p)",
        "param_groups = [g for g in ({\"params\": head, \"lr\": LR}, {\"params\": backbone, \"lr\": LR * BACKBONE_LR_MULT})",
        "                if g[\"params\"]]",
    ]
    if config.auto_rgn:
        lines += AUTO_RGN_LINES
    lines.append(f"optimizer = {make.format(wd=config.weight_decay)}")
    if config.scheduler == "cosine":
        lines.append(f"scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={max(1, config.epochs)})"
                     "  # step once per epoch")
    elif config.scheduler == "step":
        lines.append(f"scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size={max(1, config.epochs // 3)},"
                     " gamma=0.1)  # step once per epoch")
    lines += [
        "",
        "trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)",
        "total = sum(p.numel() for p in model.parameters())",
        "print(f\"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3g}%)\")",
    ]
    return lines
