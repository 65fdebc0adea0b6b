"""Workflow metrics (services.metrics and the API) checked against executions inserted by the test."""
from __future__ import annotations

import random
import statistics
import zlib
from datetime import timedelta

import pytest

from webapp.extensions import db
from webapp.models import StepExecutionHistory, WorkflowExecution, utcnow
from webapp.services import metrics
from webapp.services.pipelines import save_definition

NOW = utcnow().replace(microsecond=0)


def pipeline(name="release", steps=("build", "deploy")):
    return save_definition({"name": name, "steps": [{"name": s, "parameters": {"command": "true"}} for s in steps]})


def execution(p, status, seconds=None, ago=timedelta(hours=1), **kw):
    started = NOW - ago
    e = WorkflowExecution(
        pipeline_id=p.id, execution_id=kw.pop("execution_id", None) or f"x{random.getrandbits(48):012x}",
        status=status, trigger_type="manual", pipeline_snapshot={"name": p.name, "steps": []},
        created_at=started, started_at=started,
        finished_at=started + timedelta(seconds=seconds) if seconds is not None else None, **kw)
    db.session.add(e)
    db.session.flush()
    return e


def attempt(e, name, status, seconds=None, retry=0, wait=None, **kw):
    start = e.started_at + timedelta(seconds=1)
    a = StepExecutionHistory(  # a stable step id per name (str hashes vary per process and may collide)
        execution_id=e.id, step_id=zlib.crc32(name.encode()) % 100000, step_name=name, status=status, retry_count=retry,
        started_at=start if seconds is not None else None,
        queued_at=start - timedelta(seconds=wait) if wait is not None else None,
        finished_at=start + timedelta(seconds=seconds) if seconds is not None else None,
        duration_seconds=seconds, **kw)
    db.session.add(a)
    return a


@pytest.fixture
def history(app, users):
    a, b = pipeline("release"), pipeline("nightly", steps=("test",))
    e1 = execution(a, "success", 10, ago=timedelta(hours=5))
    e2 = execution(a, "success", 20, ago=timedelta(hours=4))
    e3 = execution(a, "failed", 30, ago=timedelta(hours=3), status_reason="step 'deploy' failed",
                   failed_steps=["deploy"], execution_id="e3failed")
    e4 = execution(a, "cancelled", 40, ago=timedelta(hours=2))
    execution(a, "running", None, ago=timedelta(minutes=5))
    execution(a, "success", 999, ago=timedelta(days=40))  # outside the 30-day window
    attempt(e1, "build", "success", 5, wait=1)
    attempt(e1, "deploy", "success", 3, wait=2)
    attempt(e2, "build", "success", 7, wait=3)
    attempt(e2, "deploy", "success", 5)
    attempt(e3, "build", "success", 9)
    attempt(e3, "deploy", "failed", 2, wait=6)
    attempt(e3, "deploy", "failed", 4, retry=1)
    attempt(e4, "build", "cancelled")
    f = execution(b, "failed", 60, ago=timedelta(hours=1), failed_steps=["test"], execution_id="nightlyfail")
    attempt(f, "test", "timed_out", 60)
    db.session.commit()
    return a, b


