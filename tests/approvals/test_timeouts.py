"""Timeouts (approve or time out at expires_at), reminders, the sweep, and the race of 50 decisions
against the timeout (threads against the service: exactly one outcome)."""
from __future__ import annotations

import threading
from datetime import timedelta

from rq.registry import ScheduledJobRegistry

from webapp.extensions import db
from webapp.models import ApprovalDecision, ApprovalRequest, PipelineStep, User, utcnow
from webapp.queues import CONTROL, get_queue
from webapp.services import approvals as svc
from webapp.services.accounts import create_user

from .conftest import attempt_of


def scheduled(func_suffix: str) -> list:
    q = get_queue(CONTROL)
    reg = ScheduledJobRegistry(queue=q)
    jobs = [q.fetch_job(jid) for jid in reg.get_job_ids()] + q.get_jobs()
    return [j for j in jobs if j is not None and j.func_name.endswith(func_suffix)]


def overdue(req: ApprovalRequest) -> ApprovalRequest:
    db.session.execute(db.update(ApprovalRequest).where(ApprovalRequest.id == req.id)
                       .values(expires_at=utcnow() - timedelta(seconds=5)))
    db.session.commit()
    return db.session.get(ApprovalRequest, req.id)


def test_on_opened_schedules_the_expiry(make_gate):
    req = make_gate()
    svc.on_opened(req.id)
    jobs = scheduled("approvals.expire")
    assert [j.args for j in jobs] == [[req.id]]


def test_timeout_without_auto_approve_fails_the_step(make_gate, users):
    req = make_gate()
    svc.decide(req.id, users["approver"], "approve")
    req = overdue(req)
    assert svc.expire(req.id) == "timed_out"
    db.session.expire_all()
    req = db.session.get(ApprovalRequest, req.id)
    assert req.status == "timed_out" and req.outcome_reason == "timed out after 24h with 1 of 2 approvals"
    attempt = attempt_of(req)
    assert (attempt.status, attempt.failure_kind) == ("failed", "approval_timeout")
    assert "timed out" in attempt.error_message
    assert db.session.get(PipelineStep, req.step_id).approval_status == "timed_out"
    assert svc.expire(req.id) is None  # a redelivered job changes nothing


def test_timeout_with_auto_approve_approves(make_gate):
    req = make_gate(approval={"users": ["approver1"], "required_approvals": 1, "timeout_hours": 1,
                              "auto_approve_on_timeout": True})
    req = overdue(req)
    assert svc.expire(req.id) == "approved"
    db.session.expire_all()
    req = db.session.get(ApprovalRequest, req.id)
    assert req.status == "approved" and req.outcome_reason.startswith("auto-approved on timeout after 1h")
    assert attempt_of(req).status == "waiting_approval"  # the runtime queues it
    step = db.session.get(PipelineStep, req.step_id)
    assert (step.approval_status, step.approved_by) == ("approved", "system")


def test_an_early_expiry_job_changes_nothing_and_reschedules(make_gate):
    req = make_gate()
    assert svc.expire(req.id) is None
    assert db.session.get(ApprovalRequest, req.id).status == "pending"
    assert len(scheduled("approvals.expire")) == 1


def test_a_decided_request_does_not_time_out(make_gate, users):
    req = make_gate(approval={"users": ["approver1"], "required_approvals": 1, "timeout_hours": 1})
    svc.decide(req.id, users["approver"], "reject", "no")
    req = overdue(req)
    assert svc.expire(req.id) is None
    assert db.session.get(ApprovalRequest, req.id).status == "rejected"


