"""This browser tab's state: who it is, and the `RunConfig` draft its pages edit.

Pages read and write the draft only through `draft`, `update_draft` and `set_draft`. The tab
has an id, kept in the session and in the URL (``?tab=``): it is the owner of the runs the tab
starts, and the key under which its draft is saved on disk at every change. A refresh of the
tab (a new session, the same URL) thus finds its draft and its runs again; another tab, or a
link without ``?tab=``, starts fresh.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.config import RunConfig, data_dir
from core.data import Dataset
from core.files import atomic_write
from core.models import build_skeleton

log = logging.getLogger(__name__)

TAB_PARAM = "tab"
_TAB_ID = re.compile(r"^[0-9a-f]{8,32}$")


def tab_id() -> str:
    """This tab's id (also the owner recorded on its runs), from the session, else the URL, else new."""
    if "owner" not in st.session_state:
        from_url = st.query_params.get(TAB_PARAM, "")
        st.session_state["owner"] = from_url if _TAB_ID.match(from_url) else uuid.uuid4().hex[:12]
    return st.session_state["owner"]


def session_owner() -> str:
    """The owner label of the runs this tab starts: its id."""
    return tab_id()


def keep_tab_in_url() -> None:
    """Put the tab id in the URL, where a refresh finds it (a page switch clears the query string).

    Called by the frame (app.py) on every run, before the page.
    """
    tab = tab_id()
    if st.query_params.get(TAB_PARAM) != tab:
        st.query_params[TAB_PARAM] = tab


def draft() -> RunConfig:
    """The tab's draft configuration: from this session, else as the tab last saved it, else the default."""
    if "draft" not in st.session_state:
        st.session_state["draft"] = _load(tab_id()) or RunConfig()
    return st.session_state["draft"]


def set_draft(config: RunConfig) -> RunConfig:
    """Make `config` the draft (and save it for a refresh) when it differs; returns it."""
    if st.session_state.get("draft") != config:
        st.session_state["draft"] = config
        _save(tab_id(), config)
    return config


def update_draft(**changes) -> RunConfig:
    """Replace the draft with a copy that has `changes` applied; returns the new draft."""
    return set_draft(draft().replace(**changes))


def _path(tab: str) -> Path:
    # Named by a hash: the id comes from a URL, and never becomes a path itself.
    return data_dir() / ".drafts" / f"{hashlib.sha256(tab.encode()).hexdigest()[:24]}.json"


def _save(tab: str, config: RunConfig) -> None:
    """Save the draft for a refresh, unless it is not a usable configuration: then the last good one
    stays on disk (the session keeps the draft, and Start says what is wrong with it)."""
    try:
        _check_usable(config)
    except ValueError as exc:
        log.info("not saving the draft of tab %s over the last usable one: %s", tab, exc)
        return
    try:
        atomic_write(_path(tab), config.to_json().encode())
    except OSError as exc:  # a read-only data folder costs only the refresh
        log.warning("could not save the draft of tab %s: %s", tab, exc)


def _check_usable(config: RunConfig) -> None:
    """`ValueError` unless `config` validates, names a known architecture and freezes modules it has."""
    config.validate()
    names = _module_names(config.arch, config.num_classes)  # ValueError for an unknown architecture
    if unknown := [p for p in config.frozen if p not in names]:
        raise ValueError(f"no module {unknown[0]!r} to freeze")


@functools.lru_cache(maxsize=32)
def _module_names(arch: str, num_classes: int) -> frozenset[str]:
    """The module paths of an architecture (`ValueError` for an unknown one), built once on the meta device."""
    return frozenset(name for name, _ in build_skeleton(arch, num_classes).named_modules())


def _load(tab: str) -> RunConfig | None:
    """The saved draft of `tab`, or None when there is none or it is not a usable configuration (a file
    edited or damaged by hand: an unknown architecture or module, `Infinity`, a wrong type)."""
    try:
        config = RunConfig.from_json(_path(tab).read_text(encoding="utf-8"))
        _check_usable(config)
        return config
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the saved draft of tab %s: %s", tab, exc)
        return None


# --- what the Data page learned, for the other pages ----------------------------------------------
_CLASSES = "dataset_classes"  # the class names of the dataset the Data page last checked
_SIZES = "dataset_sizes"  # dataset reference -> (train, val, test images), for the Model page's run memory


def remember_dataset(ds: Dataset) -> None:
    """Keep the facts of the dataset the Data page checked: its classes, and its split sizes."""
    st.session_state[_CLASSES] = list(ds.classes)
    st.session_state.setdefault(_SIZES, {})[ds.ref] = (len(ds.train), len(ds.val), len(ds.test))


def dataset_classes() -> list[str] | None:
    """The class names of the dataset last checked on the Data page, None when none was (or it was forgotten)."""
    return st.session_state.get(_CLASSES)


def forget_dataset_classes() -> None:
    """The draft now names another dataset: its classes are not known until the Data page checks it."""
    st.session_state.pop(_CLASSES, None)


def dataset_sizes(ref: str) -> tuple[int, int, int] | None:
    """(train, val, test) image counts of `ref` as the Data page found them, None when it has not checked it."""
    return st.session_state.get(_SIZES, {}).get(ref)


# --- the Classify page's choices, kept across pages as the draft is ---------------------------------
_UPLOADS = "classify_kept_uploads"
_RUNS = "classify_kept_runs"
MAX_KEPT_BYTES = 64 * 2**20  # uploads kept for the tab's return to Classify; larger sets are not kept


@dataclass(frozen=True)
class KeptUpload:
    """An image this tab uploaded on Classify, kept when the uploader's own state goes (a visit to
    another page): what the page reads of an upload (name, id, bytes)."""

    name: str
    file_id: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def keep_uploads(files) -> list[KeptUpload]:
    """Remember the uploads (when together under `MAX_KEPT_BYTES`) and return them as kept."""
    if [k.file_id for k in kept_uploads()] == [f.file_id for f in files]:
        return kept_uploads()  # the same uploads as on the last rerun: no second copy of their bytes
    kept = [KeptUpload(f.name, f.file_id, f.getvalue()) for f in files]
    if sum(len(k.data) for k in kept) <= MAX_KEPT_BYTES:
        st.session_state[_UPLOADS] = kept
    return kept


def kept_uploads() -> list[KeptUpload]:
    return st.session_state.get(_UPLOADS, [])


def forget_uploads() -> None:
    st.session_state.pop(_UPLOADS, None)


def keep_runs(run_ids: list[str]) -> None:
    st.session_state[_RUNS] = list(run_ids)


def kept_runs() -> list[str]:
    return st.session_state.get(_RUNS, [])


# --- one message for the next page to show ----------------------------------------------------------
_NOTICE = "notice"


def post_notice(text: str) -> None:
    """A message the next page that calls `pop_notice` shows once (an action that switched pages says what it did)."""
    st.session_state[_NOTICE] = text


def pop_notice() -> str | None:
    return st.session_state.pop(_NOTICE, None)
