"""Worker process set-up: fork safety and the reconciler thread."""
from __future__ import annotations

import os

from flask import Flask


def install_worker_hooks(app: Flask, worker) -> None:
    from .. import tasks
    from ..extensions import db
    from .reconcile import Reconciler

    # Jobs (also those of a forked work-horse, which has no app context) reuse this app
    # instead of building a new one per job.
    tasks._app = app
    tasks._worker, tasks._worker_pid = worker, os.getpid()

    def _after_fork_in_child() -> None:
        # A forked job must not reuse the parent's pooled database connections.
        with app.app_context():
            db.engine.dispose(close=False)

    os.register_at_fork(after_in_child=_after_fork_in_child)
    if app.config["RECONCILE_SECONDS"] > 0:
        Reconciler(app).start()


def resilient(worker_cls):
    """``worker_cls`` that remembers a stop request (SIGINT/SIGTERM), so a caller can tell RQ's
    loop ending on purpose from RQ's loop giving up on an error."""

    class AnsFlowWorker(worker_cls):
        stopping = False

        def request_stop(self, signum, frame):
            self.stopping = True
            super().request_stop(signum, frame)

    AnsFlowWorker.__name__ = AnsFlowWorker.__qualname__ = f"AnsFlow{worker_cls.__name__}"
    return AnsFlowWorker


def serve(app: Flask, make_worker, *, burst: bool, with_scheduler: bool, logging_level: str,
          max_wait: float = 30.0) -> None:
    """Run RQ workers until asked to stop, never exiting on an infrastructure error.

    RQ's loop quits on any error it does not handle itself (a step job whose post-commit enqueue
    met a dead Redis, whose failure bookkeeping then failed too): before, `flask worker` returned
    and, with every worker busy at the outage, nothing ran until a person restarted them. Here the
    loop waits for Redis with backoff and jitter (said once per outage, not per try) and starts a
    fresh worker under the same name. What the outage left behind (attempts queued without a job)
    is the reconciler's, which trusts the database.
    """
    import logging
    import random
    import time

    from .. import tasks
    from ..queues import redis_conn

    log = logging.getLogger("webapp.worker")
    worker = make_worker()
    install_worker_hooks(app, worker)
    while True:
        try:
            worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=logging_level)
        except Exception:  # noqa: BLE001 - bootstrap against a dead Redis raises instead of looping
            log.debug("worker loop raised", exc_info=True)
        if worker.stopping or burst:
            return
        log.warning("worker %s: RQ's loop stopped on an error; waiting for Redis to start again", worker.name)
        delay, since = 0.2, time.monotonic()
        while not worker.stopping:
            try:
                redis_conn().ping()
                break
            except Exception:  # noqa: BLE001 - any Redis error: still down
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(max_wait, delay * 2)
        if worker.stopping:
            return
        try:
            worker.register_death()  # its registration may have outlived the outage
        except Exception:  # noqa: BLE001
            pass
        log.warning("worker %s: Redis answers again after %.1f s; resuming", worker.name, time.monotonic() - since)
        _replay_lost_enqueues(app, log)
        worker = make_worker()
        tasks._worker = worker


def _replay_lost_enqueues(app: Flask, log) -> None:
    """Right after an outage, re-queue the attempts whose enqueue it swallowed (they are queued in the
    database with no job in Redis) instead of leaving them to the reconciler's grace: a pass with no grace. An attempt that
    another process is enqueueing at that very moment may get a second job,
    which is harmless (the claim is conditional)."""
    from .reconcile import reconcile_once

    try:
        report = reconcile_once(app, queued_grace=0.0)
    except Exception:  # noqa: BLE001 - the periodic reconciler will do it
        log.debug("replay after the outage failed", exc_info=True)
        return
    if report and report["requeued"]:
        log.warning("re-queued %d step(s) whose enqueue the outage lost", len(report["requeued"]))
