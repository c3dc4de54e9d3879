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
from ui.services import get_manager
from ui.session import dataset_sizes, draft, session_owner, update_draft

manager = get_manager()
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


def rates_around(lr: float) -> tuple[float, ...]:
    """Three rates around the draft's, each a factor of about 3 apart (two significant digits)."""
    return tuple(float(f"{lr * f:.2g}") for f in (0.3, 1.0, 3.0))


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
    around = rates_around(cfg.lr)
    tune = right.toggle("Tune the rate per strategy", value=True, key="sweep_tune",
                        help=f"Each strategy trains at {', '.join(f'{r:g}' for r in around)} (around the draft's "
                             f"{cfg.lr:g}) and is reported at the rate its validation accuracy chose: strategies "
                             "do not share a best rate (Lee et al. tune it per strategy). Three times the runs.")
    rates = right.text_input("Learning rates", f"{cfg.lr:g}", key="sweep_lrs", disabled=tune, max_chars=200,
                             help="Comma-separated, e.g. 0.01, 0.001. Each strategy is reported at the one its "
                                  "validation accuracy chose.")
    name = right.text_input("Sweep name", key="sweep_name", placeholder="optional")
    try:
        sweep = SweepConfig(base=cfg, kind=kind, seeds=int(seeds), lrs=around if tune else parse_rates(rates),
                            stages=tuple(chosen) if kind != "grid" and chosen != trunk else (),
                            presets=tuple(presets) if kind == "grid" else (),
                            with_auto_rgn=with_auto_rgn and kind != "grid")
        members = plan(sweep, model)
    except ValueError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    st.markdown(f"**{len(members)} runs** of {cfg.epochs} epochs, {services.sweep_where()}. "
                + time_estimate(sweep, members, model))
    if st.button("Start the sweep", type="primary", icon=":material/play_arrow:", key="sweep_start"):
        try:  # on the cluster when one is configured (ClusterError, a ValueError, when it does not answer)
            sweep_id = submit_sweep(services.sweep_executor(), sweep, owner=session_owner(), name=name or None)
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
    """The answer in words (chosen on validation, reported on test); while the sweep runs every figure
    says "so far", and the draft takes the answer only when the user says so."""
    rec, rows = report.recommendation, {r.label: r for r in report.rows}
    if rec["chosen"] is None:
        return
    (st.info if rec["so_far"] else st.success)(rec["answer"], icon=":material/lightbulb:")
    best = rows[rec["best"]]
    close = [r.label for r in report.rows if r.label != best.label and within_error(r, best)]
    st.caption(f"Best on validation{' so far' if rec['so_far'] else ''}: `{best.label}` at {best.mean_acc:.1%}"
               + (f"; within one standard error of it: {', '.join(f'`{c}`' for c in close)}" if close else "")
               + ". Pareto front, validation accuracy against training time (cheapest first): "
               + " → ".join(f"`{label}`" for label in report.front) + ".")
    if rec["so_far"] and not st.toggle("Apply anyway (the sweep has not finished)", key="sweep_apply_early"):
        return
    if st.button(f"Use `{rec['chosen']}` at {rec['lr']:g} in my draft", key="sweep_apply", icon=":material/check:"):
        apply_answer(report, rec["chosen"], rec["lr"])


def apply_answer(report, label: str, lr: float) -> None:
    """Set the draft to train what `label`'s members trained, at `lr`: its frozen set and preset, or
    Auto-RGN (every layer, norm layers aside)."""
    member = next(m for m in report.members if m.strategy == label)
    if label == AUTO_RGN:  # its frozen norm layers in training mode, as its members trained
        update_draft(frozen=tuple(member.frozen), preset=AUTO_RGN, auto_rgn=True, bn_frozen_eval=False, lr=lr)
    else:
        known = member.preset in presets_for(cfg.arch) or member.preset.startswith("last")
        update_draft(frozen=tuple(member.frozen), preset=member.preset if known else "custom", auto_rgn=False,
                     bn_frozen_eval=report.sweep.config.base.bn_frozen_eval, lr=lr)
    st.toast(f"The draft now trains what `{label}` trains, at {lr:g}.", icon=":material/check:")


def stop_everywhere(record) -> None:
    """Stop the sweep's members, wherever they train (each executor knows its own)."""
    for executor in services.sweep_executors():
        stop_sweep(executor, record)


def live_sweep(sweep_id: str, live: bool) -> None:
    """The sweep's members, chart and answer; a fragment rerun every second while the page was drawn
    with the sweep `live`. Once it has ended, the whole page reruns: the timer stops with the sweep."""
    record = sweeps.load(sweep_id)
    report = sweep_state(manager.store, record)
    done = sum(m.status not in ACTIVE for m in report.members)
    st.subheader(f"{record.name}")
    st.progress(done / len(report.members), text=f"{done} of {len(report.members)} runs ended")
    if not report.done and record.owner in ("", session_owner()):  # a callback: it cancels before the next rerun
        st.button("Stop the sweep", icon=":material/stop:", key="sweep_stop", on_click=stop_everywhere, args=(record,))
    elif not report.done:  # someone else's sweep: a second, deliberate click, as for another user's run
        with st.popover("Stop the sweep", icon=":material/stop:"):
            st.markdown("This browser session did not start this sweep: it may be another user's. Stopping it "
                        "cancels their runs that have not ended; what finished is kept.")
            st.button("Stop this sweep", key="sweep_stop_other", type="primary", on_click=stop_everywhere,
                      args=(record,))
    table = pd.DataFrame([{"strategy": m.strategy, "lr": m.lr, "seed": m.seed, "status": m.status, "where": m.where,
                           "epochs": m.epochs_done, "val acc": m.val_acc, "test acc": m.test_acc,
                           "trainable params": m.trainable_params, "training s": m.train_s, "run": m.run_id}
                          for m in report.members])
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(table, hide_index=True, width="stretch", key="sweep_members",
                 column_config={"val acc": percent, "test acc": percent,
                                "trainable params": st.column_config.NumberColumn(format="localized"),
                                "training s": st.column_config.NumberColumn(format="%.1f")})
    so_far = " (so far)" if not report.done else ""
    rows = [r.to_dict() for r in report.rows]
    tuned = ", each at the rate its validation chose" if len(report.rates) > len(report.rows) else ""
    st.plotly_chart(charts.sweep_figure(rows, f"{record.config.kind} sweep{tuned}{so_far}"),
                    key="sweep_chart", width="stretch")
    if record.config.kind == "surgical" and report.relative:
        st.plotly_chart(charts.relative_figure(report.relative, f"Each stage tuned alone, against full fine-tuning"
                                                                f"{so_far}"),
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
