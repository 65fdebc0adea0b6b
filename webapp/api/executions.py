"""Executions endpoints (/api/v1): start, list, inspect, cancel, resume, retry, bypass, history."""
from __future__ import annotations

from flask import jsonify, request
from flask_login import current_user

from ..extensions import db
from ..models import StepExecutionHistory, WorkflowExecution
from ..security import api_role_required
from ..services import executions as svc
from ..services import pipelines as pipelines_svc
from ..services import run_summary
from ..schemas import api as schema
from ..services.errors import NotFound
from . import body, bp, found, query
from .spec import validate

TAGS = ("executions",)


def _iso(dt):
    return dt.isoformat() + "Z" if dt else None


def attempt_json(a: StepExecutionHistory, with_logs: bool = True) -> dict:
    version = a.definition_version or (a.execution.pipeline_version if a.execution else None)
    out = {
        "id": a.id, "execution_id": a.execution.execution_id if a.execution else None, "step_id": a.step_id,
        "step_name": a.step_name, "status": a.status, "retry_count": a.retry_count, "max_retries": a.max_retries,
        "exit_code": a.exit_code, "failure_kind": a.failure_kind, "error_message": a.error_message,
        "skip_reason": a.skip_reason, "bypassed": a.bypassed, "output_data": a.output_data or {},
        "scheduled_for": _iso(a.scheduled_for), "queued_at": _iso(a.queued_at), "started_at": _iso(a.started_at),
        "finished_at": _iso(a.finished_at), "duration_seconds": a.duration_seconds, "rq_job_id": a.rq_job_id,
        "worker_name": a.worker_name, "definition_version": version,
    }
    if with_logs:
        out["logs"] = a.logs
    return out


def execution_json(e: WorkflowExecution, full: bool = False, bypassed: int | None = None) -> dict:
    """`bypassed`: the execution's bypassed step count when the caller read it for a whole list."""
    if bypassed is None:
        bypassed = run_summary.bypassed_counts([e.id]).get(e.id, 0)
    out = {
        "id": e.id, "execution_id": e.execution_id, "pipeline": e.pipeline_id,
        "pipeline_name": e.pipeline_snapshot.get("name"), "pipeline_version": e.pipeline_version,
        "status": e.status, "status_reason": e.status_reason, "bypassed_count": bypassed,
        "status_summary": run_summary.status_text(e.status, bypassed), "trigger_type": e.trigger_type,
        "triggered_by": e.triggered_by.username if e.triggered_by else None,
        "current_step": e.current_step, "failed_steps": e.failed_steps or [],
        "pending_approvals": e.pending_approvals or [], "cancel_requested": e.cancel_requested,
        "parent_execution": e.parent_execution.execution_id if e.parent_execution else None,
        "created_at": _iso(e.created_at), "started_at": _iso(e.started_at), "finished_at": _iso(e.finished_at),
        "duration_seconds": e.duration_seconds,
    }
    if full:
        out.update(
            trigger_data=e.trigger_data or {},
            context_variables={k: ("***" if k in (e.secret_variables or []) else v)
                               for k, v in (e.context_variables or {}).items()},
            step_results=e.step_results if e.status in svc.TERMINAL_EXECUTION else svc.step_results(e.id),
            recovery_point=e.recovery_point, pipeline_snapshot=e.pipeline_snapshot,
        )
    return out


def _execution(execution_id: str) -> WorkflowExecution:
    return found(svc.get_execution(execution_id), "execution")


