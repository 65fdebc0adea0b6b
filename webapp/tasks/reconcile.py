"""The periodic reconciler: no execution stays stuck because a worker or Redis died.

It runs in a thread of every worker process; a Redis lock lets one of them do each pass.
A thread (not a scheduled job) keeps it going even when Redis lost its scheduled jobs.
"""
from __future__ import annotations

import logging
import threading

from flask import Flask

log = logging.getLogger(__name__)
LOCK_KEY = "ansflow:reconcile:lock"


def job_alive(job_id: str, conn) -> bool:
    """Whether RQ will still run this job. The database is the truth: a queued attempt whose job is
    missing (a Redis restart), or failed, stopped, finished or cancelled (a worker took it while the
    database was down and its claim failed: RQ keeps such a job in its failed registry for a day)
    is re-queued; the claim is conditional, so a duplicate run cannot happen."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) not in (
        JobStatus.FAILED, JobStatus.STOPPED, JobStatus.FINISHED, JobStatus.CANCELED)


def requeue_dead(attempt_id: int, conn) -> None:
    """Drop what is left of the attempt's old job (its record, its registry entries), then enqueue it again."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    from ..queues import step_job_id
    from .steps import requeue_attempt

    try:
        Job.fetch(step_job_id(attempt_id), connection=conn).delete()
    except NoSuchJobError:
        pass
    requeue_attempt(attempt_id)


def reconcile_once(app: Flask, queued_grace: float | None = None, lost_after: float | None = None) -> dict | None:
    from ..extensions import db
    from ..queues import redis_conn
    from ..services import executions as svc
    from ..services import approvals, notifications

    with app.app_context():
        conn = redis_conn()
        interval = app.config["RECONCILE_SECONDS"]
        if not conn.set(f"{app.config['QUEUE_PREFIX']}:{LOCK_KEY}", "1", nx=True, ex=max(1, int(interval * 0.8))):
            return None
        try:
            report = svc.reconcile(
                app.config["HEARTBEAT_SECONDS"],
                lost_after=lost_after,
                queued_grace=app.config["RECONCILE_QUEUED_GRACE_SECONDS"] if queued_grace is None else queued_grace,
                job_exists=lambda job_id: job_alive(job_id, conn),
                requeue=lambda attempt_id: requeue_dead(attempt_id, conn),
            )
            report["deliveries"] = notifications.reconcile_deliveries()
            report["approvals"] = approvals.sweep()  # expiries whose scheduled job was lost
            return report
        finally:
            db.session.remove()


class Reconciler(threading.Thread):
    def __init__(self, app: Flask):
        super().__init__(daemon=True, name="ansflow-reconciler")
        self.app = app
        self.stopped = threading.Event()
        self.outage_since: float | None = None
        self.recovered_at: float | None = None

    def run(self) -> None:
        every = self.app.config["RECONCILE_SECONDS"]
        while not self.stopped.wait(every):
            self.pass_once()

    def pass_once(self) -> dict | None:
        """One pass, said once per outage rather than once per failed pass. The first pass after an
        outage re-queues with no grace: the enqueues the outage swallowed (attempts queued in the
        database with no job in Redis) go back to the queue at once, not after the usual grace."""
        import time

        recovering = self.outage_since is not None
        # While the database was away no heartbeat could be written: a running attempt is "lost" only
        # once its worker had 3 heartbeats' time to beat again since this reconciler saw it return
        # (else a step finishing during the outage, its worker retrying the record, raced the reconciler).
        quiet = recovering or (self.recovered_at is not None
                               and time.monotonic() - self.recovered_at < 3 * self.app.config["HEARTBEAT_SECONDS"])
        lost_after = 10.0 ** 9 if quiet else None  # no attempt is declared lost in this pass
        try:
            report = reconcile_once(self.app, queued_grace=0.0 if recovering else None, lost_after=lost_after)
        except Exception:  # noqa: BLE001 - Redis or the database is away: try next pass
            if self.outage_since is None:
                self.outage_since = time.monotonic()
                log.warning("reconciler: a pass failed (Redis or the database away?); retrying every %s s",
                            self.app.config["RECONCILE_SECONDS"], exc_info=True)
            else:
                log.debug("reconciler pass failed again", exc_info=True)
            return None
        if recovering:
            log.warning("reconciler: passes work again after %.0f s", time.monotonic() - self.outage_since)
            self.outage_since = None
            self.recovered_at = time.monotonic()
        if report and (report["lost"] or report["requeued"]):
            log.warning("reconciler: %s", report)
        return report
