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


def reconcile_once(app: Flask) -> dict | None:
    from rq.job import Job

    from ..extensions import db
    from ..queues import redis_conn
    from ..services import executions as svc
    from ..services import approvals, notifications
    from .steps import requeue_attempt

    with app.app_context():
        conn = redis_conn()
        interval = app.config["RECONCILE_SECONDS"]
        if not conn.set(f"{app.config['QUEUE_PREFIX']}:{LOCK_KEY}", "1", nx=True, ex=max(1, int(interval * 0.8))):
            return None
        try:
            report = svc.reconcile(
                app.config["HEARTBEAT_SECONDS"],
                job_exists=lambda job_id: Job.exists(job_id, connection=conn),
                requeue=requeue_attempt,
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

    def run(self) -> None:
        every = self.app.config["RECONCILE_SECONDS"]
        while not self.stopped.wait(every):
            try:
                report = reconcile_once(self.app)
                if report and (report["lost"] or report["requeued"]):
                    log.warning("reconciler: %s", report)
            except Exception:  # Redis or the database may be down for a moment: try next pass
                log.exception("reconciler pass failed")
