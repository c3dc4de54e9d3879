"""Model page: pick a classifier and its weights, tick the layers to train, see what it costs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import codegen, estimate
from core.config import AUTO_RGN, data_dir
from core.devices import pick_device
from core.freezing import (
    PRESET_HELP,
    model_structure,
    preflight,
    preset_frozen,
    preset_label,
    preset_of,
    presets_for,
    set_frozen,
    strategy_label,
)
from core.models import (
    CATALOG,
    CheckpointError,
    LoadReport,
    WeightsUnavailableError,
    build_skeleton,
    checkpoint_report,
    download_imagenet_weights,
    imagenet_available,
    read_state_dict,
    store_checkpoint,
)
from core.store import FINISHED, QUEUED, RUNNING
from ui import services
from ui.services import get_manager
from ui.session import dataset_classes, dataset_sizes, draft, update_draft
from ui.signals import signals_panel
from ui.tree import apply_edits, group_table, groups_of, overview_table
from ui.welcome import first_run_panel

AUTO_RGN_HELP = (PRESET_HELP[AUTO_RGN] + " Measured on the demo worlds (ResNet-18, 3 seeds, rates tuned, test "
                 "accuracy, docs/benchmarks.md): 94.4% ± 0.7 on demo-shift (full fine-tuning 97.9%), and only "
                 "44.1% ± 0.7 on demo-flip, a label shift (head only 89.6%, full fine-tuning 67.4%): it does not "
                 "suit a shift of the labels.")

WEIGHT_SOURCES = {
    "imagenet": "ImageNet (torchvision)",
    "none": "None (random init)",
    "checkpoint": "Checkpoint file",
    "run": "An earlier run",
}


def skeleton(arch: str, num_classes: int):
    """This tab's own meta-device model, for checks that set requires_grad (never shared)."""
    key = (arch, num_classes)
    if st.session_state.get("model_skeleton_key") != key:
        st.session_state["model_skeleton"] = build_skeleton(arch, num_classes)
        st.session_state["model_skeleton_key"] = key
    return st.session_state["model_skeleton"]


def table_height(df: pd.DataFrame, max_rows: int = 16) -> int:
    """Pixels that show every row (up to `max_rows`, then it scrolls): Streamlit's 35 px rows, header and border."""
    return 35 * (min(len(df), max_rows) + 1) + 3


def cost_table(mine: list[dict], full: list[dict]) -> pd.DataFrame:
    """Two `to_rows()` lists side by side: this choice and full fine-tuning."""
    return pd.DataFrame({
        "": [r["quantity"] for r in mine],
        "This choice": [r["value"] for r in mine],
        "Full fine-tune": [r["value"] for r in full],
    })


def set_frozen_choice(frozen, preset: str) -> None:
    """A freezing choice (a preset, a tick): layers train at the usual rates again, frozen norm layers in eval mode."""
    was_auto = draft().auto_rgn
    update_draft(frozen=tuple(frozen), preset=preset, auto_rgn=False, **({"bn_frozen_eval": True} if was_auto else {}))
    st.session_state["tree_version"] = st.session_state.get("tree_version", 0) + 1


def batch_words(step_batch: int) -> str:
    """The batch a training step has: the draft's batch size, or the whole training split when that is smaller."""
    size = draft().batch_size
    return f"batch {step_batch}" if step_batch == size else f"batch {step_batch}: the whole training split, under the batch size {size}"


def set_bn_eval() -> None:
    update_draft(bn_frozen_eval=st.session_state["model_bn_eval"])


def set_auto_rgn() -> None:
    """The Auto-RGN switch: on, every layer but the norm layers trains at the rates Auto-RGN sets, the
    norm layers in training mode (as Lee et al.'s code runs them); off, full fine-tuning."""
    cfg = draft()
    if st.session_state["model_auto_rgn"]:
        update_draft(auto_rgn=True, preset=AUTO_RGN, bn_frozen_eval=False,
                     frozen=preset_frozen(skeleton(cfg.arch, cfg.num_classes), cfg.arch, AUTO_RGN))
    else:
        update_draft(auto_rgn=False, preset="full", frozen=(), bn_frozen_eval=True)
    st.session_state["tree_version"] = st.session_state.get("tree_version", 0) + 1


