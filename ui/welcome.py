"""The first-run panel: the demo story in three steps, until this machine has a run."""

from __future__ import annotations

import streamlit as st

from core.jobs import JobManager
from ui.actions import backbone_time, pretrain_demo_backbone
from ui.session import forget_dataset_classes, update_draft


def first_run_panel(manager: JobManager) -> None:
    """Three steps with a button each: the demo data, a backbone to transfer, strategies to compare.

    Shown while the run store is empty; it goes away with the first run.
    """
    runs = manager.store.list()
    if runs:
        return
    with st.container(border=True, key="welcome"):
        st.markdown("#### :material/waving_hand: Start here: transfer learning in three steps, offline")
        st.caption("A built-in demo world stands in for ImageNet: a backbone pretrained on 6 shapes is "
                   "transferred to 4 new ones.")
        one, two, three = st.columns(3)
        with one:
            st.markdown("**1. The data.** 4 new shapes, 80 images each: a small target task.")
            if st.button("Use the demo data", key="welcome_data", icon=":material/photo_library:"):
                update_draft(dataset="demo-target", num_classes=4)
                forget_dataset_classes()
                st.switch_page("app_pages/data.py")
        with two:
            st.markdown(f"**2. A backbone.** Pretrain ResNet-18 on the 6 source shapes ({backbone_time(runs)}).")
            if st.button("Pretrain the demo backbone", key="welcome_pretrain", icon=":material/bolt:"):
                pretrain_demo_backbone(manager)
                st.switch_page("app_pages/train.py")
        with three:
            st.markdown("**3. The strategies.** Tick what to train here (or a preset), start runs from the "
                        "backbone on the Train page, then compare them side by side.")
            if st.button("Open Compare", key="welcome_compare", icon=":material/compare_arrows:"):
                st.switch_page("app_pages/compare.py")
