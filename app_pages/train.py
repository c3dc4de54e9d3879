"""Train page: start a short fine-tuning run with the current choice and watch it live."""

from __future__ import annotations

import time

import streamlit as st

from core.config import AUGMENTATIONS, KEEPS, OPTIMIZERS, PRECISIONS, SCHEDULERS
from core.data import dataset_name
from core.freezing import model_structure, strategy_label
from core.models import arch_spec, imagenet_available
from core.store import CANCELLED, FAILED, FINISHED, INTERRUPTED, QUEUED, RUNNING
from ui import charts
from ui.actions import backbone_label, pretrain_demo_backbone
from ui.downloads import run_downloads
from ui.services import get_manager
from ui.session import draft, pop_notice, session_owner, update_draft

manager = get_manager()
cfg = draft()
# The live view's refresh while a run trains. 0.5 s cut the update lag little (p90 1.8 s instead of 2.3 s
# with one viewer) and cost the run a third of its speed with three viewers, whose browsers redraw the
# charts on the same cores (bench/viewers.py, 2-core CPU): 1 s.
LIVE_EVERY_S = 1.0
# The loss curve's steps are redrawn with every epoch's end and, within a long epoch, this long after
# the last redraw. Each redraw is a new chart in every viewer's browser; once a second it cost a
# viewer's headless Chromium about 7% of a core on a 2-core machine, and the progress bar shows the
# steps every second anyway.
LOSS_EVERY_S = 5.0
LAST_SHOWN = "train_last_shown"  # the run this tab showed last, kept across pages as the draft is


def weights_note(weights: str) -> str:
    """The starting weights in a few words (the header's metrics must fit one row; the help has it all)."""
    if weights.startswith("run:"):
        return "weights of run …" + weights.removeprefix("run:")[-4:]
    return {"none": "random init", "imagenet": "ImageNet weights"}.get(weights, "a checkpoint")

st.title("Train")

# --- what will be trained -----------------------------------------------------------------
tree, _ = model_structure(cfg.arch, cfg.num_classes)
trainable, frozen = tree.counts(cfg.frozen)
with st.container(border=True):
    st.markdown("**Your draft**: what Start trains (a run below shows its own setup)")
    # Content-wide metrics that wrap to a second line: long names ("MobileNetV3-Large", a folder) are never cut.
    with st.container(horizontal=True, gap="large"):
        dataset = dataset_name(cfg.dataset)
        facts = [
            ("Model", arch_spec(cfg.arch).label, weights_note(cfg.weights), f"Starting weights: {cfg.weights}"),
            ("Strategy", strategy_label(cfg), f"{trainable:,} trainable", None),
            ("Dataset", dataset, f"{cfg.num_classes} classes", cfg.dataset if dataset != cfg.dataset else None),
            ("Input", f"{cfg.image_size[0]}×{cfg.image_size[1]}",
             "frozen layers in eval mode" if cfg.bn_frozen_eval else "frozen layers in train mode", None),
        ]
        for label, value, note, tip in facts:
            st.metric(label, value, note, delta_color="off", delta_arrow="off", help=tip, width="content")
    st.caption("Change the model and its layers on the Model page, the dataset on the Data page.")

if cfg.weights == "imagenet" and not imagenet_available(cfg.arch):
    st.info("ImageNet weights are not cached here and are downloaded when the run starts. Offline? "
            "Pretrain a small backbone on the built-in demo world first, then use its weights.",
            icon=":material/cloud_off:")
if st.button(backbone_label(manager), icon=":material/bolt:", key="train_pretrain_demo"):
    pretrain_demo_backbone(manager)
    st.rerun()
if notice := pop_notice():
    st.success(notice, icon=":material/bolt:")