def remember_block(name: str) -> None:
    """Keep a block's expander open or closed as the user left it: its label carries the block's counts,
    and an expander whose label changes is a new one (closed) unless told otherwise."""
    opened = st.session_state.setdefault("tree_open_blocks", set())
    (opened.add if st.session_state[f"tree_block_{name}"] else opened.discard)(name)


def apply_tree_edits(tree) -> None:
    """Fold the checkbox edits of the last interaction into the draft, before anything renders."""
    version = st.session_state.get("tree_version", 0)
    for key, targets in st.session_state.get("tree_targets", {}).items():
        if not key.endswith(f"@{version}"):
            continue
        edits = (st.session_state.get(key) or {}).get("edited_rows")
        if edits:
            frozen = apply_edits(tree, draft().frozen, targets, edits)
            cfg = draft()
            set_frozen_choice(frozen, preset_of(skeleton(cfg.arch, cfg.num_classes), cfg.arch, tree, frozen))
            return


st.title("Model")
st.caption("Pick a pretrained classifier, tick what to train, and see what that choice costs before training.")
first_run_panel(get_manager())

cfg = draft()

# --- architecture, weights, classes, input size -------------------------------------------
c_arch, c_weights, c_classes, c_h, c_w = st.columns([2, 2, 1, 1, 1])
arch = c_arch.selectbox(
    "Architecture", list(CATALOG), index=list(CATALOG).index(cfg.arch),
    format_func=lambda a: CATALOG[a].label, key="model_arch",
)
source_kind = "run" if cfg.weights.startswith("run:") else cfg.weights if cfg.weights in ("imagenet", "none") else "checkpoint"
source = c_weights.selectbox(
    "Weights", list(WEIGHT_SOURCES), index=list(WEIGHT_SOURCES).index(source_kind),
    format_func=WEIGHT_SOURCES.get, key="model_weights",
    help="Where the starting weights come from. Without network access use random init, a checkpoint, "
         "or an earlier run (e.g. a backbone pretrained on the demo-source dataset).",
)
classes = dataset_classes()
num_classes = c_classes.number_input(  # the limit grows with a dataset of more classes (then the box is disabled)
    "Classes", min_value=2, max_value=max(10_000, cfg.num_classes), value=cfg.num_classes, step=1, key="model_classes",
    disabled=classes is not None,
    help="Size of the new head. Follows the dataset chosen on the Data page." if classes else "Size of the new head.",
)
height = c_h.number_input("Height", 16, 1024, cfg.image_size[0], step=16, key="model_h", help="Input height in pixels")
width = c_w.number_input("Width", 16, 1024, cfg.image_size[1], step=16, key="model_w", help="Input width in pixels")

if arch != cfg.arch:
    cfg = update_draft(arch=arch, frozen=(), preset="full")
    st.session_state["tree_version"] = st.session_state.get("tree_version", 0) + 1
if classes is not None:
    num_classes = len(classes)
cfg = update_draft(num_classes=int(num_classes), image_size=(int(height), int(width)))

# --- weights source details -----------------------------------------------------------------
report = None
if source == "imagenet":
    cfg = update_draft(weights="imagenet")
    if imagenet_available(arch):
        st.caption(f":material/check_circle: ImageNet weights for {CATALOG[arch].label} are in the local cache.")
    elif st.button("Download ImageNet weights", icon=":material/download:", key="model_download"):
        bar = st.progress(0.0, text="Downloading…")
        try:
            download_imagenet_weights(arch, lambda done, total: bar.progress(
                done / total if total else 0.0, text=f"Downloading… {done / 2**20:.0f} MB"))
            bar.progress(1.0, text="Downloaded")
        except WeightsUnavailableError as exc:
            bar.empty()
            st.error(str(exc), icon=":material/cloud_off:")
    else:
        st.caption("ImageNet weights are not cached yet; they download once (with progress) before training.")
elif source == "none":
    cfg = update_draft(weights="none")
