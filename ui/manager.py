"""The one `JobManager` of this server process, shared by every browser session."""

from __future__ import annotations

import uuid

import streamlit as st

from core.jobs import JobManager
from core.runs import RunStore


@st.cache_resource
def get_manager() -> JobManager:
    # Keep this factory trivial: editing it makes a new cache entry and orphans running threads.
    return JobManager(RunStore())


def session_owner() -> str:
    """A label for this browser tab, recorded as the owner of the runs it starts."""
    if "owner" not in st.session_state:
        st.session_state["owner"] = uuid.uuid4().hex[:8]
    return st.session_state["owner"]
