"""Sweep page: which layers should you fine-tune? Runs that differ in what trains, and the answer."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.config import AUTO_RGN, SWEEP_KINDS, SweepConfig
from core.data import dataset_name
from core.estimate import human_flops
from core.freezing import presets_for
from core.models import arch_spec, build_skeleton, stages
from core.store import ACTIVE, SweepStore
from core.sweeps import member_configs, plan, stop_sweep, submit_sweep, sweep_state, within_error
from core.sweeps.timing import achieved_rate, sweep_work
from ui import charts, services
from ui.services import get_cluster, get_manager
from ui.session import dataset_sizes, draft, session_owner, update_draft

manager = get_manager()
cluster = get_cluster()  # None unless FREEZE_LAB_RAY_ADDRESS names a Ray cluster
sweeps = SweepStore(manager.store)
cfg = draft()
LIVE_EVERY_S = 2.0
KIND_HELP = {
    "depth": "Head only, then the last 1, 2, ... stages with the head, then everything (Yosinski et al., 2014).",
    "surgical": "Exactly one stage with the new head, for each stage, plus head only and everything "
                "(Lee et al., ICLR 2023: which stage to tune depends on the kind of shift).",
    "grid": "Any presets or single stages, at each learning rate and seed.",
}

st.title("Sweep")
st.caption("Which layers should you fine-tune? A sweep trains your draft once per strategy and seed (on this "
           "device, or on a Ray cluster when one is configured) and answers with means and standard errors.")


def parse_rates(text: str) -> tuple[float, ...]:
    """Comma-separated learning rates; `ValueError` naming the one that is not a number."""
    rates = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            rates.append(float(item))
        except ValueError:
            raise ValueError(f"{item!r} is not a learning rate") from None
    return tuple(rates)


def sweep_form() -> None:
    """Kind, stages, seeds and rates; the number of runs and a time estimate; Start."""
    model = build_skeleton(cfg.arch, cfg.num_classes)
    trunk = [s.name for s in stages(model, cfg.arch)]
    st.markdown(f"From your draft: **{arch_spec(cfg.arch).label}**, weights `{cfg.weights}`, dataset "
                f"**{dataset_name(cfg.dataset)}**, {cfg.image_size[0]}×{cfg.image_size[1]} px, {cfg.epochs} epochs, "
                f"{cfg.optimizer.upper()} at {cfg.lr:g}.")
    if cfg.weights == "none":
        st.info("The draft starts from random weights: every strategy but full fine-tuning would train on random "
                "features. Pick pretrained weights on the Model page (ImageNet, or the demo backbone) for a sweep "
                "that answers the question.", icon=":material/info:")
    left, right = st.columns(2)
    kind = left.radio("Kind", SWEEP_KINDS, index=1, horizontal=True, key="sweep_kind", help=KIND_HELP["surgical"])
    left.caption(KIND_HELP[kind])
    chosen = left.multiselect("Stages", trunk, default=trunk, key="sweep_stages", disabled=kind == "grid",
                              help="Surgical: each stage tuned alone. Depth: down to the first chosen stage.")
    presets = left.multiselect("Strategies", [p for p in presets_for(cfg.arch) if p != "last"] + trunk + [AUTO_RGN],
                               default=["head", "full"], key="sweep_presets", disabled=kind != "grid")
    with_auto_rgn = left.checkbox("Add Auto-RGN", key="sweep_auto_rgn", disabled=kind == "grid",
                                  help="One more strategy: every layer trains, each at a rate scaled by its relative "
                                       "gradient norm (Lee et al.'s Auto-RGN). In a grid, pick auto-rgn above.")
    seeds = right.number_input("Seeds", 1, 20, 1, key="sweep_seeds", help="3 for a real answer: mean ± standard error.")
    rates = right.text_input("Learning rates", f"{cfg.lr:g}", key="sweep_lrs", help="Comma-separated, e.g. 0.01, 0.001")
    name = right.text_input("Sweep name", key="sweep_name", placeholder="optional")
    try:
        sweep = SweepConfig(base=cfg, kind=kind, seeds=int(seeds), lrs=parse_rates(rates),
                            stages=tuple(chosen) if kind != "grid" and chosen != trunk else (),
                            presets=tuple(presets) if kind == "grid" else (),
                            with_auto_rgn=with_auto_rgn and kind != "grid")
        members = plan(sweep, model)
    except ValueError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    where = (f"side by side on the Ray cluster at `{cluster.address}`, {cluster.gpus_per_member:g} GPU each"
             if cluster is not None else "one after another on this device")
    st.markdown(f"**{len(members)} runs** of {cfg.epochs} epochs, {where}. " + time_estimate(sweep, members, model))
    if st.button("Start the sweep", type="primary", icon=":material/play_arrow:", key="sweep_start"):
        try:  # on the cluster when one is configured (ClusterError, a ValueError, when it does not answer)
            runner = cluster.executor() if cluster is not None else manager
            sweep_id = submit_sweep(runner, sweep, owner=session_owner(), name=name or None)
        except ValueError as exc:
            st.error(str(exc), icon=":material/error:")
        else:
            st.query_params["sweep"] = sweep_id
            st.rerun()


def time_estimate(sweep: SweepConfig, members, model) -> str:
    """The members' work from the cost model, at the speed earlier runs of this architecture and size
    reached here (`core.sweeps.timing`); the work alone until there are such runs."""
    sizes = dataset_sizes(cfg.dataset)
    if not sizes:
        return "Check the dataset on the Data page for an estimate of the time."
    profile = services.profile(cfg.arch, cfg.num_classes, cfg.image_size)
    configs = member_configs(sweep, members, model)
    flops = sweep_work(profile, configs, sizes, model)
    rate = achieved_rate(profile, manager.store.list(), model)
    if rate is None:
        return (f"{human_flops(flops)} of work in all (cost model); a time once a run of this architecture at "
                "this size has finished here.")
    return (f"About {flops / rate / 60:.0f} min: {human_flops(flops)} of work (cost model) at the "
            f"{human_flops(rate)}/s earlier runs reached here.")


def answer(report) -> None:
    """The recommendation in words, and which strategies are within each other's error."""
    rec, rows = report.recommendation, {r.label: r for r in report.rows}
    if rec["best"] is None:
        return
    best, cheap = rows[rec["best"]], rows[rec["cheapest_within_error"]]
    error = f" ± {best.sem_acc:.1%}" if best.sem_acc is not None else " (one seed: no error bar yet)"
    text = f"**Best:** `{best.label}` at {best.mean_acc:.1%}{error}."
    if cheap.label != best.label:
        text += (f" **Cheapest within one standard error:** `{cheap.label}` at {cheap.mean_acc:.1%}, "
                 f"{cheap.mean_train_s:.1f} s of training instead of {best.mean_train_s:.1f} s.")
    st.success(text, icon=":material/lightbulb:")
    close = [r.label for r in report.rows if r.label != best.label and within_error(r, best)]
    if close:
        st.caption("Within each other's error of the best: " + ", ".join(f"`{c}`" for c in close) + ".")
    st.caption("Pareto front, accuracy against training time (cheapest first): "
               + " → ".join(f"`{label}`" for label in report.front))
    chosen = next(m for m in report.members if m.label == cheap.label)
    if st.button(f"Use `{cheap.label}` in my draft", key="sweep_apply", icon=":material/check:"):
        preset = chosen.preset if chosen.preset in presets_for(cfg.arch) or chosen.preset.startswith("last") else "custom"
        update_draft(frozen=tuple(chosen.frozen), preset=preset)
        st.toast(f"The draft now trains what `{cheap.label}` trains.", icon=":material/check:")


