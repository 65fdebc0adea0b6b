"""In Chromium, issue 12's scenario: unit tests fail, the canary group is skipped, and a 2-of-3 gated
deploy whose expression is true (env = production) must be skipped, with no approval request,
and the run page must say why."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from webapp.extensions import db
from webapp.models import ApprovalRequest, StepExecutionHistory, WorkflowExecution
from webapp.services.pipelines import save_definition

from ..conftest import browser_login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_failed_tests_never_reach_a_gated_deploy(page, live_server, workers, users):
    workers(1)
    save_definition({"name": "release", "groups": [{"id": "canary", "name": "canary", "sync_policy": "wait_all"}],
                     "steps": [
        {"name": "unit tests", "depends_on": [], "parameters": {"command": "echo 3 tests failed; exit 1"}},
        {"name": "canary eu", "depends_on": [], "parallel_group": "canary", "parameters": {"command": "echo canary"},
         "conditions": {"expression": 'variables.canary == "yes"'}},
        {"name": "deploy", "depends_on": ["unit tests", "canary eu"], "parameters": {"command": "echo DEPLOYED"},
         "conditions": {"type": "expression", "expression": '$variables.env === "production"'},
         "approval": {"users": ["approver1", "approver2", "approver3"], "required_approvals": 2}},
    ]}, owner=users["maintainer"])
    browser_login(page, "maintainer1")

    page.goto("/executions/new")
    page.select_option("#r-pipeline", label="release (v1, 3 steps)")
    page.fill("#r-variables", "env=production\ncanary=no")
    page.get_by_role("button", name="Run pipeline").click()
    page.wait_for_url(re.compile(r".*/executions/[0-9a-f]{16}$"))
    execution_id = page.url.rsplit("/", 1)[1]

    expect(page.locator("#execution-status")).to_have_text("failed", timeout=30000)
    deploy = page.locator('.ex-step[data-step="deploy"]')
    expect(deploy).to_contain_text("unit tests failed")
    expect(deploy).to_contain_text("rule on_success")
    expect(deploy.locator(".pill").first).to_have_text("skipped (upstream failed)")
    expect(page.locator('.ex-step[data-step="canary eu"] .pill').first).to_have_text("skipped")  # its own condition
    assert "waiting" not in deploy.inner_text().lower()

    db.session.expire_all()
    ex = db.session.execute(db.select(WorkflowExecution).filter_by(execution_id=execution_id)).scalar_one()
    assert db.session.execute(db.select(ApprovalRequest).filter_by(execution_id=ex.id)).first() is None
    attempts = {a.step_id: a for a in db.session.execute(
        db.select(StepExecutionHistory).filter_by(execution_id=ex.id)).scalars()}
    by_name = {s["name"]: s["id"] for s in ex.pipeline_snapshot["steps"]}
    deploy_attempt = attempts[by_name["deploy"]]
    assert deploy_attempt.status == "skipped" and deploy_attempt.upstream_failed
    assert "DEPLOYED" not in (deploy_attempt.logs or "")
    # nothing waits in anyone's inbox
    page.get_by_text("Sign out").click()
    page.wait_for_url(re.compile(r".*/login.*"))
    browser_login(page, "approver1")
    page.wait_for_url(re.compile(r".*/pipelines/.*"))
    page.goto("/approvals/")
    assert "deploy" not in page.locator("main").inner_text()
