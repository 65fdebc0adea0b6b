"""Approval jobs: expiry at expires_at, reminders, and the sweep that catches what downtime missed.

Jobs take ids only and call the approvals service; a job that finds the request already
settled changes nothing (every settlement is a conditional update).
"""
from __future__ import annotations

from ..extensions import db
from . import app_context


def expire(request_id: int) -> str | None:
    from ..services import approvals

    with app_context():
        try:
            return approvals.expire(int(request_id))
        finally:
            db.session.remove()  # no transaction left open between jobs


def remind(request_id: int) -> bool:
    from ..services import approvals

    with app_context():
        try:
            return approvals.remind(int(request_id))
        finally:
            db.session.remove()  # no transaction left open between jobs


def sweep() -> dict:
    from ..services import approvals

    with app_context():
        try:
            return approvals.sweep()
        finally:
            db.session.remove()  # no transaction left open between jobs
