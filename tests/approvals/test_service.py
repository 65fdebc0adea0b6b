"""The approvals service: opening, who may decide, quorum, rejection, self-approval, refusals, audit."""
from __future__ import annotations

from datetime import timedelta

import pytest

from webapp.extensions import db
from webapp.models import ApprovalDecision, ApprovalRequest, PipelineStep, WorkflowExecution, utcnow
from webapp.queues import CONTROL, get_queue
from webapp.services import approvals as svc
from webapp.services.accounts import ValidationError, create_user

from .conftest import attempt_of


def advance_jobs(execution_pk: int) -> int:
    q = get_queue(CONTROL)
    return sum(1 for j in q.get_jobs() if j.func_name.endswith("advance_execution") and j.args[0] == execution_pk)


def test_open_request_takes_the_step_configuration(make_gate):
    before = utcnow()
    req = make_gate()
    assert req.status == "pending"
    assert req.approvers == ["approver1", "approver2", "approver3"]
    assert req.required_approvals == 2 and req.approval_message == "Ship it?"
    assert req.requester_username == "maintainer1"
    assert req.step_name == "gate" and req.attempt_id is not None
    assert before + timedelta(hours=24) <= req.expires_at <= utcnow() + timedelta(hours=24)
    step = db.session.get(PipelineStep, req.step_id)
    assert step.approval_status == "pending" and step.approved_by is None


def test_open_request_is_idempotent_per_attempt_and_defaults(make_gate):
    execution, attempt, step = make_gate(approval={}, requester=None, open_it=False)
    first = svc.open_request(execution, attempt, step)
    again = svc.open_request(execution, attempt, step)
    db.session.commit()
    assert first.id == again.id
    assert db.session.query(ApprovalRequest).filter_by(attempt_id=attempt.id).count() == 1
    assert first.requester_username == "system"
    assert first.approvers == svc.DEFAULT_APPROVERS and first.required_approvals == 1
    assert first.expires_at is None


def test_quorum_of_distinct_approvals_approves(make_gate, users):
    req = make_gate()
    out = svc.decide(req.id, users["approver"], "approve", "looks good")
    assert not out.changed and out.request.status == "pending"
    assert svc.approvals_count(out.request) == 1
    assert advance_jobs(req.execution_id) == 0
    out = svc.decide(req.id, users["approver2"], "approve")
    assert out.changed and out.request.status == "approved"
    assert "quorum reached" in out.request.outcome_reason
    assert "approver1" in out.request.outcome_reason and "approver2" in out.request.outcome_reason
    assert out.request.decided_at is not None
    step = db.session.get(PipelineStep, req.step_id)
    assert (step.approval_status, step.approved_by) == ("approved", "approver2") and step.approved_at
    # approval continues the execution at once: the runtime moves the attempt to queued
    assert advance_jobs(req.execution_id) == 1
    assert attempt_of(req).status == "waiting_approval"


def test_one_rejection_rejects_and_fails_the_step_with_the_comment(make_gate, users):
    req = make_gate()
    svc.decide(req.id, users["approver"], "approve")
    out = svc.decide(req.id, users["approver2"], "reject", "not on a Friday")
    assert out.changed and out.request.status == "rejected"
    assert out.request.outcome_reason == "rejected by approver2: not on a Friday"
    attempt = attempt_of(req)
    assert (attempt.status, attempt.failure_kind, attempt.error_message) == ("failed", "rejected", "not on a Friday")
    assert attempt.finished_at is not None
    step = db.session.get(PipelineStep, req.step_id)
    assert (step.approval_status, step.approved_by) == ("rejected", "approver2")
    assert advance_jobs(req.execution_id) == 1


def test_rejection_without_comment_names_who(make_gate, users):
    req = make_gate()
    svc.decide(req.id, users["approver3"], "reject")
    assert attempt_of(req).error_message == "Rejected by approver3."


def test_only_listed_approvers_decide(make_gate, users):
    outsider = create_user("approver9", "correct-horse-battery", "approver")
    req = make_gate()
    with pytest.raises(svc.Forbidden):
        svc.decide(req.id, outsider, "approve")
    with pytest.raises(svc.Forbidden):
        svc.decide(req.id, users["maintainer"], "reject", "no")  # not listed
    assert db.session.query(ApprovalDecision).count() == 0


def test_role_entries_and_viewers(make_gate, users):
    req = make_gate(approval={"users": ["role:approver", "viewer1"], "required_approvals": 1})
    assert svc.can_decide(req, users["approver3"])
    assert not svc.can_decide(req, users["maintainer"])
    assert not svc.can_decide(req, users["viewer"])  # viewers are read-only even when listed
    with pytest.raises(svc.Forbidden):
        svc.decide(req.id, users["viewer"], "approve")
    assert svc.decide(req.id, users["approver3"], "approve").request.status == "approved"


def test_admin_may_decide_and_is_recorded_as_admin(make_gate, users):
    req = make_gate(approval={"users": ["approver1"], "required_approvals": 1})
    out = svc.decide(req.id, users["admin"], "approve", "break glass")
    assert out.decision.as_admin and out.request.status == "approved"
    assert "admin1 (as admin)" in out.request.outcome_reason


def test_requester_cannot_approve_own_request(make_gate, users):
    req = make_gate(approval={"users": ["approver1", "approver2"], "required_approvals": 1}, requester="approver")
    with pytest.raises(svc.Forbidden, match="own request"):
        svc.decide(req.id, users["approver"], "approve")
    assert req not in svc.waiting_for(users["approver"])
    assert req in svc.waiting_for(users["approver2"])
    # ... but may reject it
    assert svc.decide(req.id, users["approver"], "reject", "wrong branch").request.status == "rejected"


