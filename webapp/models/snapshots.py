"""The only ORM -> engine adapter: builds engine value types from rows and frozen snapshots."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..engine.types import Attempt, ExecutionSnapshot, GroupDef, PipelineDef, StepDef
from .execution import StepExecutionHistory, WorkflowExecution

# The columns the planner needs; logs are read separately, and only for failed attempts.
ATTEMPT_COLUMNS = (
    StepExecutionHistory.id, StepExecutionHistory.step_id, StepExecutionHistory.step_name,
    StepExecutionHistory.retry_count, StepExecutionHistory.max_retries, StepExecutionHistory.status,
    StepExecutionHistory.exit_code, StepExecutionHistory.failure_kind, StepExecutionHistory.output_data,
    StepExecutionHistory.started_at, StepExecutionHistory.finished_at, StepExecutionHistory.scheduled_for,
    StepExecutionHistory.skip_reason, StepExecutionHistory.bypassed, StepExecutionHistory.upstream_failed,
)
LOG_TAIL = 8192


def pipeline_def(frozen: dict[str, Any]) -> PipelineDef:
    steps = tuple(
        StepDef(
            id=s["id"], name=s["name"], order=s.get("order", 0), step_type=s.get("step_type", "shell"),
            dependencies=None if s.get("dependencies") is None else tuple(s["dependencies"]),
            parallel_group=s.get("parallel_group"), conditions=s.get("conditions"),
            approval_required=bool(s.get("approval_required")), retry_policy=s.get("retry_policy"),
            timeout_seconds=s.get("timeout_seconds"), continue_on_failure=bool(s.get("continue_on_failure")),
            estimated_duration=float(s.get("estimated_duration") or 60.0),
        )
        for s in frozen.get("steps", [])
    )
    groups = tuple(
        GroupDef(id=g["id"], name=g.get("name", ""), sync_policy=g.get("sync_policy", "wait_all"),
                 timeout_seconds=g.get("timeout_seconds"))
        for g in frozen.get("groups", [])
    )
    return PipelineDef(steps=steps, groups=groups)


@dataclass(frozen=True, eq=False)  # identity equality: services cache derived facts per object
class Frozen:
    """An execution's frozen definition, parsed once per process (it never changes)."""
    definition: PipelineDef
    steps: dict[int, dict[str, Any]]
    has_approvals: bool
    notification_config: Any = None  # the pipeline-level one; steps carry their own


_FROZEN: "OrderedDict[str, Frozen]" = OrderedDict()


def frozen(execution_id: str, load: Callable[[], dict[str, Any]]) -> Frozen:
    """The Frozen of an execution; `load` reads its pipeline_snapshot on a cache miss.

    Keeping the same PipelineDef object also lets the planner reuse its per-definition structures.
    """
    found = _FROZEN.get(execution_id)
    if found is None:
        found = remember_frozen(execution_id, load())
    else:
        _FROZEN.move_to_end(execution_id)
    return found


def remember_frozen(execution_id: str, snap: dict[str, Any], definition: PipelineDef | None = None) -> Frozen:
    """Cache the Frozen of an execution from its snapshot in hand (a new execution's, which
    frozen() would otherwise read back from the database)."""
    found = Frozen(
        definition=definition or pipeline_def(snap),
        steps={s["id"]: s for s in snap.get("steps", [])},
        has_approvals=any(s.get("approval_required") for s in snap.get("steps", [])),
        notification_config=snap.get("notification_config"),
    )
    _FROZEN[execution_id] = found
    if len(_FROZEN) > 256:
        _FROZEN.popitem(last=False)
    return found


def cached_pipeline_def(execution: WorkflowExecution) -> PipelineDef:
    return frozen(execution.execution_id, lambda: execution.pipeline_snapshot).definition


def attempt_value(row, log_tail: str = "") -> Attempt:
    """An Attempt from an ORM row or a Core row of ATTEMPT_COLUMNS."""
    return Attempt(
        id=row.id, step_id=row.step_id, retry_count=row.retry_count, status=row.status,
        exit_code=row.exit_code, failure=row.failure_kind,
        log_tail=log_tail or (getattr(row, "logs", None) or "")[-LOG_TAIL:],
        outputs=row.output_data or {}, started_at=row.started_at, finished_at=row.finished_at,
        scheduled_for=row.scheduled_for, skip_reason=row.skip_reason, bypassed=bool(row.bypassed),
        upstream_failed=bool(row.upstream_failed),
    )


def execution_snapshot(
    execution: WorkflowExecution,
    attempts: Iterable,
    approvals: dict[int, str] | None = None,
    max_retries_cap: int = 10,
    log_tails: dict[int, str] | None = None,
    definition: PipelineDef | None = None,
) -> ExecutionSnapshot:
    tails = log_tails or {}
    return ExecutionSnapshot(
        execution_id=execution.execution_id,
        definition=definition or cached_pipeline_def(execution),
        attempts=tuple(attempt_value(a, tails.get(a.id, "")) for a in attempts),
        status=execution.status,
        cancel_requested=bool(execution.cancel_requested),
        variables=dict(execution.context_variables or {}),
        trigger=dict(execution.trigger_data or {}),
        started_at=execution.started_at,
        approvals=dict(approvals or {}),
        max_retries_cap=max_retries_cap,
    )