elif source == "checkpoint":
    c_up, c_path = st.columns(2)
    upload = c_up.file_uploader("Upload a state dict", type=["pt", "pth", "safetensors"], key="model_ckpt_upload")
    typed = c_path.text_input("…or a checkpoint path on the server", key="model_ckpt_path")
    try:  # a refused checkpoint is neither stored nor put in the draft
        if upload is not None:
            state = read_state_dict(upload.getvalue())  # refuses anything that is not plain tensors
            report = checkpoint_report(skeleton(arch, cfg.num_classes), arch, state, source=upload.name)
            cfg = update_draft(weights=str(store_checkpoint(upload.getvalue(), upload.name, data_dir())))
            report.source = cfg.weights
        elif typed:
            state = read_state_dict(typed)
            report = checkpoint_report(skeleton(arch, cfg.num_classes), arch, state, source=typed)
            cfg = update_draft(weights=typed)
    except (CheckpointError, OSError) as exc:
        st.error(str(exc), icon=":material/error:")
elif source == "run":
    # Runs that have weights, or will once the queue reaches them; the draft's own run always stays listed.
    # Rendering never picks a run for the user: the draft changes only when the box does.
    current = cfg.weights.removeprefix("run:") if cfg.weights.startswith("run:") else None
    runs = {r.id: r for r in get_manager().store.list()
            if r.config.arch == arch and r.status in (FINISHED, QUEUED, RUNNING) or r.id == current}
    if not runs:
        st.info(f"No {CATALOG[arch].label} run yet. Train one (e.g. full fine-tune on demo-source) "
                "and its weights appear here.", icon=":material/info:")
    else:
        ids = list(runs)

        def _label(i: str) -> str:
            r = runs[i]
            return f"{r.name} ({r.id})" + ("" if r.status == FINISHED else f" · {r.status}")

        run_id = st.selectbox("Run", ids, index=ids.index(current) if current in ids else None, key="model_run",
                              format_func=_label, placeholder="Choose the run whose weights to start from")
        if run_id is not None:
            cfg = update_draft(weights=f"run:{run_id}")
            chosen = runs[run_id]
            if chosen.status in (QUEUED, RUNNING):
                st.info(f"This run is still {chosen.status}: a run started from it waits in the queue until it has "
                        "finished and its weights exist.", icon=":material/hourglass_top:")
            elif chosen.status != FINISHED:
                st.error(f"This run {chosen.status}: it has no weights to start from. Choose another run.",
                         icon=":material/error:")
            else:
                try:
                    report = LoadReport.from_dict(services.run_report(run_id, arch, cfg.num_classes))
                except CheckpointError as exc:
                    st.error(str(exc), icon=":material/error:")

try:
    tree, trunk = model_structure(arch, cfg.num_classes, cfg.image_size)
except ValueError as exc:
    st.error(str(exc), icon=":material/error:")
    st.stop()
apply_tree_edits(tree)
cfg = draft()

# --- presets --------------------------------------------------------------------------------
st.subheader("What trains")
def choose_preset(preset: str) -> None:
    set_frozen_choice(preset_frozen(skeleton(arch, cfg.num_classes), arch, preset), preset)


preset_cols = st.columns([1, 1, 1, 1, 2])
for col, preset in zip(preset_cols, [p for p in presets_for(arch) if p != "last"]):
    col.button(preset_label(preset), key=f"preset_{preset}", width="stretch", help=PRESET_HELP[preset],
               type="primary" if cfg.preset == preset and not cfg.auto_rgn else "secondary", on_click=choose_preset, args=(preset,))
with preset_cols[-1]:
    n_blocks = st.slider("Last N blocks", 0, len(trunk), min(2, len(trunk)), key="preset_last_n",
                         help=f"Train the last N of {len(trunk)} blocks ({', '.join(s.name for s in trunk)}) "
                              "and everything after them.")
    st.button(f"Train the last {n_blocks} blocks", key="preset_last", width="stretch",
              type="primary" if cfg.preset == f"last{n_blocks}" and not cfg.auto_rgn else "secondary",
              on_click=choose_preset, args=(f"last{n_blocks}",))
st.session_state["model_auto_rgn"] = cfg.auto_rgn  # the draft decides (a preset click turns it off)
st.toggle("Auto-RGN: every layer but the norm layers trains, each at a rate scaled by its relative gradient norm",
          key="model_auto_rgn", on_change=set_auto_rgn, help=AUTO_RGN_HELP)
cfg = draft()

