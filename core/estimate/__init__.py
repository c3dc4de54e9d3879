"""What a run will cost before it runs: FLOPs, step and whole-run memory, the feature-cache plan.

`profile` records an architecture's per-layer costs once on the meta device, `costs` estimates a
freezing choice from it per click, `exact` measures the whole graph (the tests' oracle), `memory`
adds up a whole run (resident images, features, evaluation, checkpoint copies), `features` plans the
feature cache exactly as the engine will, `livebytes` counts tensor bytes alive, `units` formats.
"""

from core.estimate.choice import ChoiceCosts, choice_costs
from core.estimate.costs import (
    OPTIMIZER_STATES,
    PRECISION_BYTES,
    Costs,
    compare_to_full,
    cost_profile,
    estimate,
    forward_pass_bytes,
)
from core.estimate.exact import ExactCosts, measure_exact
from core.estimate.features import (
    CPU_FEATURE_BUDGET,
    FeaturePlan,
    feature_budget,
    feature_shape,
    plan_feature_cache,
    plan_features,
)
from core.estimate.livebytes import LiveBytes
from core.estimate.memory import RunMemory, cached_calls, run_memory
from core.estimate.profile import CostProfile, LeafCall
from core.estimate.units import human_bytes, human_flops, human_share

__all__ = [
    "CPU_FEATURE_BUDGET", "ChoiceCosts", "OPTIMIZER_STATES", "PRECISION_BYTES", "CostProfile", "Costs", "ExactCosts", "FeaturePlan",
    "LeafCall", "LiveBytes", "RunMemory", "cached_calls", "choice_costs", "compare_to_full", "cost_profile", "estimate",
    "feature_budget", "feature_shape", "forward_pass_bytes", "human_bytes", "human_flops", "human_share",
    "measure_exact", "plan_feature_cache", "plan_features", "run_memory",
]
