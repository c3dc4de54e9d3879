"""Plotly figures of a run's metrics, shared by the Train and Compare pages.

Pure functions from the metrics dicts the engine records to figures; nothing
here touches Streamlit. `uirevision` keeps the user's zoom across live updates,
and long step series are thinned so a tick never ships thousands of points.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

MAX_POINTS = 600  # per series sent to the browser on each tick


def _layout(fig: go.Figure, title: str, **kwargs) -> go.Figure:
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=40, b=10), height=300, uirevision="keep",
                      legend=dict(orientation="h", y=-0.2), **kwargs)
    if not any(_has_points(trace) for trace in fig.data):  # a word instead of empty axes with meaningless ranges
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.add_annotation(text="Waiting for the first data…", showarrow=False, font=dict(size=14, color="#888"),
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _has_points(trace) -> bool:
    values = getattr(trace, "z", None) if getattr(trace, "type", "") == "heatmap" else getattr(trace, "x", None)
    return values is not None and len(values) > 0


def _thin(xs: list, ys: list) -> tuple[list, list]:
    if len(xs) <= MAX_POINTS:
        return xs, ys
    stride = -(-len(xs) // MAX_POINTS)
    return xs[::stride] + xs[-1:], ys[::stride] + ys[-1:]


def loss_figure(metrics: dict) -> go.Figure:
    """Training loss per step, with train and validation loss per epoch on top."""
    fig = go.Figure()
    steps = metrics.get("steps", [])
    if steps:
        xs, ys = _thin([s[0] for s in steps], [s[2] for s in steps])
        fig.add_scatter(x=xs, y=ys, name="train loss (step)", mode="lines", line=dict(width=1), opacity=0.5)
    epochs = metrics.get("epochs", [])
    if epochs:
        # Epochs count from 1; each epoch's point sits on its last step (without steps: on its number).
        last_step: dict[int, int] = {}
        for step, epoch, _ in steps:
            last_step[epoch] = max(step, last_step.get(epoch, step))
        x = [last_step.get(e["epoch"], e["epoch"]) for e in epochs]
        fig.add_scatter(x=x, y=[e["train_loss"] for e in epochs], name="train loss (epoch)", mode="lines+markers")
        fig.add_scatter(x=x, y=[e["val_loss"] for e in epochs], name="val loss (epoch)", mode="lines+markers")
    return _layout(fig, "Loss", xaxis_title="step")


def accuracy_figure(metrics: dict) -> go.Figure:
    """Train vs validation accuracy per epoch."""
    epochs = metrics.get("epochs", [])
    x = [e["epoch"] for e in epochs]  # the engine counts epochs from 1
    fig = go.Figure()
    fig.add_scatter(x=x, y=[e["train_acc"] for e in epochs], name="train", mode="lines+markers")
    fig.add_scatter(x=x, y=[e["val_acc"] for e in epochs], name="validation", mode="lines+markers")
    return _layout(fig, "Accuracy", xaxis=dict(title="epoch", tickformat="d", dtick=1),
                   yaxis=dict(range=[0, 1], tickformat=".0%"))


def per_class_figure(record: dict | None, classes: list[str]) -> go.Figure:
    """Validation accuracy per class for one epoch record."""
    fig = go.Figure()
    if record:
        acc = record["per_class_acc"]  # None: the class has no validation images
        fig.add_bar(x=classes, y=[a or 0 for a in acc], marker_color="#2E6FD8",
                    text=["no images" if a is None else f"{a:.0%}" for a in acc], textposition="outside",
                    hovertemplate="%{x}: %{text}<extra></extra>")
    return _layout(fig, "Validation accuracy per class", yaxis=dict(range=[0, 1], tickformat=".0%"))


def confusion_figure(record: dict | None, classes: list[str]) -> go.Figure:
    """The validation confusion matrix (rows: true class, columns: predicted)."""
    fig = go.Figure()
    if record:
        fig.add_heatmap(z=record["confusion"], x=classes, y=classes, colorscale="Blues", texttemplate="%{z}",
                        hovertemplate="true %{y}<br>predicted %{x}: %{z}<extra></extra>")
    return _layout(fig, "Confusion matrix (validation)", xaxis_title="predicted", yaxis_title="true",
                   yaxis_autorange="reversed")


LAYER_SIGNALS = {
    "drift": ("Weight drift ‖θ − θ₀‖ / ‖θ₀‖ per stage", "{:.2%}"),
    "grad_norm": ("Gradient norm per stage (RMS over the epoch's steps)", "{:.3g}"),
}


def layer_signal_figure(epochs: list[dict], signal: str) -> go.Figure:
    """Stage × epoch heat map of one layer signal from the epoch records' ``layers``.

    The colour is log10 of the value (the new head moves orders of magnitude more than the trunk), the
    text the value itself; a stage that did not train is blank and says "frozen".
    """
    title, fmt = LAYER_SIGNALS[signal]
    records = [(e["epoch"], e["layers"]) for e in epochs if isinstance(e.get("layers"), dict)]
    fig = go.Figure()
    if records:
        groups = records[-1][1]["groups"]
        values = [[_value_in(layers, g, signal) for _, layers in records] for g in groups]
        text = [["frozen" if v is None or v == 0 else fmt.format(v) for v in row] for row in values]
        z = [[math.log10(v) if v else None for v in row] for row in values]
        fig.add_heatmap(z=z, x=[f"epoch {epoch}" for epoch, _ in records], y=groups, text=text, texttemplate="%{text}",
                        colorscale="Viridis", colorbar=dict(title="log10"),
                        hovertemplate="%{y}, %{x}: %{text}<extra></extra>")
    _layout(fig, title, yaxis_autorange="reversed")
    return fig.update_layout(height=120 + 32 * (len(records[-1][1]["groups"]) if records else 4))


def _value_in(layers: dict, group: str, signal: str) -> float | None:
    values = dict(zip(layers.get("groups", []), layers.get(signal, [])))
    return values.get(group)


def drift_map_figure(table) -> go.Figure:
    """Heat map of each run's final weight drift (rows: runs, columns: parts in forward order), log colour."""
    fig = go.Figure()
    if len(table):
        values = table.to_numpy(dtype=float)
        z = [[math.log10(v) if v > 0 else None for v in row] for row in values]
        text = [["" if v != v else "frozen" if v == 0 else f"{v:.2%}" for v in row] for row in values]
        fig.add_heatmap(z=z, x=list(table.columns), y=list(table.index), text=text, texttemplate="%{text}",
                        colorscale="Viridis", colorbar=dict(title="log10"),
                        hovertemplate="%{y}<br>%{x}: moved %{text} from its start<extra></extra>")
    _layout(fig, "Which parts moved: weight drift ‖θ − θ₀‖ / ‖θ₀‖ at the last epoch", yaxis_autorange="reversed")
    return fig.update_layout(height=110 + 45 * max(1, len(table)))


