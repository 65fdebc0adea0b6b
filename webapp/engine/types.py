"""Plain value types shared by the engine modules.

models/snapshots.py is the only place that builds these from ORM rows; everything in
engine/ takes and returns them (or builtins), so the engine is testable without a database.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class StepDef:
    id: int
    name: str
    order: int = 0
    step_type: str = "shell"
    # None: never set -> implicit dependency on the previous stage (DESIGN §3 stage rule).
    # A tuple, even empty, is explicit and replaces the implicit edge.
    dependencies: tuple[int, ...] | None = None
    parallel_group: str | None = None
    # {"type": "on_success"|"on_failure"|"always"|"one_success"|"none_failed" (legacy "expression": on_success),
    #  "expression": str|None, "depends_on": [step ids]|None}
    conditions: dict[str, Any] | None = None
    approval_required: bool = False
    retry_policy: dict[str, Any] | None = None
    timeout_seconds: int | None = None
    continue_on_failure: bool = False
    estimated_duration: float = 60.0  # seconds, for analysis only


@dataclass(frozen=True)
class GroupDef:
    id: str
    name: str = ""
    sync_policy: str = "wait_all"  # wait_all | wait_any | fail_fast
    timeout_seconds: int | None = None


@dataclass(frozen=True)
class PipelineDef:
    steps: tuple[StepDef, ...]
    groups: tuple[GroupDef, ...] = ()

    def step(self, step_id: int) -> StepDef:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


@dataclass(slots=True)
class Attempt:
    """One StepExecutionHistory row. The latest attempt of a step is the step's state.

    Treated as an immutable value, but not frozen: advance() builds one per row on every call,
    and a frozen dataclass costs about three times as much to construct.
    """
    id: int
    step_id: int
    retry_count: int = 0          # 0 for the first attempt
    status: str = "pending"       # engine.states.StepState value
    exit_code: int | None = None
    # why it failed: "exit" (non-zero exit), "timeout", "error" (runner error),
    # "worker_lost", "rejected" (approval), "approval_timeout", or None
    failure: str | None = None
    log_tail: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    scheduled_for: datetime | None = None   # retry_scheduled: when the retry may run
    skip_reason: str | None = None
    bypassed: bool = False        # a person marked this failed step skipped (bypass)
    upstream_failed: bool = False  # skipped because an upstream failed (propagates like Airflow's upstream_failed)


@dataclass(frozen=True)
class ExecutionSnapshot:
    execution_id: str
    definition: PipelineDef
    attempts: tuple[Attempt, ...]
    status: str = "running"               # engine.states.ExecutionState value
    cancel_requested: bool = False
    variables: dict[str, Any] = field(default_factory=dict)
    trigger: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    # step id -> approval request status ("pending"|"approved"|"rejected"|"timed_out"|"cancelled")
    approvals: dict[int, str] = field(default_factory=dict)
    # (a group's start, for its timeout, is derived by the planner from its members' attempts)
    max_retries_cap: int = 10
