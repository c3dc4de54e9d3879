"""The layer tree as tables of checkboxes: one overview table and one table per stage.

Streamlit has no tree widget; a `st.data_editor` with an indented name column
and a checkbox column is fast and scriptable. This module turns a `LayerTree`
and a frozen set into those tables, and an edited checkbox back into a new
frozen set. It is pure (pandas only) so it is tested without Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.engine import Signals
from core.freezing import LayerTree, Stage
from core.models import LoadReport

# The checkbox cannot show "partly": the state column, beside it, does.
STATE_MARK = {"trainable": "● trains", "frozen": "○ frozen", "partial": "◐ partly", "": "—"}


@dataclass(frozen=True)
class Group:
    """A collapsible part of the tree: a trunk stage, or what follows the trunk."""

    name: str
    paths: tuple[str, ...]  # top-level module paths it holds, in forward order


def groups_of(tree: LayerTree, trunk: list[Stage]) -> list[Group]:
    """Trunk stages, then one group with every top-level module outside the trunk (pool, classifier)."""
    in_trunk = {p for s in trunk for p in s.paths}
    # top-level modules that are neither a stage part nor a container of stage parts
    rest = tuple(
        n.path for n in tree.nodes
        if n.depth == 0 and n.path not in in_trunk and not any(p.startswith(n.path + ".") for p in in_trunk)
    )
    return [Group(s.name, s.paths) for s in trunk] + ([Group("classifier", rest)] if rest else [])


def _shape(shape) -> str:
    return "×".join(map(str, shape)) if shape else ""


def overview_table(tree: LayerTree, groups: list[Group], frozen,
                   signals: Signals | None = None) -> tuple[pd.DataFrame, list[tuple[str, ...]]]:
    """One row per group, and the paths each row's checkbox sets; with `signals`, an RGN column."""
    per_node = dict(zip((n.path for n in tree.nodes), tree.trainable_per_node(frozen)))
    nodes = {n.path: n for n in tree.nodes}
    rows, targets = [], []
    for group in groups:
        total = sum(nodes[p].total_params for p in group.paths)
        trainable = sum(per_node[p] for p in group.paths)
        state = "" if total == 0 else "trainable" if trainable == total else "frozen" if trainable == 0 else "partial"
        rows.append({
            "train": state == "trainable",
            "state": STATE_MARK[state],
            "layer": group.name,
            "modules": ", ".join(group.paths) if len(group.paths) <= 3 else f"{group.paths[0]} … {group.paths[-1]}",
            "output": _shape(nodes[group.paths[-1]].out_shape),
            "params": total,
            "trainable": trainable,
        })
        if signals is not None:
            rows[-1]["RGN"] = signals.rgn(signals.under(group.paths))
        targets.append(tuple(p for p in group.paths if nodes[p].total_params))
    return pd.DataFrame(rows), targets


def group_table(
    tree: LayerTree, group: Group, frozen, report: LoadReport | None = None, signals: Signals | None = None
) -> tuple[pd.DataFrame, list[tuple[str, ...]]]:
    """One row per module inside `group` (indented by depth), and the path each row sets; with `signals`,
    an RGN column (each module's tensors as one vector)."""
    states = tree.states(frozen)
    per_node = tree.trainable_per_node(frozen)
    rows, targets = [], []
    for node, state, trainable in zip(tree.nodes, states, per_node):
        if not any(node.path == p or node.path.startswith(p + ".") for p in group.paths):
            continue
        row = {
            "train": state == "trainable",
            "state": STATE_MARK[state],
            "layer": "\u2003" * node.depth + ("▸ " if node.has_children else "") + node.name,
            "path": node.path,
            "type": node.kind,
            "output": _shape(node.out_shape),
            "params": node.total_params,
            "trainable": trainable,
        }
        if report is not None:
            row["checkpoint"] = _checkpoint_mark(tree, node, report)
        if signals is not None:
            row["RGN"] = signals.rgn(signals.under([node.path]))
        rows.append(row)
        targets.append((node.path,) if node.total_params else ())
    return pd.DataFrame(rows), targets


def _checkpoint_mark(tree: LayerTree, node, report: LoadReport) -> str:
    names = tree.param_names[node.param_start : node.param_end]
    if not names:
        return ""
    statuses = {report.status_of(n) for n in names}
    if statuses == {"loaded"}:
        return "✓ loaded"
    if "mismatched" in statuses:
        return "⚠ shape mismatch"
    if "missing" in statuses:
        return "✗ missing" if "loaded" not in statuses else "◐ partly missing"
    return ""


def apply_edits(tree: LayerTree, frozen, targets: list[tuple[str, ...]], edited_rows: dict) -> tuple[str, ...]:
    """The frozen set after the checkbox edits of one table (`edited_rows` as st.data_editor reports them)."""
    for row, change in edited_rows.items():
        if "train" not in change:
            continue
        for path in targets[int(row)]:
            frozen = tree.with_node(frozen, path, train=bool(change["train"]))
    return tuple(frozen)
