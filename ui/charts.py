"""Plotly figures of a run's metrics, shared by the Train and Compare pages.

Pure functions from the metrics dicts the engine records to figures; nothing
here touches Streamlit. `uirevision` keeps the user's zoom across live updates,
and long step series are thinned so a tick never ships thousands of points.
"""

from __future__ import annotations

import plotly.graph_objects as go

MAX_POINTS = 600  # per series sent to the browser on each tick


def _layout(fig: go.Figure, title: str, **kwargs) -> go.Figure:
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=40, b=10), height=300, uirevision="keep",
                      legend=dict(orientation="h", y=-0.2), **kwargs)
    return fig


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
        steps_per_epoch = (steps[-1][0] / len(epochs)) if steps else 1
        x = [(e["epoch"] + 1) * steps_per_epoch for e in epochs]
        fig.add_scatter(x=x, y=[e["train_loss"] for e in epochs], name="train loss (epoch)", mode="lines+markers")
        fig.add_scatter(x=x, y=[e["val_loss"] for e in epochs], name="val loss (epoch)", mode="lines+markers")
    return _layout(fig, "Loss", xaxis_title="step")


def accuracy_figure(metrics: dict) -> go.Figure:
    """Train vs validation accuracy per epoch."""
    epochs = metrics.get("epochs", [])
    x = [e["epoch"] + 1 for e in epochs]
    fig = go.Figure()
    fig.add_scatter(x=x, y=[e["train_acc"] for e in epochs], name="train", mode="lines+markers")
    fig.add_scatter(x=x, y=[e["val_acc"] for e in epochs], name="validation", mode="lines+markers")
    return _layout(fig, "Accuracy", xaxis_title="epoch", yaxis=dict(range=[0, 1], tickformat=".0%"))


def per_class_figure(record: dict | None, classes: list[str]) -> go.Figure:
    """Validation accuracy per class for one epoch record."""
    fig = go.Figure()
    if record:
        fig.add_bar(x=classes, y=record["per_class_acc"], marker_color="#2E6FD8")
    return _layout(fig, "Validation accuracy per class", yaxis=dict(range=[0, 1], tickformat=".0%"))


def confusion_figure(record: dict | None, classes: list[str]) -> go.Figure:
    """The validation confusion matrix (rows: true class, columns: predicted)."""
    fig = go.Figure()
    if record:
        fig.add_heatmap(z=record["confusion"], x=classes, y=classes, colorscale="Blues", texttemplate="%{z}",
                        hovertemplate="true %{y}<br>predicted %{x}: %{z}<extra></extra>")
    return _layout(fig, "Confusion matrix (validation)", xaxis_title="predicted", yaxis_title="true",
                   yaxis_autorange="reversed")