has_bn = any(n.kind.startswith("BatchNorm") for n in tree.nodes)
has_sd = any(n.kind == "StochasticDepth" for n in tree.nodes)
if has_bn or has_sd:
    what = ["BatchNorm statistics do not move"] if has_bn else []
    what += ["frozen blocks skip stochastic depth"] if has_sd else []
    st.session_state["model_bn_eval"] = cfg.bn_frozen_eval  # the draft decides (Auto-RGN turns it off)
    st.toggle(f"Frozen layers stay in eval mode ({', '.join(what)})", key="model_bn_eval", on_change=set_bn_eval,
              help="A frozen layer then computes the same function in training as at inference, so a frozen "
                   "backbone's features can be computed once (the feature cache). Auto-RGN turns it off: its "
                   "frozen norm layers run in training mode, as in Lee et al.'s code.")

# --- costs: one training step, and a whole run on the chosen data --------------------------------
model = skeleton(arch, cfg.num_classes)
device = pick_device()
try:
    costs = estimate.choice_costs(services.profile(arch, cfg.num_classes, cfg.image_size), cfg, device,
                                  sizes=dataset_sizes(cfg.dataset), skeleton=model)
except ValueError as exc:  # e.g. BatchNorm refuses one value per channel when a small input shrinks to 1x1
    costs = None
    profile_error = f"No cost estimate for {CATALOG[arch].label} at {cfg.image_size[0]}×{cfg.image_size[1]}: {exc}"

# --- counts -----------------------------------------------------------------------------------
trainable, frozen_count = tree.counts(cfg.frozen)
total = trainable + frozen_count
# Content-wide metrics that wrap as a whole: a long strategy name ("FC1 + FC2 + head") is never cut.
with st.container(horizontal=True, gap="medium"):
    st.metric("Trainable parameters", f"{trainable:,}", f"{estimate.human_share(trainable, total)} of all",
              delta_color="off", delta_arrow="off", width="content")
    st.metric("Frozen parameters", f"{frozen_count:,}", f"{estimate.human_share(frozen_count, total)} of all",
              delta_color="off", delta_arrow="off", width="content")
    st.metric("Strategy", strategy_label(cfg), width="content")
    if costs is not None and costs.run is not None:
        st.metric("Peak memory of a run", estimate.human_bytes(costs.run.peak_bytes), f"during {costs.run.peak_moment}",
                  delta_color="off", delta_arrow="off", width="content", help=f"Estimated for "
                  f"{device.type.upper()}, {costs.precision}, {batch_words(costs.step.batch_size)}, {costs.run.images:,} images; "
                  "see the Cost tab.")
    elif costs is not None:
        st.metric("Memory per training step", estimate.human_bytes(costs.step.total_bytes), width="content",
                  help="Pick the dataset on the Data page to see the peak of a whole run.")
st.progress(trainable / total, text=f"{estimate.human_share(trainable, total)} of the parameters train")

set_frozen(model, cfg.frozen)  # the run estimate above tried other frozen sets on this skeleton
problems = [c for c in preflight(model, arch, cfg.bn_frozen_eval) if not c.ok]
for check in problems:
    st.warning(f"**{check.name}?** {check.detail}", icon=":material/warning:")

# Lazy tabs (and block tables, below): only what is open is built and sent. The browser draws the page
# anew with every click here, and eight data grids, the cost tables and the code took about 40% of a
# preset's time while a run trained on the same two cores (measured beside bench/viewers.py).
tab_tree, tab_cost, tab_code = st.tabs(["Layers", "Cost", "PyTorch code"], key="model_tabs", on_change="rerun")

