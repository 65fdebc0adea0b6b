"""Execution runtime: steps really run on RQ workers (issue: Execution runtime)."""
from datetime import timedelta

import pytest

from webapp.services import executions as svc

from ..conftest import wait_for
from .helpers import attempts, latest, make_pipeline, refresh, run, status_map, wait_finished

pytestmark = pytest.mark.integration


def test_chain_with_outputs_and_context_as_env(app, workers, users):
    workers(1)
    p = make_pipeline([
        {"name": "a", "parameters": {"command": 'echo "VERSION=1.2.$BUILD_NO" >> "$ANSFLOW_OUTPUT"; echo built'}},
        {"name": "b", "parameters": {"command": 'echo "deploying $STEP_A_VERSION to $ENV"; echo "DONE=yes" >> $ANSFLOW_OUTPUT'}},
        {"name": "c", "parameters": {"command": 'test "$STEP_B_DONE" = yes'}},
    ])
    e = run(p, variables={"ENV": "staging; echo pwned", "BUILD_NO": "7"}, user=users["maintainer"])
    e = wait_finished(e)
    assert e.status == "success", e.status_reason
    b = latest(e, "b")
    assert b.logs.strip() == "deploying 1.2.7 to staging; echo pwned"  # a value is text, never code
    assert latest(e, "a").output_data == {"VERSION": "1.2.7"}
    assert e.step_results["b"]["outputs"] == {"DONE": "yes"} and e.step_results["c"]["status"] == "success"
    assert e.current_step is None and e.failed_steps == [] and e.finished_at >= e.started_at
    a_row = latest(e, "a")
    assert a_row.worker_name and a_row.rq_job_id == f"step-{a_row.id}" and a_row.duration_seconds is not None


def test_failure_skips_downstream_and_runs_on_failure_and_always(app, workers):
    workers(1)
    p = make_pipeline([
        {"name": "build", "parameters": {"command": "echo compiling; exit 3"}},
        {"name": "deploy", "parameters": {"command": "echo deploy"}},
        {"name": "notify-failure", "depends_on": ["deploy"], "conditions": {"type": "on_failure"},
         "parameters": {"command": "echo alert"}},
        {"name": "cleanup", "depends_on": ["deploy"], "conditions": {"type": "always"},
         "parameters": {"command": "echo cleanup"}},
    ])
    e = wait_finished(run(p))
    assert e.status == "failed" and e.failed_steps == ["build"]
    s = status_map(e)
    assert s == {"build": "failed", "deploy": "skipped", "notify-failure": "success", "cleanup": "success"}
    build = latest(e, "build")
    assert build.exit_code == 3 and build.failure_kind == "exit" and "compiling" in build.logs
    assert latest(e, "deploy").upstream_failed and "build" in latest(e, "deploy").skip_reason
    assert e.recovery_point["resumable"] is True


def test_false_condition_is_skipped_with_its_explanation(app, workers):
    workers(1)
    p = make_pipeline([
        {"name": "probe", "parameters": {"command": "echo COUNT=0 >> $ANSFLOW_OUTPUT"}},
        {"name": "load", "conditions": {"type": "expression", "expression": "int(steps.probe.outputs.COUNT) > 0"},
         "parameters": {"command": "echo loading"}},
        {"name": "prod-only", "depends_on": ["probe"],
         "conditions": {"type": "expression", "expression": '$variables.env === "production"'},
         "parameters": {"command": "echo prod"}},
    ])
    e = wait_finished(run(p, variables={"env": "staging"}))
    assert e.status == "success"
    load, prod = latest(e, "load"), latest(e, "prod-only")
    assert load.status == "skipped" and "0" in load.skip_reason
    assert prod.status == "skipped" and "staging" in prod.skip_reason and "production" in prod.skip_reason


def test_retry_until_success_records_every_attempt_with_delays(app, workers):
    workers(1)
    p = make_pipeline([{"name": "flaky", "parameters": {
        "command": 'echo "try $ANSFLOW_ATTEMPT"; [ "$ANSFLOW_ATTEMPT" -ge 3 ] || exit 75'},
        "retry_policy": {"max_retries": 3, "delay_seconds": 1, "backoff": "fixed", "retry_on": [75]}}])
    e = wait_finished(run(p))
    assert e.status == "success"
    rows = attempts(e, "flaky")
    assert [r.status for r in rows] == ["failed", "failed", "success"]
    assert [r.retry_count for r in rows] == [0, 1, 2] and all(r.max_retries == 3 for r in rows)
    for prev, nxt in zip(rows, rows[1:]):
        assert nxt.scheduled_for == prev.finished_at + timedelta(seconds=1)
        assert nxt.started_at >= nxt.scheduled_for


def test_retry_on_exit_codes_is_honoured(app, workers):
    workers(1)
    p = make_pipeline([{"name": "x", "parameters": {"command": "exit 3"},
                        "retry_policy": {"max_retries": 2, "delay_seconds": 0, "retry_on": [75]}}])
    e = wait_finished(run(p))
    assert e.status == "failed" and len(attempts(e, "x")) == 1


def test_timeout_kills_and_is_retried_only_when_listed(app, workers, tmp_path):
    workers(1)
    p = make_pipeline([
        {"name": "slow-listed", "timeout_seconds": 1, "parameters": {"command": "sleep 30"},
         "retry_policy": {"max_retries": 1, "delay_seconds": 0, "retry_on": ["timeout"]}},
        {"name": "slow-unlisted", "depends_on": [], "timeout_seconds": 1, "parameters": {"command": "sleep 30"},
         "retry_policy": {"max_retries": 1, "delay_seconds": 0, "retry_on": [1, "error"]}},
    ])
    e = wait_finished(run(p))
    assert [a.status for a in attempts(e, "slow-listed")] == ["timed_out", "timed_out"]
    assert [a.status for a in attempts(e, "slow-unlisted")] == ["timed_out"]
    assert e.status == "failed"


def test_live_log_is_visible_while_the_step_runs(app, workers, tmp_path):
    workers(1)
    gate = tmp_path / "gate"
    p = make_pipeline([{"name": "talk", "parameters": {
        "command": f'echo "first line"; while [ ! -e {gate} ]; do sleep 0.1; done; echo "second line"'}}])
    e = run(p)
    row = wait_for(lambda: (lambda a: a if a and a.status == "running" and "first line" in (a.logs or "") else None)(latest(e, "talk")),
                   timeout=15, message="streamed log")
    assert "second line" not in row.logs
    gate.touch()
    e = wait_finished(e)
    assert "second line" in latest(e, "talk").logs


def test_secret_variables_are_masked_in_logs(app, workers):
    workers(1)
    p = make_pipeline([{"name": "s", "parameters": {"command": 'echo "token is $API_TOKEN"; echo "pw $DB_PASS"'}}])
    e = wait_finished(run(p, variables={"API_TOKEN": "s3cr3t-value", "DB_PASS": "hunter22"},
                          secret_variables=["DB_PASS"]))
    logs = latest(e, "s").logs
    assert "s3cr3t-value" not in logs and "hunter22" not in logs and "***" in logs


def test_bad_start_input_is_refused_and_nothing_is_saved(app):
    from webapp.models import WorkflowExecution
    from webapp.services.accounts import ValidationError
    from webapp.extensions import db

    p = make_pipeline([{"name": "a", "parameters": {"command": "true"}}])
    with pytest.raises(ValidationError):
        svc.start(p, variables={"bad name": 1})
    assert db.session.execute(db.select(WorkflowExecution)).first() is None
