"""Deliveries run as RQ jobs in real worker processes: delivered, retried with backoff, recorded as failed."""
from __future__ import annotations

import json

import pytest

from webapp.extensions import db
from webapp.models import NotificationDelivery
from webapp.services import notifications as svc

from tests.conftest import wait_for

from .helpers import attempt, execution, pipeline

pytestmark = pytest.mark.integration


def row(delivery_id):
    db.session.rollback()  # end the read transaction: see what the workers committed
    return db.session.get(NotificationDelivery, delivery_id)


def settled(delivery_id):
    r = row(delivery_id)
    return r if r.status in ("delivered", "failed", "refused") else None


def test_jobs_deliver_retry_and_record_failures(app, users, receiver, mailbox, workers):
    users["maintainer"].email = "maintainer1@example.test"
    db.session.commit()
    svc.save_channel({"name": "ops", "channel_type": "webhook", "url": f"{receiver.url}/ops", "secret": "ops-secret-123"})
    receiver.script("/flaky", [(503, "busy, try later"), (503, "still busy"), (200, "ok")])
    receiver.script("/down", [(500, "receiver exploded")])
    receiver.script("/gone", [(404, "no such hook")])
    p = pipeline({"on_failure": True, "channels": ["ops"], "recipients": ["maintainer1"]}, steps=[
        {"name": "build", "type": "shell", "parameters": {"command": "true"},
         "notification_config": {"on_failure": True, "webhook_url": f"{receiver.url}/flaky"}},
        {"name": "deploy", "type": "shell", "parameters": {"command": "true"},
         "notification_config": {"on_failure": True, "webhook_url": f"{receiver.url}/down"}},
        {"name": "smoke", "type": "shell", "parameters": {"command": "true"},
         "notification_config": {"on_failure": True, "webhook_url": f"{receiver.url}/gone"}},
    ])
    ex = execution(p, "failed", status_reason="deploy failed")
    ops_id, mail_id = svc.emit("failed", ex)
    (flaky_id,) = svc.emit("step_failed", ex, attempt(ex, "build", error="compiler said no"))
    (down_id,) = svc.emit("step_failed", ex, attempt(ex, "deploy"))
    (gone_id,) = svc.emit("step_failed", ex, attempt(ex, "smoke"))
    assert row(ops_id).status == "pending"

    workers(1, queues="notifications")

    ops = wait_for(lambda: settled(ops_id), message="the ops webhook delivery")
    assert ops.status == "delivered" and ops.attempts == 1 and ops.delivered_at and not ops.error
    (post,) = receiver.posts("/ops")
    data = json.loads(post["body"])
    assert data["event"] == "failed" and data["execution"]["execution_id"] == ex.execution_id
    assert data["execution"]["url"] == f"http://ansflow.test/executions/{ex.execution_id}"
    assert post["headers"]["X-AnsFlow-Signature"].startswith("sha256=")

    mail = wait_for(lambda: settled(mail_id), message="the email delivery")
    assert mail.status == "delivered"
    (message,) = mailbox.received()
    assert message["to"] == ["maintainer1@example.test"] and message["subject"] == "[AnsFlow] notify-me failed"

    flaky = wait_for(lambda: settled(flaky_id), timeout=30, message="the flaky webhook to recover")
    assert flaky.status == "delivered" and flaky.attempts == 3
    assert flaky.error.splitlines() == ["attempt 1: The webhook answered HTTP 503: busy, try later",
                                        "attempt 2: The webhook answered HTTP 503: still busy"]
    assert len(receiver.posts("/flaky")) == 3
    assert "compiler said no" in json.loads(receiver.posts("/flaky")[0]["body"])["text"]

    down = wait_for(lambda: settled(down_id), timeout=30, message="the broken webhook to give up")
    assert down.status == "failed" and down.attempts == 3  # 1 + 2 retries (NOTIFY_RETRY_INTERVALS = [1, 1])
    assert down.error.count("HTTP 500: receiver exploded") == 3
    assert len(receiver.posts("/down")) == 3

    gone = wait_for(lambda: settled(gone_id), message="the 404 webhook")
    assert gone.status == "failed" and gone.attempts == 1  # a 4xx is not transient: no retry
    assert "HTTP 404: no such hook" in gone.error


def test_a_private_destination_is_refused_by_the_job(app, receiver, workers):
    # saved while the address was allowed; the allow-list changed since (the worker has its own)
    app.config["NOTIFY_ALLOWLIST"] = ["10.0.0.0/8"]
    p = pipeline({"on_failure": True, "webhook_url": "http://10.255.255.1/hook"})
    app.config["NOTIFY_ALLOWLIST"] = []
    ex = execution(p, "failed")
    (rid,) = svc.emit("failed", ex)
    workers(1, queues="notifications")
    r = wait_for(lambda: settled(rid), message="the refusal")
    assert r.status == "refused" and r.attempts == 1
    assert "10.255.255.1, a private address" in r.error and "NOTIFY_ALLOWLIST" in r.error