# --------------------------------------------------------------------------- Classify and Compare pages


RUN_COLOURS = ("#2E6FD8", "#E8590C", "#2E9E5B", "#8E44AD", "#C9A227", "#17A2B8", "#D6336C", "#555555")


def _run_colour(i: int) -> str:
    return RUN_COLOURS[i % len(RUN_COLOURS)]


def _legend_below(fig: go.Figure) -> go.Figure:
    """Room for an x-axis title and a legend of long run names under the plot."""
    return fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=90), legend=dict(orientation="h", y=-0.3))


def top_k_figure(pairs: list[tuple[str, float]], title: str) -> go.Figure:
    """Horizontal bars of the top-k (class, probability) pairs, most likely on top."""
    fig = go.Figure()
    if pairs:
        names, probs = zip(*pairs)
        fig.add_bar(x=list(probs)[::-1], y=list(names)[::-1], orientation="h", marker_color="#2E6FD8",
                    text=[f"{p:.1%}" for p in probs][::-1], textposition="auto",
                    hovertemplate="%{y}: %{x:.2%}<extra></extra>")
    _layout(fig, title, showlegend=False, xaxis=dict(range=[0, 1], tickformat=".0%"))
    # room on the right for the "100%" tick label: with the shared 10 px margin plotly drops it
    # and the axis seems to end at 80%
    return fig.update_layout(height=70 + 28 * max(1, len(pairs)), margin=dict(r=30))


def freezing_figure(table) -> go.Figure:
    """Heat map of the trainable fraction per run (rows) and network part (columns, forward order)."""
    fig = go.Figure()
    if len(table):
        z = table.to_numpy(dtype=float)
        text = [["" if v != v else ("trains" if v == 1 else "frozen" if v == 0 else f"{v:.0%}") for v in row] for row in z]
        fig.add_heatmap(z=z, x=list(table.columns), y=list(table.index), zmin=0, zmax=1, text=text,
                        texttemplate="%{text}", colorscale=[[0, "#D9DEE7"], [1, "#2E6FD8"]],
                        colorbar=dict(title="trains", tickformat=".0%"),
                        hovertemplate="%{y}<br>%{x}: %{z:.0%} of its parameters train<extra></extra>")
    _layout(fig, "Which parts trained (input → output)", yaxis_autorange="reversed")
    return fig.update_layout(height=110 + 45 * max(1, len(table)))


def compare_curves_figure(table, y: str, x: str = "epoch", title: str = "") -> go.Figure:
    """One line per run of column `y` against `x` ("epoch" or "time_s") from `core.analysis.compare.curves`."""
    fig = go.Figure()
    for i, (run, part) in enumerate(table.groupby("run", sort=False)):
        fig.add_scatter(x=part[x], y=part[y], name=run, mode="lines+markers", line=dict(color=_run_colour(i)))
    axis = dict(range=[0, 1.02], tickformat=".0%") if y.endswith("acc") else {}
    _layout(fig, title or y, xaxis_title="wall-clock time (s)" if x == "time_s" else x, yaxis=axis)
    return _legend_below(fig)