@bp.get("/workflow-executions/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.ExecutionListQuery, out=schema.ExecutionList)
def list_executions():
    """List executions (filters: pipeline, status, limit, offset)"""
    q = query()
    rows = svc.list_executions(q.pipeline, q.status or None, q.limit, q.offset)
    bypassed = run_summary.bypassed_counts(e.id for e in rows)
    return jsonify({"results": [execution_json(e, bypassed=bypassed.get(e.id, 0)) for e in rows],
                    "limit": q.limit, "offset": q.offset})


@bp.post("/workflow-executions/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.StartExecutionBody, ok=201, out=schema.Execution)
def start_execution():
    """Start an execution {pipeline, variables, trigger_data, secret_variables}"""
    data = body()
    pipeline = pipelines_svc.get_pipeline(data["pipeline"])
    if pipeline is None:
        raise NotFound("pipeline not found", {"pipeline": "no such pipeline"})
    e = svc.start(pipeline, trigger_data=data.get("trigger_data"), variables=data.get("variables"),
                  user=current_user, trigger_type="api", secret_variables=data.get("secret_variables"))
    return jsonify(execution_json(e, full=True)), 201


@bp.get("/workflow-executions/<execution_id>/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.Execution)
def get_execution(execution_id: str):
    """An execution with its step results"""
    return jsonify(execution_json(_execution(execution_id), full=True))


@bp.post("/workflow-executions/<execution_id>/cancel/")
@api_role_required("maintainer")
@validate(tags=TAGS, out=schema.Execution)
def cancel_execution(execution_id: str):
    """Cancel a running execution"""
    return jsonify(execution_json(svc.cancel(_execution(execution_id), current_user)))


@bp.get("/workflow-executions/<execution_id>/recovery-info/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.RecoveryInfo)
def recovery_info(execution_id: str):
    """What a resume would keep and re-run"""
    e = _execution(execution_id)
    results = svc.step_results(e.id)
    return jsonify({
        "execution_id": e.execution_id, "status": e.status,
        "can_resume": e.status in ("failed", "cancelled"),
        "failed_steps": [n for n, r in results.items() if r["status"] in ("failed", "timed_out")],
        "succeeded_steps": [n for n, r in results.items() if r["status"] == "success"],
        "recovery_point": e.recovery_point,
        "children": [c.execution_id for c in svc.children_of(e.id)],
    })


@bp.post("/pipelines/executions/<execution_id>/resume/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.ResumeBody, ok=201, out=schema.DefinitionUsed)
def resume_execution(execution_id: str):
    """Resume into a new linked execution {from_step, variables, definition}; the response names the definition_version it runs"""
    e = _execution(execution_id)
    data = body()
    child = svc.resume(e, from_step=data.get("from_step"), user=current_user, variables=data.get("variables"),
                       use_current_definition=bool(data.get("use_current_definition", True)),
                       definition=data.get("definition"))
    return jsonify({**execution_json(child, full=True), **_definition_used(e, child)}), 201


def _definition_used(e: WorkflowExecution, ran: WorkflowExecution) -> dict:
    """Which definition a retry or resume of `e` runs in `ran`: 'original' (e's) or 'current'."""
    return {"definition": "original" if ran.pipeline_version == e.pipeline_version else "current",
            "definition_version": ran.pipeline_version}


@bp.get("/pipelines/executions/<execution_id>/steps/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.ExecutionStepsQuery, out=schema.ExecutionSteps)
def execution_steps(execution_id: str):
    """Steps of an execution with every attempt (logs=false leaves the logs out)"""
    e = _execution(execution_id)
    with_logs = query().logs
    by_step: dict[int, list] = {}
    for a in svc.attempts_of(e.id):
        by_step.setdefault(a.step_id, []).append(attempt_json(a, with_logs))
    steps = []
    for s in e.pipeline_snapshot["steps"]:
        tries = by_step.get(s["id"], [])
        steps.append({"step_id": s["id"], "name": s["name"], "step_type": s["step_type"],
                      "status": tries[-1]["status"] if tries else "pending", "attempts": tries})
    return jsonify({"execution_id": e.execution_id, "status": e.status, "steps": steps})


@bp.post("/pipelines/executions/<execution_id>/steps/<step_id>/retry/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.RetryBody, out=schema.RetryResult, HTTP_201=schema.RetryResult)
def retry_step(execution_id: str, step_id: str):
    """Re-run a failed step and its downstream: in place with the definition the execution ran (definition: original, default; 200), or in a new linked execution with the pipeline's current definition (definition: current; 201)"""
    e = _execution(execution_id)
    ran = svc.retry_step(e, step_id, current_user, definition=body().get("definition"))
    new = ran.id != e.id
    return jsonify({**execution_json(ran), **_definition_used(e, ran), "new_execution": new}), 201 if new else 200


@bp.post("/pipelines/executions/<execution_id>/steps/<step_id>/bypass/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.BypassBody, out=schema.Execution)
def bypass_step(execution_id: str, step_id: str):
    """Mark a failed step skipped {reason}"""
    e = svc.bypass_step(_execution(execution_id), step_id, body().get("reason", ""), current_user)
    return jsonify(execution_json(e))


@bp.get("/step-execution-history/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.HistoryQuery, out=schema.AttemptList)
def history():
    """Attempts, newest first (filters: execution, step, pipeline, status; limit, offset)"""
    q = query()
    stmt = db.select(StepExecutionHistory).order_by(StepExecutionHistory.id.desc())
    if q.execution:
        e = svc.get_execution(q.execution)
        stmt = stmt.where(StepExecutionHistory.execution_id == (e.id if e else -1))
    if q.step is not None:
        stmt = stmt.where(StepExecutionHistory.step_id == q.step)
    if q.pipeline is not None:
        stmt = stmt.join(WorkflowExecution).where(WorkflowExecution.pipeline_id == q.pipeline)
    if q.status:
        stmt = stmt.where(StepExecutionHistory.status == q.status)
    rows = db.session.execute(stmt.limit(q.limit).offset(q.offset)).scalars()
    return jsonify({"results": [attempt_json(a, with_logs=False) for a in rows]})


@bp.get("/step-execution-history/<id:attempt_id>/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.Attempt)
def history_item(attempt_id: int):
    """One attempt with its logs"""
    return jsonify(attempt_json(found(db.session.get(StepExecutionHistory, attempt_id), "attempt")))
