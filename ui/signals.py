"""The Model page's layer signals: measure the relative gradient norms, show them, train the top stages.

The probe runs as a job (`core.jobs.probes`, a worker process); this panel asks for it, polls it in
a fragment while it runs, and draws the answer: a bar per stage, an RGN column in the layer tables
(the page passes the result on) and one click that trains the k stages the signal ranks highest.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from core.config import RunConfig
from core.data import dataset_name
from core.engine import PROBE_BATCHES, Signals
from core.freezing import CLASSIFIER, HEAD, Stage, frozen_complement
from core.jobs.probes import ProbeState, probe_key
from core.models import arch_spec
from ui.services import get_probes

POLL_S = 1.0


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


def top_stages(signals: Signals, trunk: list[Stage], k: int) -> list[Stage]:
    """The `k` trunk stages with the largest relative gradient norm, in forward order."""
    rgn = signals.group_rgn()
    ranked = sorted((s for s in trunk if rgn.get(s.name) is not None), key=lambda s: rgn[s.name], reverse=True)[:k]
    return [s for s in trunk if s in ranked]


def stage_figure(signals: Signals):
    rgn = {g: v for g, v in signals.group_rgn().items() if v is not None}
    fig = px.bar(x=list(rgn), y=list(rgn.values()), labels={"x": "", "y": "‖∇θ‖ / ‖θ‖"}, log_y=True,
                 title="Relative gradient norm per stage (log scale)")
    fig.update_traces(marker_color=["#8E9AAF" if g in (HEAD, CLASSIFIER) else "#2E6FD8" for g in rgn],
                      hovertemplate="%{x}: %{y:.3g}<extra></extra>")
    fig.update_yaxes(dtick=1)  # one labelled tick per decade (plotly's default labels 2, 5 between them)
    return fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10))


def signals_panel(cfg: RunConfig, trunk: list[Stage], model, on_choice) -> Signals | None:
    """The panel; returns the probe's result when there is one (for the tables' RGN column).
    `on_choice(frozen)` applies the top-k choice to the draft."""
    st.markdown("##### Which layers want to move?")
    st.caption(f"Relative gradient norm ‖∇θ‖ / ‖θ‖ of each layer on {PROBE_BATCHES} batches of "
               f"**{dataset_name(cfg.dataset)}**, with every layer trainable and no update (Lee et al., ICLR 2023): "
               "the larger it is, the more the new data asks of that layer. Measured in the background.")
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
    _answer(state.signals, trunk, model, cfg, on_choice)
    return state.signals


def _wait_for(key: str) -> None:
    st.info("Measuring the layer signals in the background…", icon=":material/hourglass_top:")
    if get_probes().state(key).status != "running":
        st.rerun()  # the whole page: the tables get their RGN column


def _answer(signals: Signals, trunk: list[Stage], model, cfg: RunConfig, on_choice) -> None:
    st.plotly_chart(stage_figure(signals), key="rgn_stage_chart", width="stretch")
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    k = left.number_input("Stages", 1, len(trunk), min(2, len(trunk)), key="rgn_top_k",
                          help="How many trunk stages to train, the highest by this signal (the head always trains).")
    chosen = top_stages(signals, trunk, int(k))
    trainable = [p for s in chosen for p in s.paths] + [arch_spec(cfg.arch).head]
    right.button(f"Train the top {int(k)} by RGN: {', '.join(s.name for s in chosen)} + head", key="rgn_apply",
                 icon=":material/done_all:", on_click=on_choice, args=(frozen_complement(model, trainable),))
    source = {"none": "random initial weights", "imagenet": "the ImageNet weights"}.get(signals.weights, f"`{signals.weights}`")
    st.caption(f"Measured on {signals.images} training images, from {source}.")
