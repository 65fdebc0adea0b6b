"""Approvers decide with context: the run as it is (version, who started it, masked variables, trigger
data, upstream steps failed and skipped first with their reasons, the run's state, a link to the
timeline) on the card, the page, the API and the notification; approving after a failure must be
confirmed (service, page, API); a cancelled request keeps its reason and its approvers are told."""
from __future__ import annotations

import re
import secrets

import pytest

from webapp.extensions import db
from webapp.models import (ApprovalDecision, ApprovalRequest, NotificationDelivery, StepExecutionHistory,
                           WorkflowExecution, utcnow)
from webapp.services import approvals as svc
from webapp.services.approval_context import approval_context
from webapp.services.pipelines import freeze, save_definition

HX = {"HX-Request": "true"}
TOKEN = "s3cr3t-deploy-token-value"


def definition(name="release"):
    return {
        "name": name,
        "notification_config": {"on_approval_required": True, "webhook_url": "http://127.0.0.1:9/hook"},
        "steps": [
            {"name": "build", "type": "shell", "parameters": {"command": "make"}},
            {"name": "unit tests", "type": "shell", "depends_on": ["build"], "parameters": {"command": "make test"}},
            {"name": "canary", "type": "shell", "depends_on": ["unit tests"], "parameters": {"command": "make canary"}},
            {"name": "lint", "type": "shell", "depends_on": [], "parameters": {"command": "make lint"}},
            {"name": "gate", "type": "approval", "depends_on": ["canary", "build"], "conditions": {"type": "always"},
             "approval": {"users": ["approver1", "approver2"], "required_approvals": 1, "message": "Ship?"}},
            {"name": "deploy", "type": "shell", "depends_on": ["gate"], "parameters": {"command": "make deploy"}},
        ],
    }


# latest attempt of each step: (status, extra columns)
RUN = {
    "build": ("success", {}),
    "unit tests": ("failed", {"exit_code": 2, "error_message": "2 tests failed"}),
    "canary": ("skipped", {"upstream_failed": True, "skip_reason": "on_success: unit tests failed"}),
    "lint": ("failed", {"exit_code": 1, "error_message": "style errors"}),
}


@pytest.fixture
def failed_run(app, users):
    """A gate waiting (rule `always`) in a run where 'unit tests' (upstream) and 'lint' (elsewhere) failed."""
    def make(run=RUN, name="release"):
        pipeline = save_definition(definition(name), owner=users["maintainer"])
        snapshot = freeze(pipeline)
        steps = {s["name"]: s for s in snapshot["steps"]}
        execution = WorkflowExecution(
            pipeline_id=pipeline.id, execution_id="ex-" + secrets.token_hex(5), status="waiting_approval",
            pipeline_snapshot=snapshot, pipeline_version=snapshot.get("version", 1), trigger_type="api",
            started_at=utcnow(), triggered_by_id=users["maintainer"].id,
            context_variables={"env": "production", "DEPLOY_TOKEN": TOKEN, "note": "uses " + TOKEN},
            secret_variables=["DEPLOY_TOKEN"], trigger_data={"ref": "main", "api_key": "k-123456789"},
        )
        db.session.add(execution)
        db.session.flush()
        for step_name, (status, extra) in run.items():
            if step_name == "build":  # an earlier failed attempt: only the latest one counts
                db.session.add(StepExecutionHistory(execution_id=execution.id, step_id=steps[step_name]["id"],
                                                    step_name=step_name, status="failed", retry_count=0))
            db.session.add(StepExecutionHistory(execution_id=execution.id, step_id=steps[step_name]["id"],
                                                step_name=step_name, status=status,
                                                retry_count=1 if step_name == "build" else 0, **extra))
        attempt = StepExecutionHistory(execution_id=execution.id, step_id=steps["gate"]["id"], step_name="gate",
                                       status="waiting_approval")
        db.session.add(attempt)
        db.session.flush()
        req = svc.open_request(execution, attempt, steps["gate"])
        db.session.commit()
        return req
    return make


