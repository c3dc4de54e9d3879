"""Sweeps on disk: one record per sweep, listing its member runs, beside the run folders.

A sweep record is ``<runs root>/.sweeps/<id>.json`` (the run store's own listing skips hidden
names): the sweep's config, name, owner, creation time, and per member its label, preset, frozen
set, learning rate, seed and run id. Members are ordinary runs; what a sweep has reached is read
from them, so a record is written once and never goes stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.config import MAX_SWEEP_MEMBERS, SweepConfig
from core.files import write_json
from core.store.runs import RunStore, new_id, now_iso, valid_id

SWEEPS_DIR = ".sweeps"
MAX_RECORD_BYTES = 1 << 20  # 200 members take about 60 KB: a larger file was never written by `create`
_MEMBER_KINDS = {"label": str, "preset": str, "frozen": list, "lr": (int, float), "seed": int, "run_id": str}


@dataclass(frozen=True)
class SweepRecord:
    id: str
    name: str
    owner: str
    created: str  # ISO 8601 UTC
    config: SweepConfig
    members: list[dict]  # {"label", "strategy", "preset", "frozen", "lr", "seed", "run_id"}, in the plan's order

    @property
    def run_ids(self) -> list[str]:
        return [m["run_id"] for m in self.members]


def checked_members(raw) -> list[dict]:
    """A record's members as `create` writes them, else `ValueError` naming what is wrong: a list of 1 to
    `MAX_SWEEP_MEMBERS` dicts, each with its fields of the right kind (frozen paths strings, a valid run id)."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SWEEP_MEMBERS:
        raise ValueError(f"members must be a list of 1 to {MAX_SWEEP_MEMBERS} runs")
    for i, member in enumerate(raw):
        bad = [k for k, kind in _MEMBER_KINDS.items() if not isinstance(member, dict) or not isinstance(member.get(k), kind)
               or isinstance(member.get(k), bool)]
        if bad or not valid_id(member["run_id"]) or not all(isinstance(p, str) for p in member["frozen"]):
            raise ValueError(f"member {i} is malformed ({', '.join(bad) or 'run_id or frozen'})")
    return [dict(m) for m in raw]


class SweepStore:
    """The sweep records of a run store's root."""

    def __init__(self, runs: RunStore) -> None:
        self.runs = runs
        self.root = runs.root / SWEEPS_DIR

    def create(self, config: SweepConfig, members: list[dict], *, name: str, owner: str = "") -> str:
        """Write a new sweep record; returns its id."""
        sweep_id = new_id(lambda candidate: self.path(candidate).exists())
        write_json(self.path(sweep_id), {
            "id": sweep_id, "name": name, "owner": owner, "created": now_iso(), "config": config.to_dict(),
            "members": members,
        })
        return sweep_id

    def load(self, sweep_id: str) -> SweepRecord:
        """The record of `sweep_id`; `KeyError` when there is none or it cannot be read."""
        if not valid_id(sweep_id):
            raise KeyError(sweep_id)
        try:
            if self.path(sweep_id).stat().st_size > MAX_RECORD_BYTES:
                raise ValueError(f"larger than {MAX_RECORD_BYTES:,} bytes, which no sweep of at most "
                                 f"{MAX_SWEEP_MEMBERS} members writes")
            meta = json.loads(self.path(sweep_id).read_text(encoding="utf-8"))
            return SweepRecord(meta["id"], str(meta["name"]), str(meta.get("owner") or ""), str(meta["created"]),
                               SweepConfig.from_dict(meta["config"]), checked_members(meta["members"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyError(f"{sweep_id}: unreadable sweep record ({exc})") from None

    def list(self) -> list[SweepRecord]:
        """Every readable sweep, newest first."""
        records = []
        for path in self.root.glob("*.json") if self.root.is_dir() else []:
            try:
                records.append(self.load(path.stem))
            except KeyError:
                continue
        return sorted(records, key=lambda r: (r.created, r.id), reverse=True)

    def path(self, sweep_id: str) -> Path:
        return self.root / f"{sweep_id}.json"
