"""Sweeps: answer "which layers should I fine-tune?" with a set of runs and statistics over seeds.

`plan` (sweep kinds -> member configs), `stats` (mean, standard error, the Pareto front, the
recommendation), `report` (a sweep's members and answer, read from its runs), `submit` (a sweep
handed to the job queue, stopped).
"""

from core.sweeps.plan import Member, Strategy, member_config, member_configs, plan, strategies
from core.sweeps.report import MemberState, SweepReport, sweep_report
from core.sweeps.stats import Result, Row, pareto_front, recommend, sem, summarize, within_error
from core.sweeps.submit import (
    checked_members,
    default_sweep_name,
    member_name,
    record_sweep,
    stop_sweep,
    submit_sweep,
    sweep_state,
)

__all__ = [
    "Member", "MemberState", "Result", "Row", "Strategy", "SweepReport", "checked_members", "default_sweep_name",
    "member_config", "member_configs", "member_name", "pareto_front", "plan", "recommend", "record_sweep", "sem", "stop_sweep",
    "strategies", "submit_sweep", "summarize", "sweep_report", "sweep_state", "within_error",
]
