"""Compare page: which freezing strategy was worth it? Runs side by side."""

from __future__ import annotations

import streamlit as st

from core.analysis import compare
from core.analysis.inference import inference_device, weights_mtime
from core.data import DatasetError
from core.models import CheckpointError, WeightsUnavailableError
from core.store import FINISHED
from ui import charts, services
from ui.downloads import run_downloads
from ui.services import get_manager

manager = get_manager()


st.title("Compare")

records, damaged = manager.store.survey()
if damaged:
    st.warning(
        f"{len(damaged)} damaged run folder{'s' if len(damaged) > 1 else ''} in `{manager.store.root}` "
        "skipped (left as they are):\n\n" + "\n".join(f"- `{name}`: {why}" for name, why in damaged[:10]),
        icon=":material/folder_off:",
    )
if not records:
    st.info("No runs yet: train a few with different strategies on the Train page, then compare them here.",
            icon=":material/info:")
    st.stop()

# Short headers for the two widest columns: with their long names the last column ("peak memory
# (MiB)") was cut off at the right edge even in a 1400 px window with two runs.
RUN_COLUMNS = {
    "val acc": st.column_config.NumberColumn(format="percent", help="Of the weights the run kept (its best "
                                             "validation epoch by default); the best so far while it trains."),
    "test acc": st.column_config.NumberColumn(format="percent", help="The kept weights on the held-out test split, "
                                              "graded once when the run finished: nothing was chosen with it."),
    "time (s)": st.column_config.NumberColumn(format="%.1f"),
    "images/s": st.column_config.NumberColumn(format="localized", help="Training images over the training passes' "
                                              "time, for the whole run (the Train page's figure)."),
    "peak memory (MiB)": st.column_config.NumberColumn(
        "peak MiB", format="%.0f", help="Peak memory in MiB: on a GPU the run's tensors (torch.cuda.max_memory_allocated), "
                               "on the CPU the training process's peak resident memory"),
    "trainable params": st.column_config.NumberColumn(
        "trainable", format="localized", help="Trainable parameters"),
}
by_id = {r.id: r for r in records}
all_labels = dict(zip(by_id, compare.run_labels(records)))
everything = compare.runs_table(records)
with st.expander(f"All runs ({len(records)})", expanded=False):
    st.dataframe(everything.drop(columns="id"), hide_index=True, width="stretch", key="compare_all_table",
                 column_config=RUN_COLUMNS)
finished = [r.id for r in records if r.status == FINISHED]
chosen = st.multiselect("Runs to compare", list(by_id), default=finished[:3], key="compare_runs",
                        format_func=lambda i: f"{all_labels[i]} · {by_id[i].status}")
if not chosen:
    st.info("Pick two or more runs.", icon=":material/info:")
    st.stop()
picked = [by_id[i] for i in chosen]

# --- the table and the configs --------------------------------------------------------------
table = compare.runs_table(picked)
st.dataframe(table.drop(columns="id"), hide_index=True, width="stretch", key="compare_table",
             column_config=RUN_COLUMNS)
st.download_button("Comparison table (CSV)", compare.table_csv(table), "comparison.csv", "text/csv",
                   key="compare_table_csv", icon=":material/download:")

only_diff = st.toggle("Differences only", value=True, key="compare_diff_only",
                      help="Show only the configuration fields whose values differ between the chosen runs.")
configs = compare.config_differences(picked, only_diff)
if configs.empty:
    st.info("The chosen runs have identical configurations.", icon=":material/info:")
else:
    st.dataframe(configs, width="stretch", key="compare_configs")

st.plotly_chart(charts.freezing_figure(compare.freezing_map(picked)), key="compare_freezing", width="stretch")
drift = compare.layer_drift(picked)
if len(drift):
    st.plotly_chart(charts.drift_map_figure(drift), key="compare_drift", width="stretch")
    run_label = dict(zip(chosen, compare.run_labels(picked)))
    with_signals = [i for i in chosen if run_label[i] in drift.index]
    one = st.selectbox("Layer signals per epoch of", with_signals, format_func=run_label.get, key="compare_signals_run")
    epochs = by_id[one].metrics.get("epochs", [])
    left, right = st.columns(2)
    left.plotly_chart(charts.layer_signal_figure(epochs, "drift"), key="compare_drift_epochs", width="stretch")
    right.plotly_chart(charts.layer_signal_figure(epochs, "grad_norm"), key="compare_grad_epochs", width="stretch")

