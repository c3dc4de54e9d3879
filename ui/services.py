"""Server-wide services the pages share: the one `JobManager`, the probes, and cached results of `core`.

Everything here is cached per server process (`st.cache_resource` for objects the sessions share
read-only, `st.cache_data` for values copied into each session). Pages call these instead of
decorating `core` functions themselves, so each cache has one definition and one size.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from core import data
from core.analysis import compare
from core.analysis.inference import Classifier, load_imagenet_model, load_run_model
from core.config import data_dir
from core.estimate import CostProfile, cost_profile
from core.jobs import JobManager
from core.jobs.executor import Executor
from core.jobs.probes import SignalProbes
from core.jobs.ray_cluster import ClusterError, ClusterLink, read_settings
from core.models import build_skeleton, checkpoint_report
from core.store import RunStore, run_state_dict


def _release(manager: JobManager) -> None:
    """When the cached manager is dropped: refuse new runs, stop the running one, end the training process."""
    manager.shutdown(wait=True, timeout=30)


@st.cache_resource(on_release=_release)
def get_manager() -> JobManager:
    """The one job manager of this server process, shared by every browser session."""
    # Keep this factory trivial: editing it makes a new cache entry and orphans running threads.
    return JobManager(RunStore())


@st.cache_resource(on_release=lambda link: link and link.close())
def get_cluster() -> ClusterLink | None:
    """The Ray cluster sweeps run on, when `FREEZE_LAB_RAY_ADDRESS` names one (joined on first use);
    None too when the settings are malformed (`cluster_setting_problem` says why)."""
    try:
        settings = read_settings(os.environ)
    except ClusterError:
        return None
    return settings and ClusterLink(get_manager().store, settings.address, settings.gpus_per_member)


def cluster_setting_problem() -> str | None:
    """Why the cluster settings cannot be used, for the sidebar; None when they can (or are not set)."""
    try:
        read_settings(os.environ)
    except ClusterError as exc:
        return str(exc)
    return None


def sweep_executor() -> Executor:
    """Where a new sweep's members train: the Ray cluster when one is configured, else this server's
    queue. `ValueError` (`ClusterError`) while the cluster cannot be reached."""
    cluster = get_cluster()
    return cluster.executor() if cluster is not None else get_manager()


def sweep_where() -> str:
    """Where `sweep_executor` trains, in words for the page."""
    cluster = get_cluster()
    if cluster is None:
        return "one after another on this device"
    return f"side by side on the Ray cluster at `{cluster.address}`, {cluster.gpus_per_member:g} GPU each"


def sweep_executors() -> list[Executor]:
    """Every executor a sweep of this server may have members on (the queue, and the cluster once
    joined), for stopping one: each cancels only the runs it holds."""
    cluster = get_cluster()
    try:
        return [get_manager()] + ([cluster.executor()] if cluster is not None else [])
    except ValueError:  # the cluster does not answer: it runs none of them for this app
        return [get_manager()]


@st.cache_resource(on_release=SignalProbes.close)
def get_probes() -> SignalProbes:
    """The layer-signal probes of this server process (results kept under the data folder)."""
    manager = get_manager()
    return SignalProbes(manager.store, data_dir() / ".cache" / "signals", manager.device, threads=manager.threads)


@st.cache_resource(max_entries=16)
def profile(arch: str, num_classes: int, size: tuple[int, int]) -> CostProfile:
    """The cost profile of an architecture at an input size (recorded once, read on every click)."""
    return cost_profile(arch, num_classes, size)


@st.cache_data(max_entries=32, show_spinner="Reading the run's weights…")
def run_report(run_id: str, arch: str, num_classes: int) -> dict:
    """The load report of an earlier run's final weights on a model of `arch` with that head."""
    state, source = run_state_dict(run_id, arch)
    return checkpoint_report(build_skeleton(arch, num_classes), arch, state, source=source).to_dict()


@st.cache_resource(max_entries=8, show_spinner="Loading the run's model…")
def run_classifier(run_id: str, mtime: float, device: str, precision: str) -> Classifier:
    """One run's model per (run, weights file version, device): shared by sessions, read-only."""
    store = get_manager().store
    return load_run_model(store.load(run_id), device, precision, runs_dir=store.root)


@st.cache_resource(max_entries=2, show_spinner="Loading the ImageNet model…")
def imagenet_classifier(arch: str, device: str) -> Classifier:
    return load_imagenet_model(arch, device)


@st.cache_data(max_entries=8, show_spinner="Classifying the validation split…")
def misclassified(run_id: str, mtime: float, device: str, limit: int) -> pd.DataFrame:
    """The run's most confidently wrong validation images (per run, weights version and device)."""
    store = get_manager().store
    return compare.misclassified(store.load(run_id), device=device, limit=limit, runs_dir=store.root)


@st.cache_data(max_entries=16, show_spinner="Checking images…")
def dataset(ref: str, seed: int, val_fraction: float, test_fraction: float, root_dir: str) -> data.Dataset:
    """A dataset reference checked and split (every image file opened once; later calls are cached)."""
    return data.load_dataset(ref, data_dir=Path(root_dir), val_fraction=val_fraction, test_fraction=test_fraction,
                             seed=seed)


@st.cache_data(max_entries=16, show_spinner=False)
def thumbnails(ref: str, seed: int, val_fraction: float, test_fraction: float, root_dir: str):
    return data.preview(dataset(ref, seed, val_fraction, test_fraction, root_dir), per_class=8)
