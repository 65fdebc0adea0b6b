"""RQ jobs: they take ids only, run inside an app context and call services."""
from __future__ import annotations

from contextlib import nullcontext

from flask import Flask, has_app_context

_app: Flask | None = None


def app_context():
    """The job's app context: the worker's own, or one made once per process."""
    global _app
    if has_app_context():
        return nullcontext()
    if _app is None:
        from .. import create_app

        _app = create_app()
    return _app.app_context()