def test_sweep_catches_missed_timeouts_and_reminders(make_gate):
    late = overdue(make_gate())
    fresh = make_gate()
    remind = make_gate(approval={"users": ["approver1"], "required_approvals": 1, "reminder_hours": 1})
    db.session.execute(db.update(ApprovalRequest).where(ApprovalRequest.id == remind.id)
                       .values(created_at=utcnow() - timedelta(hours=2)))
    db.session.commit()
    assert svc.sweep() == {"expired": 1, "reminded": 1}
    db.session.expire_all()
    assert db.session.get(ApprovalRequest, late.id).status == "timed_out"
    assert db.session.get(ApprovalRequest, fresh.id).status == "pending"
    assert db.session.get(ApprovalRequest, remind.id).last_reminded_at is not None
    assert svc.sweep() == {"expired": 0, "reminded": 0}  # not twice within the period


def test_reminders_are_scheduled_and_sent_once_per_period(make_gate):
    req = make_gate(approval={"users": ["approver1"], "required_approvals": 1, "reminder_hours": 1,
                              "timeout_hours": 5})
    svc.on_opened(req.id)
    assert len(scheduled("approvals.remind")) == 1
    assert svc.remind(req.id) is False  # not due yet
    later = utcnow() + timedelta(hours=1, seconds=1)
    assert svc.remind(req.id, now=later) is True
    assert svc.remind(req.id, now=later) is False
    assert db.session.get(ApprovalRequest, req.id).last_reminded_at == later
    assert len(scheduled("approvals.remind")) == 2  # the next one


def test_race_50_decisions_and_the_timeout_give_one_outcome(app, make_gate, users):
    """50 concurrent approve/reject calls from five approvers, and the timeout firing at the same time."""
    for i in range(4, 6):
        create_user(f"approver{i}", "correct-horse-battery", "approver")
    names = [f"approver{i}" for i in range(1, 6)]
    req = make_gate(approval={"users": names, "required_approvals": 3, "timeout_hours": 1})
    req = overdue(req)
    request_id, execution_pk = req.id, req.execution_id
    user_ids = {u.username: u.id for u in db.session.query(User).filter(User.username.in_(names))}
    db.session.commit()

    calls = [(names[i % 5], "reject" if i % 7 == 3 else "approve") for i in range(50)]
    barrier = threading.Barrier(len(calls) + 1)
    results: list = []
    lock = threading.Lock()

    def decide(username, action):
        with app.app_context():
            user = db.session.get(User, user_ids[username])
            db.session.close()  # keep the loaded user, give the connection back while we wait
            barrier.wait()
            try:
                out = svc.decide(request_id, user, action, f"{action} by {username}")
                r = ("ok", username, action, out.changed)
            except svc.Conflict as e:
                r = ("conflict", username, action, e.message)
            finally:
                db.session.remove()
            with lock:
                results.append(r)

    def timeout():
        with app.app_context():
            barrier.wait()
            status = svc.expire(request_id)
            db.session.remove()
            with lock:
                results.append(("expire", status))

    threads = [threading.Thread(target=decide, args=c) for c in calls] + [threading.Thread(target=timeout)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 51

    settled = [r for r in results if (r[0] == "ok" and r[3]) or (r[0] == "expire" and r[1])]
    assert len(settled) == 1, results
    db.session.rollback()  # end this thread's read transaction: look at what the others committed
    final = db.session.get(ApprovalRequest, request_id)
    decisions = db.session.query(ApprovalDecision).filter_by(request_id=request_id).all()
    assert len({d.username for d in decisions}) == len(decisions) <= 5  # one per user
    recorded = [r for r in results if r[0] == "ok"]
    assert len(recorded) == len(decisions)
    attempt = attempt_of(final)
    if final.status == "approved":
        assert sum(d.decision == "approve" for d in decisions) == 3 and attempt.status == "waiting_approval"
    elif final.status == "rejected":
        assert decisions[-1].decision == "reject" and attempt.failure_kind == "rejected"
    else:
        assert final.status == "timed_out" and attempt.failure_kind == "approval_timeout"
    # every settlement asks for exactly one advance
    q = get_queue(CONTROL)
    assert sum(1 for j in q.get_jobs() if j.func_name.endswith("advance_execution") and j.args[0] == execution_pk) == 1
