"""Gates inside real executions, with real worker processes: approve continues the execution at once,
reject fails the step with the comment, the scheduler times requests out, cancel closes them, and
50 concurrent decisions plus the timeout run the gated step exactly once."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from webapp.extensions import db
from webapp.models import ApprovalRequest, StepExecutionHistory, User, WorkflowExecution, utcnow
from webapp.queues import CONTROL, enqueue
from webapp.services import approvals as svc
from webapp.services import executions
from webapp.services.accounts import create_user
from webapp.services.pipelines import save_definition

from ..conftest import wait_for

TERMINAL = ("success", "failed", "cancelled")


def fresh():
    db.session.commit()  # end the read transaction: the workers' writes must be visible
    db.session.expire_all()


def run(users, tmp_path, approval, name="gated", **extra):
    """build -> deploy (shell, gated) -> report (always). deploy appends a line to a file per run."""
    out = tmp_path / f"{name}.runs"
    pipeline = save_definition({"name": name, **extra, "steps": [
        {"name": "build", "type": "shell", "parameters": {"command": "echo build"}},
        {"name": "deploy", "type": "shell", "approval": approval,
         "parameters": {"command": 'echo "ran $ANSFLOW_ATTEMPT" >> "$RUNS_FILE"'}},
        {"name": "report", "type": "shell", "depends_on": ["deploy"], "conditions": {"type": "always"},
         "parameters": {"command": "echo report"}},
    ]}, owner=users["maintainer"])
    execution = executions.start(pipeline, trigger_data={}, variables={"runs_file": str(out)}, user=users["maintainer"])
    return execution, out


def gate_request(execution, timeout=30) -> ApprovalRequest:
    def found():
        fresh()
        return db.session.execute(db.select(ApprovalRequest).filter_by(execution_id=execution.id)).scalars().first()
    return wait_for(found, timeout=timeout, message="the approval request")


def finished(execution, timeout=60) -> WorkflowExecution:
    def done():
        fresh()
        e = db.session.get(WorkflowExecution, execution.id)
        return e if e.status in TERMINAL else None
    return wait_for(done, timeout=timeout, message="the execution to finish")


def deploy_attempts(execution):
    fresh()
    return list(db.session.execute(db.select(StepExecutionHistory).filter_by(
        execution_id=execution.id, step_name="deploy").order_by(StepExecutionHistory.id)).scalars())


def runs(out) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def test_quorum_continues_the_execution(workers, users, tmp_path):
    workers(2)
    execution, out = run(users, tmp_path, {"users": ["approver1", "approver2", "approver3"], "required_approvals": 2})
    req = gate_request(execution)
    wait_for(lambda: (fresh(), db.session.get(WorkflowExecution, execution.id).status)[1] == "waiting_approval",
             message="the execution to show waiting_approval")
    assert deploy_attempts(execution)[0].status == "waiting_approval"
    with pytest.raises(svc.Forbidden):
        svc.decide(req.id, users["maintainer"], "approve")  # not listed, and the requester
    svc.decide(req.id, users["approver"], "approve")
    assert deploy_attempts(execution)[0].status == "waiting_approval"
    svc.decide(req.id, users["approver2"], "approve", "ship it")
    e = finished(execution)
    assert e.status == "success", e.status_reason
    assert runs(out) == ["ran 1"]
    assert [a.status for a in deploy_attempts(execution)] == ["success"]


def test_rejection_fails_the_step_with_the_comment(workers, users, tmp_path):
    workers(1)
    execution, out = run(users, tmp_path, {"users": ["approver1"], "required_approvals": 1})
    req = gate_request(execution)
    svc.decide(req.id, users["approver"], "reject", "change freeze until Monday")
    e = finished(execution)
    assert e.status == "failed" and runs(out) == []
    [attempt] = deploy_attempts(execution)
    assert (attempt.status, attempt.failure_kind, attempt.error_message) == (
        "failed", "rejected", "change freeze until Monday")
    fresh()
    report = db.session.execute(db.select(StepExecutionHistory).filter_by(
        execution_id=execution.id, step_name="report")).scalars().one()
    assert report.status == "success"  # its condition is `always`: the downstream follows the conditions


def test_the_scheduler_times_out_a_request(workers, users, tmp_path):
    workers(1)
    execution, out = run(users, tmp_path, {"users": ["approver1"], "required_approvals": 1, "timeout_hours": 0.0005})
    req = gate_request(execution)
    e = finished(execution, timeout=60)
    fresh()
    req = db.session.get(ApprovalRequest, req.id)
    assert req.status == "timed_out" and "timed out after 2s" in req.outcome_reason
    assert e.status == "failed" and runs(out) == []
    assert deploy_attempts(execution)[0].failure_kind == "approval_timeout"
    with pytest.raises(svc.Conflict, match="This request is already timed out."):
        svc.decide(req.id, users["approver"], "approve")


def test_auto_approve_on_timeout_runs_the_step(workers, users, tmp_path):
    workers(1)
    execution, out = run(users, tmp_path, {"users": ["approver1"], "required_approvals": 1, "timeout_hours": 0.0005,
                                           "auto_approve_on_timeout": True})
    e = finished(execution, timeout=60)
    assert e.status == "success" and runs(out) == ["ran 1"]


def test_cancelling_the_execution_closes_its_requests(workers, users, tmp_path):
    workers(1)
    execution, out = run(users, tmp_path, {"users": ["approver1"], "required_approvals": 1})
    req = gate_request(execution)
    fresh()
    executions.cancel(db.session.get(WorkflowExecution, execution.id), users["maintainer"])
    finished(execution)
    fresh()
    assert db.session.get(ApprovalRequest, req.id).status == "cancelled"
    with pytest.raises(svc.Conflict, match="cancelled"):
        svc.decide(req.id, users["approver"], "approve")
    assert runs(out) == []


def test_race_50_decisions_and_the_timeout_run_the_step_once(app, workers, users, tmp_path):
    """Every path leads to approval here (approvals and an auto-approving timeout), so whoever wins,
    the step must run exactly once; several workers also get duplicate advance jobs."""
    workers(3)
    for i in range(4, 6):
        create_user(f"approver{i}", "correct-horse-battery", "approver")
    names = [f"approver{i}" for i in range(1, 6)]
    execution, out = run(users, tmp_path, {"users": names, "required_approvals": 3, "timeout_hours": 1,
                                           "auto_approve_on_timeout": True})
    req = gate_request(execution)
    db.session.execute(db.update(ApprovalRequest).where(ApprovalRequest.id == req.id)
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    user_ids = {u.username: u.id for u in db.session.query(User).filter(User.username.in_(names))}
    db.session.commit()
    request_id = req.id

    barrier = threading.Barrier(51)
    results, lock = [], threading.Lock()

    def decide(username):
        with app.app_context():
            user = db.session.get(User, user_ids[username])
            db.session.close()
            barrier.wait()
            try:
                r = ("ok", svc.decide(request_id, user, "approve").changed)
            except svc.Conflict:
                r = ("conflict", False)
            finally:
                db.session.remove()
            with lock:
                results.append(r)

    def fire_timeout():
        with app.app_context():
            barrier.wait()
            for _ in range(3):  # the timeout job, delivered more than once, to several workers
                enqueue(CONTROL, "webapp.tasks.approvals.expire", request_id)
            for _ in range(5):  # and redundant advance jobs racing each other
                executions.request_advance(execution.id)
            db.session.remove()

    threads = [threading.Thread(target=decide, args=(names[i % 5],)) for i in range(50)]
    threads.append(threading.Thread(target=fire_timeout))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 50
    assert sum(1 for ok, changed in results if ok == "ok" and changed) <= 1
    e = finished(execution, timeout=90)
    assert e.status == "success", e.status_reason
    fresh()
    final = db.session.get(ApprovalRequest, request_id)
    assert final.status == "approved"
    assert len({d.username for d in final.decisions}) == len(final.decisions) <= 3
    assert runs(out) == ["ran 1"]
    assert [a.status for a in deploy_attempts(execution)] == ["success"]


def cancelled_deliveries(execution):
    from webapp.models import NotificationDelivery

    fresh()
    return db.session.execute(db.select(NotificationDelivery).filter_by(
        execution_id=execution.id, event="approval_cancelled")).scalars().all()


NOTIFY = {"on_approval_required": True, "webhook_url": "http://127.0.0.1:9/hook"}


def test_a_cancel_closes_the_request_with_who_asked_and_tells_the_approvers(workers, users, tmp_path):
    workers(1)
    execution, out = run(users, tmp_path, {"users": ["approver1"], "required_approvals": 1},
                         name="cancelled gate", notification_config=NOTIFY)
    req = gate_request(execution)
    fresh()
    executions.cancel(db.session.get(WorkflowExecution, execution.id), users["maintainer"])
    finished(execution)
    fresh()
    req = db.session.get(ApprovalRequest, req.id)
    assert (req.status, req.outcome_reason) == ("cancelled", "execution cancelled (cancel requested by maintainer1)")
    [row] = wait_for(lambda: cancelled_deliveries(execution), message="the approval_cancelled notification")
    assert "Cancelled: execution cancelled (cancel requested by maintainer1)" in row.body
    assert runs(out) == []


def test_a_fail_fast_group_cancels_its_waiting_gate(workers, users, tmp_path):
    """The gate waits inside a fail_fast group; a sibling fails: the group cancels the gate, the request
    closes with the group's reason (the execution is over, nobody is left deciding), approvers are told."""
    workers(1)
    pipeline = save_definition({"name": "fail fast gate", "notification_config": NOTIFY,
                                "groups": [{"id": "checks", "name": "Checks", "sync_policy": "fail_fast"}],
                                "steps": [
        {"name": "build", "type": "shell", "parameters": {"command": "echo build"}},
        {"name": "sign-off", "type": "approval", "parallel_group": "checks",
         "approval": {"users": ["approver1"], "required_approvals": 1}},
        {"name": "unit", "type": "shell", "parallel_group": "checks", "parameters": {"command": "exit 3"}},
    ]}, owner=users["maintainer"])
    execution = executions.start(pipeline, trigger_data={}, variables={}, user=users["maintainer"])
    e = finished(execution)
    assert e.status == "failed"
    fresh()
    [req] = db.session.execute(db.select(ApprovalRequest).filter_by(execution_id=execution.id)).scalars().all()
    assert (req.status, req.outcome_reason) == ("cancelled", "fail_fast: unit failed")
    [row] = wait_for(lambda: cancelled_deliveries(execution), message="the approval_cancelled notification")
    assert "Cancelled: fail_fast: unit failed" in row.body
    with pytest.raises(svc.Conflict):
        svc.decide(req.id, users["approver"], "approve")
