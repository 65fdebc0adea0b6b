"""The execution page's actions through its forms, with real RQ workers: run, cancel a running
execution, bypass, retry a step, resume (each without JS: 303, and with HTMX: the live block)."""
from __future__ import annotations

import pytest

from webapp.services import executions as svc
from webapp.services.pipelines import save_definition

from ..tasks.helpers import attempts, latest, refresh, wait_finished, wait_status

pytestmark = pytest.mark.integration
HX = {"HX-Request": "true"}




def run_from_form(c, pipeline, variables=""):
    resp = c.post("/executions/", data={"pipeline": pipeline.id, "variables": variables})
    assert resp.status_code == 303, resp.get_data(as_text=True)[:400]
    return svc.get_execution(resp.headers["Location"].rsplit("/", 1)[-1])


def test_cancel_a_running_execution_from_the_page(app, workers, client_as, users):
    workers(1)
    p = save_definition({"name": "slow", "steps": [
        {"name": "sleepy", "parameters": {"command": "echo started; sleep 60"}},
        {"name": "after", "parameters": {"command": "echo never"}},
    ]})
    c = client_as("maintainer")
    e = run_from_form(c, p)
    wait_status(e, "sleepy", "running")
    assert client_as("viewer").post(f"/executions/{e.execution_id}/cancel").status_code == 403

    resp = c.post(f"/executions/{e.execution_id}/cancel", headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and body.lstrip().startswith('<section id="execution-live"')
    assert "Cancelled: running steps were stopped." in body
    e = wait_finished(e, timeout=30)
    assert e.status == "cancelled" and latest(e, "sleepy").status == "cancelled" and latest(e, "after").status == "cancelled"

    again = c.post(f"/executions/{e.execution_id}/cancel")  # no JS: flash and back to the page
    assert again.status_code == 303 and again.headers["Location"].endswith(f"/executions/{e.execution_id}")
    page = c.get(again.headers["Location"]).get_data(as_text=True)
    assert "is already cancelled" in page and "Resume" in page and "Cancel execution" not in page


def test_bypass_retry_and_resume_through_the_forms(app, workers, client_as, tmp_path):
    workers(1)
    mark = tmp_path / "ok"
    p = save_definition({"name": "flaky", "steps": [
        {"name": "check", "parameters": {"command": 'echo checking; test -f "$MARK"'}},
        {"name": "after", "parameters": {"command": "echo after"}},
    ]})
    c = client_as("maintainer")

    # bypass: a reason is required (shown in the block, nothing changes), then the downstream goes on
    e = wait_finished(run_from_form(c, p, f"MARK={mark}"))
    assert e.status == "failed" and latest(e, "after").status == "skipped"
    check_id = latest(e, "check").step_id
    resp = c.post(f"/executions/{e.execution_id}/steps/{check_id}/bypass", data={"reason": "  ", "step": check_id}, headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'role="alert">a reason is required<' in body and 'aria-invalid="true"' in body
    assert refresh(e).status == "failed" and latest(e, "check").status == "failed"
    resp = c.post(f"/executions/{e.execution_id}/steps/{check_id}/bypass", data={"reason": "checked by hand"})
    assert resp.status_code == 303
    e = wait_finished(e)
    assert e.status == "success" and latest(e, "after").status == "success"
    check = latest(e, "check")
    assert check.status == "skipped" and check.bypassed and check.skip_reason == "bypassed by maintainer1: checked by hand"
    assert "bypassed by maintainer1: checked by hand" in c.get(f"/executions/{e.execution_id}").get_data(as_text=True)

    # retry a step in place (HTMX): the block comes back polling again
    e = wait_finished(run_from_form(c, p, f"MARK={mark}"))
    assert e.status == "failed"
    mark.write_text("yes")
    resp = c.post(f"/executions/{e.execution_id}/steps/{check_id}/retry", data={"step": check_id}, headers=HX)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Retrying step &#39;check&#39;" in body
    assert 'hx-trigger="every 1s"' in body.split(">", 1)[0] or refresh(e).status == "success"
    e = wait_finished(e)
    assert e.status == "success" and [a.status for a in attempts(e, "check")] == ["failed", "success"]
    assert c.post(f"/executions/{e.execution_id}/steps/{check_id}/retry").status_code == 303  # refused: flash
    assert "only a failed, timed-out or cancelled step can be retried" in c.get(f"/executions/{e.execution_id}").get_data(as_text=True)

    # resume into a new linked execution (no JS: 303 to the child)
    mark.unlink()
    e = wait_finished(run_from_form(c, p, f"MARK={mark}"))
    assert e.status == "failed"
    mark.write_text("yes")
    resp = c.post(f"/executions/{e.execution_id}/resume", data={"from_step": ""})
    assert resp.status_code == 303
    child = svc.get_execution(resp.headers["Location"].rsplit("/", 1)[-1])
    assert child.execution_id != e.execution_id and child.parent_execution_id == e.id
    child = wait_finished(child)
    assert child.status == "success" and child.trigger_type == "resume"
    parent_page = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert f'href="/executions/{child.execution_id}"' in parent_page and "Resumed as" in parent_page
    child_page = c.get(f"/executions/{child.execution_id}").get_data(as_text=True)
    assert "Resumed from" in child_page and f'href="/executions/{e.execution_id}"' in child_page
    assert c.post(f"/executions/{child.execution_id}/resume").status_code == 303  # success cannot be resumed
    assert "Only a failed or cancelled execution can be resumed" in c.get(f"/executions/{child.execution_id}").get_data(as_text=True)
