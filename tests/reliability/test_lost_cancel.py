"""A cancel whose Redis signal was lost (issue 14: an outage between the database's word and the
signal) still stops the step: the worker's heartbeat finds its attempt no longer running and the
runner stops it, as it would on the signal."""
from __future__ import annotations

import pytest

from webapp.extensions import db
from webapp.models import StepExecutionHistory, utcnow

from ..conftest import wait_for
from ..tasks.helpers import latest, make_pipeline, run, wait_status
from .test_step_processes import _with_marker

pytestmark = pytest.mark.integration


def test_a_cancel_without_its_signal_stops_the_step_at_the_next_heartbeat(app, workers):
    workers(1)
    marker = "1063.5"
    e = run(make_pipeline([{"name": "long", "parameters": {"command": f"sleep {marker}"}}]))
    attempt = wait_status(e, "long", "running")
    wait_for(lambda: _with_marker(marker), timeout=30, message="the step's sleep")
    # what cancel() writes, without the Redis signal that an outage swallowed
    db.session.execute(db.update(StepExecutionHistory).where(StepExecutionHistory.id == attempt.id)
                       .values(status="cancelled", failure_kind="cancelled", finished_at=utcnow()))
    db.session.commit()
    wait_for(lambda: not _with_marker(marker), timeout=3 * app.config["HEARTBEAT_SECONDS"] + 40,
             message="the step to be stopped by its heartbeat")
    assert latest(e, "long").status == "cancelled"
