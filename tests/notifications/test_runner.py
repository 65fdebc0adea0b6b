"""The notification step runner, called the way the step job calls it (inside an app context)."""
from __future__ import annotations

import json

from webapp.extensions import db
from webapp.models import NotificationDelivery
from webapp.runners.base import StepContext
from webapp.runners.notification import run
from webapp.services import notifications as svc

from .helpers import attempt, execution, pipeline


def context(ex, att, parameters, tmp_path, secrets=()):
    return StepContext(execution_id=ex.execution_id, attempt_id=att.id, attempt_number=1, step_name=att.step_name,
                       step_type="notification", parameters=parameters, env={}, workspace=tmp_path,
                       timeout_seconds=None, secrets=list(secrets))


def steps():
    return [{"name": "build", "type": "shell", "parameters": {"command": "true"}},
            {"name": "announce", "type": "notification",
             "parameters": {"webhook_url": "http://127.0.0.1:1/x"}}]


def test_step_sends_to_every_destination_and_succeeds(app, users, receiver, mailbox, tmp_path):
    users["viewer"].email = "viewer1@example.test"
    db.session.commit()
    svc.save_channel({"name": "chat", "channel_type": "slack", "url": f"{receiver.url}/services/T1/B1/abcdefghijklmnop1234"})
    ex = execution(pipeline(None, steps=steps()), "running")
    build = attempt(ex, "build", "success")
    build.output_data = {"ARTIFACT": "app-1.2.tar.gz"}
    db.session.commit()
    att = attempt(ex, "announce", "running")
    params = {"channels": ["chat"], "webhook_url": f"{receiver.url}/hook", "recipients": ["viewer1"],
              "message": "Built {{ steps.build.outputs.ARTIFACT }} for {{ variables.env }}: {{ url }}"}
    result = run(context(ex, att, params, tmp_path))
    assert result.status == "success", result.error_message
    text = f"Built app-1.2.tar.gz for staging: http://ansflow.test/executions/{ex.execution_id}"
    assert text in receiver.json("/services/T1/B1/abcdefghijklmnop1234")[0]["text"]
    assert json.loads(receiver.posts("/hook")[0]["body"])["text"] == text
    assert mailbox.received()[0]["body"].strip() == text
    rows = svc.deliveries_for_execution(ex.id)
    assert [(r.channel, r.status, r.event, r.step_id) for r in rows] == [
        ("chat", "delivered", "step", att.step_id), ("webhook", "delivered", "step", att.step_id),
        ("email", "delivered", "step", att.step_id)]
    assert result.outputs["NOTIFICATION_DELIVERIES"] == ",".join(str(r.id) for r in rows)
    assert "delivered: chat" in result.logs


def test_step_fails_with_the_receivers_error(app, receiver, tmp_path):
    receiver.script("/hook", [(502, "upstream said no")])
    ex = execution(pipeline(None, steps=steps()), "running")
    att = attempt(ex, "announce", "running")
    result = run(context(ex, att, {"webhook_url": f"{receiver.url}/hook", "channels": ["ghost"]}, tmp_path))
    assert result.status == "failed" and result.failure == "error"
    assert "The webhook answered HTTP 502: upstream said no" in result.error_message
    assert "ghost: There is no active channel named 'ghost'." in result.error_message
    statuses = {r.channel: r.status for r in db.session.execute(db.select(NotificationDelivery)).scalars()}
    assert statuses == {"ghost": "failed", "webhook": "failed"}


def test_step_refuses_private_targets_and_masks_secrets(app, receiver, tmp_path):
    app.config["NOTIFY_ALLOWLIST"] = []
    ex = execution(pipeline(None, steps=steps()), "running")
    att = attempt(ex, "announce", "running")
    url = f"http://127.0.0.1:{receiver.port}/hook?token=abcd1234secret"
    result = run(context(ex, att, {"webhook_url": url}, tmp_path, secrets=["abcd1234secret"]))
    assert result.status == "failed" and "loopback address" in result.error_message
    assert "abcd1234secret" not in result.error_message + result.logs
    assert receiver.posts() == []
