"""Which stage to fine-tune depends on the shift: surgical sweeps on the demo world's three targets.

Pretrains the demo backbone (ResNet-18, full fine-tune on demo-source, 64 px, 3 epochs: the README's
command; or reuses `--backbone <run id>`), then runs a surgical sweep with Auto-RGN from it on
demo-shift (input-level shift), demo-flip (output-level shift) and demo-target (new classes), each
member `--epochs` epochs, `--seeds` seeds, every strategy at each of `--lrs` (reported at the rate
its validation chose), all through `python -m core.sweep`, the targets side by side (one thread
each), and prints each sweep's table (validation, which chose, beside test, which reports) and
its answer:

    python bench/sweep_shifts.py --epochs 10 --seeds 3 --runs-dir /tmp/sweeps

Lee et al. (ICLR 2023) found tuning an early block best for input-level shifts and a late one (or
the head) for output-level shifts; this prints what the demo world shows, whatever it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("demo-shift", "demo-flip", "demo-target")


def command(cmd: list[str]) -> list[str]:
    return [sys.executable, "-m", *cmd, "--json"]


def parse(done: subprocess.CompletedProcess, cmd: list[str]) -> dict:
    if not done.stdout.strip():
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def _acc(mean, error) -> str:
    return "–" if mean is None else f"{mean:.1%}" + (f" ± {error:.1%}" if error is not None else "")


def table(result: dict) -> str:
    lines = ["| strategy | rate (chosen on val) | n | val acc (chose) | test acc (reports) | trainable | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        lines.append(f"| {r['label']} | {r['lr']:g} | {r['n']} | {_acc(r['mean_acc'], r['sem_acc'])} | "
                     f"{_acc(r['test_mean_acc'], r['test_sem_acc'])} | {r['trainable_params']:,} | "
                     f"{r['mean_train_s']:.1f} |")
    rec = result["recommendation"]
    lines.append(f"\nbest on validation: {rec['best']}; cheapest within one standard error: "
                 f"{rec['cheapest_within_error']}; fewest parameters within it: {rec['fewest_params_within_error']}")
    lines.append(f"\n> {rec['answer']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", default="10")
    p.add_argument("--seeds", default="3")
    p.add_argument("--image-size", default="64")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--lrs", default="0.003,0.01,0.03", help="rates every strategy tries (one: not tuned)")
    p.add_argument("--backbone", help="the id of a finished demo backbone run to reuse")
    p.add_argument("--targets", nargs="+", default=list(TARGETS))
    args = p.parse_args()
    common = ["--runs-dir", args.runs_dir, "--image-size", args.image_size]
    t0 = time.perf_counter()
    backbone = args.backbone
    if backbone is None:
        cmd = ["core.train", "--arch", "resnet18", "--preset", "full", "--dataset", "demo-source", "--weights", "none",
               "--epochs", "3", *common]
        result = parse(subprocess.run(command(cmd), cwd=ROOT, capture_output=True, text=True), cmd)
        backbone = result["run_id"]
        print(f"backbone {backbone}: val acc {result['val_acc']:.1%}, test acc {result['test_acc']:.1%} on "
              f"demo-source ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    sweeps = {}
    for target in args.targets:  # side by side, one thread each
        cmd = ["core.sweep", "--kind", "surgical", "--with-auto-rgn", "--arch", "resnet18", "--dataset", target,
               "--weights", f"run:{backbone}", "--epochs", args.epochs, "--seeds", args.seeds, "--lrs", args.lrs,
               *common]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        sweeps[target] = (cmd, subprocess.Popen(command(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True), time.perf_counter())
    for target, (cmd, proc, t1) in sweeps.items():
        out, err = proc.communicate()
        result = parse(subprocess.CompletedProcess(cmd, proc.returncode, out, err), cmd)
        print(f"## {target}: surgical sweep {result['sweep_id']} ({time.perf_counter() - t1:.0f} s)\n")
        print(table(result) + "\n", flush=True)


if __name__ == "__main__":
    main()
