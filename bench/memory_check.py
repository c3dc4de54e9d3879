"""The memory estimates against live tensor bytes of real runs, on the CPU or a GPU.

    python bench/memory_check.py                  # steps of every catalog family, then whole engine runs
    python bench/memory_check.py --steps          # only the steps (about 1 minute on 2 cores)
    python bench/memory_check.py --device cuda    # the same on a GPU, as the engine runs there

(1) One training step (`core.estimate.estimate`): two real SGD steps of each
    catalog family and preset, fp32 and bf16 autocast, batch 8, measured
    with `core.estimate.LiveBytes` (weights, gradients, momentum, saved
    activations, tensors in flight and autocast copies: all live tensors).
(2) A whole run (`core.estimate.run_memory`): `core.engine.train` on a
    generated 64 px dataset, from decoding to the checkpoint copies, measured
    the same way (CPU tensors only: meta-device shape checks hold no memory).

On a GPU (``--device cuda``) the steps run as the engine runs them there
(channels_last, ``cudnn.benchmark``) and each row also gives
`torch.cuda.max_memory_allocated`: the same live tensors plus what the
allocator hands to cuDNN's and cuBLAS's workspaces, which the estimate leaves
out. Its difference from the live-tensor peak is that workspace.
`bench/speed.py` compares the run estimate with the allocator's peak of full
224 px runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

STEP_CASES = [("resnet18", 64), ("vgg11", 64), ("alexnet", 96), ("mobilenet_v3_large", 64), ("densenet121", 64),
              ("efficientnet_b0", 64), ("convnext_tiny", 64), ("resnet50", 160), ("vgg19_bn", 128)]
RUN_CASES = [
    ("resnet18", "head", {}),
    ("resnet18", "head", {"feature_cache": False}),
    ("resnet18", "full", {}),
    ("resnet18", "classifier", {"precision": "bf16"}),
    ("resnet18", "full", {"unfreeze_after": 1}),
    ("vgg11", "fc1_fc2", {}),
    ("vgg11", "head", {"augment": ("flip",)}),
    ("mobilenet_v3_large", "classifier", {}),
    ("densenet121", "head", {}),
    ("efficientnet_b0", "full", {"precision": "bf16"}),
]


def step_peak(arch: str, preset: str, size: int, batch: int, precision: str,
              device: str = "cpu") -> tuple[int, int, int | None]:
    """(live-tensor peak, estimate, CUDA allocator peak or None) of two SGD steps, weights included."""
    import gc

    import torch
    import torch.nn.functional as F

    from core.estimate import LiveBytes, cost_profile, estimate
    from core.freezing import preset_frozen, set_frozen, set_train_mode
    from core.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, 5)
    frozen = preset_frozen(model, arch, preset)
    set_frozen(model, frozen)
    set_train_mode(model, True)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    layout = torch.channels_last if cuda else torch.contiguous_format  # as core.engine runs on CUDA
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.backends.cudnn.benchmark = True
    model.to(dev, memory_format=layout)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    y = torch.arange(batch, device=dev) % 5
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with LiveBytes(device_type=dev.type) as mem:
        mem.track(list(model.parameters()), list(model.buffers()), y)
        for _ in range(2):
            x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=layout)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            del x, logits, loss
    allocator = None
    if cuda:
        torch.cuda.synchronize()
        allocator = torch.cuda.max_memory_allocated() - y.untyped_storage().nbytes()
    est = estimate(cost_profile(arch, 5, (size, size)), frozen, batch_size=batch, precision=precision)
    return mem.peak - y.untyped_storage().nbytes(), est.total_bytes, allocator


def check_steps(device: str = "cpu", batch: int = 8) -> list[str]:
    from core.freezing import presets_for

    cuda = device.startswith("cuda")
    rows = ["| model | size | preset | precision | live tensors | estimate | error |"
            + (" allocator peak | error vs allocator | workspace |" if cuda else ""),
            "|---|---|---|---|---|---|---|" + ("---|---|---|" if cuda else "")]
    for arch, size in STEP_CASES:
        for preset in (p for p in presets_for(arch) if p != "last"):
            for precision in ("fp32", "bf16"):
                measured, est, allocator = step_peak(arch, preset, size, batch, precision, device)
                row = (f"| {arch} | {size} | {preset} | {precision} | {measured / 2**20:.1f} MiB | "
                       f"{est / 2**20:.1f} MiB | {est / measured - 1:+.1%} |")
                if allocator is not None:
                    row += (f" {allocator / 2**20:.1f} MiB | {est / allocator - 1:+.1%} | "
                            f"{(allocator - measured) / 2**20:.1f} MiB |")
                rows.append(row)
                print(row, flush=True)
    return rows


def check_runs(workdir: Path) -> list[str]:
    import torch
    from test_training import Recorder, config_for, draw_folder

    from core.data import load_dataset
    from core.engine import train
    from core.estimate import LiveBytes, cost_profile, run_memory

    folder = draw_folder(workdir / "shapes", per_class=20, size=64)
    cpu = torch.device("cpu")
    rows = ["| model | preset | changes | measured | estimate | expected peak at | error |",
            "|---|---|---|---|---|---|---|"]
    for arch, preset, changes in RUN_CASES:
        config = config_for(folder, preset=preset, arch=arch, image_size=(64, 64), **changes)
        ds = load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
        est = run_memory(cost_profile(arch, config.num_classes, config.image_size), config,
                         train_images=len(ds.train), val_images=len(ds.val), device=cpu)
        with LiveBytes(device_type="cpu") as mem:
            train(config, Recorder(), device=cpu, runs_dir=workdir / "runs")
        text = ", ".join(f"{k}={v}" for k, v in changes.items()) or "–"
        rows.append(f"| {arch} | {preset} | {text} | {mem.peak / 2**20:.1f} MiB | {est.peak_bytes / 2**20:.1f} MiB | "
                    f"{est.peak_moment} | {est.peak_bytes / mem.peak - 1:+.1%} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", action="store_true", help="only the per-step check")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where the steps run (the whole runs need --device cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the step cases (default 8)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="freeze-lab-memory-"))
    os.environ["FREEZE_LAB_DATA_DIR"] = str(workdir / "data")
    os.environ["FREEZE_LAB_RUNS_DIR"] = str(workdir / "runs")
    print("## One training step (core.estimate.estimate)\n")
    steps = check_steps(args.device, args.batch_size)
    runs = [] if args.steps or args.device != "cpu" else check_runs(workdir)
    print("\n" + "\n".join(steps))
    if runs:
        print("\n## A whole run (core.estimate.run_memory)\n\n" + "\n".join(runs))


if __name__ == "__main__":
    main()
