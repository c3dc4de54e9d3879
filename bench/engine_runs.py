"""Train the same model with several freezing presets through `python -m core.train` and tabulate.

One process per run (so peak memory is per run), same data, same device:

    python bench/engine_runs.py --arch vgg19 --presets full classifier fc1_fc2 \\
        --dataset demo-source --image-size 224 --epochs 2 --batch-size 64

Prints a Markdown table: preset, trainable parameters, validation accuracy,
images/s (mean over epochs), wall time, peak device memory, feature cache,
freeze audit. Extra arguments after `--` go to `core.train` unchanged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vgg19")
    p.add_argument("--presets", nargs="+", default=["full", "classifier", "fc1_fc2"])
    p.add_argument("--dataset", default="demo-source")
    p.add_argument("--weights", default="none")
    p.add_argument("--image-size", default="224")
    p.add_argument("--epochs", default="2")
    p.add_argument("--batch-size", default="64")
    p.add_argument("extra", nargs="*", help="more core.train arguments (after --)")
    args = p.parse_args()

    rows = []
    for preset in args.presets:
        cmd = [sys.executable, "-m", "core.train", "--arch", args.arch, "--preset", preset,
               "--dataset", args.dataset, "--weights", args.weights, "--image-size", args.image_size,
               "--epochs", args.epochs, "--batch-size", args.batch_size, "--json", *args.extra]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            print(f"{preset}: failed ({done.returncode})\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        s = json.loads(done.stdout)
        cache = s.get("feature_cache") or {}
        rows.append([
            preset, f"{s['trainable_params']:,}", f"{s['val_acc']:.1%}", f"{s['images_per_s']:.0f}",
            f"{s['total_time_s']:.1f} s", f"{wall:.1f} s", f"{s['peak_mem_bytes'] / 2**30:.2f} GiB",
            f"up to {cache['prefix']}" if cache.get("used") else "off",
            "ok" if s["freeze_audit"]["ok"] else "CHANGED", s.get("device", ""), s.get("precision", ""),
        ])
        print(f"{preset}: done in {wall:.0f} s", file=sys.stderr, flush=True)

    header = ["preset", "trainable", "val acc", "images/s", "train time", "process wall", "peak mem",
              "feature cache", "freeze audit", "device", "precision"]
    print(f"\n{args.arch}, {args.dataset}, {args.image_size} px, {args.epochs} epochs, batch {args.batch_size}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
