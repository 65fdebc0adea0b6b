"""Notifications pages through the real login form: channels (admin), send test, deliveries, demo receiver."""
from __future__ import annotations

import json
import re

from webapp.extensions import db
from webapp.models import NotificationChannel
from webapp.services import notifications as svc

from .helpers import execution, pipeline

HX = {"HX-Request": "true"}


def test_admin_creates_edits_and_deletes_a_channel_without_seeing_secrets(client_as, receiver):
    c = client_as("admin")
    page = c.get("/notifications/channels/new?type=dingtalk").get_data(as_text=True)
    assert 'name="secret"' in page and 'name="apprise_url"' in page and "oapi.dingtalk.com" in page
    bad = c.post("/notifications/channels/new?type=dingtalk", data={"name": "bad name", "url": "ftp://x", "secret": "SECx1234567890abc",
                                                                       "csrf_token": c.token, "active": "on"})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert "letters, digits" in html and "must start with http" in html and 'aria-invalid="true"' in html
    assert "SECx1234567890abc" not in html  # a secret is never echoed back, even after an error
    ok = c.post("/notifications/channels/new?type=dingtalk", data={
        "name": "dt-team", "url": f"{receiver.url}/robot/send?access_token=tok0123456789abcdef",
        "secret": "SECx1234567890abc", "csrf_token": c.token, "active": "on"})
    assert ok.status_code == 303
    listing = c.get("/notifications/channels").get_data(as_text=True)
    assert "dt-team" in listing and "Channel &#39;dt-team&#39; created" in listing
    assert "SECx1234567890abc" not in listing and "tok0123456789abcdef" not in listing
    assert "\u2022\u2022\u2022\u2022" + "0abc" in listing
    ch = db.session.execute(db.select(NotificationChannel)).scalar_one()
    edit = c.get(f"/notifications/channels/{ch.id}/edit").get_data(as_text=True)
    assert "SECx1234567890abc" not in edit and "tok0123456789abcdef" not in edit and "leave blank to keep" in edit
    # saving with blank secret fields keeps them
    resp = c.post(f"/notifications/channels/{ch.id}/edit", data={"name": "dt-ops", "url": "", "secret": "",
                                                               "apprise_url": "", "csrf_token": c.token})
    assert resp.status_code == 303
    db.session.expire_all()
    ch = db.session.get(NotificationChannel, ch.id)
    assert ch.name == "dt-ops" and ch.config["secret"] == "SECx1234567890abc" and not ch.active
    assert c.post(f"/notifications/channels/{ch.id}/delete", data={"csrf_token": c.token}).status_code == 303
    assert "No channels yet" in c.get("/notifications/channels").get_data(as_text=True)


def test_send_test_button_shows_the_true_result(client_as, receiver):
    ch = svc.save_channel({"name": "hook", "channel_type": "webhook", "url": f"{receiver.url}/hook"})
    c = client_as("maintainer")
    page = c.get("/notifications/channels").get_data(as_text=True)
    assert f'hx-post="/notifications/channels/{ch.id}/test"' in page and "New channel" not in page  # not an admin
    ok = c.post(f"/notifications/channels/{ch.id}/test", headers=HX)
    assert ok.status_code == 200 and 'data-status="delivered"' in ok.get_data(as_text=True)
    assert "<html" not in ok.get_data(as_text=True)
    receiver.script("/hook", [(500, "kaboom from the receiver")])
    bad = c.post(f"/notifications/channels/{ch.id}/test", headers=HX).get_data(as_text=True)
    assert 'data-status="failed"' in bad and "The webhook answered HTTP 500: kaboom from the receiver" in bad
    # without HTMX: a flash message on the channels page
    resp = c.post(f"/notifications/channels/{ch.id}/test")
    assert resp.status_code == 303
    assert "kaboom from the receiver" in c.get("/notifications/channels").get_data(as_text=True)


def test_adhoc_test_form(client_as, receiver):
    c = client_as("maintainer")
    resp = c.post("/notifications/test", data={"webhook_url": f"{receiver.url}/x", "channel_type": "slack"}, headers=HX)
    html = resp.get_data(as_text=True)
    assert 'data-status="delivered"' in html and 'id="adhoc-form"' in html
    assert json.loads(receiver.posts("/x")[0]["body"]).keys() == {"text"}
    resp = c.post("/notifications/test", data={"webhook_url": "not a url"}, headers=HX)
    assert resp.status_code == 422 and "must start with http" in resp.get_data(as_text=True)
    resp = c.post("/notifications/test", data={"webhook_url": "http://192.168.1.20/hook"}, headers=HX)
    assert "Refused" in resp.get_data(as_text=True) and "192.168.1.20, a private address" in resp.get_data(as_text=True)


