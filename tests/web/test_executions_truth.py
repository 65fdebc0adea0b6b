"""Run pages, lists and the API tell the truth (issue 12), with real RQ workers: a group skipped
because of an upstream failure, a success with a bypassed step, a cancelled run, and retry or
resume with the definition the execution ran or the pipeline's current one."""
from __future__ import annotations

import copy
import re

import pytest

from webapp.services import executions as svc
from webapp.services.pipelines import export_definition, save_definition

from ..tasks.helpers import attempts, latest, make_pipeline, refresh, run, wait_finished, wait_status

pytestmark = pytest.mark.integration
HX = {"HX-Request": "true"}


def test_a_group_skipped_because_upstream_failed_is_not_called_failed(app, workers, client_as, api_as):
    workers(1)
    p = make_pipeline([
        {"name": "unit tests", "parameters": {"command": "exit 1"}},
        {"name": "c1", "parallel_group": "canary", "parameters": {"command": "true"}},
        {"name": "c2", "parallel_group": "canary", "parameters": {"command": "true"}},
        {"name": "deploy", "parameters": {"command": "true"}},
    ], groups=[{"id": "canary", "name": "canary", "sync_policy": "wait_all"}])
    e = wait_finished(run(p))
    assert e.status == "failed"
    assert "failed groups" not in e.status_reason and "skipped (upstream failed): canary" in e.status_reason
    assert "canary failed" not in latest(e, "deploy").skip_reason
    assert "canary was skipped (upstream failed)" in latest(e, "deploy").skip_reason

    html = client_as("viewer").get(f"/executions/{e.execution_id}").get_data(as_text=True)
    group = re.search(r'<li data-group="canary" data-status="(\w+)">(.*?)</li>', html, re.S)
    assert group and group.group(1) == "skipped" and "skipped (upstream failed)" in group.group(2)
    body = api_as("viewer").get(f"/api/v1/workflow-executions/{e.execution_id}/").get_json()
    (recorded,) = body["recovery_point"]["groups"].values()
    assert recorded["status"] == "skipped" and recorded["reason"].startswith("skipped (upstream failed): c1, c2")


def test_a_success_with_a_bypassed_step_says_so_everywhere(app, workers, client_as, api_as, users):
    workers(1)
    p = make_pipeline([
        {"name": "check", "parameters": {"command": "exit 3"}},
        {"name": "ship", "parameters": {"command": "true"}},
    ], name="release")
    e = wait_finished(run(p))
    e = wait_finished(svc.bypass_step(refresh(e), "check", "checked by hand", user=users["maintainer"]))
    assert e.status == "success"

    c = client_as("viewer")
    page = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert re.search(r'id="execution-status" role="status"[^>]*>success · 1 bypassed<', page)
    listed = c.get("/executions/").get_data(as_text=True)
    assert re.search(rf'id="execution-{e.execution_id}".*?>success · 1 bypassed</span>', listed, re.S)
    pipelines = c.get("/pipelines/").get_data(as_text=True)
    assert re.search(rf'id="pipeline-{p.id}".*?>success · 1 bypassed</span>', pipelines, re.S)
    dashboard = c.get("/dashboard/").get_data(as_text=True)
    assert re.search(r'id="stat-bypassed">1 with bypassed steps<', dashboard)

    api = api_as("viewer")
    one = api.get(f"/api/v1/workflow-executions/{e.execution_id}/").get_json()
    assert one["bypassed_count"] == 1 and one["status_summary"] == "success · 1 bypassed"
    assert one["step_results"]["check"]["bypassed"] is True
    (row,) = api.get("/api/v1/workflow-executions/").get_json()["results"]
    assert row["bypassed_count"] == 1 and row["status_summary"] == "success · 1 bypassed"
    assert api.get(f"/api/v1/pipelines/{p.id}/workflow-metrics/").get_json()["bypassed_executions"] == 1