def runs_scatter_figure(table, x: str, title: str, log_x: bool = False) -> go.Figure:
    """Held-out test accuracy of each run (of the weights it kept) against column `x` of
    `core.analysis.compare.runs_table`."""
    import math

    fig = go.Figure()
    for i, (_, row) in enumerate(table.iterrows()):
        fig.add_scatter(x=[row[x]], y=[row["test acc"]], name=row["run"], mode="markers+text",
                        text=[row["strategy"]], textposition="top center" if i % 2 == 0 else "bottom center",
                        marker=dict(size=12, color=_run_colour(i)))
    xs = [v for v in table[x] if v == v and v is not None] if len(table) else []
    if xs and log_x and min(xs) > 0:
        x_range = [math.log10(min(xs)) - 0.4, math.log10(max(xs)) + 0.4]
    elif xs:
        x_range = [-0.1 * max(xs), max(xs) * 1.15 or 1]
    else:
        x_range = None
    _layout(fig, title, xaxis=dict(title=x, type="log" if log_x else "linear", range=x_range),
            yaxis=dict(title="test acc", range=[0, 1.08], tickformat=".0%"))
    return _legend_below(fig)


def per_class_grouped_figure(table) -> go.Figure:
    """Grouped bars: validation accuracy per class (x), one bar colour per run."""
    fig = go.Figure()
    for i, (run, part) in enumerate(table.groupby("run", sort=False)):
        fig.add_bar(x=part["class"], y=part["accuracy"], name=run, marker_color=_run_colour(i))
    return _layout(fig, "Validation accuracy per class (kept weights; the last epoch while a run trains)", barmode="group",
                   yaxis=dict(range=[0, 1], tickformat=".0%"))


def difference_figure(table, title: str) -> go.Figure:
    """Per-class accuracy difference (the `difference` column): green where the second run is better."""
    fig = go.Figure()
    if len(table):
        diff = table["difference"]
        fig.add_bar(x=table["class"], y=diff, marker_color=["#2E9E5B" if d >= 0 else "#D8452E" for d in diff],
                    text=[f"{d:+.0%}" for d in diff], textposition="auto")
    return _layout(fig, title, yaxis=dict(tickformat="+.0%", zeroline=True), showlegend=False)


def sweep_figure(rows: list[dict], title: str) -> go.Figure:
    """Per strategy at its chosen rate, in the sweep's forward order: mean validation accuracy (what
    chose) beside mean held-out test accuracy (what reports), each with its standard error; rate,
    trainable parameters and training time in the hover. Full fine-tuning's test accuracy is also a
    dashed line."""
    fig = go.Figure()
    if rows:
        extra = [[r["n"], r["trainable_params"], r["mean_train_s"], r["lr"]] for r in rows]
        hover = ("%{x} @ %{customdata[3]:g}: %{y:.1%} (n=%{customdata[0]})<br>%{customdata[1]:,} trainable"
                 "<br>%{customdata[2]:.1f} s training<extra>%{fullData.name}</extra>")
        for name, mean, error, colour in (("validation (chose)", "mean_acc", "sem_acc", "#9DB8E8"),
                                          ("test (held out)", "test_mean_acc", "test_sem_acc", "#2E6FD8")):
            fig.add_bar(x=[r["label"] for r in rows], y=[r[mean] for r in rows], name=name, marker_color=colour,
                        error_y=dict(type="data", array=[r[error] or 0 for r in rows], visible=True),
                        customdata=extra, hovertemplate=hover)
        full = next((r for r in rows if r["label"] == "full"), None)
        if full is not None and full["test_mean_acc"] is not None:
            fig.add_hline(y=full["test_mean_acc"], line_dash="dash", line_color="#888",
                          annotation_text="full fine-tune (test)")
    _layout(fig, title, barmode="group", yaxis=dict(range=[0, 1], tickformat=".0%", title="accuracy"),
            xaxis_title="what trains")
    return fig


def relative_figure(rows: list[dict], title: str) -> go.Figure:
    """Test accuracy minus full fine-tuning's per strategy (percentage points), mean and standard error
    over seeds, in forward order: the surgical sweep's chart, as Lee et al.'s Figure 2."""
    fig = go.Figure()
    if rows:
        fig.add_bar(x=[r["label"] for r in rows], y=[100 * r["mean_diff"] for r in rows],
                    marker_color=["#2E9E5B" if r["mean_diff"] >= 0 else "#E8590C" for r in rows],
                    error_y=dict(type="data", array=[100 * (r["sem_diff"] or 0) for r in rows], visible=True),
                    customdata=[[r["n"]] for r in rows],
                    hovertemplate="%{x}: %{y:+.1f} points against full fine-tuning (n=%{customdata[0]})<extra></extra>")
        fig.add_hline(y=0, line_color="#888")
    return _layout(fig, title, showlegend=False, yaxis=dict(title="test accuracy − full fine-tuning (points)"),
                   xaxis_title="what trains")
