"""How many CPU threads should training use while the app serves? A demo run with and without a
concurrent load, at 1 thread and at every core.

The app trains in the server's machine, next to the Streamlit server and the viewers' browsers.
OpenMP threads wait for each other at every parallel region, so a training process that takes every
core stalls whenever something else runs. This script stands the "something else" in with busy
processes (one per core it should leave, by default one: the server and a browser) and times the
same run as the command line does it (ResNet-18 full fine-tune on demo-target, 64 px, no feature
cache), once per thread count, without and with the load. Training images/s is the run summary's
figure: training images over the time of the training passes.

    python bench/threads.py                 # about a minute on 2 cores
    python bench/threads.py --epochs 5 --load 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _busy() -> None:
    while True:  # pure Python: holds one core, as a script run or a browser's layout does
        pass


def train_once(threads: int, epochs: int, env: dict) -> float:
    """Training images/s of one command-line run with torch on `threads` threads."""
    cmd = [sys.executable, "-m", "core.train", "--arch", "resnet18", "--preset", "full", "--dataset", "demo-target",
           "--weights", "none", "--image-size", "64", "--epochs", str(epochs), "--no-feature-cache",
           "--device", "cpu", "--json"]
    done = subprocess.run(cmd, cwd=ROOT, env=env | {"OMP_NUM_THREADS": str(threads)}, capture_output=True,
                          text=True, check=True, timeout=1800)
    return json.loads(done.stdout)["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--load", type=int, default=1, help="busy processes standing in for the server and browsers")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {"FREEZE_LAB_DATA_DIR": f"{tmp}/data", "FREEZE_LAB_RUNS_DIR": f"{tmp}/runs",
                            "PYTHONPATH": str(ROOT)}
        train_once(1, 1, env)  # draws the demo world and warms the decoded-image cache
        rows = []
        for threads in sorted({1, max(1, cores - 1), cores}):
            alone = train_once(threads, args.epochs, env)
            load = [mp.Process(target=_busy, daemon=True) for _ in range(args.load)]
            for proc in load:
                proc.start()
            try:
                loaded = train_once(threads, args.epochs, env)
            finally:
                for proc in load:
                    proc.terminate()
            rows.append((threads, alone, loaded))
    print(f"{cores} cores; ResNet-18 full fine-tune, demo-target 64 px, {args.epochs} epochs, "
          f"load = {args.load} busy process(es)\n")
    print("| training threads | img/s alone | img/s under load | under load vs alone |")
    print("|---|---|---|---|")
    for threads, alone, loaded in rows:
        print(f"| {threads} | {alone:.0f} | {loaded:.0f} | {loaded / alone:.0%} |")


if __name__ == "__main__":
    main()
