"""The downloads of a finished run: its weights and its metrics, wherever the run is shown."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.analysis import compare
from core.store import RunRecord


def run_downloads(record: RunRecord, runs_dir: Path, key: str) -> None:
    """Two download buttons side by side: the full state dict (.pt) and the per-epoch metrics (CSV).

    `key` prefixes the buttons' keys, so that two pages (or two runs) never share one.
    """
    c1, c2 = st.columns(2)
    c1.download_button("Weights (.pt state dict)", lambda: compare.weights_bytes(record, runs_dir=runs_dir),
                       f"{record.config.arch}-{record.id}.pt", "application/octet-stream", key=f"{key}_weights",
                       icon=":material/download:",
                       help=f"torch.load it into build_model('{record.config.arch}', {record.config.num_classes}) "
                            "— or torchvision's model with the head replaced — with load_state_dict.")
    c2.download_button("Metrics (CSV)", compare.metrics_csv(record), f"metrics-{record.id}.csv", "text/csv",
                       key=f"{key}_metrics_csv", icon=":material/download:")
