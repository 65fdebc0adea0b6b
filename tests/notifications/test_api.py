"""The notifications JSON API: channels (secrets masked), deliveries, test sends, step settings."""
from __future__ import annotations

import json

from webapp.extensions import db
from webapp.models import Pipeline
from webapp.services import notifications as svc

from .helpers import execution, pipeline


def test_channel_crud_never_returns_secrets(api_as, receiver):
    admin = api_as("admin")
    resp = admin.post("/api/v1/notification-channels/", json={
        "name": "ops", "channel_type": "webhook", "config": {"url": f"{receiver.url}/hook", "secret": "topsecret-9f8e7d"}})
    assert resp.status_code == 201, resp.json
    ch = resp.json
    assert ch["config"]["secret"] == "\u2022" * 4 + "8e7d"
    assert "topsecret" not in json.dumps(ch)
    # update without the secret keeps it; the signature still uses it
    resp = admin.put(f"/api/v1/notification-channels/{ch['id']}/", json={"config": {"url": f"{receiver.url}/hook2"}})
    assert resp.status_code == 200 and resp.json["config"]["url"].endswith("/hook2")
    assert svc.get_channel(ch["id"]).config["secret"] == "topsecret-9f8e7d"
    listing = admin.get("/api/v1/notification-channels/")
    assert listing.status_code == 200 and [c["name"] for c in listing.json["results"]] == ["ops"]
    assert "topsecret" not in listing.get_data(as_text=True)
    bad = admin.post("/api/v1/notification-channels/", json={"name": "ops", "channel_type": "pager"})
    assert bad.status_code == 422 and set(bad.json) == {"error", "fields"} and "channel_type" in bad.json["fields"]
    dup = admin.post("/api/v1/notification-channels/", json={"name": "ops", "channel_type": "webhook",
                                                              "config": {"url": "https://example.com/x"}})
    assert dup.status_code == 422 and "already exists" in dup.json["fields"]["name"]


def test_channel_in_use_cannot_be_deleted(api_as, receiver):
    admin = api_as("admin")
    ch = admin.post("/api/v1/notification-channels/", json={
        "name": "ops", "channel_type": "webhook", "config": {"url": f"{receiver.url}/hook"}}).json
    pipeline({"on_failure": True, "channels": ["ops"]})
    resp = admin.delete(f"/api/v1/notification-channels/{ch['id']}/")
    assert resp.status_code == 409 and "notify-me" in resp.json["error"]
    assert admin.get(f"/api/v1/notification-channels/{ch['id']}/").json["used_by"] == ["notify-me"]
    p = db.session.execute(db.select(Pipeline)).scalar_one()
    p.notification_config = None
    db.session.commit()
    assert admin.delete(f"/api/v1/notification-channels/{ch['id']}/").status_code == 204
    assert admin.get(f"/api/v1/notification-channels/{ch['id']}/").status_code == 404


def test_renaming_a_channel_keeps_pipelines_working(api_as, receiver):
    admin = api_as("admin")
    ch = admin.post("/api/v1/notification-channels/", json={
        "name": "ops", "channel_type": "webhook", "config": {"url": f"{receiver.url}/hook"}}).json
    p = pipeline({"on_failure": True, "channels": ["ops"]})
    assert admin.put(f"/api/v1/notification-channels/{ch['id']}/", json={"name": "ops-team"}).status_code == 200
    db.session.expire_all()
    assert db.session.get(Pipeline, p.id).notification_config["channels"] == ["ops-team"]


