"""The `RunConfig` draft every page edits, kept in `st.session_state["draft"]`."""

from __future__ import annotations

import streamlit as st

from core.config import RunConfig


def draft() -> RunConfig:
    """The current draft configuration of this browser tab (created on first use)."""
    if "draft" not in st.session_state:
        st.session_state["draft"] = RunConfig()
    return st.session_state["draft"]


def update_draft(**changes) -> RunConfig:
    """Replace the draft with a copy that has `changes` applied; returns the new draft."""
    new = draft().replace(**changes)
    st.session_state["draft"] = new
    return new
