"""Approvals endpoints (/api/v1): list and read requests with their audit and the run's `context`,
respond, approve a step, open a request for a waiting step. Refusals: 403 (not an approver / own
request), 409 (not pending, second decision, execution over, lost a race), 404, 422 (bad input; and an
approval while steps of the run failed without `confirm_failures: true`, fields.confirm_failures
naming them: the body lacks a field this state requires, nothing changed)."""
from __future__ import annotations

from typing import Any

from flask import jsonify, request
from flask_login import current_user

from ..security import api_role_required
from ..services import approvals as svc
from ..services.accounts import ValidationError
from . import bp, error
from .openapi import ERROR, _op, register

PREFIX = "/api/v1"


def _refused(e: Exception):
    if isinstance(e, svc.NotFound):
        return error(e.message, 404)
    if isinstance(e, svc.Forbidden):
        return error(e.message, 403)
    if isinstance(e, svc.Conflict):
        return error(e.message, 409)
    raise e


def _json_body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("Send a JSON object body.", {"body": "expected a JSON object"})
    return data


def _confirm_failures(data: dict) -> bool:
    value = data.get("confirm_failures", False)
    if not isinstance(value, bool):
        raise ValidationError("confirm_failures must be true or false.",
                              {"confirm_failures": "confirm_failures must be true or false."})
    return value


def _decision_response(outcome: svc.Outcome):
    body = svc.to_dict(outcome.request, current_user)
    body["decision"] = {"username": outcome.decision.username, "decision": outcome.decision.decision,
                        "comment": outcome.decision.comment, "as_admin": outcome.decision.as_admin}
    body["settled"] = outcome.changed
    return jsonify(body)


@bp.get("/approval-requests/")
@api_role_required("viewer")
def list_approval_requests():
    args = request.args
    mine = args.get("mine", "").lower() in {"1", "true", "yes"}
    errors: dict[str, str] = {}
    step = args.get("step")
    if step is not None and not step.isdigit():
        errors["step"] = "step must be a step id."
    limit = args.get("limit", "100")
    offset = args.get("offset", "0")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        errors["limit"] = "limit must be between 1 and 500."
    if not offset.isdigit():
        errors["offset"] = "offset must be a whole number >= 0."
    if errors:
        raise ValidationError("Invalid filters.", errors)
    items = svc.list_requests(
        user=current_user, status=args.get("status") or None, pipeline=args.get("pipeline") or None,
        execution=args.get("execution") or None, step_id=int(step) if step else None, mine=mine,
        limit=int(limit), offset=int(offset),
    )
    return jsonify({"count": len(items), "results": [svc.to_dict(r, current_user) for r in items]})


@bp.get("/approval-requests/<int:request_id>/")
@api_role_required("viewer")
def get_approval_request(request_id: int):
    try:
        return jsonify(svc.to_dict(svc.get_request(request_id), current_user))
    except svc.NotFound as e:
        return _refused(e)


@bp.post("/approval-requests/<int:request_id>/respond/")
@api_role_required("approver")
def respond_approval_request(request_id: int):
    data = _json_body()
    action = data.get("action")
    if action not in svc.ACTIONS:
        raise ValidationError("Choose approve or reject.", {"action": "action must be 'approve' or 'reject'."})
    comment = data.get("comment") or ""
    if not isinstance(comment, str):
        raise ValidationError("The comment must be text.", {"comment": "comment must be a string."})
    confirm = _confirm_failures(data)
    try:
        return _decision_response(svc.respond(request_id, current_user, action, comment, confirm))
    except (svc.NotFound, svc.Forbidden, svc.Conflict) as e:
        return _refused(e)


@bp.post("/pipelines/executions/<execution_id>/steps/<int:step_id>/approve/")
@api_role_required("approver")
def approve_step(execution_id: str, step_id: int):
    data = _json_body()
    approved = data.get("approved")
    if not isinstance(approved, bool):
        raise ValidationError("Say whether you approve.", {"approved": "approved must be true or false."})
    comment = data.get("comment") or ""
    if not isinstance(comment, str):
        raise ValidationError("The comment must be text.", {"comment": "comment must be a string."})
    confirm = _confirm_failures(data)
    try:
        return _decision_response(svc.approve_step(execution_id, step_id, current_user, approved, comment, confirm))
    except (svc.NotFound, svc.Forbidden, svc.Conflict) as e:
        return _refused(e)


