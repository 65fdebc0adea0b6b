"""Chromium: a maintainer runs a pipeline with a 2-of-3 approval gate; one approver approves from
their inbox, a second one approves on the execution page's gate (by keyboard); the step runs; the
maintainer could not approve their own request. The row updates in place and the badge follows."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from webapp.extensions import db
from webapp.models import ApprovalRequest, StepExecutionHistory, WorkflowExecution
from webapp.services.pipelines import save_definition

from ..conftest import browser_login, wait_for

pytestmark = pytest.mark.e2e


def fresh():
    db.session.commit()
    db.session.expire_all()


def new_page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15000)
    return pg


def test_two_of_three_gate_through_the_inbox(page, browser, live_server, workers, users, tmp_path):
    workers(1)
    runs = tmp_path / "deploy.runs"
    pipeline = save_definition({
        "name": "Web app release",
        "steps": [
            {"name": "build", "type": "shell", "parameters": {"command": "echo building"}},
            {"name": "release approval", "type": "approval",
             "approval": {"users": ["approver1", "approver2", "approver3", "role:maintainer"], "required_approvals": 2,
                          "timeout_hours": 24, "message": "Ship this build to production?"}},
            {"name": "deploy", "type": "shell", "parameters": {"command": 'echo deployed >> "$RUNS_FILE"'}},
        ],
    }, owner=users["maintainer"])

    # The maintainer runs it from the browser and lands on the execution page, which shows the gate.
    browser_login(page, "maintainer1")
    page.goto(f"/executions/new?pipeline={pipeline.id}")
    page.fill("#r-variables", f"RUNS_FILE={runs}")
    page.get_by_role("button", name="Run pipeline").click()
    page.wait_for_url(re.compile(r".*/executions/[0-9a-f]+$"))
    fresh()
    execution = db.session.execute(db.select(WorkflowExecution).filter_by(pipeline_id=pipeline.id)).scalars().one()
    assert page.url.endswith(execution.execution_id)

    def request_row():
        fresh()
        return db.session.execute(db.select(ApprovalRequest).filter_by(execution_id=execution.id)).scalars().first()
    req = wait_for(request_row, message="the approval request")
    row = f"#approval-{req.id}"
    gate = f"#approval-gate-{req.id}"
    # no reload: the execution page brings the gate in by itself when the request opens
    expect(page.locator(gate)).to_contain_text("0 of 2")
    expect(page.locator(f"{gate} button[value=approve]")).to_have_count(0)
    expect(page.locator(gate)).to_contain_text("cannot approve your own request")

    # The maintainer started it: listed (role:maintainer), yet cannot approve their own request.
    page.goto("/approvals/")
    expect(page.locator(row)).to_have_count(0)  # not "waiting for me"
    page.get_by_role("link", name="Requested by me").click()
    expect(page.locator(row)).to_contain_text("Ship this build to production?")
    expect(page.locator(row)).to_contain_text("0 of 2")
    expect(page.locator(f"{row} button[value=approve]")).to_have_count(0)
    expect(page.locator(row)).to_contain_text("cannot approve your own request")

    # First approver: from the inbox, with a comment; the row updates in place, the badge empties.
    a1 = new_page(browser, live_server)
    browser_login(a1, "approver1")
    expect(a1.locator("#approvals-badge")).to_have_text("1")
    a1.get_by_role("link", name=re.compile("Approvals")).click()
    expect(a1.locator(row)).to_contain_text("Ship this build to production?")
    expect(a1.locator(row)).to_contain_text("release approval")
    expect(a1.locator(row)).to_contain_text("maintainer1")
    expect(a1.locator(row)).to_contain_text("0 of 2")
    a1.evaluate("window.__sameDocument = true")
    a1.locator(f"{row} textarea[name=comment]").fill("Checked the changelog")
    a1.locator(f"{row} button[value=approve]").click()
    expect(a1.locator(row)).to_contain_text("You approved. 1 of 2 approvals so far.")
    expect(a1.locator(row)).to_contain_text("Checked the changelog")
    expect(a1.locator(f"{row} button[value=approve]")).to_have_count(0)
    expect(a1.locator("#approvals-badge")).to_have_text("")
    assert a1.evaluate("window.__sameDocument") is True  # no page reload
    fresh()
    assert db.session.get(ApprovalRequest, req.id).status == "pending"

    # Second approver: on the execution page's gate, keyboard only.
    a2 = new_page(browser, live_server)
    browser_login(a2, "approver2")
    a2.goto(f"/executions/{execution.execution_id}")
    expect(a2.locator(gate)).to_contain_text("1 of 2")
    expect(a2.locator(gate)).to_contain_text("Checked the changelog")
    a2.locator(f"{gate} textarea[name=comment]").focus()
    a2.keyboard.type("Go")
    a2.keyboard.press("Tab")
    expect(a2.locator(f"{gate} button[value=approve]")).to_be_focused()
    a2.keyboard.press("Enter")
    expect(a2.locator(gate)).to_contain_text("You approved: release approval continues.")
    expect(a2.locator(f"{gate} .pill").first).to_have_text("approved")

    # The step runs, once.
    def done():
        fresh()
        e = db.session.get(WorkflowExecution, execution.id)
        return e if e.status in ("success", "failed", "cancelled") else None
    assert wait_for(done, timeout=60, message="the execution to finish").status == "success"
    assert runs.read_text().splitlines() == ["deployed"]
    deploy = db.session.execute(db.select(StepExecutionHistory).filter_by(
        execution_id=execution.id, step_name="deploy")).scalars().all()
    assert [a.status for a in deploy] == ["success"]

    # The audit tells the story; the maintainer still cannot approve (now: already approved).
    page.goto(f"/approvals/{req.id}")
    expect(page.locator(".timeline li").nth(1)).to_contain_text(re.compile(r"approver1\s+approved: Checked the changelog"))
    expect(page.locator(".timeline li").nth(2)).to_contain_text(re.compile(r"approver2\s+approved: Go"))
    expect(page.locator(".timeline")).to_contain_text("quorum reached: 2 of 2 approvals (approver1, approver2)")
    expect(page.locator("button[value=approve]")).to_have_count(0)
    for pg in (a1, a2):
        pg.context.close()


def test_an_approver_sees_the_failed_upstream_step_and_must_confirm(page, workers, users, tmp_path):
    """The gate's rule is `always`, so it still opens after 'unit tests' failed: the card names the failure
    with its reason, Approve needs the "I have seen that 1 step failed" tick (the browser asks for it, and
    the server refuses without it too), then the gated deploy runs once."""
    from webapp.services import executions

    workers(1)
    runs = tmp_path / "deploy.runs"
    pipeline = save_definition({
        "name": "Release with a red test",
        "steps": [
            {"name": "build", "type": "shell", "parameters": {"command": "echo building"}},
            {"name": "unit tests", "type": "shell", "depends_on": ["build"],
             "parameters": {"command": "echo '3 tests failed' >&2; exit 1"}},
            {"name": "release approval", "type": "approval", "depends_on": ["unit tests"],
             "conditions": {"type": "always"},
             "approval": {"users": ["approver1"], "required_approvals": 1, "message": "Ship anyway?"}},
            {"name": "deploy", "type": "shell", "depends_on": ["release approval"],
             "parameters": {"command": 'echo deployed >> "$RUNS_FILE"'}},
        ],
    }, owner=users["maintainer"])
    execution = executions.start(pipeline, trigger_data={}, variables={"RUNS_FILE": str(runs)},
                                 user=users["maintainer"])

    def request_row():
        fresh()
        return db.session.execute(db.select(ApprovalRequest).filter_by(execution_id=execution.id)).scalars().first()
    req = wait_for(request_row, message="the approval request")
    row = f"#approval-{req.id}"

    browser_login(page, "approver1")
    page.goto("/approvals/")
    card = page.locator(row)
    expect(card).to_contain_text("1 step failed in this run (unit tests)")
    expect(card).to_contain_text("Run: 1 failed, 1 succeeded, 1 not started so far")
    failed = card.locator(".upstream-steps li").first
    expect(failed).to_contain_text("unit tests")
    expect(failed).to_contain_text("failed")
    expect(failed).to_contain_text("exited with code 1")
    expect(card.get_by_role("link", name="live timeline")).to_have_attribute(
        "href", f"/executions/{execution.execution_id}")
    confirm = card.get_by_label(re.compile(r"I have seen that 1 step failed \(unit tests\)"))
    page.evaluate("window.__sameDocument = true")

    # Approve without the tick: the browser asks for it and nothing is sent
    card.locator("button[value=approve]").click()
    assert confirm.evaluate("el => el.validity.valueMissing") is True
    fresh()
    assert db.session.get(ApprovalRequest, req.id).decisions == []

    # the server refuses it as well (a client that skips the browser's check)
    confirm.evaluate("el => el.removeAttribute('required')")
    card.locator("button[value=approve]").click()
    expect(card).to_contain_text("Confirm that you have seen it to approve.")
    fresh()
    assert db.session.get(ApprovalRequest, req.id).status == "pending"

    # tick, approve: in place, and the gated step runs
    card.get_by_label(re.compile(r"I have seen that 1 step failed")).check()
    card.locator("textarea[name=comment]").fill("Known flaky test, shipping the fix")
    card.locator("button[value=approve]").click()
    expect(card).to_contain_text("You approved: release approval continues.")
    assert page.evaluate("window.__sameDocument") is True

    def done():
        fresh()
        e = db.session.get(WorkflowExecution, execution.id)
        return e if e.status in ("success", "failed", "cancelled") else None
    e = wait_for(done, timeout=60, message="the execution to finish")
    assert e.status == "failed"  # unit tests still failed: the run says so
    assert runs.read_text().splitlines() == ["deployed"]
    fresh()
    assert db.session.get(ApprovalRequest, req.id).status == "approved"
