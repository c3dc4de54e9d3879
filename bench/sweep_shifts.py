"""Which stage to fine-tune depends on the shift: surgical sweeps on the demo world's three targets.

Pretrains the demo backbone (ResNet-18, full fine-tune on demo-source, 64 px, 3 epochs: the README's
command), then runs a surgical sweep from it on demo-shift (input-level shift), demo-flip (output-level
shift) and demo-target (new classes), each member `--epochs` epochs, `--seeds` seeds, all through
`python -m core.sweep`, and prints each sweep's table and recommendation:

    python bench/sweep_shifts.py --epochs 10 --seeds 3 --runs-dir /tmp/sweeps

Lee et al. (ICLR 2023) found tuning an early block best for input-level shifts and a late one (or
the head) for output-level shifts; this prints what the demo world shows, whatever it is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("demo-shift", "demo-flip", "demo-target")


def run_json(cmd: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-m", *cmd, "--json"], cwd=ROOT, capture_output=True, text=True)
    if not done.stdout.strip():
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def table(result: dict) -> str:
    lines = ["| strategy | n | mean val acc | sem | trainable | train s |", "|---|---|---|---|---|---|"]
    for r in result["summary"]:
        sem = f"{r['sem_acc']:.1%}" if r["sem_acc"] is not None else "–"
        lines.append(f"| {r['label']} | {r['n']} | {r['mean_acc']:.1%} | {sem} | {r['trainable_params']:,} | "
                     f"{r['mean_train_s']:.1f} |")
    rec = result["recommendation"]
    lines.append(f"\nbest: {rec['best']}; cheapest within one standard error: {rec['cheapest_within_error']}; "
                 f"fewest parameters within it: {rec['fewest_params_within_error']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", default="10")
    p.add_argument("--seeds", default="3")
    p.add_argument("--image-size", default="64")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--targets", nargs="+", default=list(TARGETS))
    args = p.parse_args()
    common = ["--runs-dir", args.runs_dir, "--image-size", args.image_size]
    t0 = time.perf_counter()
    backbone = run_json(["core.train", "--arch", "resnet18", "--preset", "full", "--dataset", "demo-source",
                         "--weights", "none", "--epochs", "3", *common])
    print(f"backbone {backbone['run_id']}: val acc {backbone['val_acc']:.1%} on demo-source "
          f"({time.perf_counter() - t0:.0f} s)\n", flush=True)
    for target in args.targets:
        t1 = time.perf_counter()
        result = run_json(["core.sweep", "--kind", "surgical", "--arch", "resnet18", "--dataset", target,
                           "--weights", f"run:{backbone['run_id']}", "--epochs", args.epochs, "--seeds", args.seeds,
                           *common])
        print(f"## {target}: surgical sweep {result['sweep_id']} ({time.perf_counter() - t1:.0f} s)\n")
        print(table(result) + "\n", flush=True)


if __name__ == "__main__":
    main()
