"""How fast the Model page's cost estimate is: profile once, then estimate per click.

    python bench/cost_latency.py [arch] [H] [W]

Prints the time to build the `CostProfile` (once per architecture, head size
and input size; the page caches it), the mean time of one `estimate()` call
(what every checkbox click pays), and the whole-graph `measure_exact` time for
comparison. Nothing is asserted: tests/test_costs.py holds the 5 ms bound.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.estimate import cost_profile, estimate, measure_exact  # noqa: E402
from core.freezing import preset_frozen  # noqa: E402
from core.models import build_skeleton  # noqa: E402


def main(arch: str = "resnet50", h: int = 224, w: int = 224, num_classes: int = 10, repeats: int = 200) -> None:
    start = time.perf_counter()
    profile = cost_profile(arch, num_classes, (h, w))
    build = time.perf_counter() - start
    print(f"{arch} {h}x{w}: profile built in {build * 1000:.0f} ms "
          f"({len(profile.calls)} leaf calls, residual {profile.residual_bytes} B)")
    skeleton = build_skeleton(arch, num_classes)
    for preset in ("full", "head", "classifier", "last2"):
        frozen = preset_frozen(skeleton, arch, preset)
        start = time.perf_counter()
        for _ in range(repeats):
            costs = estimate(profile, frozen)
        per = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        exact = measure_exact(arch, num_classes, (h, w), frozen)
        exact_s = time.perf_counter() - start
        print(f"  {preset:<10} estimate {per * 1000:6.3f} ms | measure_exact {exact_s * 1000:6.0f} ms | "
              f"bwd FLOPs {costs.bwd_flops} vs {exact.bwd_flops}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "resnet50", *(int(a) for a in args[1:3]))