def test_pipeline_metrics_match_the_inserted_history(history):
    a, _ = history
    m = metrics.workflow_metrics(a.id, now=NOW)
    assert m["total_executions"] == 5 and m["window"]["executions"] == 5
    assert m["by_status"] == {"success": 2, "failed": 1, "cancelled": 1, "running": 1}
    assert (m["successful_executions"], m["failed_executions"], m["cancelled_executions"], m["active_executions"]) == (2, 1, 1, 1)
    assert m["success_rate"] == 50.0  # 2 of the 4 finished
    # durations 10, 20, 30, 40: linear interpolation like percentile_cont
    assert m["duration_seconds"] == {"median": 25.0, "p95": 38.5, "average": 25.0}
    assert m["average_queue_wait_seconds"] == pytest.approx(3.0, abs=0.01)  # (1 + 2 + 3 + 6) / 4
    assert m["retries"] == {"attempts": 1, "executions": 1}
    # deploy finally failed in one execution (e3, after two failed attempts) of the three it reached a verdict in
    assert m["most_failing_steps"] == [{"step_name": "deploy", "failed_executions": 1, "executions": 3,
                                        "failure_rate": 33.3, "failed_attempts": 2}]
    assert m["flaky_steps"] == [] and m["bypassed_executions"] == 0
    # build 5, 7, 9 -> median 7; deploy 2, 3, 4, 5 -> 3.5 (durations are of attempts, and counted so)
    assert [(s["step_name"], s["median_seconds"], s["attempts"]) for s in m["slowest_steps"]] == [("build", 7.0, 3), ("deploy", 3.5, 4)]
    assert m["slowest_steps"][0]["p95_seconds"] == pytest.approx(8.8)
    assert [f["execution_id"] for f in m["recent_failures"]] == ["e3failed"]
    assert m["recent_failures"][0]["failed_steps"] == ["deploy"] and m["recent_failures"][0]["pipeline_name"] == "release"
    assert len(m["daily"]) == 31 and sum(d["total"] for d in m["daily"]) == 5
    assert "pipelines" not in m


def test_overall_metrics_have_a_row_per_pipeline(history):
    a, b = history
    m = metrics.workflow_metrics(None, now=NOW)
    assert m["total_executions"] == 6 and m["success_rate"] == 40.0  # 2 of 5 finished
    rows = {r["name"]: r for r in m["pipelines"]}
    assert rows["release"]["total"] == 5 and rows["release"]["success_rate"] == 50.0
    assert rows["release"]["median_duration_seconds"] == 25.0 and rows["release"]["active"] == 1
    assert rows["nightly"] == {**rows["nightly"], "total": 1, "failed": 1, "success_rate": 0.0, "median_duration_seconds": 60.0}
    failing = [(s["pipeline_name"], s["step_name"], s["failed_executions"]) for s in m["most_failing_steps"]]
    assert failing == [("release", "deploy", 1), ("nightly", "test", 1)]
    assert m["slowest_steps"][0]["step_name"] == "test" and m["slowest_steps"][0]["pipeline"] == b.id
    assert [f["execution_id"] for f in m["recent_failures"]] == ["nightlyfail", "e3failed"]


def test_steps_are_counted_in_executions_and_flaky_means_failed_then_passed_in_the_same_run(app):
    p = pipeline("ci", steps=("lint", "e2e", "unit"))
    # lint fails five attempts in one execution (more failed attempts than e2e has): e2e finally
    # fails in three executions, so it is the most failing step
    one = execution(p, "failed", 30, ago=timedelta(hours=6))
    for n in range(5):
        attempt(one, "lint", "failed", 1, retry=n)
    for hours in (5, 4):
        e = execution(p, "failed", 30, ago=timedelta(hours=hours))
        attempt(e, "lint", "success", 1)
        attempt(e, "e2e", "failed", 2)
    # unit: failed then passed on a retry in two executions (flaky), passed first time in one; a
    # failed attempt followed by a later failure is not flaky (e2e here)
    for hours, first in ((3, "failed"), (2, "failed"), (1, "success")):
        e = execution(p, "success", 30, ago=timedelta(hours=hours))
        attempt(e, "unit", first, 1)
        if first == "failed":
            attempt(e, "unit", "success", 1, retry=1)
    e = execution(p, "failed", 30, ago=timedelta(minutes=30))
    attempt(e, "e2e", "timed_out", 2)
    attempt(e, "e2e", "failed", 2, retry=1)
    # a success a person got past a failure of: counted apart, and still a success
    bypassed = execution(p, "success", 30, ago=timedelta(minutes=20))
    attempt(bypassed, "e2e", "skipped", 2, bypassed=True, skip_reason="bypassed by maintainer1: known")
    db.session.commit()

    m = metrics.workflow_metrics(p.id, now=NOW)
    failing = [(s["step_name"], s["failed_executions"], s["executions"], s["failed_attempts"]) for s in m["most_failing_steps"]]
    assert failing == [("e2e", 3, 3, 4), ("lint", 1, 3, 5)]
    assert m["flaky_steps"] == [{"step_name": "unit", "flaky_executions": 2, "executions": 3, "flaky_rate": 66.7}]
    assert m["retries"] == {"attempts": 7, "executions": 4}
    assert m["bypassed_executions"] == 1 and m["successful_executions"] == 4
    overall = metrics.workflow_metrics(None, now=NOW)
    assert overall["pipelines"][0]["bypassed"] == 1 and overall["flaky_steps"][0]["pipeline_name"] == "ci"


