"""emit(): which events reach which destinations, transition events, templates, and cost when unused."""
from __future__ import annotations

import pytest
from sqlalchemy import event, select

from webapp.extensions import db
from webapp.models import NotificationDelivery
from webapp.queues import NOTIFICATIONS, get_queue
from webapp.services import notifications as svc

from .helpers import attempt, execution, pipeline


def deliveries(ex=None):
    q = select(NotificationDelivery).order_by(NotificationDelivery.id)
    if ex is not None:
        q = q.where(NotificationDelivery.execution_id == ex.id)
    return list(db.session.execute(q).scalars())


class StatementCounter:
    def __init__(self):
        self.count = 0

    def __call__(self, *args, **kwargs):
        self.count += 1


def test_emit_without_config_runs_no_query_and_touches_no_redis(app):
    p = pipeline(None)
    ex = execution(p, "failed")
    a = attempt(ex, "build")
    assert svc.emit("started", ex) == []  # the first look at this execution may load its snapshot
    counter = StatementCounter()
    event.listen(db.engine, "before_cursor_execute", counter)
    try:
        for _ in range(3):
            db.session.expire_all()  # as after the runtime's commit
            for name in ("started", "failed", "success", "cancelled"):
                assert svc.emit(name, ex) == []
            for name in ("step_failed", "step_success", "retrying", "timed_out", "approval_required"):
                assert svc.emit(name, ex, a) == []
    finally:
        event.remove(db.engine, "before_cursor_execute", counter)
    assert counter.count == 0
    assert get_queue(NOTIFICATIONS).count == 0


def test_flags_map_to_events_by_level(app, receiver):
    p = pipeline({"on_failure": True, "webhook_url": f"{receiver.url}/p"}, steps=[
        {"name": "build", "type": "shell", "parameters": {"command": "true"},
         "notification_config": {"on_failure": True, "on_success": True, "webhook_url": f"{receiver.url}/s"}},
        {"name": "deploy", "type": "shell", "parameters": {"command": "true"}},
    ])
    ex = execution(p, "failed")
    assert svc.emit("started", ex) == []                      # not subscribed
    assert svc.emit("success", ex) == []                      # pipeline has no on_success
    assert len(svc.emit("failed", ex)) == 1
    build_fail = attempt(ex, "build", "failed", error="exit 1")
    ids = svc.emit("step_failed", ex, build_fail)
    assert len(ids) == 1 and db.session.get(NotificationDelivery, ids[0]).channel == "step webhook"
    assert len(svc.emit("timed_out", ex, attempt(ex, "build", "timed_out", retry_count=1))) == 1
    assert len(svc.emit("step_success", ex, attempt(ex, "build", "success", retry_count=2))) == 1
    deploy_fail = attempt(ex, "deploy", "failed")
    assert svc.emit("step_failed", ex, deploy_fail) == []     # deploy has no config; the pipeline's on_failure is execution-level
    assert svc.emit("retrying", ex, build_fail) == []
    assert get_queue(NOTIFICATIONS).count == 4                # one job per delivery


def test_explicit_events_and_pipeline_level_step_events(app, receiver):
    p = pipeline({"events": ["started", "retrying", "cancelled"], "webhook_url": f"{receiver.url}/p"})
    ex = execution(p, "running")
    assert len(svc.emit("started", ex)) == 1
    a = attempt(ex, "deploy", "failed", error="flaky")
    (rid,) = svc.emit("retrying", ex, a, {"retry_count": 1, "delay_seconds": 30})
    row = db.session.get(NotificationDelivery, rid)
    assert row.event == "retrying" and row.step_id == a.step_id and row.channel == "pipeline webhook"
    assert "deploy" in row.subject and "retrying" in row.subject
    assert "Next try:" in row.body and "flaky" in row.body
    assert svc.emit("step_failed", ex, a) == []


def test_step_and_pipeline_naming_the_same_channel_send_once(app, receiver):
    svc.save_channel({"name": "ops", "channel_type": "webhook", "url": f"{receiver.url}/ops"})
    p = pipeline({"events": ["step_failed"], "channels": ["ops"]}, steps=[
        {"name": "build", "type": "shell", "parameters": {"command": "true"},
         "notification_config": {"on_failure": True, "channels": ["ops"]}}])
    ex = execution(p)
    assert len(svc.emit("step_failed", ex, attempt(ex, "build"))) == 1


