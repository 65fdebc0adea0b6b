"""End to end with the execution runtime: pipelines run on real workers and their events are delivered
(webhook signed, email received, step retries announced, fixed/regression only on transitions)."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from webapp.extensions import db
from webapp.models import NotificationDelivery, WorkflowExecution
from webapp.services import executions
from webapp.services import notifications as svc
from webapp.services.pipelines import save_definition

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def fresh():
    db.session.commit()  # end the read transaction: see what the workers committed
    db.session.expire_all()


def finished(ex):
    def check():
        fresh()
        e = db.session.get(WorkflowExecution, ex.id)
        return e if e.status in ("success", "failed", "cancelled") else None
    return wait_for(check, timeout=90, message=f"execution {ex.execution_id} to finish")


def settled_events(ex, expected: list[str]):
    """Wait until the execution's deliveries are exactly `expected` (as a multiset) and all delivered."""
    def check():
        fresh()
        rows = svc.deliveries_for_execution(ex.id)
        done = all(r.status in ("delivered", "failed", "refused") for r in rows)
        return rows if done and sorted(r.event for r in rows) == sorted(expected) else None
    try:
        return wait_for(check, timeout=60, message=f"deliveries {expected}")
    except AssertionError:
        fresh()
        got = [(r.event, r.channel, r.status, r.error) for r in svc.deliveries_for_execution(ex.id)]
        raise AssertionError(f"expected {sorted(expected)}, got {got}")


def test_executions_notify_on_real_workers(app, users, receiver, mailbox, workers):
    users["maintainer"].email = "maintainer1@example.test"
    db.session.commit()
    svc.save_channel({"name": "ops", "channel_type": "webhook", "url": f"{receiver.url}/ops", "secret": "ops-signing-key"})
    p = save_definition({
        "name": "release",
        "notification_config": {"on_success": True, "on_failure": True, "events": ["started", "fixed", "regression"],
                                "channels": ["ops"], "recipients": ["maintainer1"]},
        "steps": [
            {"name": "build", "type": "shell", "parameters": {"command": 'echo "mode=$MODE"; test "$MODE" = ok'},
             "retry_policy": {"max_retries": 1, "delay_seconds": 0, "retry_on": [1]},
             "notification_config": {"on_failure": True, "events": ["retrying"], "webhook_url": f"{receiver.url}/build",
                                     "message_template": "{{ step.name }} attempt {{ step.attempt }}: {{ status }}"}},
            {"name": "announce", "type": "notification", "depends_on": ["build"],
             "parameters": {"webhook_url": f"{receiver.url}/announce",
                            "message": "{{ pipeline }} built in mode {{ variables.MODE }}"}},
        ],
    })
    workers(2)

    ok1 = finished(executions.start(p, variables={"MODE": "ok"}, user=users["maintainer"]))
    assert ok1.status == "success"
    rows = settled_events(ok1, ["started", "started", "success", "success", "step"])  # ops + email each, the step
    assert {(r.event, r.channel) for r in rows} >= {("started", "ops"), ("success", "pipeline email"), ("step", "webhook")}
    assert all(r.status == "delivered" for r in rows)
    assert json.loads(receiver.posts("/announce")[0]["body"])["text"] == "release built in mode ok"

    bad = finished(executions.start(p, variables={"MODE": "bad"}, user=users["maintainer"]))
    assert bad.status == "failed"
    rows = settled_events(bad, ["started", "started", "failed", "failed", "regression", "regression",
                                "retrying", "step_failed"])
    build_posts = [json.loads(r["body"]) for r in receiver.posts("/build")]
    assert [b["event"] for b in build_posts] == ["retrying", "step_failed"]
    assert build_posts[0]["text"] == "build attempt 1: failed" and build_posts[1]["text"] == "build attempt 2: failed"
    regression = next(r for r in rows if r.event == "regression" and r.channel == "ops")
    assert "is broken (it passed last time)" in regression.subject and ok1.execution_id in regression.body

    ok2 = finished(executions.start(p, variables={"MODE": "ok"}, user=users["maintainer"]))
    settled_events(ok2, ["started", "started", "success", "success", "fixed", "fixed", "step"])

    # the webhook receiver saw signed posts for every execution event, the mailbox every email
    ops = receiver.posts("/ops")
    for post in ops:
        ts = post["headers"]["X-AnsFlow-Timestamp"]
        expected = hmac.new(b"ops-signing-key", ts.encode() + b"." + post["body"], hashlib.sha256).hexdigest()
        assert post["headers"]["X-AnsFlow-Signature"] == f"sha256={expected}"
    assert sorted(json.loads(p["body"])["event"] for p in ops) == sorted(
        ["started", "success", "started", "failed", "regression", "started", "success", "fixed"])
    subjects = sorted(m["subject"] for m in mailbox.received())
    assert subjects.count("[AnsFlow] release started") == 3 and "[AnsFlow] release is fixed" in subjects
    assert all(m["to"] == ["maintainer1@example.test"] for m in mailbox.received())
    assert db.session.query(NotificationDelivery).filter(NotificationDelivery.status != "delivered").count() == 0