def test_window_is_bounded_by_days_and_count(history):
    a, _ = history
    assert metrics.workflow_metrics(a.id, days=60, now=NOW)["total_executions"] == 6
    recent = metrics.workflow_metrics(a.id, limit=2, now=NOW)
    assert recent["total_executions"] == 2 and recent["window"]["truncated"] is True
    assert recent["by_status"] == {"cancelled": 1, "running": 1}
    assert metrics.clamp_window("abc", "-5") == (30, 1) and metrics.clamp_window(10**6, 10**9) == (365, 5000)


def test_no_history_gives_empty_metrics(app):
    m = metrics.workflow_metrics(pipeline("empty").id)
    assert m["total_executions"] == 0 and m["success_rate"] is None
    assert m["duration_seconds"] == {"median": None, "p95": None, "average": None}
    assert m["most_failing_steps"] == [] and m["slowest_steps"] == [] and m["recent_failures"] == []


def test_sql_percentiles_match_python(app):
    p = pipeline("many", steps=("s",))
    rng = random.Random(7)
    values = [round(rng.uniform(1, 500), 3) for _ in range(57)]
    for i, v in enumerate(values):
        e = execution(p, "success", v, ago=timedelta(minutes=i + 1))
        attempt(e, "s", "success", v)
    db.session.commit()
    m = metrics.workflow_metrics(p.id)
    q = statistics.quantiles(values, n=100, method="inclusive")
    assert m["duration_seconds"]["median"] == pytest.approx(statistics.median(values), abs=1e-3)
    assert m["duration_seconds"]["p95"] == pytest.approx(q[94], abs=1e-3)
    assert m["slowest_steps"][0]["p95_seconds"] == pytest.approx(q[94], abs=1e-3)


def test_api_endpoints(history, api_as, app):
    a, _ = history
    api = api_as("viewer")
    resp = api.get(f"/api/v1/pipelines/{a.id}/workflow-metrics/")
    assert resp.status_code == 200
    body = resp.json
    assert body["pipeline"] == {"id": a.id, "name": "release", "version": a.version}
    assert body["success_rate"] == 50.0 and body["most_failing_steps"][0]["step_name"] == "deploy"
    assert body["window"]["since"].endswith("Z") and body["recent_failures"][0]["finished_at"].endswith("Z")
    assert api.get(f"/api/v1/pipelines/{a.id}/workflow-metrics/?days=60").json["total_executions"] == 6
    overall = api.get("/api/v1/metrics/?limit=3").json
    assert overall["total_executions"] == 3 and {r["name"] for r in overall["pipelines"]} <= {"release", "nightly"}
    missing = api.get("/api/v1/pipelines/99999/workflow-metrics/")
    assert missing.status_code == 404 and missing.json["error"] == "pipeline not found"
    doc = app.test_client().get("/api/v1/openapi.json").json["paths"]
    assert "get" in doc["/api/v1/metrics/"] and "404" in doc["/api/v1/pipelines/{id}/workflow-metrics/"]["get"]["responses"]


def test_api_needs_a_token(history, app):
    a, _ = history
    for path in ("/api/v1/metrics/", f"/api/v1/pipelines/{a.id}/workflow-metrics/"):
        resp = app.test_client().get(path)
        assert resp.status_code == 401 and set(resp.json) == {"error", "fields"}
