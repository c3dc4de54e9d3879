"""The Model page's layer signals: measure the relative gradient norms and show them, as a measurement.

The probe runs as a job (`core.jobs.probes`, a worker process); this panel asks for it, polls it in
a fragment while it runs, and draws the answer: a bar per stage and an RGN column in the layer
tables (the page passes the result on). It advises nothing: on the label-shift demo (demo-flip) the
stages it ranks highest are the two worst to train (docs/benchmarks.md), and no agreement with
sweeps has been measured that would support a "train the top k" choice. A sweep answers that.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from core.config import RunConfig
from core.data import dataset_name
from core.engine import PROBE_BATCHES, Signals
from core.freezing import CLASSIFIER, HEAD
from core.jobs.probes import ProbeState, probe_key
from ui.services import get_probes

POLL_S = 1.0
MEANING = ("How strongly each stage's weights are pulled by the new data, relative to their size: the "
           "relative gradient norm ‖∇θ‖ / ‖θ‖ (Lee et al., ICLR 2023). It is a measurement, not advice: on the "
           "demo's label shift (demo-flip) it ranks the stem and layer1 highest, and they are the worst single "
           "stages to train there, while head only is the best. Which layers to train is what a sweep answers.")


def probe_config(cfg: RunConfig) -> RunConfig:
    """What the probe measures: the draft with every layer trainable (what is ticked does not matter)."""
    return cfg.replace(frozen=(), preset="full", auto_rgn=False)


def current_state(cfg: RunConfig) -> tuple[str | None, ProbeState]:
    """The probe of the draft's model, weights, data and size: its key and where it stands."""
    try:
        key = probe_key(probe_config(cfg))
    except OSError:  # a checkpoint path that is gone: nothing to look up
        return None, ProbeState("none")
    return key, get_probes().state(key)


def stage_figure(signals: Signals):
    rgn = {g: v for g, v in signals.group_rgn().items() if v is not None}
    fig = px.bar(x=list(rgn), y=list(rgn.values()), labels={"x": "", "y": "‖∇θ‖ / ‖θ‖"}, log_y=True,
                 title="Relative gradient norm per stage (log scale)")
    fig.update_traces(marker_color=["#8E9AAF" if g in (HEAD, CLASSIFIER) else "#2E6FD8" for g in rgn],
                      hovertemplate="%{x}: %{y:.3g}<extra></extra>")
    fig.update_yaxes(dtick=1)  # one labelled tick per decade (plotly's default labels 2, 5 between them)
    return fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10))


def signals_panel(cfg: RunConfig) -> Signals | None:
    """The panel; returns the probe's result when there is one (for the tables' RGN column)."""
    st.markdown("##### Layer signals")
    st.caption(f"{MEANING} Measured in the background on {PROBE_BATCHES} batches of **{dataset_name(cfg.dataset)}**, "
               "with every layer trainable and no update.")
    key, state = current_state(cfg)
    if state.status in ("none", "failed"):
        if state.status == "failed":
            st.error(f"The probe failed: {state.reason}", icon=":material/error:")
        if st.button("Measure the layer signals", key="rgn_probe", icon=":material/insights:"):
            try:
                get_probes().request(probe_config(cfg))
            except ValueError as exc:
                st.error(str(exc), icon=":material/error:")
            else:
                st.rerun()
        return None
    if state.status == "running":
        st.fragment(_wait_for, run_every=POLL_S)(key)
        return None
    _answer(state.signals)
    return state.signals


def _wait_for(key: str) -> None:
    st.info("Measuring the layer signals in the background…", icon=":material/hourglass_top:")
    if get_probes().state(key).status != "running":
        st.rerun()  # the whole page: the tables get their RGN column


def _answer(signals: Signals) -> None:
    st.plotly_chart(stage_figure(signals), key="rgn_stage_chart", width="stretch")
    source = {"none": "random initial weights", "imagenet": "the ImageNet weights"}.get(signals.weights, f"`{signals.weights}`")
    st.caption(f"Measured on {signals.images} training images, from {source}.")