# --- hyper-parameters -----------------------------------------------------------------------
with st.form("train_form", enter_to_submit=False):  # Enter in "Run name" must not start a run: only the button does
    st.subheader("Hyper-parameters")
    a, b, c, d = st.columns(4)
    optimizer = a.selectbox("Optimizer", OPTIMIZERS, OPTIMIZERS.index(cfg.optimizer), key="train_optimizer",
                            help="SGD uses momentum 0.9")
    lr = b.number_input("Learning rate (head)", 1e-6, 10.0, cfg.lr, format="%.5f", key="train_lr")
    mult = c.number_input("Backbone rate multiplier", 0.0, 10.0, cfg.backbone_lr_mult, step=0.05, key="train_mult",
                          help="Unfrozen pretrained layers learn at rate × this (discriminative rates)")
    wd = d.number_input("Weight decay", 0.0, 1.0, cfg.weight_decay, format="%.5f", key="train_wd")
    a, b, c, d = st.columns(4)
    epochs = a.number_input("Epochs", 1, 1000, cfg.epochs, key="train_epochs")
    batch = b.number_input("Batch size", 1, 4096, cfg.batch_size, key="train_batch")
    scheduler = c.selectbox("Scheduler", SCHEDULERS, SCHEDULERS.index(cfg.scheduler), key="train_scheduler",
                            help="Stepped once per epoch")
    seed = d.number_input("Seed", 0, 2**31 - 1, cfg.seed, key="train_seed")
    a, b, c, d = st.columns(4)
    precision = a.selectbox("Precision", PRECISIONS, PRECISIONS.index(cfg.precision), key="train_precision",
                            help="auto: bf16 autocast on a CUDA GPU that supports it, else fp32")
    augment = b.multiselect("Augmentation", AUGMENTATIONS, list(cfg.augment), key="train_augment",
                            help="Random resized crop, horizontal flip, colour jitter — on the device, per batch. "
                                 "Augmentation turns the feature cache off.")
    unfreeze_after = c.number_input("Gradual unfreezing after", 0, 999, cfg.unfreeze_after, key="train_unfreeze",
                                    help="0 = off. k > 0 trains only the head for k epochs, then the chosen layers too.")
    keep = d.selectbox("Weights kept", KEEPS, KEEPS.index(cfg.keep), key="train_keep",
                       format_func={"best": "best validation epoch", "last": "last epoch"}.get,
                       help="The weights the run ends with, saves and reports (validation and test). The test split "
                            "grades them once at the end.")
    a, b, c, d = st.columns(4)
    early_stop = a.number_input("Early stopping patience", 0, 999, cfg.early_stop, key="train_early_stop",
                                help="0 = off. k > 0 ends the run after k epochs without a better validation accuracy.")
    name = b.text_input("Run name", "", key="train_name", placeholder="default: model · strategy · dataset")
    submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

if submitted:
    form = dict(optimizer=optimizer, lr=float(lr), backbone_lr_mult=float(mult), weight_decay=float(wd),
                epochs=int(epochs), batch_size=int(batch), scheduler=scheduler, seed=int(seed),
                precision=precision, augment=tuple(augment), unfreeze_after=int(unfreeze_after), keep=keep,
                early_stop=int(early_stop))
    try:  # a refused start changes nothing: the draft takes the form's values only once a run is queued
        run_id = manager.submit(cfg.replace(**form), owner=session_owner(), name=name or None)
    except ValueError as exc:
        st.error(str(exc), icon=":material/error:")
    else:
        update_draft(**form)
        st.query_params["run"] = run_id
        st.rerun()


# --- the run --------------------------------------------------------------------------------
def fresh_snapshot(run_id: str):
    """The run's snapshot with its metrics, copied again only when something moved.

    The live view reruns every second for every viewer: a cheap look (no curves copied) decides
    whether anything changed; if not, this tab's last snapshot is reused.
    """
    head = manager.snapshot(run_id, with_metrics=False)
    if head is None:
        return None
    moved = (run_id, head.status, head.step, head.epochs_done, head.name)
    cached = st.session_state.get("train_view")
    if cached is None or cached[0] != moved:
        cached = (moved, manager.snapshot(run_id))
        st.session_state["train_view"] = cached
    return cached[1]


def figure(name: str, version: tuple, build, max_age_s: float | None = None):
    """`build()`, kept in this tab's session until `version` (what the figure draws) changes or, with
    `max_age_s`, until it is that old."""
    figures = st.session_state.setdefault("train_figures", {})
    now = time.monotonic()
    kept_version, fig, built_at = figures.get(name, (None, None, now))
    if fig is None or kept_version != version or (max_age_s is not None and now - built_at >= max_age_s):
        figures[name] = (version, fig := build(), now)
    return fig


