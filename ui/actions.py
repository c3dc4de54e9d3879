"""User actions that more than one page offers, each one call into `core` plus what the tab is told."""

from __future__ import annotations

import streamlit as st

from core.config import (
    DEMO_BACKBONE,
    DEMO_BACKBONE_NAME,
    changed_fields,
    transfer_from_demo_backbone,
)
from core.data import dataset_name
from core.freezing import preset_label
from core.jobs import JobManager
from core.models import arch_spec
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


def pretrain_demo_backbone(manager: JobManager) -> str:
    """Queue the demo backbone and point the draft at it (the queue trains it before any run started
    from it). The change of the draft is said, field by field, in the Train page's notice. Returns the id."""
    run_id = manager.submit(DEMO_BACKBONE, owner=session_owner(), name=DEMO_BACKBONE_NAME)
    before = draft()
    after = set_draft(transfer_from_demo_backbone(run_id, before))
    said = [f"{_SAID[k][0]} {_SAID[k][1](old)} → {_SAID[k][1](new)}"
            for k, (old, new) in changed_fields(before, after).items() if k in _SAID]
    forget_dataset_classes()  # the Data page's classes were another dataset's
    post_notice(
        "Queued the demo backbone (ResNet-18 on demo-source, 3 epochs). Your setup now fine-tunes it on "
        "demo-target; this changed: " + "; ".join(said) + ". Runs you start now wait in the queue until it has trained."
    )
    st.query_params["run"] = run_id
    return run_id