def test_channel_pages_need_the_right_role(client_as):
    viewer = client_as("viewer")
    assert viewer.get("/notifications/channels").status_code == 403
    assert viewer.get("/notifications/channels/new").status_code == 403
    assert viewer.get("/notifications/deliveries").status_code == 200


def test_maintainer_cannot_manage_channels(client_as):
    c = client_as("maintainer")
    assert c.get("/notifications/channels/new").status_code == 403
    assert c.post("/notifications/channels/new", data={"name": "x"}).status_code == 403


def test_deliveries_page_filters_and_polls_while_open(client_as, receiver):
    p = pipeline({"on_failure": True, "events": ["started"], "webhook_url": f"{receiver.url}/p"})
    ex1, ex2 = execution(p, "failed"), execution(p, "failed")
    svc.emit("started", ex1)
    svc.emit("failed", ex2)
    c = client_as("viewer")
    page = c.get("/notifications/deliveries").get_data(as_text=True)
    assert ex1.execution_id in page and ex2.execution_id in page and 'hx-trigger="every 3s" data-poll-hold="focus open-details"' in page
    assert f'href="/executions/{ex1.execution_id}"' in page
    part = c.get(f"/notifications/deliveries?execution={ex1.execution_id}", headers=HX).get_data(as_text=True)
    assert part.lstrip().startswith('<section id="delivery-results"') and ex2.execution_id not in part
    assert "1 delivery matches the filters" in part
    none = c.get("/notifications/deliveries?status=refused").get_data(as_text=True)
    assert "No delivery matches these filters" in none and "every 3s" not in none
    for d in svc.deliveries_for_execution(ex1.id) + svc.deliveries_for_execution(ex2.id):
        d.status = "delivered"
    db.session.commit()
    assert "every 3s" not in c.get("/notifications/deliveries").get_data(as_text=True)  # nothing left to watch


def test_empty_deliveries_page_says_what_to_do(client_as):
    html = client_as("viewer").get("/notifications/deliveries").get_data(as_text=True)
    assert "Nothing has been sent yet" in html and "notification_config" in html


def test_execution_partial(app, receiver):
    from flask import render_template_string

    p = pipeline({"on_failure": True, "webhook_url": f"{receiver.url}/p"})
    ex = execution(p, "failed")
    svc.emit("failed", ex)
    with app.test_request_context():
        html = render_template_string('{% include "notifications/_deliveries.html" %}',
                                      deliveries=svc.deliveries_for_execution(ex.id))
        empty = render_template_string('{% include "notifications/_deliveries.html" %}', deliveries=[])
    assert "pipeline webhook" in html and "st-pending" in html and "[AnsFlow] notify-me failed" in html
    assert "No notifications were sent for this execution" in empty


def test_demo_webhook_receiver(client_as, app):
    app.config["DEMO_RECEIVER"] = True   # dev mode only (tests/security/test_demo_receiver.py)
    ch = svc.save_channel({"name": "demo", "channel_type": "webhook", "secret": "demo-secret-123",
                           "url": "http://127.0.0.1:5000/notifications/demo-webhook"})
    anon = app.test_client()
    body = json.dumps({"event": "failed", "subject": "Demo <b>failed</b>", "text": "x"}).encode()
    from webapp.services.notify_transports import webhook_signature

    headers = {"Content-Type": "application/json", "X-AnsFlow-Timestamp": "1700000000",
               "X-AnsFlow-Signature": webhook_signature("demo-secret-123", "1700000000", body)}
    resp = anon.post("/notifications/demo-webhook", data=body, headers=headers)
    assert resp.status_code == 200 and resp.json["signature"] == "valid signature (channel 'demo')"
    assert anon.post("/notifications/demo-webhook", data=b"plain text").json["signature"] == "unsigned"
    page = client_as("viewer").get("/notifications/demo-webhook").get_data(as_text=True)
    assert "Demo &lt;b&gt;failed&lt;/b&gt;" in page and "valid signature" in page
    assert re.search(r"Received posts", page) and ch.id