def run_header(snap) -> None:
    """Name, status and Stop: what changes only with the run's status (a change reruns the page)."""
    st.subheader(f"Run: {snap.name}")
    run = snap.config
    st.caption(f"id `{snap.id}` · {snap.status} · trained {arch_spec(run.arch).label} · {strategy_label(run)} · "
               f"{dataset_name(run.dataset)} · {run.image_size[0]}×{run.image_size[1]} · {weights_note(run.weights)}")
    # A run this session did not start is someone's work (another user's, or this user's before a
    # reload): stopping it takes a second, deliberate click.
    if not snap.done and snap.owner in ("", session_owner()):
        st.button("Stop", icon=":material/stop:", key="train_stop", on_click=manager.cancel, args=(snap.id,))
    elif not snap.done:
        with st.popover("Stop", icon=":material/stop:"):
            st.markdown("This browser session did not start this run: it may be another user's. Stopping it "
                        "ends their training; its metrics so far are kept.")
            st.button("Stop this run", key="train_stop_other", type="primary", on_click=manager.cancel,
                      args=(snap.id,))


def run_progress(snap) -> None:
    """The queue position, or the progress bar with the step, every second."""
    if snap.status == QUEUED:
        st.info(f"Queued: position {snap.queue_position} — one run trains at a time on this device.",
                icon=":material/hourglass_top:")
    elif snap.status == RUNNING:
        eta = f" · about {snap.eta_s:.0f} s left" if snap.eta_s is not None else ""
        epoch = min(max(snap.epoch, 1), snap.epochs or 1)  # the engine counts epochs from 1 (0 until its first step)
        # The bar moves in whole percents: each move is an animation in every viewer's browser. Moved
        # every second, it cost a one-bar test app's headless Chromium 6.7% of a core against 2.6% for a
        # still bar (2-core CPU).
        st.progress(round(100 * snap.progress),
                    text=f"Epoch {epoch}/{snap.epochs} · step {snap.step}/{snap.total_steps or '?'}{eta}")


def run_outcome(snap) -> None:
    """Why a run failed, was cancelled or interrupted."""
    if snap.status == FAILED:
        st.error(f"**This run failed.** {snap.reason}", icon=":material/error:")
        trace = manager.store.read_traceback(snap.id)
        if trace:
            with st.expander("Traceback"):
                st.code(trace, language="text")
    elif snap.status in (CANCELLED, INTERRUPTED):
        reason = snap.reason.rstrip(".") if snap.reason else ""  # reasons are stored lower-case, without a full stop
        kept = " Its metrics so far are kept." if snap.metrics.get("epochs") else ""
        st.warning(f"**This run was {snap.status}.** {reason[:1].upper()}{reason[1:]}.{kept}",
                   icon=":material/stop_circle:")


def run_figures(snap) -> None:
    """The headline numbers: a finished run's held-out test accuracy and its kept weights' validation
    accuracy (which epoch they are from), else the last epoch's so far."""
    epochs = snap.metrics.get("epochs", [])
    last = epochs[-1] if epochs else None
    if last:
        row = st.container(horizontal=True)
        summary = snap.summary
        if summary.weights_epoch:
            test = "no test images" if summary.test_acc is None else f"{summary.test_acc:.1%}"
            row.metric("Test accuracy", test, help=f"The weights the run kept, on the {summary.test_size} held-out "
                       "test images, graded once at the end: nothing was chosen with them.")
            row.metric(f"Validation accuracy (epoch {summary.weights_epoch} of {summary.epochs_done})",
                       f"{summary.val_acc:.1%}", help=f"The run kept its {'best' if snap.config.keep == 'best' else 'last'}"
                       f" validation epoch's weights; the last epoch's was {summary.last_val_acc:.1%}.")
        else:
            row.metric("Validation accuracy", f"{last['val_acc']:.1%}", help="The last epoch's, so far.")
        train_acc = summary.train_acc if summary.weights_epoch else last["train_acc"]  # the same epoch as validation
        row.metric("Train accuracy", f"{train_acc:.1%}")
        speed = summary.images_per_s or last["images_per_s"]  # the whole run's once finished, as on Compare
        row.metric("Images / s", f"{speed:,.0f}",
                   help="Training images per second: all training images over all training passes' time (validation "
                        "excluded; a first epoch's feature pass included), the figure Compare shows. While the run "
                        "trains: its last epoch's.")
        if str(snap.info.get("device", "")).startswith("cuda"):
            row.metric("Peak GPU memory", f"{last['peak_mem_bytes'] / 2**20:.0f} MiB",
                       help="torch.cuda.max_memory_allocated: the run's tensors, what the Model page estimates "
                            "(plus cuDNN and cuBLAS workspaces, which the estimate leaves out).")
        else:
            row.metric("Peak process memory", f"{last['peak_mem_bytes'] / 2**20:.0f} MiB",
                       help="The training process's peak resident memory (the interpreter, libraries and every run "
                            "that process trained so far included). The Model page's estimate counts the run's "
                            "tensors only.")


