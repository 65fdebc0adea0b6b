"""Approvals endpoints (/api/v1): list and read requests with their audit and the run's `context`,
respond, approve a step, open a request for a waiting step. Refusals: 403 (not an approver / own
request), 409 (not pending, second decision, execution over, lost a race), 404, 422 (bad input; and an
approval while steps of the run failed without `confirm_failures: true`, fields.confirm_failures
naming them: the body lacks a field this state requires, nothing changed)."""
from __future__ import annotations

from flask import jsonify
from flask_login import current_user

from ..security import api_role_required
from ..services import approvals as svc
from ..schemas import api as schema
from . import body, bp, query
from .spec import validate

TAGS = ("approvals",)


def _decision_response(outcome: svc.Outcome):
    out = svc.to_dict(outcome.request, current_user)
    out["decision"] = {"username": outcome.decision.username, "decision": outcome.decision.decision,
                        "comment": outcome.decision.comment, "as_admin": outcome.decision.as_admin}
    out["settled"] = outcome.changed
    return jsonify(out)


@bp.get("/approval-requests/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.ApprovalListQuery, out=schema.ApprovalList)
def list_approval_requests():
    """List approval requests (newest first) with their audit"""
    q = query()
    items = svc.list_requests(
        user=current_user, status=q.status or None, pipeline=q.pipeline or None, execution=q.execution or None,
        step_id=q.step, mine=q.mine, limit=q.limit, offset=q.offset,
    )
    return jsonify({"count": len(items), "results": [svc.to_dict(r, current_user) for r in items]})


@bp.get("/approval-requests/<id:request_id>/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.Approval)
def get_approval_request(request_id: int):
    """An approval request with who asked, who was asked, every decision and the outcome"""
    return jsonify(svc.to_dict(svc.get_request(request_id), current_user))


@bp.post("/approval-requests/<id:request_id>/respond/")
@api_role_required("approver")
@validate(tags=TAGS, json=schema.RespondBody, out=schema.Decision)
def respond_approval_request(request_id: int):
    """Approve or reject an approval request (403: not an approver or own request; 409: not pending, already decided, execution over; 422 with fields.confirm_failures: steps of the run failed)"""
    data = body()
    return _decision_response(svc.respond(request_id, current_user, data["action"], data.get("comment") or "",
                                          data.get("confirm_failures", False)))


@bp.post("/pipelines/executions/<execution_id>/steps/<id:step_id>/approve/")
@api_role_required("approver")
@validate(tags=TAGS, json=schema.ApproveBody, out=schema.Decision)
def approve_step(execution_id: str, step_id: int):
    """Approve (approved: true) or reject the approval request of a step's latest attempt"""
    data = body()
    return _decision_response(svc.approve_step(execution_id, step_id, current_user, data["approved"],
                                               data.get("comment") or "", data.get("confirm_failures", False)))


@bp.post("/pipelines/approval-requests/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.CreateApprovalBody, ok=201, out=schema.Approval)
def create_approval_request():
    """Open an approval request for a step that waits for approval without one (approvers must exist, and be enough for required_approvals)"""
    return jsonify(svc.to_dict(svc.create_request(body(), current_user), current_user)), 201
