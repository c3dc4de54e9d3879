"""Command-line options generated from a config dataclass, so a CLI and the config cannot drift.

Every field becomes ``--field-name`` with the field's default, its type (``int``, ``float``,
``str``; a ``bool`` as ``--name/--no-name``; a tuple as a list of values, separated by spaces or
commas, ``--lrs 0.01,0.001``; ``image_size`` as ``S`` or ``HxW``), the choices
`core.config.CHOICES` names, and the comment written beside the field as its help. Fields a command
line derives itself (the class count comes from the dataset) are left out.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import tokenize
from pathlib import Path
from typing import Any

from core.config import CHOICES


def image_size(text: str) -> tuple[int, int]:
    """"64" -> (64, 64); "448x224" -> (448, 224) as height x width."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected S or HxW, got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def field_comments(cls: type) -> dict[str, str]:
    """The comment on each field's line of `cls`'s source: {"lr": "learning rate of the new head", ...}."""
    source = inspect.getsource(cls)
    comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    fields = [node for node in ast.parse(source).body[0].body if isinstance(node, ast.AnnAssign)]
    return {node.target.id: comments[node.lineno] for node in fields if node.lineno in comments}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, derived: tuple[str, ...] = ()) -> None:
    """One option per field of the dataclass `cls`, except the `derived` ones (see the module docstring)."""
    helps = field_comments(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (defaults as in the app)")
    for f in dataclasses.fields(cls):
        if f.name in derived:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        shown = {True: "on", False: "off"}.get(shown, shown) if isinstance(shown, bool) else shown if shown not in ("", None) else "none"
        kwargs: dict[str, Any] = {"default": f.default, "help": f"{helps.get(f.name, '')} (default: {shown})"}
        kind = str(f.type)
        if f.name == "image_size":
            kwargs |= {"type": image_size, "metavar": "S|HxW"}
        elif kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("tuple"):
            kwargs |= {"nargs": "*", "default": list(f.default)}
        else:
            kwargs["type"] = {"int": int, "float": float}.get(kind, str)
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        group.add_argument(flag, dest=f.name, **kwargs)


def config_fields(args: argparse.Namespace, cls: type, *, derived: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of `cls`'s fields in parsed `args` (without the `derived` ones), ready for `cls(**...)`;
    `ValueError` naming the option when a list item is not a number where one is expected."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in derived:
            continue
        value = getattr(args, f.name)
        kind = str(f.type)
        if kind.startswith("tuple") and f.name != "image_size":
            value = tuple(_item(item, kind, f.name) for text in value for item in str(text).split(",") if item.strip())
        values[f.name] = value
    return values


def _item(text: str, kind: str, name: str):
    """One item of a list option, as the element type the field's annotation names."""
    cast = float if "float" in kind else int if "int" in kind else str
    try:
        return cast(text.strip())
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}: {text.strip()!r} is not a number") from None


def add_run_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """Where a command line's runs train and go, and how it answers: --device, --runs-dir, --name, --json."""
    group = parser.add_argument_group(f"the {what}")
    group.add_argument("--device", default=None, help="cpu | cuda | cuda:<index> | mps (default: the best available)")
    group.add_argument("--runs-dir", type=Path, default=None,
                       help="run store folder (default $FREEZE_LAB_RUNS_DIR or ./runs)")
    group.add_argument("--name", default=None, help=f"display name of the {what}")
    group.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
