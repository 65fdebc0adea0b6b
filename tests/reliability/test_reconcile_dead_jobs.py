"""The reconciler trusts the database, not RQ's registries (issue 14): a queued attempt whose RQ job
failed (as when a worker took it while the database was down and its claim raised), finished or
vanished is re-queued, and the execution then finishes on a real worker."""
from __future__ import annotations

from datetime import timedelta

import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from webapp.extensions import db
from webapp.models import StepExecutionHistory, utcnow
from webapp.queues import STEPS, get_queue, redis_conn
from webapp.tasks.reconcile import reconcile_once

from ..tasks.helpers import attempts, make_pipeline, run, wait_finished

pytestmark = pytest.mark.integration


def _age_queued(execution, seconds: float) -> None:
    db.session.execute(db.update(StepExecutionHistory)
                       .where(StepExecutionHistory.execution_id == execution.id,
                              StepExecutionHistory.status == "queued")
                       .values(queued_at=utcnow() - timedelta(seconds=seconds)))
    db.session.commit()


def _fail_like_rq(job_id: str) -> None:
    """What RQ does with a job whose function raised: off the queue, status failed, in the failed registry."""
    conn = redis_conn()
    queue = get_queue(STEPS, connection=conn)
    job = Job.fetch(job_id, connection=conn)
    queue.remove(job)
    job.set_status(JobStatus.FAILED)
    FailedJobRegistry(queue=queue).add(job, ttl=86400, exc_string="OperationalError: connection refused")


@pytest.mark.parametrize("fate", ["failed", "finished", "missing"])
def test_queued_attempt_whose_job_will_never_run_is_requeued(app, workers, fate):
    e = run(make_pipeline([{"name": "only", "parameters": {"command": "echo ran"}}]))
    attempt = attempts(e, "only")[0]
    assert attempt.status == "queued" and attempt.rq_job_id
    conn = redis_conn()
    if fate == "failed":
        _fail_like_rq(attempt.rq_job_id)
    elif fate == "finished":
        get_queue(STEPS, connection=conn).remove(attempt.rq_job_id)
        Job.fetch(attempt.rq_job_id, connection=conn).set_status(JobStatus.FINISHED)
    else:
        Job.fetch(attempt.rq_job_id, connection=conn).delete()

    # within its grace the attempt is left alone; past it, re-queued once
    report = reconcile_once(app)
    assert report is not None and report["requeued"] == []
    _age_queued(e, app.config["RECONCILE_QUEUED_GRACE_SECONDS"] + 5)
    conn.delete(f"{app.config['QUEUE_PREFIX']}:ansflow:reconcile:lock")
    report = reconcile_once(app)
    assert report["requeued"] == [attempt.id]
    job = Job.fetch(attempt.rq_job_id, connection=conn)
    assert job.get_status() == JobStatus.QUEUED
    assert attempt.rq_job_id not in FailedJobRegistry(queue=get_queue(STEPS, connection=conn)).get_job_ids()

    workers(1)
    e = wait_finished(e)
    assert e.status == "success"
    assert [a.status for a in attempts(e, "only")] == ["success"]  # one attempt, run once


def test_a_live_queued_job_is_not_requeued(app):
    e = run(make_pipeline([{"name": "only", "parameters": {"command": "true"}}]))
    _age_queued(e, app.config["RECONCILE_QUEUED_GRACE_SECONDS"] + 5)
    report = reconcile_once(app)
    assert report is not None and report["requeued"] == []


def test_flask_reconciler_reconciles_without_any_step_worker(app, app_settings, tmp_path):
    import subprocess
    import sys

    from ..conftest import ROOT, settings_env, wait_for

    e = run(make_pipeline([{"name": "only", "parameters": {"command": "true"}}]))
    attempt = attempts(e, "only")[0]
    Job.fetch(attempt.rq_job_id, connection=redis_conn()).delete()  # lost, as after a Redis restart
    _age_queued(e, app.config["RECONCILE_QUEUED_GRACE_SECONDS"] + 5)
    log = open(tmp_path / "reconciler.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "reconciler"], cwd=ROOT,
                            env=settings_env(app_settings), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: Job.exists(attempt.rq_job_id, connection=redis_conn()), timeout=30,
                 message="the reconciler process to re-queue the lost job")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(15)
    assert "reconciler" in (tmp_path / "reconciler.log").read_text()


def test_an_outage_is_said_once_and_the_first_pass_after_it_requeues_at_once(app, caplog):
    import logging

    from webapp.embedded_redis import free_port
    from webapp.tasks.reconcile import Reconciler

    e = run(make_pipeline([{"name": "only", "parameters": {"command": "true"}}]))
    attempt = attempts(e, "only")[0]
    Job.fetch(attempt.rq_job_id, connection=redis_conn()).delete()  # swallowed by the outage
    _age_queued(e, 2)  # well inside the usual grace
    live = app.config["REDIS_URL"]
    reconciler = Reconciler(app)
    app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: Redis is away
    with caplog.at_level(logging.DEBUG, logger="webapp.tasks.reconcile"):
        try:
            for _ in range(3):
                assert reconciler.pass_once() is None
        finally:
            app.config["REDIS_URL"] = live
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "a pass failed" in warnings[0].getMessage()
        report = reconciler.pass_once()
    assert report["requeued"] == [attempt.id]  # at once, not after the grace
    assert any("passes work again" in r.getMessage() for r in caplog.records)