def feature_cache_note(snap) -> None:
    cache = snap.summary.feature_cache or snap.info.get("feature_cache")
    if cache:
        if not cache.get("used"):
            text = f"off — {cache.get('reason')}"
        elif cache.get("source") == "disk":
            text = (f"on — the frozen prefix up to `{cache.get('prefix')}` did not run: its features were stored "
                    f"by an earlier run on the same data and read back in {cache.get('build_s', 0):.2f} s")
        else:
            text = f"on — the frozen prefix up to `{cache.get('prefix')}` is computed once"
        st.caption(f":material/memory: Feature cache: {text}")


# The run's charts, two per tab. Only the open tab's charts are built and sent: a viewer's browser
# draws a Plotly chart anew (Streamlit makes a changed figure a new element), and with all six charts
# on the page a viewer's headless Chromium took 35-40% of a core on a 2-core machine, with the open
# tab's two about 25% (six viewers then leave the training process more than half of its core:
# bench/viewers.py).
CHART_TABS = ("Loss and accuracy", "Per class", "Layer signals")


def show_charts(snap) -> None:
    tabs = st.tabs(CHART_TABS, key="train_charts", on_change="rerun")
    for tab, draw in zip(tabs, (curves, class_results, layer_signals)):
        if tab.open:
            with tab:
                draw(snap)


def curves(snap) -> None:
    """Loss per step (redrawn when an epoch ends, and `LOSS_EVERY_S` after its last drawing) and
    accuracy per epoch."""
    epochs = snap.metrics.get("epochs", [])
    left, right = st.columns(2)
    left.plotly_chart(figure("loss", (snap.id, snap.status, len(epochs)), lambda: charts.loss_figure(snap.metrics),
                             max_age_s=LOSS_EVERY_S), key="train_loss_chart", width="stretch")
    right.plotly_chart(figure("accuracy", (snap.id, len(epochs)), lambda: charts.accuracy_figure(snap.metrics)),
                       key="train_acc_chart", width="stretch")


def class_results(snap) -> None:
    """The last epoch's validation accuracy per class and its confusion matrix."""
    epochs = snap.metrics.get("epochs", [])
    last = epochs[-1] if epochs else None
    names = snap.info.get("classes") or snap.summary.classes or []
    left, right = st.columns(2)
    left.plotly_chart(figure("per_class", (snap.id, len(epochs)), lambda: charts.per_class_figure(last, names)),
                      key="train_class_chart", width="stretch")
    right.plotly_chart(figure("confusion", (snap.id, len(epochs)), lambda: charts.confusion_figure(last, names)),
                       key="train_confusion_chart", width="stretch")


def layer_signals(snap) -> None:
    """Drift and gradient norm per stage and epoch: which stages did fine-tuning really change?"""
    epochs = snap.metrics.get("epochs", [])
    if snap.done and not any("layers" in e for e in epochs):
        st.info("This run was recorded before the engine measured layer signals.", icon=":material/info:")
        return
    st.caption("Which stages did fine-tuning really change? Each stage's weight drift ‖θ − θ₀‖ / ‖θ₀‖ and the "
               "RMS of its gradient norm over each epoch's steps.")
    left, right = st.columns(2)
    by_epoch = (snap.id, len(epochs))
    left.plotly_chart(figure("drift", by_epoch, lambda: charts.layer_signal_figure(epochs, "drift")),
                      key="train_drift_chart", width="stretch")
    right.plotly_chart(figure("grad_norm", by_epoch, lambda: charts.layer_signal_figure(epochs, "grad_norm")),
                       key="train_grad_chart", width="stretch")
    if snap.config.auto_rgn and epochs and "rgn_scale" in epochs[-1].get("layers", {}):
        layers = epochs[-1]["layers"]
        st.caption("Auto-RGN rate scale in the last epoch (the part's rate × this): " + ", ".join(
            f"{g} {v:.2f}" for g, v in zip(layers["groups"], layers["rgn_scale"]) if v is not None))