def test_approval_events_and_reminders(app, users, mailbox):
    users["approver"].email = "approver1@example.test"
    db.session.commit()
    p = pipeline(None, steps=[{"name": "gate", "type": "approval",
                               "notification_config": {"on_approval_required": True, "events": ["approval_decided"],
                                                       "recipients": ["approvers", "lead@example.test"]}}])
    ex = execution(p, "waiting_approval")
    gate = attempt(ex, "gate", "waiting_approval")
    extra = {"step_name": "gate", "approver_usernames": ["approver1"], "message": "Ship it?", "approvers": ["approver1"]}
    (rid,) = svc.emit("approval_required", ex, gate, extra)
    row = db.session.get(NotificationDelivery, rid)
    assert row.channel == "step email" and row.target == "lead@example.test, approver1@example.test"
    assert "Approval needed: gate" in row.subject and "Ship it?" in row.body and "approver1" in row.body
    assert len(svc.emit("approval_reminder", ex, gate, {**extra, "reminder": True})) == 1
    (rid,) = svc.emit("approval_decided", ex, gate, {**extra, "status": "approved", "decided_by": "approver1"})
    row = db.session.get(NotificationDelivery, rid)
    assert "was approved" in row.subject and "Decided by approver1" in row.body


def outcome_events(p, status):
    ex = execution(p, status, finished_offset=len(deliveries()) * 0.001)
    return [db.session.get(NotificationDelivery, i).event for i in svc.emit(status, ex)]


def test_transition_events_fire_only_on_transitions(app, receiver):
    p = pipeline({"events": ["fixed", "regression"], "webhook_url": f"{receiver.url}/t"})
    other = pipeline({"events": ["fixed", "regression"], "webhook_url": f"{receiver.url}/t"}, name="other")
    sequence = [("success", []), ("failed", ["regression"]), ("failed", []), ("success", ["fixed"]),
                ("success", []), ("failed", ["regression"])]
    for i, (status, expected) in enumerate(sequence):
        ex = execution(p, status, finished_offset=i)
        got = [db.session.get(NotificationDelivery, d).event for d in svc.emit(status, ex)]
        assert got == expected, f"step {i}: {status}"
        # another pipeline's history never counts
        execution(other, "success" if status == "failed" else "failed", finished_offset=i + 0.5)
    # cancelled executions are not outcomes: failed, cancelled, success is still "fixed"
    q = pipeline({"events": ["fixed", "regression"], "webhook_url": f"{receiver.url}/t"}, name="third")
    execution(q, "failed", finished_offset=10)
    execution(q, "cancelled", finished_offset=11)
    ex = execution(q, "success", finished_offset=12)
    assert [db.session.get(NotificationDelivery, d).event for d in svc.emit("success", ex)] == ["fixed"]
    row = deliveries(ex)[0]
    assert "is fixed" in row.subject and "Previous:" in row.body


def test_success_and_fixed_both_subscribed_send_both(app, receiver):
    p = pipeline({"on_success": True, "events": ["fixed"], "webhook_url": f"{receiver.url}/t"})
    execution(p, "failed", finished_offset=0)
    ex = execution(p, "success", finished_offset=1)
    assert sorted(db.session.get(NotificationDelivery, d).event for d in svc.emit("success", ex)) == ["fixed", "success"]


def test_templates_render_context_and_hide_secret_variables(app, receiver):
    p = pipeline({"on_failure": True, "webhook_url": f"{receiver.url}/t",
                  "subject_template": "{{ pipeline }} is {{ status|upper }}",
                  "message_template": "env={{ variables.env }} token={{ variables.api_token }} took {{ duration }} "
                                      "see {{ url }}"})
    ex = execution(p, "failed", status_reason="step build failed")
    (rid,) = svc.emit("failed", ex)
    row = db.session.get(NotificationDelivery, rid)
    assert row.subject == "notify-me is FAILED"
    assert row.body == f"env=staging token= took 1m 15s see http://ansflow.test/executions/{ex.execution_id}"


@pytest.mark.parametrize("template,note", [
    ("{{ ''.__class__.__mro__ }}", "'__class__' of a 'str' object is not allowed"),
    ("{% for a in range(100000) %}{% endfor %}", "range() is limited"),
    ("{{ 'x' * 100000000 }}", "sequence too long"),
    ("{% for a in range(900) %}{% for b in range(900) %}{% for c in range(900) %}{% endfor %}{% endfor %}{% endfor %}",
     "too many calls"),
])
def test_hostile_templates_fall_back_to_the_default(app, receiver, template, note):
    p = pipeline({"on_failure": True, "webhook_url": f"{receiver.url}/t", "message_template": template})
    ex = execution(p, "failed")
    (rid,) = svc.emit("failed", ex)
    body = db.session.get(NotificationDelivery, rid).body
    assert "Pipeline:  notify-me" in body  # the default message
    assert note in body and "__mro__" not in body.split("(message_template")[0]