def test_a_cancelled_run_is_not_green_and_steps_that_never_started_read_not_run(app, workers, client_as, api_as):
    workers(1)
    p = make_pipeline([
        {"name": "slow", "parameters": {"command": "echo started; sleep 60"}},
        {"name": "after", "parameters": {"command": "true"}},
    ])
    e = run(p)
    wait_status(e, "slow", "running")
    c = client_as("maintainer")
    # the Cancel button asks first: with htmx a confirm, without JS a GET page that changes nothing
    live = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    form = re.search(r'<form method="get" action="/executions/%s/cancel"[^>]*>' % e.execution_id, live)
    assert form and 'hx-confirm="Cancel this execution?' in form.group(0) and f'hx-post="/executions/{e.execution_id}/cancel"' in form.group(0)
    assert client_as("viewer").get(f"/executions/{e.execution_id}/cancel").status_code == 403
    ask = c.get(f"/executions/{e.execution_id}/cancel")
    text = ask.get_data(as_text=True)
    assert ask.status_code == 200 and 'id="confirm-cancel"' in text and 'method="post"' in text and "slow · running" in text
    assert refresh(e).status == "running" and not refresh(e).cancel_requested
    assert c.post(f"/executions/{e.execution_id}/cancel").status_code == 303
    e = wait_finished(e)
    assert e.status == "cancelled" and latest(e, "after").status == "cancelled" and latest(e, "after").started_at is None

    page = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert 'class="ex-progress-cancelled"' in page and 'id="execution-not-run">1 not run<' in page
    after = re.search(r'<article class="card ex-step[^"]*" id="step-(\d+)" data-step="after".*?</article>', page, re.S)
    slow = re.search(r'<article class="card ex-step[^"]*" id="step-(\d+)" data-step="slow".*?</article>', page, re.S)
    assert ">not run</span>" in after.group(0) and "Retry" not in after.group(0)
    assert "Retry step" in slow.group(0)  # it ran and was stopped: it can run again
    # the API refuses it too, saying why
    resp = api_as("maintainer").post(f"/api/v1/pipelines/executions/{e.execution_id}/steps/after/retry/")
    assert resp.status_code == 409 and "did not run" in resp.get_json()["error"]
    # no cancel page for a finished execution: back to it, with the reason
    done = c.get(f"/executions/{e.execution_id}/cancel")
    assert done.status_code == 303 and "already cancelled" in c.get(done.headers["Location"]).get_data(as_text=True)


def _fail_then_fix(p):
    """Run p (its step b fails), then edit b so that it passes: the pipeline is now at v2."""
    e = wait_finished(run(p))
    assert e.status == "failed" and e.pipeline_version == 1
    definition = copy.deepcopy(export_definition(p))
    definition["steps"][1]["parameters"]["command"] = "echo fixed-in-v2"
    save_definition(definition, pipeline=p)
    return refresh(e)


def test_retry_offers_the_definition_it_ran_or_the_current_one(app, workers, client_as, api_as, tmp_path):
    workers(1)
    flag = tmp_path / "ok"
    p = make_pipeline([
        {"name": "a", "parameters": {"command": "echo a"}},
        {"name": "b", "parameters": {"command": f"test -e {flag}"}},
        {"name": "c", "parameters": {"command": "true"}},
    ])
    e = _fail_then_fix(p)
    b_id = latest(e, "b").step_id
    c = client_as("maintainer")
    page = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert f'id="retry-{b_id}">Retry as it ran (v1)<' in page
    assert re.search(rf'id="retry-current-{b_id}"[^>]*>Retry with the current definition \(v2\)<', page)
    assert 'value="original"> as it ran (v1)' in page and 'value="current" checked> the current one (v2)' in page

    api = api_as("maintainer")
    url = f"/api/v1/pipelines/executions/{e.execution_id}/steps/b/retry/"
    bad = api.post(url, json={"definition": "latest"})
    assert bad.status_code == 422 and "definition" in bad.get_json()["fields"]
    assert len(attempts(e, "b")) == 1  # nothing half done

    # as it ran: in place, v1 (b still checks the flag)
    flag.touch()
    resp = api.post(url, json={"definition": "original"})
    body = resp.get_json()
    assert resp.status_code == 200 and body["execution_id"] == e.execution_id and body["new_execution"] is False
    assert body["definition"] == "original" and body["definition_version"] == 1
    e = wait_finished(e)
    assert e.status == "success" and [a.definition_version for a in attempts(e, "b")] == [1, 1]
    steps = api.get(f"/api/v1/pipelines/executions/{e.execution_id}/steps/?logs=0").get_json()["steps"]
    assert [a["definition_version"] for a in steps[1]["attempts"]] == [1, 1]
    html = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert html.count('title="the pipeline definition this attempt ran">v1<') == 5  # a, b and c twice (c: skipped, then ran)