def audit_note(snap) -> None:
    """The freeze audit of a finished run: every frozen tensor bit-identical, or which changed."""
    audit = snap.summary.freeze_audit
    if snap.status == FINISHED and audit:
        if audit.get("ok") and not audit["checked_tensors"]:
            st.success("Freeze audit passed: nothing is frozen in this run, so no tensor had to stay unchanged.",
                       icon=":material/verified:")
        elif audit.get("ok"):
            st.success(f"Freeze audit passed: {audit['checked_tensors']} frozen tensors are bit-identical to "
                       "their starting values.", icon=":material/verified:")
        else:
            st.error(f"Freeze audit failed: {len(audit['changed'])} frozen tensors changed: "
                     + ", ".join(audit["changed"][:10]), icon=":material/gpp_bad:")


def live_view(run_id: str, status: str) -> None:
    """The run's progress, results and charts: a fragment rerun every second while the run is live.

    Only what moves during a run is in it: each element sent is redrawn in every viewer's browser
    (the run's header and Stop are outside). When the run's status is no longer the `status` the page
    was drawn with, the whole page reruns: its header follows, and the timer stops with the run.
    """
    snap = fresh_snapshot(run_id)
    if snap is None or snap.status != status:
        st.rerun()
    run_progress(snap)
    run_outcome(snap)
    run_figures(snap)
    feature_cache_note(snap)
    show_charts(snap)
    audit_note(snap)


def _show_chosen_run() -> None:
    st.query_params["run"] = st.session_state["train_show"]


run_id = st.query_params.get("run")
recent = manager.store.list()[:20]
if recent:
    ids = [r.id for r in recent]
    if run_id and run_id not in ids and manager.store.exists(run_id):
        ids.insert(0, run_id)
        recent.insert(0, manager.store.load(run_id))
    if run_id not in ids:  # no run in the URL (back from another page): the one this tab showed last,
        owner = session_owner()  # else this tab's newest run, else the newest of anyone
        last = st.session_state.get(LAST_SHOWN)
        run_id = last if last in ids else next((r.id for r in recent if r.owner == owner), ids[0])
        st.query_params["run"] = run_id
    st.session_state[LAST_SHOWN] = run_id  # not a widget's key: it outlives a visit to another page
    # The URL says which run is shown (a run just started, a link, a refresh) and the box follows it;
    # a choice in the box goes to the URL first. (A keyed selectbox keeps its old value otherwise,
    # which sent a tab that started a second run back to its first.)
    st.session_state["train_show"] = run_id
    st.selectbox("Show run", ids, key="train_show", on_change=_show_chosen_run,
                 format_func=lambda i: next(f"{r.name} ({r.id})" for r in recent if r.id == i))
    # (no status in the label: a keyed selectbox keeps showing its old label when only the label changes)

if run_id and (head := manager.snapshot(run_id, with_metrics=False)) is None:
    st.warning(f"There is no run {run_id!r}.")
elif run_id:
    run_header(head)
    st.fragment(live_view, run_every=None if head.done else LIVE_EVERY_S)(run_id, head.status)
    if head.status == FINISHED and manager.store.exists(run_id):
        run_downloads(manager.store.load(run_id), manager.store.root, key="train")
    if head.done:
        with st.expander("Rename or delete this run"):
            new_name = st.text_input("Name", head.name, key=f"train_rename_{run_id}", max_chars=120)
            c_rename, c_delete = st.columns(2)
            if c_rename.button("Rename", key="train_rename", icon=":material/edit:") and new_name.strip():
                manager.rename(run_id, new_name)
                st.rerun()
            if c_delete.button("Delete run", key="train_delete", icon=":material/delete:"):
                try:
                    manager.delete(run_id)
                except ValueError as exc:
                    st.error(str(exc), icon=":material/error:")
                else:
                    del st.query_params["run"]
                    st.rerun()
else:
    st.info("No run yet. Set the hyper-parameters and start one.", icon=":material/info:")