@bp.post("/pipelines/approval-requests/")
@api_role_required("maintainer")
def create_approval_request():
    data = _json_body()
    try:
        req = svc.create_request(data, current_user)
    except (svc.NotFound, svc.Forbidden, svc.Conflict) as e:
        return _refused(e)
    return jsonify(svc.to_dict(req, current_user)), 201


# ---------------------------------------------------------------- OpenAPI


def _doc(summary: str, *, ok: int = 200, body: dict[str, Any] | None = None, params: list[dict] | None = None,
         refusals: tuple[int, ...] = ()) -> dict[str, Any]:
    op = _op(summary, ok=ok, tags=["approvals"])
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"]["422"] = {"description": "Invalid input", "content": {"application/json": {"schema": ERROR}}}
    if params:
        op["parameters"] = params
    text = {403: "Not an approver of this request, or the requester approving their own request",
            404: "No such request, execution or step",
            409: "Refused: not pending, already decided, execution over, or lost a race (nothing changed)",
            422: "Invalid input, or an approval while steps of the run failed without confirm_failures: true "
                 "(fields.confirm_failures names them; nothing changed)"}
    for code in refusals:
        op["responses"][str(code)] = {"description": text[code], "content": {"application/json": {"schema": ERROR}}}
    return op


def _path(name: str, type_: str = "integer") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": type_}}


def _query(name: str, type_: str, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_}, "description": description}


_CONFIRM = {"type": "boolean", "default": False,
            "description": "Required (true) to approve while a step of the run failed: context.failed_steps lists them"}
_DECISION = {"type": "object", "required": ["action"], "properties": {
    "action": {"type": "string", "enum": ["approve", "reject"]}, "comment": {"type": "string", "maxLength": 4000},
    "confirm_failures": _CONFIRM}}
_APPROVE = {"type": "object", "required": ["approved"], "properties": {
    "approved": {"type": "boolean"}, "comment": {"type": "string", "maxLength": 4000}, "confirm_failures": _CONFIRM}}
_CREATE = {"type": "object", "required": ["execution_id", "step_id"], "properties": {
    "execution_id": {"type": "string"}, "step_id": {"type": "integer"},
    "approvers": {"type": "array", "items": {"type": "string"}, "description": "usernames or role:NAME"},
    "required_approvals": {"type": "integer", "minimum": 1}, "message": {"type": "string"},
    "timeout_hours": {"type": "number"}, "auto_approve_on_timeout": {"type": "boolean"},
    "reminder_hours": {"type": "number"}}}

register(f"{PREFIX}/approval-requests/", "get", _doc(
    "List approval requests (newest first) with their audit", refusals=(422,), params=[
        _query("status", "string", "pending | approved | rejected | timed_out | cancelled"),
        _query("pipeline", "string", "pipeline id or name"),
        _query("execution", "string", "execution_id"),
        _query("step", "integer", "step id"),
        _query("mine", "boolean", "true: only the pending requests I can decide now"),
        _query("limit", "integer", "1-500, default 100"), _query("offset", "integer", "default 0")]))
register(f"{PREFIX}/approval-requests/{{id}}/", "get", _doc(
    "An approval request with who asked, who was asked, every decision and the outcome",
    params=[_path("id")], refusals=(404,)))
register(f"{PREFIX}/approval-requests/{{id}}/respond/", "post", _doc(
    "Approve or reject an approval request", body=_DECISION, params=[_path("id")], refusals=(403, 404, 409, 422)))
register(f"{PREFIX}/pipelines/executions/{{execution_id}}/steps/{{step_id}}/approve/", "post", _doc(
    "Approve (approved: true) or reject the approval request of a step's latest attempt", body=_APPROVE,
    params=[_path("execution_id", "string"), _path("step_id")], refusals=(403, 404, 409, 422)))
register(f"{PREFIX}/pipelines/approval-requests/", "post", _doc(
    "Open an approval request for a step that waits for approval without one (approvers must exist, "
    "and be enough for required_approvals)", ok=201, body=_CREATE, refusals=(404, 409)))
