"""The one `JobManager` of this server process, shared by every browser session."""

from __future__ import annotations

import streamlit as st

from core.jobs import JobManager
from core.runs import RunStore


@st.cache_resource
def get_manager() -> JobManager:
    # Keep this factory trivial: editing it makes a new cache entry and orphans running threads.
    return JobManager(RunStore())