def test_self_approval_when_the_pipeline_allows_it(make_gate, users):
    req = make_gate(approval={"users": ["approver1"], "required_approvals": 1}, requester="approver",
                    allow_self_approval=True)
    assert req in svc.waiting_for(users["approver"])
    assert svc.decide(req.id, users["approver"], "approve").request.status == "approved"


def test_second_decision_by_the_same_user_is_refused(make_gate, users):
    req = make_gate()
    svc.decide(req.id, users["approver"], "approve")
    with pytest.raises(svc.Conflict, match="already decided"):
        svc.decide(req.id, users["approver"], "approve")
    with pytest.raises(svc.Conflict):
        svc.decide(req.id, users["approver"], "reject", "changed my mind")
    db.session.expire_all()
    req = db.session.get(ApprovalRequest, req.id)
    assert req.status == "pending" and [d.decision for d in req.decisions] == ["approve"]


def test_decisions_on_a_settled_request_change_nothing(make_gate, users):
    req = make_gate(approval={"users": ["approver1", "approver2"], "required_approvals": 1})
    svc.decide(req.id, users["approver"], "approve")
    jobs = advance_jobs(req.execution_id)
    with pytest.raises(svc.Conflict, match="already approved"):
        svc.decide(req.id, users["approver2"], "reject", "late")
    db.session.expire_all()
    req = db.session.get(ApprovalRequest, req.id)
    assert req.status == "approved" and len(req.decisions) == 1
    assert attempt_of(req).status == "waiting_approval"
    assert advance_jobs(req.execution_id) == jobs


def test_cancelled_execution_refuses_decisions(make_gate, users):
    req = make_gate()
    execution = db.session.get(WorkflowExecution, req.execution_id)
    execution.status = "cancelled"
    assert svc.cancel_for_execution(execution.id) == 1
    db.session.commit()
    db.session.expire_all()
    req = db.session.get(ApprovalRequest, req.id)
    assert (req.status, req.outcome_reason) == ("cancelled", "execution cancelled")
    assert db.session.get(PipelineStep, req.step_id).approval_status == "cancelled"
    with pytest.raises(svc.Conflict, match="cancelled"):
        svc.decide(req.id, users["approver"], "approve")


def test_execution_being_cancelled_or_finished_refuses(make_gate, users):
    req = make_gate()
    execution = db.session.get(WorkflowExecution, req.execution_id)
    execution.cancel_requested = True
    db.session.commit()
    with pytest.raises(svc.Conflict, match="being cancelled"):
        svc.decide(req.id, users["approver"], "approve")
    execution = db.session.get(WorkflowExecution, req.execution_id)
    execution.cancel_requested, execution.status = False, "failed"
    db.session.commit()
    with pytest.raises(svc.Conflict, match="failed"):
        svc.decide(req.id, users["approver"], "approve")
    assert db.session.query(ApprovalDecision).count() == 0


def test_bad_action_and_unknown_request(make_gate, users):
    req = make_gate()
    with pytest.raises(ValidationError):
        svc.decide(req.id, users["approver"], "maybe")
    with pytest.raises(svc.NotFound):
        svc.decide(999999, users["approver"], "approve")


def test_waiting_for_and_inbox_count(make_gate, users):
    a = make_gate()
    b = make_gate(approval={"users": ["approver2"], "required_approvals": 1})
    assert {r.id for r in svc.waiting_for(users["approver2"])} == {a.id, b.id}
    assert svc.inbox_count(users["approver2"]) == 2
    svc.decide(a.id, users["approver2"], "approve")
    assert [r.id for r in svc.waiting_for(users["approver2"])] == [b.id]
    assert svc.inbox_count(users["admin"]) == 2  # admins may decide everything pending
    assert svc.inbox_count(users["viewer"]) == 0
    assert [r.id for r in svc.waiting_for(users["approver2"], pipeline_id=b.pipeline_id)] == [b.id]


def test_audit_in_the_api_shape(make_gate, users):
    req = make_gate()
    svc.decide(req.id, users["approver"], "approve", "ok")
    svc.decide(req.id, users["approver2"], "reject", "wait")
    data = svc.to_dict(db.session.get(ApprovalRequest, req.id), users["approver3"])
    assert data["requester"] == "maintainer1"
    assert data["approvers"] == ["approver1", "approver2", "approver3"]
    assert data["asked"] == ["approver1", "approver2", "approver3"]
    assert [(d["username"], d["decision"], d["comment"]) for d in data["decisions"]] == [
        ("approver1", "approve", "ok"), ("approver2", "reject", "wait")]
    assert all(d["at"] for d in data["decisions"])
    assert data["status"] == "rejected" and data["outcome_reason"] == "rejected by approver2: wait"
    assert data["can_approve"] is False


def test_requests_for_execution(make_gate):
    req = make_gate()
    assert [r.id for r in svc.requests_for_execution(req.execution_id)] == [req.id]


def test_approvers_are_notified_reminded_and_told_the_outcome(make_gate, users):
    from webapp.models import NotificationDelivery

    req = make_gate(
        approval={"users": ["approver1"], "required_approvals": 1, "reminder_hours": 1, "timeout_hours": 5},
        notification_config={"on_approval_required": True, "events": ["approval_decided"],
                             "webhook_url": "http://127.0.0.1:9/hook"})
    svc.on_opened(req.id)
    assert svc.remind(req.id, now=utcnow() + timedelta(hours=1, seconds=2))
    svc.decide(req.id, users["approver"], "approve", "ok")
    events = [r.event for r in db.session.query(NotificationDelivery).order_by(NotificationDelivery.id)]
    assert events == ["approval_required", "approval_reminder", "approval_decided"]
