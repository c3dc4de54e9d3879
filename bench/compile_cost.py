"""Does `torch.compile` pay within a short run? Its compile time against the time it saves per step.

    python bench/compile_cost.py                              # ResNet-18, 64 px, batch 32, full and head, CPU
    python bench/compile_cost.py --arch resnet50 --size 224 --batch-size 64 --device cuda

Per preset, the engine's training step (`core.engine.build_optimizer`, the
preset's frozen set and BatchNorm modes, bf16 autocast and channels_last on
CUDA as `core.engine` runs there) on random tensors already on the device:

- eager: steps/s after three warm-up steps;
- compiled (``torch.compile(model)``, default mode; the optimizer step stays
  eager): the first step's time (tracing and code generation), a second
  compile for the smaller last batch of an epoch (the engine pads that batch
  only on CUDA), and steps/s after warm-up.

Break-even: the compile time over the time saved per step, in steps, beside
the steps of a typical short run (``--run-images`` images for ``--epochs``
epochs). Each frozen set and each input size is a new graph, so a user who
tries several freezing choices pays the compile once per choice. With the
feature cache (frozen presets without augmentation) the engine trains only
the trainable tail on cached features, which leaves a compiler even less to
save than the whole-network step timed here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def step_fn(arch: str, preset: str, num_classes: int, size: int, batch: int, device, compile_model: bool):
    """A closure running one training step of the engine's model on a random batch of `batch` (or fewer) images."""
    import torch
    import torch.nn.functional as F

    from core.config import RunConfig
    from core.devices import amp_dtype
    from core.engine import build_optimizer
    from core.freezing import preset_frozen, set_frozen, set_train_mode
    from core.models import prepare_model

    torch.manual_seed(0)
    model, _ = prepare_model(arch, num_classes, "none")
    frozen = preset_frozen(model, arch, preset)
    set_frozen(model, frozen)
    cuda = device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    set_train_mode(model, True)
    config = RunConfig(arch=arch, num_classes=num_classes, frozen=frozen, optimizer="sgd", lr=0.01)
    optimizer, _ = build_optimizer(model, config)
    amp = amp_dtype(config.precision, device)
    forward = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 3, size, size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(num_classes, (batch,), device=device)

    def step(n: int = batch) -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = forward(x[:n])
        loss = F.cross_entropy(logits.float(), y[:n])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, device, n: int = 1, batch: int | None = None) -> float:
    """Seconds for `n` steps, device work included."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        step() if batch is None else step(batch)
    sync()
    return time.perf_counter() - t


def per_step(step, device, steps: int) -> float:
    """Median seconds per step over five timings of `steps` steps each."""
    return statistics.median(timed(step, device, steps) / steps for _ in range(5))


def measure(args, preset: str, device) -> dict:
    import torch

    eager = step_fn(args.arch, preset, args.num_classes, args.size, args.batch_size, device, compile_model=False)
    timed(eager, device, 3)
    eager_s = per_step(eager, device, args.steps)

    torch._dynamo.reset()
    compiled = step_fn(args.arch, preset, args.num_classes, args.size, args.batch_size, device, compile_model=True)
    first_s = timed(compiled, device)
    last_batch = max(1, args.batch_size // 3)
    recompile_s = timed(compiled, device, batch=last_batch)  # an epoch's short last batch: a new shape
    timed(compiled, device, 3)
    compiled_s = per_step(compiled, device, args.steps)
    compile_s = first_s + recompile_s - 2 * compiled_s
    saved = eager_s - compiled_s
    return {"eager_s": eager_s, "compiled_s": compiled_s, "first_s": first_s, "recompile_s": recompile_s,
            "compile_s": compile_s, "break_even": compile_s / saved if saved > 0 else None}


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--presets", nargs="+", default=["full", "head"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--steps", type=int, default=5, help="steps per timing (five timings, the median is kept)")
    p.add_argument("--run-images", type=int, default=256, help="training images of the typical run compared with")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the typical run compared with")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run_steps = args.epochs * -(-args.run_images // args.batch_size)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.arch}, {args.size} px, batch {args.batch_size}, {where}, torch {torch.__version__}; a typical run: "
          f"{args.run_images} images x {args.epochs} epochs = {run_steps} steps\n")
    print("| preset | eager step | compiled step | first compiled step | last-batch recompile | compile time "
          "| break-even | pays within the run |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        r = measure(args, preset, device)
        even = "never (no faster)" if r["break_even"] is None else f"{r['break_even']:,.0f} steps"
        pays = r["break_even"] is not None and r["break_even"] < run_steps
        print(f"| {preset} | {r['eager_s'] * 1e3:.1f} ms | {r['compiled_s'] * 1e3:.1f} ms | {r['first_s']:.1f} s "
              f"| {r['recompile_s']:.1f} s | {r['compile_s']:.1f} s | {even} | {'yes' if pays else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