def test_the_context_of_a_run_with_failures(failed_run):
    req = failed_run()
    c = approval_context(req)
    assert c["pipeline"]["name"] == "release" and c["pipeline"]["version"] == 1
    assert c["execution"]["started_by"] == "maintainer1" and c["execution"]["trigger_type"] == "api"
    assert c["execution"]["url"].endswith("/executions/" + req.execution.execution_id)
    # upstream of the gate: failed first, then skipped, then the rest; each with why
    assert [(s["name"], s["status_label"], s["reason"]) for s in c["upstream"]] == [
        ("unit tests", "failed", "exit code 2: 2 tests failed"),
        ("canary", "skipped (upstream failed)", "upstream failed: on_success: unit tests failed"),
        ("build", "succeeded", ""),
    ]
    assert [s["name"] for s in c["elsewhere_failed"]] == ["lint"]
    assert c["run"]["summary"] == "2 failed, 1 skipped, 1 succeeded, 1 not started so far"
    assert c["failed_count"] == 2 and c["failed_steps"] == ["unit tests", "lint"] and c["needs_confirmation"]
    assert "2 steps failed in this run (unit tests, lint)" in c["warning"]
    variables = {v["name"]: v for v in c["variables"]}
    assert variables["env"]["value"] == "production" and not variables["env"]["secret"]
    assert variables["DEPLOY_TOKEN"]["secret"] and TOKEN not in str(c)  # masked, also inside other values
    trigger = {v["name"]: v["value"] for v in c["trigger"]}
    assert trigger["ref"] == "main" and "k-123456789" not in trigger["api_key"]


def test_a_clean_run_needs_no_confirmation(failed_run, users):
    req = failed_run(run={"build": ("success", {}), "unit tests": ("success", {}), "canary": ("success", {}),
                          "lint": ("running", {})})
    c = approval_context(req)
    assert c["failed_count"] == 0 and c["warning"] == "" and c["run"]["summary"] == (
        "3 succeeded, 1 running, 1 not started so far")
    assert svc.decide(req.id, users["approver"], "approve").changed


def test_approving_after_a_failure_must_be_confirmed(failed_run, users):
    req = failed_run()
    with pytest.raises(svc.NeedsConfirmation) as e:
        svc.decide(req.id, users["approver"], "approve")
    assert e.value.failed == ["lint", "unit tests"]
    assert e.value.fields["confirm_failures"].startswith("2 steps failed in this run (lint, unit tests)")
    # the approver saw one failure; a second happened since: refused again, and said so
    with pytest.raises(svc.NeedsConfirmation, match="Since you looked, more steps failed"):
        svc.decide(req.id, users["approver"], "approve", confirm_failures=1)
    assert db.session.query(ApprovalDecision).count() == 0
    out = svc.decide(req.id, users["approver"], "approve", "known flaky lint", confirm_failures=2)
    assert out.changed and out.request.status == "approved"


def test_rejecting_needs_no_confirmation(failed_run, users):
    req = failed_run()
    assert svc.decide(req.id, users["approver"], "reject", "tests are red").request.status == "rejected"


def test_inbox_card_and_page_show_the_context_and_ask_for_the_confirmation(client_as, failed_run):
    req = failed_run()
    c = client_as("approver")
    html = c.get("/approvals/").get_data(as_text=True)
    card = re.search(rf'<article [^>]*id="approval-{req.id}".*?</article>', html, re.S).group(0)
    assert "v1" in card and "Maintainer One" in card and "live timeline" in card
    assert f'href="/executions/{req.execution.execution_id}"' in card
    assert "2 failed, 1 skipped, 1 succeeded, 1 not started so far" in card
    assert card.index("unit tests") < card.index("canary") < card.index("build")  # failed, skipped, then the rest
    assert "2 tests failed" in card and "skipped (upstream failed)" in card
    assert "lint" in card and "not upstream of this gate" in card
    assert TOKEN not in card and "production" in card
    assert re.search(r'<input type="checkbox"[^>]*name="confirm_failures" value="2" required', card)
    assert "I have seen that 2 steps failed (unit tests, lint)" in card
    assert re.search(r'value="reject" formnovalidate', card)
    page = c.get(f"/approvals/{req.id}").get_data(as_text=True)
    assert "I have seen that 2 steps failed" in page and "2 tests failed" in page and TOKEN not in page
    assert "Variables (3) and trigger data (2)" in page


