"""Resume, retry in place, bypass, and recovery from dead workers and a Redis restart."""
import copy
import os
import signal

import pytest

from webapp.embedded_redis import EmbeddedRedis
from webapp.services import executions as svc
from webapp.services.pipelines import export_definition, save_definition

from ..conftest import wait_for
from .helpers import attempts, latest, make_pipeline, refresh, run, status_map, wait_finished, wait_status

pytestmark = pytest.mark.integration


def test_resume_after_fixing_the_command_reuses_succeeded_steps(app, workers, tmp_path):
    workers(1)
    counter = tmp_path / "a-runs"
    p = make_pipeline([
        {"name": "a", "parameters": {"command": f'echo run >> {counter}; echo "REV=r42" >> $ANSFLOW_OUTPUT'}},
        {"name": "b", "parameters": {"command": "exit 1"}},
        {"name": "c", "parameters": {"command": 'echo "c sees $STEP_A_REV"'}},
    ])
    first = wait_finished(run(p))
    assert first.status == "failed"
    definition = copy.deepcopy(export_definition(p))
    definition["steps"][1]["parameters"]["command"] = 'echo "b fixed, sees $STEP_A_REV"'
    save_definition(definition, pipeline=p)
    child = svc.resume(refresh(first), from_step="b")
    child = wait_finished(child)
    assert child.status == "success" and child.parent_execution_id == first.id and child.trigger_type == "resume"
    assert counter.read_text() == "run\n"  # a did not run again
    assert latest(child, "a").status == "success" and latest(child, "a").output_data == {"REV": "r42"}
    assert "b fixed, sees r42" in latest(child, "b").logs
    assert "c sees r42" in latest(child, "c").logs


def test_retry_step_reruns_the_failed_step_and_downstream_in_place(app, workers, tmp_path):
    workers(1)
    flag = tmp_path / "ok"
    p = make_pipeline([
        {"name": "a", "parameters": {"command": "true"}},
        {"name": "b", "parameters": {"command": f"test -e {flag}"}},
        {"name": "c", "parameters": {"command": "true"}},
    ])
    e = wait_finished(run(p))
    assert e.status == "failed" and status_map(e)["c"] == "skipped"
    flag.touch()
    svc.retry_step(refresh(e), "b")
    e = wait_finished(e)
    assert e.status == "success"
    assert [a.status for a in attempts(e, "b")] == ["failed", "success"]
    assert [a.status for a in attempts(e, "c")] == ["skipped", "success"]
    assert len(attempts(e, "a")) == 1


def test_retry_step_is_refused_on_a_running_execution(app, workers):
    p = make_pipeline([{"name": "a", "parameters": {"command": "sleep 30"}}])
    e = run(p)  # no worker: stays queued
    with pytest.raises(svc.Conflict):
        svc.retry_step(e, "a")


def test_bypass_lets_downstream_go_on_with_the_reason_recorded(app, workers, users):
    workers(1)
    p = make_pipeline([
        {"name": "a", "parameters": {"command": "exit 2"}},
        {"name": "b", "parameters": {"command": "echo after"}},
    ])
    e = wait_finished(run(p))
    assert e.status == "failed"
    svc.bypass_step(refresh(e), "a", "known flaky upstream", user=users["maintainer"])
    e = wait_finished(e)
    assert e.status == "success"
    a = latest(e, "a")
    assert a.status == "skipped" and a.bypassed and "maintainer1" in a.skip_reason and "known flaky" in a.skip_reason
    assert latest(e, "b").status == "success"


def test_a_killed_worker_is_detected_and_the_step_retried(app, workers, tmp_path):
    procs = workers(1)
    p = make_pipeline([{"name": "work", "parameters": {
        "command": f'echo $$ > {tmp_path}/pid; [ "$ANSFLOW_ATTEMPT" -ge 2 ] || sleep 60'},
        "retry_policy": {"max_retries": 1, "delay_seconds": 0, "retry_on": ["error"]}}])
    e = run(p)
    wait_status(e, "work", "running")
    os.killpg(procs[0].pid, signal.SIGKILL)  # the worker and the step's shell die together
    workers(1)
    e = wait_finished(e, timeout=90)
    rows = attempts(e, "work")
    assert [r.status for r in rows] == ["failed", "success"]
    assert rows[0].failure_kind == "worker_lost" and "worker lost" in rows[0].error_message
    assert e.status == "success"


@pytest.fixture
def redis_server(tmp_path):
    """This module's own Redis server, so restarting it disturbs no other test."""
    server = EmbeddedRedis(workdir=tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_redis_restart_loses_queued_jobs_and_the_reconciler_requeues_them(app, workers, redis_server, tmp_path):
    workers(1)
    gate = tmp_path / "gate"
    p = make_pipeline([
        {"name": "first", "parameters": {"command": f"while [ ! -e {gate} ]; do sleep 0.1; done"}},
        {"name": "x", "depends_on": [], "parameters": {"command": "true"}},
        {"name": "y", "depends_on": [], "parameters": {"command": "true"}},
        {"name": "last", "depends_on": ["first", "x", "y"], "parameters": {"command": "true"}},
    ])
    e = run(p)
    wait_status(e, "first", "running")  # the single worker is busy; x and y wait in Redis
    port = redis_server.port
    redis_server.stop()
    restarted = EmbeddedRedis(port=port, workdir=tmp_path / "redis2").start()  # empty: the queued jobs are gone
    redis_server.proc = restarted.proc  # stopped by the fixture
    gate.touch()
    e = wait_finished(e, timeout=120)
    assert e.status == "success", status_map(e)
