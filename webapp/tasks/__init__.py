"""RQ jobs: they take ids only, run inside an app context and call services."""
from __future__ import annotations

from flask import Flask, current_app, has_app_context

_app: Flask | None = None
_worker = None       # the RQ worker of this process (set by worker.install_worker_hooks)
_worker_pid: int | None = None


def app_context():
    """A fresh app context per job, so each job gets its own database session.

    Reusing the worker's long-lived session would carry a read transaction from one job into
    the next; on SQLite (WAL) a stale read snapshot cannot be upgraded to a write.
    """
    global _app
    if has_app_context():
        return current_app._get_current_object().app_context()
    if _app is None:
        from .. import create_app

        _app = create_app()
    return _app.app_context()