def test_test_endpoint_reports_the_true_result(api_as, receiver):
    api = api_as("maintainer")
    ok = api.post("/api/v1/pipelines/notifications/test/", json={"webhook_url": f"{receiver.url}/ok"})
    assert ok.status_code == 200 and ok.json["success"] is True and ok.json["status"] == "delivered"
    assert len(receiver.posts("/ok")) == 1
    receiver.script("/broken", [(500, "database is on fire")])
    bad = api.post("/api/v1/pipelines/notifications/test/", json={"webhook_url": f"{receiver.url}/broken"})
    assert bad.status_code == 200 and bad.json["success"] is False and bad.json["status"] == "failed"
    assert bad.json["error"] == "The webhook answered HTTP 500: database is on fire"
    refused = api.post("/api/v1/pipelines/notifications/test/", json={"webhook_url": "http://10.0.0.7/hook"})
    assert refused.json["status"] == "refused" and "10.0.0.7, a private address" in refused.json["error"]
    missing = api.post("/api/v1/pipelines/notifications/test/", json={"channel": "nope"})
    assert missing.status_code == 422 and missing.json["fields"]["channel"] == "No channel named 'nope'."
    assert api.post("/api/v1/pipelines/notifications/test/", json={}).status_code == 422
    # every test send is in the delivery log
    log = api.get("/api/v1/notification-deliveries/?event=test").json
    assert log["count"] == 3 and {d["status"] for d in log["results"]} == {"delivered", "failed", "refused"}


def test_put_step_notifications_validates_saves_and_bumps_version(api_as, receiver, users):
    p = pipeline(None, owner=users["maintainer"])  # the owner may edit it (an ownerless one is for admins)
    step = p.steps[0]
    version = p.version
    api = api_as("maintainer")
    url = f"/api/v1/pipelines/{p.id}/steps/{step.id}/notifications/"
    bad = api.put(url, json={"on_failure": True, "channels": ["ghost"], "events": ["boom"]})
    assert bad.status_code == 422 and set(bad.json["fields"]) == {"channels", "events"}
    cfg = {"on_failure": True, "events": ["retrying"], "webhook_url": f"{receiver.url}/s",
           "message_template": "{{ step.name }} failed: {{ error }}"}
    ok = api.put(url, json=cfg)
    assert ok.status_code == 200, ok.json
    assert ok.json["notification_config"] == cfg and ok.json["pipeline_version"] == version + 1
    db.session.expire_all()
    assert db.session.get(Pipeline, p.id).steps[0].notification_config == cfg
    assert api.put(url, json={"notification_config": None}).json["notification_config"] is None
    assert api.put(f"/api/v1/pipelines/{p.id}/steps/999999/notifications/", json={}).status_code == 404


def test_delivery_list_filters(api_as, receiver):
    p = pipeline({"on_failure": True, "events": ["started"], "webhook_url": f"{receiver.url}/p"})
    ex1 = execution(p, "failed")
    ex2 = execution(p, "failed")
    svc.emit("started", ex1)
    svc.emit("failed", ex1)
    svc.emit("failed", ex2)
    api = api_as("viewer")
    everything = api.get("/api/v1/notification-deliveries/").json
    assert everything["count"] == 3 and everything["results"][0]["execution_id"] == ex2.execution_id
    by_ex = api.get(f"/api/v1/notification-deliveries/?execution={ex1.execution_id}").json
    assert [d["event"] for d in by_ex["results"]] == ["failed", "started"]
    assert api.get("/api/v1/notification-deliveries/?status=pending&event=failed").json["count"] == 2
    assert api.get("/api/v1/notification-deliveries/?channel=pipeline%20webhook&limit=1").json["count"] == 3
    assert api.get("/api/v1/notification-deliveries/?status=lost").status_code == 422
    one = api.get(f"/api/v1/notification-deliveries/{by_ex['results'][0]['id']}/").json
    assert one["subject"] == "[AnsFlow] notify-me failed" and "Pipeline:  notify-me" in one["body"]


# One client per test: requests inside the test's app context share flask.g, so the first
# authenticated user would stick for a second client.

def test_maintainers_read_channels_but_cannot_change_them(api_as):
    api = api_as("maintainer")
    assert api.get("/api/v1/notification-channels/").status_code == 200
    assert api.post("/api/v1/notification-channels/", json={}).status_code == 403
    assert api.put("/api/v1/notification-channels/1/", json={}).status_code == 403
    assert api.delete("/api/v1/notification-channels/1/").status_code == 403


def test_viewers_see_deliveries_only(api_as):
    api = api_as("viewer")
    assert api.get("/api/v1/notification-deliveries/").status_code == 200
    assert api.get("/api/v1/notification-channels/").status_code == 403
    assert api.post("/api/v1/pipelines/notifications/test/", json={"channel": "x"}).status_code == 403
    assert api.put("/api/v1/pipelines/1/steps/1/notifications/", json={}).status_code == 403
