"""In Chromium: a maintainer runs a pipeline from the run form, watches the timeline and the log
update live until success without reloading, then opens the dashboard; Cancel asks first, and a
cancelled run says which steps did not run."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from webapp.services.pipelines import save_definition

from ..conftest import browser_login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_run_and_watch_live_then_dashboard(page, live_server, workers, users):
    workers(1)
    save_definition({"name": "demo", "steps": [
        {"name": "stream", "parameters": {"command": 'echo "first-line for $TARGET"; sleep 3; echo second-line'}},
        {"name": "finish", "parameters": {"command": "echo done"}},
    ]}, owner=users["maintainer"])
    browser_login(page, "maintainer1")

    page.get_by_role("link", name="Executions", exact=True).click()
    page.get_by_text("No executions yet.").wait_for()
    page.get_by_role("link", name="Run a pipeline").first.click()
    page.select_option("#r-pipeline", label="demo (v1, 2 steps)")
    page.fill("#r-variables", "TARGET=staging\nsecret:API_KEY=hunter22")
    page.fill("#r-note", "e2e run")
    page.get_by_role("button", name="Run pipeline").click()
    page.wait_for_url(re.compile(r".*/executions/[0-9a-f]{16}$"))
    page.evaluate("window.__sameDocument = true")  # survives only if the page is never reloaded

    status = page.locator("#execution-status")
    assert status.inner_text() in ("running", "queued")
    assert "hunter2" not in page.content()
    # the running step's log streams in while the execution runs
    log = page.locator('.ex-step[data-step="stream"] pre.log')
    expect(log).to_contain_text("first-line for staging", timeout=20000)
    assert "second-line" not in log.inner_text() and status.inner_text() == "running"
    expect(page.locator('.gantt-row[data-step="stream"] .gantt-bar')).to_have_count(1)
    # keyboard focus survives the polling swaps (focusable elements of the live block have ids)
    page.locator(".gantt-label a").first.focus()
    before = page.locator("#execution-duration").inner_text()
    expect(page.locator("#execution-duration")).not_to_have_text(before, timeout=5000)  # a swap happened
    assert page.evaluate("document.activeElement.id").startswith("gantt-link-")

    expect(status).to_have_text("success", timeout=30000)
    expect(page.locator("#execution-progress")).to_have_text("2/2")
    expect(page.locator('.gantt-row .gantt-bar[data-status="success"]')).to_have_count(2)
    expect(page.locator('#execution-live')).not_to_have_attribute("hx-trigger", re.compile(".*"))  # polling stopped
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("svg.dag .dag-node.st-success").count() == 2

    page.get_by_role("link", name="Dashboard", exact=True).click()
    page.wait_for_url(re.compile(r".*/dashboard/$"))
    expect(page.locator("#stat-total")).to_have_text("1")
    expect(page.locator("#stat-success-rate")).to_have_text("100.0%")
    assert page.locator(".db-pipelines").get_by_role("link", name="demo").count() == 1


def test_cancel_asks_first_and_the_cancelled_run_says_what_did_not_run(page, live_server, workers, users):
    workers(1)
    p = save_definition({"name": "slow", "steps": [
        {"name": "sleepy", "parameters": {"command": "echo started; sleep 60"}},
        {"name": "after", "parameters": {"command": "echo never"}},
    ]}, owner=users["maintainer"])
    from webapp.services import executions as svc

    e = svc.start(p)
    browser_login(page, "maintainer1")
    page.goto(f"/executions/{e.execution_id}")
    expect(page.locator('.ex-step[data-step="sleepy"] pre.log')).to_contain_text("started", timeout=20000)

    answers = []

    def answer(dialog):
        answers.append(dialog.message)
        dialog.dismiss() if len(answers) == 1 else dialog.accept()

    page.on("dialog", answer)
    page.locator("#cancel-execution").click()  # dismissed: nothing happens
    expect(page.locator("#execution-status")).to_have_text("running")
    assert answers and answers[0].startswith("Cancel this execution?")
    assert page.url.endswith(f"/executions/{e.execution_id}")  # no GET confirm page with JS

    page.locator("#cancel-execution").click()  # accepted
    expect(page.locator("#execution-status")).to_have_text("cancelled", timeout=30000)
    expect(page.locator("#execution-not-run")).to_have_text("1 not run")
    expect(page.locator("progress.ex-progress-cancelled")).to_have_count(1)
    after = page.locator('.ex-step[data-step="after"]')
    expect(after.locator(".ex-step-head .pill")).to_have_text("not run")
    expect(after.get_by_role("button")).to_have_count(0)
    expect(page.locator('.ex-step[data-step="sleepy"]').get_by_role("button", name="Retry step")).to_have_count(1)
