"""Which outputs a step's environment receives: the latest success of each upstream step only."""
from __future__ import annotations

from sqlalchemy import insert, update

from webapp.extensions import db
from webapp.models import StepExecutionHistory as SEH
from webapp.services import executions as svc

from .helpers import make_pipeline


def _finish(attempt_id, outputs):
    db.session.execute(update(SEH).where(SEH.id == attempt_id).values(status="success", output_data=outputs))


def test_outputs_come_from_the_latest_success_of_each_step(app):
    p = make_pipeline([{"name": "a", "parameters": {"command": "true"}},
                       {"name": "b", "parameters": {"command": "true"}},
                       {"name": "c", "parameters": {"command": "true"}, "depends_on": ["a", "b"]}])
    e = svc.start(p)  # no worker: the attempts stay queued while this test writes their results
    rows = {a.step_name: a for a in svc.attempts_of(e.id)}
    _finish(rows["a"].id, {"version": "1"})
    _finish(rows["b"].id, {})
    db.session.commit()
    assert svc.outputs_by_step(e.id) == {"a": {"version": "1"}}
    assert svc.outputs_by_step(e.id, [rows["b"].step_id]) == {}
    assert svc.outputs_by_step(e.id, []) == {}

    # a re-run of "a" (retry_step) that writes nothing hides the old run's outputs ...
    db.session.execute(insert(SEH).values(
        execution_id=e.id, step_id=rows["a"].step_id, step_name="a", status="success", retry_count=1,
        max_retries=0, logs="", error_message="", output_data={}, upstream_failed=False, bypassed=False))
    db.session.commit()
    assert svc.outputs_by_step(e.id) == {}
    # ... and one that writes outputs replaces them
    db.session.execute(insert(SEH).values(
        execution_id=e.id, step_id=rows["a"].step_id, step_name="a", status="success", retry_count=2,
        max_retries=0, logs="", error_message="", output_data={"version": "2"}, upstream_failed=False,
        bypassed=False))
    db.session.commit()
    assert svc.outputs_by_step(e.id, [rows["a"].step_id, rows["b"].step_id]) == {"a": {"version": "2"}}