def test_retry_with_the_current_definition_runs_a_new_linked_execution(app, workers, client_as, api_as):
    workers(1)
    p = make_pipeline([
        {"name": "a", "parameters": {"command": "echo a-ran"}},
        {"name": "b", "parameters": {"command": "exit 1"}},
        {"name": "c", "parameters": {"command": "true"}},
    ])
    e = _fail_then_fix(p)
    api = api_as("maintainer")
    resp = api.post(f"/api/v1/pipelines/executions/{e.execution_id}/steps/b/retry/", json={"definition": "current"})
    body = resp.get_json()
    assert resp.status_code == 201 and body["new_execution"] is True and body["execution_id"] != e.execution_id
    assert body["definition"] == "current" and body["definition_version"] == 2 and body["parent_execution"] == e.execution_id
    child = wait_finished(svc.get_execution(body["execution_id"]))
    assert child.status == "success" and "fixed-in-v2" in latest(child, "b").logs
    # the run it came from is untouched; the kept step says it ran v1, the re-run ones v2
    assert refresh(e).status == "failed" and len(attempts(e, "b")) == 1
    assert [(x.step_name, x.definition_version) for x in attempts(child)] == [("a", 1), ("b", 2), ("c", 2)]
    html = client_as("viewer").get(f"/executions/{child.execution_id}").get_data(as_text=True)
    a_block = re.search(r'<article[^>]*data-step="a".*?</article>', html, re.S).group(0)
    b_block = re.search(r'<article[^>]*data-step="b".*?</article>', html, re.S).group(0)
    assert ">v1<" in a_block and ">v2<" in b_block

    # the form (no JS) goes to the new execution with a flash that names the version
    e2 = wait_finished(run(p, snapshot=copy.deepcopy(e.pipeline_snapshot)))  # another run of v1
    assert e2.status == "failed" and e2.pipeline_version == 1
    b_id = latest(e2, "b").step_id
    c = client_as("maintainer")
    resp = c.post(f"/executions/{e2.execution_id}/steps/{b_id}/retry", data={"step": b_id, "definition": "current"})
    assert resp.status_code == 303 and e2.execution_id not in resp.headers["Location"]
    landed = c.get(resp.headers["Location"]).get_data(as_text=True)
    assert "with the current definition (v2) in execution" in landed
    # with htmx the browser is sent there too
    e3 = wait_finished(run(p, snapshot=copy.deepcopy(e.pipeline_snapshot)))
    resp = c.post(f"/executions/{e3.execution_id}/steps/{b_id}/retry", data={"step": b_id, "definition": "current"}, headers=HX)
    assert resp.status_code == 200 and resp.headers["HX-Redirect"].startswith("/executions/")
    assert e3.execution_id not in resp.headers["HX-Redirect"]


def test_resume_names_the_definition_it_runs(app, workers, api_as, client_as):
    workers(1)
    p = make_pipeline([
        {"name": "a", "parameters": {"command": "true"}},
        {"name": "b", "parameters": {"command": "exit 1"}},
    ])
    e = _fail_then_fix(p)
    api = api_as("maintainer")
    url = f"/api/v1/pipelines/executions/{e.execution_id}/resume/"
    assert api.post(url, json={"definition": "newest"}).status_code == 422
    old = api.post(url, json={"definition": "original"}).get_json()
    assert old["definition"] == "original" and old["definition_version"] == 1 and old["pipeline_version"] == 1
    assert wait_finished(svc.get_execution(old["execution_id"])).status == "failed"  # b still exits 1 in v1
    c = client_as("maintainer")
    resp = c.post(f"/executions/{e.execution_id}/resume", data={"definition": "current"})
    assert resp.status_code == 303
    assert "with the current definition (v2)" in c.get(resp.headers["Location"]).get_data(as_text=True)
    child = svc.get_execution(resp.headers["Location"].rsplit("/", 1)[-1])
    assert child.pipeline_version == 2 and wait_finished(child).status == "success"
