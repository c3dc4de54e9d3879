"""Server-side rerun latency of the Model page after ticking one box (ResNet-50, 224x224).

Drives the page with Streamlit's AppTest (the script runs exactly as under
`streamlit run`, without a browser), warms the caches once, then times reruns
that each untick or tick one layer in the tree (with a dataset's size known, so the
page also estimates a whole run's memory). AppTest adds its own overhead
(protobuf round trip of every element), so the figures are an upper bound.

    python bench/model_rerun.py [--arch resnet50] [--size 224] [--clicks 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from core.config import RunConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("FREEZE_LAB_RUNS_DIR", tempfile.mkdtemp())

    at = AppTest.from_file(str(ROOT / "app_pages" / "model.py"), default_timeout=120)
    config = RunConfig(arch=args.arch, num_classes=10, image_size=(args.size, args.size))
    at.session_state["draft"] = config
    # as after a visit to the Data page: the page also estimates a whole run on 1,920 + 480 images
    at.session_state["dataset_sizes"] = {config.dataset: (1920, 480)}
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    assert not at.exception, at.exception
    at.run()  # warm

    times = []
    for i in range(args.clicks):
        version = at.session_state["tree_version"] if "tree_version" in at.session_state else 0
        row = 1 + i % 4  # layer1..layer4 in the overview table
        train = bool(at.data_editor(key=f"tree_overview@{version}").value["train"][row])
        at.session_state[f"tree_overview@{version}"] = {
            "edited_rows": {row: {"train": not train}}, "added_rows": [], "deleted_rows": []}
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    times_ms = sorted(t * 1e3 for t in times)
    print(f"{args.arch} {args.size}x{args.size}: first run (builds tree + cost profile) {first * 1e3:.0f} ms")
    print(f"rerun after one tick over {len(times)} clicks: median {statistics.median(times_ms):.0f} ms, "
          f"p90 {times_ms[int(0.9 * (len(times_ms) - 1))]:.0f} ms, max {times_ms[-1]:.0f} ms")


if __name__ == "__main__":
    main()
