"""services.executions.start: a new execution's first steps are written queued at once."""
from __future__ import annotations

from sqlalchemy import event, select

from webapp.extensions import db
from webapp.models import StepExecutionHistory as SEH, utcnow
from webapp.queues import STEPS, get_queue, redis_conn
from webapp.services import executions as svc
from webapp.services.pipelines import save_definition


def _shell(name, command="true", **extra):
    return {"name": name, "type": "shell", "parameters": {"command": command}, **extra}


def _attempts(execution):
    db.session.commit()
    return {a.step_name: a for a in db.session.execute(
        select(SEH).where(SEH.execution_id == execution.id)).scalars()}


def test_a_start_writes_its_first_steps_queued_and_enqueues_them(app):
    p = save_definition({"name": "p", "steps": [
        _shell("a"), _shell("b", depends_on=[]), _shell("c", depends_on=["a"])]})
    db.session.commit()
    statements = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    e = svc.start(p)
    # the attempts were inserted in their first state: nothing read them back or updated them
    assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE STEP_EXECUTION_HISTORY")]
    rows = _attempts(e)
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert (a.status, b.status, c.status) == ("queued", "queued", "pending")
    assert a.rq_job_id == f"step-{a.id}" and b.rq_job_id == f"step-{b.id}" and c.rq_job_id is None
    assert a.queued_at is not None and c.queued_at is None
    queued = [j.decode() for j in redis_conn().lrange(get_queue(STEPS).key, 0, -1)]
    assert queued == [f"step-{a.id}", f"step-{b.id}"]
    db.session.refresh(e)
    assert e.status == "running" and e.current_step == "a, b"


def test_a_start_whose_first_plan_skips_a_step_applies_it(app):
    p = save_definition({"name": "p", "steps": [
        _shell("prod-only", conditions={"type": "expression", "expression": '$variables.env === "production"'}),
        _shell("always", depends_on=[])]})
    db.session.commit()
    e = svc.start(p, variables={"env": "staging"})
    rows = _attempts(e)
    assert rows["prod-only"].status == "skipped" and rows["prod-only"].skip_reason
    assert rows["always"].status == "queued" and rows["always"].rq_job_id == f"step-{rows['always'].id}"


def test_attempt_ids_drawn_at_start_never_collide_with_later_attempts(app):
    p = save_definition({"name": "p", "steps": [_shell("a"), _shell("b", depends_on=[])]})
    db.session.commit()
    first, second = svc.start(p), svc.start(p)
    ids = [a.id for e in (first, second) for a in _attempts(e).values()]
    assert len(set(ids)) == 4
    # an attempt written the ordinary way (a retry's) takes the next id after them
    later = SEH(execution_id=first.id, step_id=_attempts(first)["a"].step_id, step_name="a", status="pending",
                retry_count=1, max_retries=1, logs="", error_message="", output_data={}, created_at=utcnow())
    db.session.add(later)
    db.session.commit()
    assert later.id > max(ids)