def test_config_validation(app):
    svc.save_channel({"name": "ops", "channel_type": "webhook", "url": "https://example.com/hook"})
    assert svc.validate_notification_config({"on_failure": True, "channels": ["ops"]}) == {}
    errors = svc.validate_notification_config({"on_failure": "yes", "channels": ["nope"], "events": ["exploded"],
                                               "recipients": ["not-an@email"], "message_template": "{% if %}",
                                               "webhook_url": "ftp://x", "colour": "red"})
    assert set(errors) == {"on_failure", "channels", "events", "recipients", "message_template", "webhook_url",
                           "notification_config"}
    assert "No channel named 'nope'" in errors["channels"]
    assert "line 1" in errors["message_template"]
    assert "Say where to send" in svc.validate_notification_config({"on_failure": True})["channels"]


def test_template_output_is_capped(app, receiver):
    p = pipeline({"on_failure": True, "webhook_url": f"{receiver.url}/t",
                  "message_template": "{% for a in range(900) %}{% for b in range(900) %}{{ a }}{% endfor %}{% endfor %}"})
    ex = execution(p, "failed")
    (rid,) = svc.emit("failed", ex)
    body = db.session.get(NotificationDelivery, rid).body
    assert len(body) <= 8000 and body.endswith("[... cut ...]")


def test_lost_delivery_jobs_are_requeued_or_given_up(app, receiver):
    from datetime import timedelta

    from webapp.models import utcnow

    p = pipeline({"on_failure": True, "webhook_url": f"{receiver.url}/t"})
    ids = [svc.emit("failed", execution(p, "failed"))[0] for _ in range(3)]
    get_queue(NOTIFICATIONS).empty()  # Redis lost the jobs
    old = utcnow() - timedelta(hours=2)
    rows = [db.session.get(NotificationDelivery, i) for i in ids]
    rows[0].updated_at = old                                          # pending, never tried
    rows[1].status, rows[1].attempts, rows[1].updated_at = "sending", 3, old   # used every attempt
    db.session.commit()                                               # rows[2] is recent: left alone
    assert svc.reconcile_deliveries() == {"requeued": 1, "failed": 1}
    assert [r.status for r in rows] == ["pending", "failed", "pending"]
    assert "gave up: the delivery job was lost" in rows[1].error
    assert get_queue(NOTIFICATIONS).count == 1


def test_the_demo_receiver_of_this_server_is_allowed_without_configuration(app):
    from webapp.services.notify_transports import Destination

    app.config["NOTIFY_ALLOWLIST"] = []
    app.config["BASE_URL"] = "http://127.0.0.1:5000"
    demo = Destination(kind="webhook", label="x", url="http://127.0.0.1:5000/notifications/demo-webhook")
    other = Destination(kind="webhook", label="x", url="http://127.0.0.1:5000/api/v1/pipelines/")
    assert svc.allowlist(demo) == ["127.0.0.1"] and svc.allowlist(other) == []


def test_step_failed_is_for_the_final_failure_only(app, receiver):
    p = pipeline(None, steps=[{"name": "build", "type": "shell", "parameters": {"command": "true"},
                               "notification_config": {"on_failure": True, "events": ["retrying"],
                                                       "webhook_url": f"{receiver.url}/s"}}])
    ex = execution(p, "running")
    first = attempt(ex, "build", "failed")
    attempt(ex, "build", "retry_scheduled", retry_count=1)
    assert svc.emit("step_failed", ex, first) == []          # a retry follows: not a final failure
    assert len(svc.emit("retrying", ex, first, {"delay_seconds": 5})) == 1
    second = db.session.execute(select(NotificationDelivery)).scalars().all()
    assert [d.event for d in second] == ["retrying"]


def test_the_demo_receiver_is_accepted_without_an_allow_list_but_nothing_else_is(app):
    """`make run` has no allow-list: the demo seed's webhook must still save; other loopback URLs must not."""
    from webapp.services import notifications as n

    app.config["NOTIFY_ALLOWLIST"] = []
    assert n.validate_notification_config({"on_failure": True, "webhook_url": n.demo_webhook_url()}) == {}
    other = n.validate_notification_config({"on_failure": True, "webhook_url": "http://127.0.0.1:5000/other"})
    assert "loopback" in other["webhook_url"]


def test_demo_seed_saves_without_an_allow_list(app):
    from webapp.services.demo import seed

    app.config["NOTIFY_ALLOWLIST"] = []
    app.config["BASE_URL"] = "http://127.0.0.1:5000"  # the demo's receiver is this server's (make run's) own
    assert seed() is True