def test_the_page_refuses_an_unconfirmed_approval_in_place(client_as, failed_run):
    req = failed_run()
    c = client_as("approver")
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "approve", "view": "row"}, headers=HX)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert re.search(r'name="confirm_failures" value="2" required\s+aria-invalid="true"', html)
    assert "Confirm that you have seen it to approve." in html and 'role="alert"' in html
    assert db.session.query(ApprovalDecision).count() == 0
    # without JavaScript: the refusal is flashed on the page it came from
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "approve", "confirm_failures": "1"})
    assert resp.status_code == 303
    assert "Since you looked, more steps failed" in c.get(resp.headers["Location"]).get_data(as_text=True)
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "approve", "confirm_failures": "2", "view": "row"},
                  headers=HX)
    assert "You approved: gate continues." in resp.get_data(as_text=True)


def test_the_api_shows_the_context_and_requires_confirm_failures(api_as, failed_run):
    req = failed_run()
    api = api_as("approver")
    body = api.get(f"/api/v1/approval-requests/{req.id}/").json
    assert body["context"]["failed_steps"] == ["unit tests", "lint"] and body["context"]["needs_confirmation"]
    assert body["context"]["upstream"][0]["name"] == "unit tests" and TOKEN not in str(body)
    url = f"/api/v1/approval-requests/{req.id}/respond/"
    resp = api.post(url, json={"action": "approve"})
    assert resp.status_code == 422 and "Confirm that you have seen it" in resp.json["fields"]["confirm_failures"]
    bad = api.post(url, json={"action": "approve", "confirm_failures": "yes"})
    assert bad.status_code == 422 and bad.json["fields"]["confirm_failures"] == "must be true or false"
    step_url = f"/api/v1/pipelines/executions/{req.execution.execution_id}/steps/{req.step_id}/approve/"
    assert api.post(step_url, json={"approved": True}).status_code == 422
    assert db.session.query(ApprovalDecision).count() == 0
    ok = api.post(step_url, json={"approved": True, "comment": "seen", "confirm_failures": True})
    assert ok.status_code == 200 and ok.json["status"] == "approved"


def test_the_approval_notification_carries_the_context(failed_run):
    req = failed_run()
    svc.on_opened(req.id)
    [row] = db.session.query(NotificationDelivery).filter_by(event="approval_required").all()
    assert row.subject == "[AnsFlow] Approval needed: gate in release (2 failed)"
    body = row.body
    assert "Run:       2 failed, 1 skipped, 1 succeeded, 1 not started so far" in body
    assert "  - unit tests: failed (exit code 2: 2 tests failed)" in body
    assert "  - canary: skipped (upstream failed)" in body
    assert body.index("unit tests: failed") < body.index("canary: skipped") < body.index("build: succeeded")
    assert "Failed elsewhere: lint (exit code 1: style errors)" in body
    assert "by maintainer1 (api)" in body and "env=production" in body and "ref=main" in body
    assert "WARNING:   2 steps failed in this run" in body
    assert TOKEN not in body and "k-123456789" not in body


def test_a_cancelled_request_keeps_the_reason_and_tells_the_approvers(failed_run):
    req = failed_run()
    execution = db.session.get(WorkflowExecution, req.execution_id)
    after: list = []
    assert svc.cancel_for_execution(execution, "fail_fast: unit tests failed", after,
                                    attempt_id=req.attempt_id) == 1
    db.session.commit()
    for fn in after:
        fn()
    db.session.expire_all()
    req = db.session.get(ApprovalRequest, req.id)
    assert (req.status, req.outcome_reason) == ("cancelled", "fail_fast: unit tests failed")
    [row] = db.session.query(NotificationDelivery).filter_by(event="approval_cancelled").all()
    assert row.subject == "[AnsFlow] Approval cancelled: gate in release"
    assert "Cancelled: fail_fast: unit tests failed (nothing left to decide)" in row.body
    # a second call finds nothing pending and tells nobody again
    assert svc.cancel_for_execution(execution, "again", after) == 0
