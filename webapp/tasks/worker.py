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