# --- the tree ---------------------------------------------------------------------------------
if tab_tree.open:
    with tab_tree:
        version = st.session_state.get("tree_version", 0)
        targets: dict[str, list] = {}
        column_config = {
            "train": st.column_config.CheckboxColumn("Train", help="Tick to train this layer (and all under it)"),
            "params": st.column_config.NumberColumn("Params", format="localized"),
            "trainable": st.column_config.NumberColumn("Trainable", format="localized"),
        }
        signals = signals_panel(cfg)
        if signals is not None:
            column_config["RGN"] = st.column_config.NumberColumn("RGN", format="%.3g", help="‖∇θ‖ / ‖θ‖ on the probe's batches")
        groups = groups_of(tree, trunk)
        df, targets[f"tree_overview@{version}"] = overview_table(tree, groups, cfg.frozen, signals)
        st.data_editor(df, key=f"tree_overview@{version}", hide_index=True, width="stretch", height=table_height(df),
                       column_config=column_config, disabled=[c for c in df.columns if c != "train"])
        st.caption("Blocks of the network, in forward order. Open a block to tick single layers.")
        for group, row in zip(groups, df.itertuples()):
            # Lazy: a block's table is built and sent only while the block is open. Its label's counts
            # change with every tick, which makes it a new expander: the page remembers the open ones.
            block = st.expander(f"{group.name} — {row.state} · {row.trainable:,} / {row.params:,} trainable",
                                group.name in st.session_state.get("tree_open_blocks", ()),
                                key=f"tree_block_{group.name}", on_change=remember_block, args=(group.name,))
            if not block.open:
                continue
            with block:
                gdf, targets[f"tree_{group.name}@{version}"] = group_table(tree, group, cfg.frozen, report, signals)
                st.data_editor(gdf, key=f"tree_{group.name}@{version}", hide_index=True, width="stretch",
                               height=table_height(gdf), column_config=column_config,
                               disabled=[c for c in gdf.columns if c != "train"])
        st.session_state["tree_targets"] = targets

        if report is not None:
            with st.expander(f"Checkpoint load report — {report.summary()}", expanded=not report.ok):
                st.write(f"Source: `{report.source}`")
                if report.mismatched:
                    st.markdown("**Shape-mismatched** (skipped, the model keeps its fresh values):")
                    st.dataframe([{"key": k, "checkpoint": str(a), "model": str(b)} for k, a, b in report.mismatched],
                                 hide_index=True)
                if report.missing:
                    st.markdown("**Missing** (not in the checkpoint):  \n" + ", ".join(f"`{k}`" for k in report.missing[:50]))
                if report.unexpected:
                    st.markdown("**Unexpected** (not in the model):  \n" + ", ".join(f"`{k}`" for k in report.unexpected[:50]))

# --- cost -------------------------------------------------------------------------------------
if tab_cost.open:
    with tab_cost:
        if costs is None:
            st.warning(profile_error, icon=":material/warning:")
        else:
            ratio = estimate.compare_to_full(costs.step, costs.full_step)
            st.markdown(
                f"This choice needs **{ratio['compute_pct']:.0f}%** of the compute and **{ratio['memory_pct']:.0f}%** "
                f"of the memory of full fine-tuning (per training step, {batch_words(costs.step.batch_size)}, "
                f"{cfg.image_size[0]}×{cfg.image_size[1]}, {cfg.optimizer.upper()}, {costs.precision} on {device.type.upper()})."
            )
            st.dataframe(cost_table(costs.step.to_rows(), costs.full_step.to_rows()), hide_index=True, width="stretch", height="content")
            st.caption("FLOPs counted with torch.utils.flop_counter. Memory measured on the model's structure (meta "
                       "device, no compute): what autograd saves for backward (saved-tensor hooks) and the tensors in "
                       "flight at the busiest layer (live tensors counted op by op).")
            st.subheader("A whole run")
            if costs.run is None:
                st.info("Pick the dataset on the Data page to see the peak memory of a whole run: the decoded images "
                        "and cached features stay on the device next to the training state.", icon=":material/dataset:")
            else:
                plan = costs.run.feature_cache
                cache = (f"features cached up to `{plan.prefix}`" if plan.used
                         else f"no feature cache ({plan.reason})")
                st.markdown(f"On **{cfg.dataset}** ({costs.run.images:,} images) with this choice: {cache}.")
                st.dataframe(cost_table(costs.run.to_rows(), costs.full_run.to_rows()), hide_index=True, width="stretch",
                             height="content")
                st.caption("Not counted: the workspaces cuDNN and cuBLAS take on a GPU (most in the first steps, "
                           "while cuDNN tries algorithms), the CUDA context, and the Python process.")

# --- code -------------------------------------------------------------------------------------
if tab_code.open:
    with tab_code:
        st.code(codegen.generate_code(cfg), language="python", line_numbers=True, wrap_lines=True)
