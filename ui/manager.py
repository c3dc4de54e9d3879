"""The one `JobManager` of this server process, shared by every browser session."""

from __future__ import annotations

import streamlit as st

from core.jobs import JobManager
from core.store import RunStore


def _release(manager: JobManager) -> None:
    """When the cached manager is dropped: refuse new runs, stop the running one, end the training process."""
    manager.shutdown(wait=True, timeout=30)


@st.cache_resource(on_release=_release)
def get_manager() -> JobManager:
    # Keep this factory trivial: editing it makes a new cache entry and orphans running threads.
    return JobManager(RunStore())
