"""Helpers for runtime tests: define a pipeline, run it, wait for the outcome (polling)."""
from __future__ import annotations

import os

from webapp.extensions import db
from webapp.models import StepExecutionHistory, WorkflowExecution
from webapp.services import executions as svc
from webapp.services.pipelines import save_definition

from ..conftest import wait_for

TERMINAL = ("success", "failed", "cancelled")


def make_pipeline(steps, groups=None, name="p", **extra):
    return save_definition({"name": name, "steps": steps, "groups": groups or [], **extra})


def refresh(execution):
    db.session.commit()  # end the read transaction: a WAL/MVCC snapshot would hide the workers' writes
    db.session.expire_all()
    return db.session.get(WorkflowExecution, execution.id)


def wait_finished(execution, timeout=60):
    def done():
        e = refresh(execution)
        return e if e.status in TERMINAL else None
    return wait_for(done, timeout=timeout, message=f"execution {execution.execution_id} to finish")


def wait_status(execution, step_name, statuses, timeout=30):
    statuses = (statuses,) if isinstance(statuses, str) else statuses

    def check():
        a = latest(execution, step_name)
        return a if a is not None and a.status in statuses else None
    return wait_for(check, timeout=timeout, message=f"step {step_name} to be {statuses}")


def attempts(execution, step_name=None):
    db.session.commit()
    db.session.expire_all()
    q = db.select(StepExecutionHistory).filter_by(execution_id=execution.id)
    if step_name:
        q = q.filter_by(step_name=step_name)
    return list(db.session.execute(q.order_by(StepExecutionHistory.retry_count, StepExecutionHistory.id)).scalars())


def latest(execution, step_name):
    rows = attempts(execution, step_name)
    return rows[-1] if rows else None


def status_map(execution):
    out = {}
    for a in attempts(execution):
        out[a.step_name] = a.status
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def run(pipeline, **kw):
    return svc.start(pipeline, **kw)
