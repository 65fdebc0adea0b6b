"""Execution pages without workers: the run form (and its refusals), the list, an execution's page
and its HTMX partials (block only, Vary, 286 once terminal), the Gantt layout, roles, escaping."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from webapp.extensions import db
from webapp.models import Pipeline, StepExecutionHistory, WorkflowExecution, utcnow
from webapp.services import executions as svc
from webapp.services.pipelines import save_definition
from webapp.web.executions import gantt, parse_variables, step_rows

HX = {"HX-Request": "true"}




@pytest.fixture
def pipeline(app, users):
    return save_definition({"name": "release", "steps": [
        {"name": "build", "parameters": {"command": "echo build"}},
        {"name": "deploy", "parameters": {"command": "echo deploy"}},
    ]}, owner=users["maintainer"])


def count_executions() -> int:
    db.session.commit()
    return db.session.execute(db.select(db.func.count()).select_from(WorkflowExecution)).scalar_one()


def finish(e, status="failed", reason="step 'build' failed"):
    """Make an execution terminal without workers (the page only reads what is stored)."""
    now = utcnow()
    db.session.execute(db.update(StepExecutionHistory).where(StepExecutionHistory.execution_id == e.id)
                       .values(status="failed", started_at=now - timedelta(seconds=3), finished_at=now,
                               duration_seconds=3, exit_code=2, failure_kind="exit", error_message="exit code 2"))
    db.session.execute(db.update(WorkflowExecution).where(WorkflowExecution.id == e.id)
                       .values(status=status, status_reason=reason, finished_at=now, current_step=None))
    db.session.commit()
    db.session.expire_all()
    return db.session.get(WorkflowExecution, e.id)


# --------------------------------------------------------------------------- run form


def test_parse_variables():
    text = "ENV=staging\n\n# comment\nsecret:TOKEN = s3cr=et \nURL=http://x/?a=b"
    assert parse_variables(text) == ({"ENV": "staging", "TOKEN": "s3cr=et", "URL": "http://x/?a=b"}, ["TOKEN"], [])
    _, _, errors = parse_variables("novalue\n1BAD=x\nA=1\nA=2")
    assert errors == ["Line 1: write KEY=value.",
                      "Line 2: '1BAD' is not a valid name (letters, digits and _, not starting with a digit).",
                      "Line 4: A is given twice."]


def test_run_form_roles_and_start(client_as, pipeline, users):
    assert client_as("viewer").get(f"/executions/new?pipeline={pipeline.id}").status_code == 403
    assert client_as("approver").post("/executions/", data={"pipeline": pipeline.id}).status_code == 403
    c = client_as("maintainer")
    assert c.get("/executions/new?pipeline=99999").status_code == 404
    page = c.get(f"/executions/new?pipeline={pipeline.id}").get_data(as_text=True)
    assert "Run release" in page and 'name="variables"' in page and 'name="csrf_token"' in page and "build" in page
    chooser = c.get("/executions/new").get_data(as_text=True)
    assert 'id="r-pipeline"' in chooser and "release" in chooser

    resp = c.post("/executions/", data={"pipeline": pipeline.id, "note": "hotfix 42",
                                        "variables": "ENV=staging\nsecret:DEPLOY_KEY=hunter22\nAPI_TOKEN=abc"})
    assert resp.status_code == 303
    eid = resp.headers["Location"].rsplit("/", 1)[-1]
    e = svc.get_execution(eid)
    from webapp.services.secrets_store import clear_variables  # secret values are sealed at rest
    assert e.context_variables == {"ENV": "staging", "DEPLOY_KEY": "***", "API_TOKEN": "***"}
    assert clear_variables(e.context_variables, e.secret_values) == {"ENV": "staging", "DEPLOY_KEY": "hunter22", "API_TOKEN": "abc"}
    assert set(e.secret_variables) == {"DEPLOY_KEY", "API_TOKEN"} and e.trigger_data == {"note": "hotfix 42"}
    assert e.triggered_by_id == users["maintainer"].id and e.trigger_type == "manual"
    page = c.get(resp.headers["Location"]).get_data(as_text=True)
    assert "hunter2" not in page and ">abc<" not in page and "staging" in page and "hotfix 42" in page
    assert f"Execution {eid} of &#39;release&#39; started." in page

    again = c.get(f"/executions/new?pipeline={pipeline.id}&from={eid}").get_data(as_text=True)
    assert "ENV=staging" in again and "hunter2" not in again and "enter API_TOKEN, DEPLOY_KEY again" in again


def test_run_form_refusals_save_nothing(client_as, pipeline, users):
    c = client_as("maintainer")
    resp = c.post("/executions/", data={"pipeline": pipeline.id, "variables": "GOOD=1\n9lives=x\nnoequals"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422 and 'aria-invalid="true"' in html
    assert "Line 2: &#39;9lives&#39; is not a valid name" in html and "Line 3: write KEY=value." in html
    assert "GOOD=1\n9lives=x\nnoequals" in html  # what was typed is kept
    assert c.post("/executions/", data={"pipeline": "", "variables": ""}).status_code == 422

    empty = save_definition({"name": "empty", "steps": []})
    page = c.get(f"/executions/new?pipeline={empty.id}").get_data(as_text=True)
    assert "no steps yet" in page  # said before anyone presses Run
    resp = c.post("/executions/", data={"pipeline": empty.id})
    assert resp.status_code == 422 and "no steps yet" in resp.get_data(as_text=True)

    db.session.get(Pipeline, pipeline.id).active = False
    db.session.commit()
    resp = c.post("/executions/", data={"pipeline": pipeline.id, "variables": "A=1"})
    assert resp.status_code == 409 and "inactive" in resp.get_data(as_text=True)
    assert count_executions() == 0


# --------------------------------------------------------------------------- list


def test_list_empty_states_and_roles(client_as, pipeline):
    viewer = client_as("viewer").get("/executions/").get_data(as_text=True)
    assert "No executions yet." in viewer and "Run a pipeline" not in viewer
    maint = client_as("maintainer").get("/executions/").get_data(as_text=True)
    assert "No executions yet." in maint and 'href="/executions/new"' in maint
    filtered = client_as("viewer").get("/executions/?status=failed").get_data(as_text=True)
    assert "No execution matches these filters." in filtered


def test_list_polls_only_while_something_runs(client_as, pipeline, users):
    running = svc.start(pipeline, variables={"ENV": "x"}, user=users["maintainer"])
    c = client_as("viewer")
    page = c.get("/executions/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<html" in html and page.headers["Vary"].startswith("HX-Request")
    assert running.execution_id in html and 'hx-trigger="every 2s"' in html and "Maintainer One" in html
    part = c.get("/executions/", headers=HX)
    body = part.get_data(as_text=True)
    assert part.status_code == 200 and "<html" not in body and body.lstrip().startswith('<section id="execution-list"')
    assert part.headers["Vary"].startswith("HX-Request")

    finish(running)
    part = c.get("/executions/", headers=HX)
    assert part.status_code == 286 and 'hx-trigger="every 2s"' not in part.get_data(as_text=True)
    assert c.get("/executions/").status_code == 200  # a full page is never a 286
    assert running.execution_id in c.get("/executions/?status=failed").get_data(as_text=True)
    assert running.execution_id not in c.get("/executions/?status=success").get_data(as_text=True)
    other = save_definition({"name": "other", "steps": [{"name": "x", "parameters": {"command": "true"}}]})
    assert running.execution_id not in c.get(f"/executions/?pipeline={other.id}").get_data(as_text=True)


# --------------------------------------------------------------------------- one execution


def test_execution_page_live_block_and_286(client_as, pipeline, users):
    e = svc.start(pipeline, variables={"ENV": "prod", "DB_PASSWORD": "pa55"}, user=users["maintainer"])
    viewer = client_as("viewer")
    resp = viewer.get(f"/executions/{e.execution_id}")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers["Vary"].startswith("HX-Request")
    assert "release" in html and "v1" in html and "pa55" not in html and "prod" in html
    assert 'id="execution-live"' in html and 'hx-trigger="every 1s"' in html
    assert "Cancel execution" not in html  # viewers watch, maintainers act
    assert html.count('class="gantt-row"') == 2 and "0/2" in html and 'class="dag"' in html

    part = viewer.get(f"/executions/{e.execution_id}", headers=HX)
    body = part.get_data(as_text=True)
    assert part.status_code == 200 and "<html" not in body and body.lstrip().startswith('<section id="execution-live"')
    assert part.headers["Vary"].startswith("HX-Request") and part.headers["Cache-Control"] == "no-store"

    maint = client_as("maintainer").get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert "Cancel execution" in maint and "Resume" not in maint and "Retry step" not in maint

    e = finish(e)
    part = viewer.get(f"/executions/{e.execution_id}", headers=HX)
    body = part.get_data(as_text=True)
    assert part.status_code == 286 and "hx-trigger" not in body.split(">", 1)[0]
    assert "step &#39;build&#39; failed" in body and "2/2" in body
    assert viewer.get(f"/executions/{e.execution_id}").status_code == 200
    maint = client_as("maintainer").get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert "Resume" in maint and "Retry step" in maint and "Bypass step" in maint and "Cancel execution" not in maint
    assert viewer.get("/executions/nope").status_code == 404


def test_sections_refresh_only_when_they_changed(client_as, pipeline, users):
    e = svc.start(pipeline, user=users["maintainer"])
    c = client_as("viewer")
    html = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    seen = re.search(r'"seen_approvals": "([0-9a-f]+)", "seen_deliveries": "([0-9a-f]+)"', html.replace("&#34;", '"'))
    assert seen, "the live block carries what the page has seen"
    fresh = c.get(f"/executions/{e.execution_id}?seen_approvals={seen[1]}&seen_deliveries={seen[2]}", headers=HX)
    assert "HX-Trigger" not in fresh.headers
    stale = c.get(f"/executions/{e.execution_id}?seen_approvals=old&seen_deliveries={seen[2]}", headers=HX)
    assert stale.headers["HX-Trigger"] == "executionApprovals"
    part = c.get(f"/executions/{e.execution_id}?part=approvals", headers=HX).get_data(as_text=True)
    assert part.lstrip().startswith('<section id="execution-approvals"')
    part = c.get(f"/executions/{e.execution_id}?part=deliveries", headers=HX).get_data(as_text=True)
    assert part.lstrip().startswith('<section id="execution-deliveries"') and "No notifications were sent" in part


def test_logs_are_escaped_inside_hx_disable_and_served_whole(client_as, pipeline, users):
    e = svc.start(pipeline, user=users["maintainer"])
    attempt = db.session.execute(db.select(StepExecutionHistory).filter_by(execution_id=e.id, step_name="build")).scalar_one()
    evil = '<script>alert(1)</script><div hx-get="/x" hx-trigger="load">' + "x" * 40000 + "\nEND"
    attempt.logs = evil
    attempt.status, attempt.started_at = "running", utcnow()
    db.session.commit()
    c = client_as("viewer")
    html = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" not in html  # cut to the last 32 KB
    assert "Showing the last 32 KB." in html and 'data-follow="true"' in html
    block = html[html.index(f'id="attempt-{attempt.id}"') - 400:html.index(f'id="attempt-{attempt.id}"')]
    assert "hx-disable" in block
    attempt.logs = evil[:100]
    db.session.commit()
    html = c.get(f"/executions/{e.execution_id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;div hx-get=" in html
    full = c.get(f"/executions/{e.execution_id}/attempts/{attempt.id}/log")
    assert full.headers["Content-Type"] == "text/plain; charset=utf-8" and full.headers["X-Content-Type-Options"] == "nosniff"
    assert full.get_data(as_text=True) == evil[:100]
    assert c.get(f"/executions/{e.execution_id}/attempts/999999/log").status_code == 404


def test_gantt_places_attempts_in_time():
    class A:  # the attributes the timeline reads from an attempt
        def __init__(self, **kw):
            self.__dict__.update(dict(id=kw.pop("id"), retry_count=0, status="pending", started_at=None, finished_at=None,
                                      queued_at=None, scheduled_for=None, bypassed=False), **kw)

    class E:
        pass

    t0 = utcnow().replace(microsecond=0)
    s = lambda n: t0 + timedelta(seconds=n)  # noqa: E731
    e = E()
    e.started_at, e.created_at, e.finished_at = t0, t0, None
    e.pipeline_snapshot = {"steps": [{"id": 1, "name": "build"}, {"id": 2, "name": "test"}, {"id": 3, "name": "gate"},
                                     {"id": 4, "name": "deploy"}]}
    attempts = [
        A(id=10, step_id=1, status="success", queued_at=s(0), started_at=s(0), finished_at=s(20)),
        A(id=11, step_id=2, status="failed", started_at=s(20), finished_at=s(30)),
        A(id=12, step_id=2, retry_count=1, status="retry_scheduled", scheduled_for=s(80)),
        A(id=13, step_id=3, status="waiting_approval"),
        A(id=14, step_id=4, status="pending"),
    ]

    class R:
        attempt_id, created_at, decided_at, status = 13, s(20), None, "pending"

    rows = step_rows(e, attempts)
    assert [r["status"] for r in rows] == ["success", "retry_scheduled", "waiting_approval", "pending"]
    g = gantt(e, rows, [R()], now=s(40))
    assert g["span"] == 80  # up to the scheduled retry
    build, test, gate, deploy = g["rows"]
    assert [(b["kind"], b["left"], b["width"]) for b in build["bars"]] == [("run", 0.0, 25.0)]
    assert [(b["kind"], b["status"], b["left"], b["width"]) for b in test["bars"]] == [("run", "failed", 25.0, 12.5)]
    assert [m["left"] for m in test["markers"]] == [100.0] and "retry 2 scheduled" in test["markers"][0]["label"]
    assert [(b["kind"], b["left"], b["width"], b["open"]) for b in gate["bars"]] == [("wait", 25.0, 25.0, True)]
    assert deploy["bars"] == [] and deploy["markers"] == []
    assert [t["label"] for t in g["ticks"]] == ["0.0s", "20s", "40s", "1m 00s", "1m 20s"]
