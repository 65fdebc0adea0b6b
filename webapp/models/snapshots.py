"""The only ORM -> engine adapter: builds engine value types from rows and frozen snapshots."""
from __future__ import annotations

from typing import Any, Iterable

from ..engine.types import Attempt, ExecutionSnapshot, GroupDef, PipelineDef, StepDef
from .execution import StepExecutionHistory, WorkflowExecution

_DEF_CACHE: dict[tuple[str, int], PipelineDef] = {}


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


def cached_pipeline_def(execution: WorkflowExecution) -> PipelineDef:
    """A frozen snapshot never changes, so its PipelineDef is built once per process.

    Keeping the same object also lets the planner reuse its per-definition structures.
    """
    key = (execution.execution_id, len(execution.pipeline_snapshot.get("steps", [])))
    found = _DEF_CACHE.get(key)
    if found is None:
        if len(_DEF_CACHE) > 256:
            _DEF_CACHE.clear()
        found = _DEF_CACHE[key] = pipeline_def(execution.pipeline_snapshot)
    return found


def attempt_value(row: StepExecutionHistory) -> Attempt:
    return Attempt(
        id=row.id, step_id=row.step_id, retry_count=row.retry_count, status=row.status,
        exit_code=row.exit_code, failure=row.failure_kind, log_tail=(row.logs or "")[-8192:],
        outputs=row.output_data or {}, started_at=row.started_at, finished_at=row.finished_at,
        scheduled_for=row.scheduled_for, skip_reason=row.skip_reason, bypassed=bool(row.bypassed),
        upstream_failed=bool(row.upstream_failed),
    )


def execution_snapshot(
    execution: WorkflowExecution,
    attempts: Iterable[StepExecutionHistory],
    approvals: dict[int, str] | None = None,
    max_retries_cap: int = 10,
) -> ExecutionSnapshot:
    return ExecutionSnapshot(
        execution_id=execution.execution_id,
        definition=cached_pipeline_def(execution),
        attempts=tuple(attempt_value(a) for a in attempts),
        status=execution.status,
        cancel_requested=bool(execution.cancel_requested),
        variables=dict(execution.context_variables or {}),
        trigger=dict(execution.trigger_data or {}),
        started_at=execution.started_at,
        approvals=dict(approvals or {}),
        max_retries_cap=max_retries_cap,
    )
