"""User actions that more than one page offers, each one call into `core` plus what the tab is told."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from core.config import (
    DEMO_BACKBONE,
    DEMO_BACKBONE_NAME,
    changed_fields,
    transfer_from_demo_backbone,
)
from core.data import dataset_name, parse_demo_ref
from core.data.demo import WORLDS
from core.data.folders import split_sizes
from core.estimate import human_flops
from core.freezing import preset_label
from core.jobs import JobManager
from core.models import arch_spec, build_skeleton
from core.store import ACTIVE, FINISHED, RunRecord
from core.sweeps.timing import achieved_rate, sweep_work
from ui import services
from ui.session import draft, forget_dataset_classes, post_notice, session_owner, set_draft

# How a changed draft field is named to the user, and how its value is written.
_SAID = {
    "arch": ("model", lambda v: arch_spec(v).label),
    "weights": ("starting weights", lambda v: f"run {v[4:]}" if v.startswith("run:") else v),
    "dataset": ("dataset", dataset_name),
    "num_classes": ("classes", str),
    "preset": ("strategy", preset_label),
    "image_size": ("input", lambda v: f"{v[0]}×{v[1]}"),
}


def demo_backbone_run(runs: Sequence[RunRecord]) -> RunRecord | None:
    """The newest demo backbone among `runs` (the store's, newest first) that finished or is on its way
    (queued, running): offered instead of pretraining a second one."""
    return next((r for r in runs if r.config == DEMO_BACKBONE and r.status in (FINISHED, *ACTIVE)), None)


def backbone_label(manager: JobManager) -> str:
    """The pretrain button's words: the backbone this machine has, or what pretraining one costs here."""
    runs = manager.store.list()
    if (existing := demo_backbone_run(runs)) is not None:
        return f"Use the demo backbone you have (run {existing.id}, {existing.status})"
    return f"Pretrain a demo backbone (ResNet-18, full fine-tune on demo-source, 3 epochs, 64 px; {backbone_time(runs)})"


def backbone_time(runs: Sequence[RunRecord]) -> str:
    """What pretraining the backbone costs: the cost model's FLOPs, at the speed earlier ResNet-18 runs
    at 64 px reached on this machine when there are any (`core.sweeps.timing`, as the Sweep page)."""
    profile = services.profile(DEMO_BACKBONE.arch, DEMO_BACKBONE.num_classes, DEMO_BACKBONE.image_size)
    skeleton = build_skeleton(DEMO_BACKBONE.arch, DEMO_BACKBONE.num_classes)
    world, per_class = parse_demo_ref(DEMO_BACKBONE.dataset)
    sizes = split_sizes(per_class, len(WORLDS[world][0]), DEMO_BACKBONE.val_fraction, DEMO_BACKBONE.test_fraction)
    work = sweep_work(profile, [DEMO_BACKBONE], sizes, skeleton)
    rate = achieved_rate(profile, runs, skeleton)
    if rate is None:
        return f"{human_flops(work)} of work: minutes on a CPU"
    return f"about {max(1, round(work / rate / 60))} min here"


def pretrain_demo_backbone(manager: JobManager) -> str:
    """Point the draft at the demo backbone: the one this machine has (`demo_backbone_run`), else a new
    one queued (the queue trains it before any run started from it). The change of the draft is said,
    field by field, in the Train page's notice. Returns the backbone's id."""
    existing = demo_backbone_run(manager.store.list())
    run_id = existing.id if existing else manager.submit(DEMO_BACKBONE, owner=session_owner(), name=DEMO_BACKBONE_NAME)
    before = draft()
    after = set_draft(transfer_from_demo_backbone(run_id, before))
    said = [f"{_SAID[k][0]} {_SAID[k][1](old)} → {_SAID[k][1](new)}"
            for k, (old, new) in changed_fields(before, after).items() if k in _SAID]
    forget_dataset_classes()  # the Data page's classes were another dataset's
    what = (f"Using the demo backbone you have (run {run_id}, {existing.status}): no second one is trained."
            if existing else "Queued the demo backbone (ResNet-18 on demo-source, 3 epochs).")
    waits = " Runs you start now wait in the queue until it has trained." if not existing or existing.status != FINISHED else ""
    post_notice(f"{what} Your setup now fine-tunes it on demo-target; this changed: "
                + ("; ".join(said) or "nothing") + "." + waits)
    st.query_params["run"] = run_id
    return run_id
