"""Notification delivery jobs (queue: notifications). Retries are RQ's own Retry, set at enqueue time."""
from __future__ import annotations

from . import app_context


class DeliveryWillRetry(Exception):
    """Raised so that RQ schedules the next attempt (the row already says 'retrying' and why)."""


def deliver(delivery_id: int) -> str:
    with app_context():
        from rq import get_current_job

        from ..services import notifications

        job = get_current_job()
        final = job is None or not job.retries_left
        outcome = notifications.deliver(int(delivery_id), final_attempt=final)
        if outcome.status == "retrying":
            raise DeliveryWillRetry(f"delivery {delivery_id}: {outcome.error}")
        return outcome.status
