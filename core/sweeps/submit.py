"""A sweep handed to an executor: every member checked, then submitted as an ordinary run, then recorded.

All or nothing before anything is queued: every member's config passes `check_runnable` first, so a
sweep that cannot run starts nothing. Members then train one at a time on the device, in the plan's
order, beside other users' runs; the sweep record lists them. Stopping a sweep cancels its members
that have not ended (queued ones never start; the running one stops within a batch).
"""

from __future__ import annotations

from core.config import RunConfig, SweepConfig
from core.jobs import check_runnable
from core.jobs.executor import Executor
from core.store import RunStore, SweepRecord, SweepStore
from core.sweeps.plan import Member, member_configs, plan
from core.sweeps.report import SweepReport, sweep_report


def default_sweep_name(sweep: SweepConfig) -> str:
    seeds = f" · {sweep.seeds} seeds" if sweep.seeds > 1 else ""
    return f"{sweep.kind} sweep · {sweep.base.arch} · {sweep.base.dataset}{seeds}"


def checked_members(sweep: SweepConfig, store: RunStore) -> list[tuple[Member, RunConfig]]:
    """The sweep's members and their configs, every config checked (`check_runnable`); `ValueError`
    for the user when the sweep or any member cannot run."""
    members = plan(sweep)
    configs = member_configs(sweep, members)
    for config in dict.fromkeys(configs):
        check_runnable(config, store)
    return list(zip(members, configs))


def record_sweep(store: RunStore, sweep: SweepConfig, members: list[tuple[Member, RunConfig, str]], *, name: str,
                 owner: str) -> str:
    """Write the sweep record for members already created as runs ((member, config, run id)); returns its id."""
    entries = [{"label": m.label, "strategy": m.strategy.label, "preset": m.strategy.preset, "frozen": list(c.frozen),
                "lr": m.lr, "seed": m.seed, "run_id": run_id} for m, c, run_id in members]
    return SweepStore(store).create(sweep, entries, name=name, owner=owner)


def member_name(sweep_name: str, member: Member) -> str:
    return f"{sweep_name} · {member.label} · seed {member.seed}"


def submit_sweep(executor: Executor, sweep: SweepConfig, *, owner: str = "", name: str | None = None) -> str:
    """Plan, check and submit every member to `executor` (the app's queue, a Ray cluster, or this
    process), then record the sweep; returns its id. `ValueError` for the user (a bad sweep, or a
    member that could not run) before anything is submitted. The one way a sweep starts: the Sweep
    page and both command-line paths call it."""
    members = checked_members(sweep, executor.store)
    name = " ".join((name or "").split()) or default_sweep_name(sweep)
    queued = [(m, c, executor.submit(c, owner=owner, name=member_name(name, m))) for m, c in members]
    return record_sweep(executor.store, sweep, queued, name=name, owner=owner)


def sweep_state(store: RunStore, record: SweepRecord) -> SweepReport:
    """The sweep as its members stand in the run store now (a member's metrics reach it at each epoch end)."""
    runs = {}
    for run_id in record.run_ids:
        try:
            runs[run_id] = store.load(run_id)
        except KeyError:
            runs[run_id] = None
    return sweep_report(record, runs)


def stop_sweep(executor: Executor, record: SweepRecord) -> int:
    """Cancel every member that has not ended; returns how many were asked to stop."""
    return sum(bool(executor.cancel(run_id)) for run_id in record.run_ids)
