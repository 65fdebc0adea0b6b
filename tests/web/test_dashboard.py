"""The metrics dashboard page: per role, numbers from inserted history, the HTMX block, filters."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from webapp.extensions import db
from webapp.models import StepExecutionHistory, WorkflowExecution, utcnow
from webapp.services.pipelines import save_definition

HX = {"HX-Request": "true"}




@pytest.fixture
def pipeline(app, users):
    return save_definition({"name": "release", "steps": [{"name": "deploy", "parameters": {"command": "true"}}]},
                           owner=users["maintainer"])



def test_dashboard_pages(client_as, pipeline, users):
    c = client_as("viewer")
    empty = c.get("/dashboard/")
    assert empty.status_code == 200 and "No executions in the last 30 days" in empty.get_data(as_text=True)
    t0 = utcnow() - timedelta(hours=2)
    for i, (status, secs) in enumerate([("success", 10), ("success", 30), ("failed", 20)]):
        e = WorkflowExecution(pipeline_id=pipeline.id, execution_id=f"dash{i}", status=status, trigger_type="manual",
                              pipeline_snapshot={"name": "release", "steps": []}, created_at=t0, started_at=t0,
                              finished_at=t0 + timedelta(seconds=secs), failed_steps=["deploy"] if status == "failed" else [],
                              status_reason="step 'deploy' failed" if status == "failed" else "")
        db.session.add(e)
        db.session.flush()
        db.session.add(StepExecutionHistory(execution_id=e.id, step_id=2, step_name="deploy",
                                            status="failed" if status == "failed" else "success",
                                            started_at=t0, finished_at=t0, duration_seconds=secs / 2))
    db.session.commit()
    html = c.get("/dashboard/").get_data(as_text=True)
    assert re.search(r'id="stat-total">3<', html) and re.search(r'id="stat-success-rate">66.7%<', html)
    assert re.search(r'id="stat-median">20s<', html) and "Most failing steps" in html and "dash2" in html
    assert 'href="/dashboard/?pipeline=%d&amp;days=30"' % pipeline.id in html and "<svg class=\"db-daily\"" in html
    one = c.get(f"/dashboard/?pipeline={pipeline.id}&days=7").get_data(as_text=True)
    assert "Dashboard: release" in one and "last 7 days" in one and re.search(r'id="stat-total">3<', one)
    part = c.get("/dashboard/?days=90", headers=HX)
    assert part.headers["Vary"].startswith("HX-Request") and part.get_data(as_text=True).lstrip().startswith('<section id="dashboard-metrics"')
    assert c.get("/dashboard/?pipeline=9999").status_code == 404
    assert c.get("/dashboard/?days=junk").status_code == 200


def test_dashboard_needs_login_and_offers_a_run_to_maintainers(app, client_as, pipeline):
    anonymous = app.test_client().get("/dashboard/")
    assert anonymous.status_code in (302, 303) and "/login" in anonymous.headers["Location"]
    html = client_as("maintainer").get(f"/dashboard/?pipeline={pipeline.id}").get_data(as_text=True)
    assert f'href="/executions/new?pipeline={pipeline.id}"' in html and "Look at the last year" in html
    assert "/executions/new" not in client_as("viewer").get("/dashboard/").get_data(as_text=True)
