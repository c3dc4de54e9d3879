"""A depth sweep against the same members run one by one: what does a sweep cost beyond its training?

Pretrains the demo backbone (ResNet-18, full fine-tune on demo-source, 64 px, 3 epochs; or reuses
`--backbone`), then on demo-target:

1. a depth sweep (`python -m core.sweep --kind depth`, members one after another in one process,
   sharing one feature pass: `RunConfig.share_features`);
2. the same members as independent command-line runs (`python -m core.train --preset ...`, one
   process each, each computing its own features).

Stored features are deleted before the sweep and before every independent run (decoded images stay:
both sides read the same decode cache). Prints per member the feature source and the seconds spent
on features and inside the epoch loop, and the totals:

    python bench/sweep_depth.py --epochs 10 --runs-dir /tmp/depth
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


def run_json(cmd: list[str]) -> tuple[dict, float]:
    """A `python -m ...` command's JSON answer and its wall time (process start included)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *cmd, "--json"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if not done.stdout.strip():
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), wall


def forget_features(data_dir: Path) -> None:
    for path in (data_dir / ".cache").glob("features-*.pt"):
        path.unlink()


def summary_of(runs_dir: Path, run_id: str) -> dict:
    return json.loads((runs_dir / run_id / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", default="10")
    p.add_argument("--image-size", default="64")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--backbone", help="id of a finished demo backbone run in --runs-dir (else one is trained)")
    args = p.parse_args()
    runs_dir, data_dir = Path(args.runs_dir), Path(os.environ.get("FREEZE_LAB_DATA_DIR", ROOT / "data"))
    common = ["--runs-dir", args.runs_dir, "--image-size", args.image_size]
    backbone = args.backbone
    if backbone is None:
        trained, wall = run_json(["core.train", "--arch", "resnet18", "--preset", "full", "--dataset", "demo-source",
                                  "--weights", "none", "--epochs", "3", *common])
        backbone = trained["run_id"]
        print(f"backbone {backbone}: val acc {trained['val_acc']:.1%} on demo-source ({wall:.0f} s)", flush=True)
    member_args = ["--arch", "resnet18", "--dataset", "demo-target", "--weights", f"run:{backbone}",
                   "--epochs", args.epochs, *common]

    forget_features(data_dir)
    sweep, sweep_wall = run_json(["core.sweep", "--kind", "depth", *member_args])
    rows = []
    for member in sweep["members"]:
        forget_features(data_dir)
        alone, alone_wall = run_json(["core.train", "--preset", member["preset"], "--seed", str(member["seed"]),
                                      "--lr", str(member["lr"]), *member_args])
        rows.append((member, summary_of(runs_dir, member["run_id"]), summary_of(runs_dir, alone["run_id"]), alone_wall))

    print(f"\n## Depth sweep on demo-target, ResNet-18 from the demo backbone, {args.image_size} px, {args.epochs} epochs\n")
    print("| member | sweep: features | s | epoch loop s | val acc | alone: features | s | epoch loop s | process s | val acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for member, in_sweep, alone, wall in rows:
        a, b = in_sweep["feature_cache"] or {}, alone["feature_cache"] or {}
        print(f"| {member['label']} | {a.get('source') or 'off'} | {in_sweep['timings']['features_s']:.2f} | "
              f"{in_sweep['timings']['epochs_s']:.1f} | {in_sweep['val_acc']:.1%} | {b.get('source') or 'off'} | "
              f"{alone['timings']['features_s']:.2f} | {alone['timings']['epochs_s']:.1f} | {wall:.1f} | "
              f"{alone['val_acc']:.1%} |")
    loop_s = sum(s["timings"]["epochs_s"] for _, s, _, _ in rows)
    features_s = sum(s["timings"]["features_s"] for _, s, _, _ in rows)
    alone_features_s = sum(a["timings"]["features_s"] for _, _, a, _ in rows)
    alone_wall = sum(w for *_, w in rows)
    print(f"\nsweep: wall {sweep_wall:.1f} s (one process: start-up, data, models included); its members' "
          f"epoch loops {loop_s:.1f} s, so wall / loops = {sweep_wall / loop_s:.2f}x; feature passes {features_s:.2f} s")
    print(f"independent runs: {alone_wall:.1f} s of processes in all ({alone_wall / sweep_wall:.2f}x the sweep); "
          f"feature passes {alone_features_s:.2f} s")


if __name__ == "__main__":
    main()
