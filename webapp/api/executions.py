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
from ..services.accounts import ValidationError
from . import bp, error
from .openapi import _op, register


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


def _body() -> dict:
    data = request.get_json(silent=True)
    if data is None and not request.data:
        return {}
    if not isinstance(data, dict):
        raise ValidationError("Send a JSON object.", {"body": "expected a JSON object"})
    return data


def _execution_or_404(execution_id: str):
    e = svc.get_execution(execution_id)
    if e is None:
        return None, error("execution not found", 404)
    return e, None


def _conflict(e: svc.Conflict):
    return error(e.message, 409)


@bp.get("/workflow-executions/")
@api_role_required("viewer")
def list_executions():
    try:
        limit = min(int(request.args.get("limit", 50)), 500)
        offset = max(int(request.args.get("offset", 0)), 0)
        pipeline = int(request.args["pipeline"]) if request.args.get("pipeline") else None
    except ValueError:
        return error("limit, offset and pipeline must be whole numbers", 400,
                     {"query": "limit, offset and pipeline must be whole numbers"})
    rows = svc.list_executions(pipeline, request.args.get("status") or None, limit, offset)
    bypassed = run_summary.bypassed_counts(e.id for e in rows)
    return jsonify({"results": [execution_json(e, bypassed=bypassed.get(e.id, 0)) for e in rows],
                    "limit": limit, "offset": offset})


@bp.post("/workflow-executions/")
@api_role_required("maintainer")
def start_execution():
    data = _body()
    pipeline_id = data.get("pipeline")
    if not isinstance(pipeline_id, int):
        raise ValidationError("Name the pipeline to run.", {"pipeline": "a pipeline id is required"})
    pipeline = pipelines_svc.get_pipeline(pipeline_id)
    if pipeline is None:
        return error("pipeline not found", 404, {"pipeline": "no such pipeline"})
    try:
        e = svc.start(pipeline, trigger_data=data.get("trigger_data"), variables=data.get("variables"),
                      user=current_user, trigger_type="api", secret_variables=data.get("secret_variables"))
    except svc.Conflict as c:
        return _conflict(c)
    return jsonify(execution_json(e, full=True)), 201


@bp.get("/workflow-executions/<execution_id>/")
@api_role_required("viewer")
def get_execution(execution_id: str):
    e, err = _execution_or_404(execution_id)
    return err or jsonify(execution_json(e, full=True))


@bp.post("/workflow-executions/<execution_id>/cancel/")
@api_role_required("maintainer")
def cancel_execution(execution_id: str):
    e, err = _execution_or_404(execution_id)
    if err:
        return err
    try:
        e = svc.cancel(e, current_user)
    except svc.Conflict as c:
        return _conflict(c)
    return jsonify(execution_json(e))


@bp.get("/workflow-executions/<execution_id>/recovery-info/")
@api_role_required("viewer")
def recovery_info(execution_id: str):
    e, err = _execution_or_404(execution_id)
    if err:
        return err
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
def resume_execution(execution_id: str):
    e, err = _execution_or_404(execution_id)
    if err:
        return err
    data = _body()
    try:
        child = svc.resume(e, from_step=data.get("from_step"), user=current_user, variables=data.get("variables"),
                           use_current_definition=bool(data.get("use_current_definition", True)),
                           definition=data.get("definition"))
    except svc.Conflict as c:
        return _conflict(c)
    return jsonify({**execution_json(child, full=True), **_definition_used(e, child)}), 201


def _definition_used(e: WorkflowExecution, ran: WorkflowExecution) -> dict:
    """Which definition a retry or resume of `e` runs in `ran`: 'original' (e's) or 'current'."""
    return {"definition": "original" if ran.pipeline_version == e.pipeline_version else "current",
            "definition_version": ran.pipeline_version}


@bp.get("/pipelines/executions/<execution_id>/steps/")
@api_role_required("viewer")
def execution_steps(execution_id: str):
    e, err = _execution_or_404(execution_id)
    if err:
        return err
    with_logs = request.args.get("logs", "1") != "0"
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
def retry_step(execution_id: str, step_id: str):
    e, err = _execution_or_404(execution_id)
    if err:
        return err
    try:
        ran = svc.retry_step(e, step_id, current_user, definition=_body().get("definition"))
    except svc.Conflict as c:
        return _conflict(c)
    new = ran.id != e.id  # "current": a new execution runs the step with the current definition
    return jsonify({**execution_json(ran), **_definition_used(e, ran), "new_execution": new}), 201 if new else 200