# --- curves and scatter ------------------------------------------------------------------------
st.subheader("Curves")
curves = compare.curves(picked)
left, right = st.columns(2)
left.plotly_chart(charts.compare_curves_figure(curves, "val_acc", "epoch", "Validation accuracy per epoch"),
                  key="compare_acc_epoch", width="stretch")
right.plotly_chart(charts.compare_curves_figure(curves, "val_loss", "epoch", "Validation loss per epoch"),
                   key="compare_loss_epoch", width="stretch")
left.plotly_chart(charts.compare_curves_figure(curves, "val_acc", "time_s", "Validation accuracy over time"),
                  key="compare_acc_time", width="stretch")
right.plotly_chart(charts.compare_curves_figure(curves, "val_loss", "time_s", "Validation loss over time"),
                   key="compare_loss_time", width="stretch")
scored = table.dropna(subset=["test acc"])
left.plotly_chart(charts.runs_scatter_figure(scored, "trainable params", "Test accuracy vs trainable parameters",
                                             log_x=True), key="compare_scatter_params", width="stretch")
right.plotly_chart(charts.runs_scatter_figure(scored, "time (s)", "Test accuracy vs training time"),
                   key="compare_scatter_time", width="stretch")

# --- per class ----------------------------------------------------------------------------------
st.subheader("Per class")
st.plotly_chart(charts.per_class_grouped_figure(compare.per_class(picked)), key="compare_per_class", width="stretch")
if len(picked) >= 2:
    a_col, b_col = st.columns(2)
    labels = dict(zip(chosen, compare.run_labels(picked)))
    a = a_col.selectbox("Run A", chosen, 0, format_func=labels.get, key="compare_diff_a")
    b = b_col.selectbox("Run B", chosen, 1, format_func=labels.get, key="compare_diff_b")
    try:
        diff = compare.per_class_difference(by_id[a], by_id[b])
    except ValueError as exc:
        st.warning(str(exc), icon=":material/warning:")
    else:
        st.plotly_chart(charts.difference_figure(diff, f"Per-class accuracy: {labels[b]} minus {labels[a]}"),
                        key="compare_difference", width="stretch")

cols = st.columns(min(len(picked), 3))
for i, (label, r) in enumerate(zip(compare.run_labels(picked), picked)):
    found = compare.confusion(r)
    if found:
        classes, matrix = found
        fig = charts.confusion_figure({"confusion": matrix}, classes).update_layout(title=label)
        cols[i % len(cols)].plotly_chart(fig, key=f"compare_confusion_{r.id}", width="stretch")

# --- one run: its worst mistakes, its files ------------------------------------------------------
st.subheader("One run")
done = [i for i in chosen if by_id[i].status == FINISHED and by_id[i].has_weights]
if not done:
    st.info("None of the chosen runs finished with saved weights.", icon=":material/info:")
    st.stop()
one = st.selectbox("Run", done, format_func=lambda i: by_id[i].name, key="compare_one")
record = by_id[one]

gallery_tab, export_tab = st.tabs(["Misclassified validation images", "Export"])
with gallery_tab:
    device, why = inference_device(record.summary.device, manager.device, bool(manager.active_runs()))
    st.caption(f"The validation split is classified again with the run's final weights, {why}.")
    if st.button("Show the highest-loss mistakes", key="compare_gallery_go", icon=":material/search:"):
        st.session_state["compare_gallery_run"] = one
    if st.session_state.get("compare_gallery_run") == one:
        try:
            wrong = services.misclassified(one, weights_mtime(record), str(device), 24)
        except (CheckpointError, WeightsUnavailableError, DatasetError, ValueError) as exc:
            st.error(str(exc), icon=":material/error:")
        else:
            if wrong.empty:
                st.success("No validation image is misclassified.", icon=":material/check_circle:")
            else:
                st.image(list(wrong["path"]), width=128, caption=[
                    f"true {t} → {p} · loss {loss:.2f}" for t, p, loss in zip(wrong["true"], wrong["predicted"], wrong["loss"])])
                st.dataframe(wrong, hide_index=True, width="stretch", key="compare_gallery_table")

with export_tab:
    run_downloads(record, manager.store.root, key="compare")