def stop_everywhere(record) -> None:
    """Stop the sweep's members, on this machine's queue and on the cluster (each knows its own)."""
    stop_sweep(manager, record)
    if cluster is not None:
        try:
            stop_sweep(cluster.executor(), record)
        except ValueError:
            pass  # the cluster does not answer: it runs none of them for this app


def live_sweep(sweep_id: str, live: bool) -> None:
    """The sweep's members, chart and answer; a fragment rerun every second while the page was drawn
    with the sweep `live`. Once it has ended, the whole page reruns: the timer stops with the sweep."""
    record = sweeps.load(sweep_id)
    report = sweep_state(manager.store, record)
    done = sum(m.status not in ACTIVE for m in report.members)
    st.subheader(f"{record.name}")
    st.progress(done / len(report.members), text=f"{done} of {len(report.members)} runs ended")
    if not report.done:  # a callback: the cancel happens before the next run of this fragment
        st.button("Stop the sweep", icon=":material/stop:", key="sweep_stop", on_click=stop_everywhere, args=(record,))
    table = pd.DataFrame([{"strategy": m.label, "seed": m.seed, "lr": m.lr, "status": m.status, "where": m.where,
                           "epochs": m.epochs_done, "val acc": m.val_acc, "run": m.run_id} for m in report.members])
    st.dataframe(table, hide_index=True, width="stretch", key="sweep_members",
                 column_config={"val acc": st.column_config.NumberColumn(format="percent")})
    rows = [r.to_dict() for r in report.rows]
    st.plotly_chart(charts.sweep_figure(rows, f"{record.config.kind} sweep: validation accuracy"),
                    key="sweep_chart", width="stretch")
    if record.config.kind == "surgical" and report.relative:
        st.plotly_chart(charts.relative_figure(report.relative, "Each stage tuned alone, against full fine-tuning"),
                        key="sweep_relative_chart", width="stretch")
    answer(report)
    if report.done and live:
        st.rerun()


with st.expander("New sweep from the draft", expanded=not sweeps.list()):
    sweep_form()

records = sweeps.list()
if not records:
    st.info("No sweep yet: pick a kind above and start one.", icon=":material/info:")
    st.stop()
labels = {r.id: f"{r.name} ({r.id})" for r in records}
wanted = st.query_params.get("sweep")
shown = st.selectbox("Sweep", list(labels), index=list(labels).index(wanted) if wanted in labels else 0,
                     format_func=labels.get, key="sweep_shown")
if st.query_params.get("sweep") != shown:
    st.query_params["sweep"] = shown
running = not sweep_state(manager.store, sweeps.load(shown)).done
st.fragment(live_sweep, run_every=LIVE_EVERY_S if running else None)(shown, running)