@bp.post("/pipelines/executions/<execution_id>/steps/<step_id>/bypass/")
@api_role_required("maintainer")
def bypass_step(execution_id: str, step_id: str):
    e, err = _execution_or_404(execution_id)
    if err:
        return err
    try:
        e = svc.bypass_step(e, step_id, str(_body().get("reason", "")), current_user)
    except svc.Conflict as c:
        return _conflict(c)
    return jsonify(execution_json(e))


@bp.get("/step-execution-history/")
@api_role_required("viewer")
def history():
    q = db.select(StepExecutionHistory).order_by(StepExecutionHistory.id.desc())
    args = request.args
    try:
        if args.get("execution"):
            e = svc.get_execution(args["execution"])
            q = q.where(StepExecutionHistory.execution_id == (e.id if e else -1))
        if args.get("step"):
            q = q.where(StepExecutionHistory.step_id == int(args["step"]))
        if args.get("pipeline"):
            q = q.join(WorkflowExecution).where(WorkflowExecution.pipeline_id == int(args["pipeline"]))
        limit = min(int(args.get("limit", 100)), 1000)
    except ValueError:
        return error("step, pipeline and limit must be whole numbers", 400, {"query": "not a number"})
    if args.get("status"):
        q = q.where(StepExecutionHistory.status == args["status"])
    rows = db.session.execute(q.limit(limit)).scalars()
    return jsonify({"results": [attempt_json(a, with_logs=False) for a in rows]})


@bp.get("/step-execution-history/<int:attempt_id>/")
@api_role_required("viewer")
def history_item(attempt_id: int):
    a = db.session.get(StepExecutionHistory, attempt_id)
    return jsonify(attempt_json(a)) if a else error("attempt not found", 404)


for path, method, summary, body, ok in [
    ("/api/v1/workflow-executions/", "get", "List executions (filters: pipeline, status, limit, offset)", None, 200),
    ("/api/v1/workflow-executions/", "post", "Start an execution {pipeline, variables, trigger_data, secret_variables}", "StartExecution", 201),
    ("/api/v1/workflow-executions/{execution_id}/", "get", "An execution with its step results", None, 200),
    ("/api/v1/workflow-executions/{execution_id}/cancel/", "post", "Cancel a running execution", None, 200),
    ("/api/v1/workflow-executions/{execution_id}/recovery-info/", "get", "What a resume would keep and re-run", None, 200),
    ("/api/v1/pipelines/executions/{execution_id}/resume/", "post", "Resume into a new linked execution {from_step, variables, definition}; the response names the definition_version it runs", "Resume", 201),
    ("/api/v1/pipelines/executions/{execution_id}/steps/", "get", "Steps of an execution with every attempt", None, 200),
    ("/api/v1/pipelines/executions/{execution_id}/steps/{step_id}/retry/", "post", "Re-run a failed step and its downstream: in place with the definition the execution ran (definition: original, default), or in a new linked execution with the pipeline's current definition (definition: current; 201); the response names the definition_version", None, 200),
    ("/api/v1/pipelines/executions/{execution_id}/steps/{step_id}/bypass/", "post", "Mark a failed step skipped {reason}", "Bypass", 200),
    ("/api/v1/step-execution-history/", "get", "Attempts (filters: execution, step, pipeline, status)", None, 200),
    ("/api/v1/step-execution-history/{id}/", "get", "One attempt with its logs", None, 200),
]:
    op = _op(summary, body=body, ok=ok, tags=["executions"])
    op["responses"]["404"] = {"description": "Not found"}
    if method == "post":
        op["responses"]["409"] = {"description": "Not allowed in the current state"}
    if path.endswith(("/retry/", "/resume/")):
        choice = {"type": "string", "enum": list(svc.DEFINITIONS)}
        props = {"definition": choice} if path.endswith("/retry/") else {
            "from_step": {"type": "string"}, "variables": {"type": "object"}, "definition": choice,
            "use_current_definition": {"type": "boolean", "description": "older spelling of definition"}}
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": props}}}}
        if path.endswith("/retry/"):
            op["responses"]["201"] = {"description": "A new execution runs the current definition"}
    register(path, method, op)
