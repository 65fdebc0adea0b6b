"""A request whose expiry job is lost (downtime, Redis restart) still times out: the reconciler sweeps it."""
from datetime import timedelta

import pytest

from webapp.extensions import db
from webapp.models import ApprovalRequest, utcnow
from webapp.services import executions as svc

from ..conftest import wait_for
from ..tasks.helpers import latest, make_pipeline, wait_finished, wait_status

pytestmark = pytest.mark.integration


def test_overdue_request_is_expired_by_the_reconciler(app, workers, users):
    workers(1)
    p = make_pipeline([
        {"name": "gate", "type": "approval", "approval": {"users": ["approver1"], "timeout_hours": 1}},
        {"name": "ship", "parameters": {"command": "echo shipping"}},
    ])
    e = svc.start(p, user=users["maintainer"])
    wait_status(e, "gate", "waiting_approval")
    # the scheduled expiry is an hour away; pretend the deadline passed while it was lost
    db.session.execute(db.update(ApprovalRequest).values(expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()

    def timed_out():
        db.session.commit()
        r = db.session.execute(db.select(ApprovalRequest)).scalar_one()
        db.session.refresh(r)
        return r if r.status == "timed_out" else None
    wait_for(timed_out, timeout=30, message="the sweep to time the request out")
    e = wait_finished(e)
    assert e.status == "failed"
    gate = latest(e, "gate")
    assert gate.status == "failed" and gate.failure_kind == "approval_timeout"
    assert latest(e, "ship").status == "skipped"
