"""Gates without the runtime: a pipeline saved for real, an execution and a waiting attempt as rows,
and the request opened by the same service call the runtime makes."""
from __future__ import annotations

import secrets

import pytest

from webapp.extensions import db
from webapp.models import StepExecutionHistory, WorkflowExecution, utcnow
from webapp.services import approvals as svc
from webapp.services.pipelines import freeze, save_definition


def gated_definition(name: str = "release", approval: dict | None = None, **extra) -> dict:
    approval = approval if approval is not None else {
        "users": ["approver1", "approver2", "approver3"], "required_approvals": 2, "timeout_hours": 24,
        "message": "Ship it?"}
    return {
        "name": name, **extra,
        "steps": [
            {"name": "build", "type": "shell", "parameters": {"command": "echo build"}},
            {"name": "gate", "type": "approval", "approval": approval},
            {"name": "deploy", "type": "shell", "parameters": {"command": "echo deploy"}},
        ],
    }


@pytest.fixture
def make_gate(app, users):
    """make_gate(approval=..., requester="maintainer", allow_self_approval=False) -> ApprovalRequest (committed)."""
    counter = {"n": 0}

    def make(approval: dict | None = None, requester: str | None = "maintainer", open_it: bool = True, **extra):
        counter["n"] += 1
        pipeline = save_definition(gated_definition(f"release {counter['n']}", approval, **extra), owner=users["maintainer"])
        snapshot = freeze(pipeline)
        step = next(s for s in snapshot["steps"] if s["name"] == "gate")
        execution = WorkflowExecution(
            pipeline_id=pipeline.id, execution_id="ex-" + secrets.token_hex(5), status="waiting_approval",
            pipeline_snapshot=snapshot, trigger_type="manual", started_at=utcnow(),
            triggered_by_id=users[requester].id if requester else None,
        )
        db.session.add(execution)
        db.session.flush()
        attempt = StepExecutionHistory(execution_id=execution.id, step_id=step["id"], step_name=step["name"],
                                       status="waiting_approval")
        db.session.add(attempt)
        db.session.flush()
        if not open_it:
            db.session.commit()
            return execution, attempt, step
        req = svc.open_request(execution, attempt, step)
        db.session.commit()
        return req

    return make


def attempt_of(req):
    db.session.expire_all()
    return db.session.get(StepExecutionHistory, req.attempt_id)
