"""The step hot path's statements, built once.

A finished step costs a handful of statements; on a slow core, composing a statement with
SQLAlchemy's expression language costs 0.2-0.3 ms and running a prebuilt one on the session's
connection 0.05 ms, so the statements a step runs every time are prebuilt here and executed
with `db.session.connection().execute(STATEMENT, params)`.
"""
from __future__ import annotations

from sqlalchemy import String, Text, bindparam, cast, func, literal, select

from ..models import StepExecutionHistory, WorkflowExecution
from ..models.snapshots import ATTEMPT_COLUMNS

A = StepExecutionHistory.__table__
W = WorkflowExecution.__table__

_RETURNED = (A.c.id, A.c.execution_id, A.c.step_id, A.c.retry_count, A.c.started_at)

# queued -> running by the worker whose job this is
CLAIM_QUEUED = (
    A.update().where(A.c.id == bindparam("aid"), A.c.status == "queued")
    .values(status="running", started_at=bindparam("now"), heartbeat_at=bindparam("now"),
            worker_name=bindparam("worker"), rq_job_id=bindparam("job"))
    .returning(*_RETURNED)
)

# the same, only for an attempt of the execution whose lock the caller holds
CLAIM_QUEUED_IN = (
    A.update().where(A.c.id == bindparam("aid"), A.c.status == "queued", A.c.execution_id == bindparam("pk"))
    .values(status="running", started_at=bindparam("now"), heartbeat_at=bindparam("now"),
            worker_name=bindparam("worker"), rq_job_id=bindparam("job"))
    .returning(*_RETURNED)
)

# pending -> running in one step, for a successor the finishing worker runs itself
CLAIM_PENDING = (
    A.update().where(A.c.id == bindparam("aid"), A.c.status == "pending")
    .values(status="running", queued_at=bindparam("now"), started_at=bindparam("now"),
            heartbeat_at=bindparam("now"), worker_name=bindparam("worker"), rq_job_id=bindparam("job"))
    .returning(*_RETURNED)
)

# a runner's verdict, only if the attempt is still running
RECORD = (
    A.update().where(A.c.id == bindparam("aid"), A.c.status == "running")
    .values(status=bindparam("status"), exit_code=bindparam("exit_code"), failure_kind=bindparam("failure"),
            error_message=bindparam("error"), logs=bindparam("logs"), output_data=bindparam("outputs", type_=A.c.output_data.type),
            finished_at=bindparam("now"), duration_seconds=bindparam("duration"))
)

# the logs of an attempt whose verdict came too late (cancelled or declared lost meanwhile)
RECORD_LOGS = A.update().where(A.c.id == bindparam("aid")).values(logs=bindparam("logs"), duration_seconds=bindparam("duration"))

ENQUEUE = (
    A.update()
    .where(A.c.id.in_(bindparam("ids", expanding=True)),
           A.c.status.in_(("pending", "waiting_approval", "retry_scheduled")))
    .values(status="queued", queued_at=bindparam("now"), rq_job_id=literal("step-") + cast(A.c.id, String))
    .returning(A.c.id)
)

EXECUTION_ROW = select(
    W.c.id, W.c.execution_id, W.c.status, W.c.cancel_requested, W.c.context_variables, W.c.trigger_data,
    W.c.started_at,
).where(W.c.id == bindparam("pk"))

# the same, taking the execution's row lock on PostgreSQL (database.begin_locked's `read`)
EXECUTION_ROW_LOCKED = EXECUTION_ROW.with_for_update()

FOCUS_ATTEMPTS = (
    select(*[A.c[col.key] for col in ATTEMPT_COLUMNS])
    .where(A.c.execution_id == bindparam("pk"), A.c.step_id.in_(bindparam("steps", expanding=True)))
)  # no ORDER BY: it would make SQLite walk every attempt of the execution in id order

CURRENT_STEP_NAMES = 40  # enough names to fill current_step's 120 characters


def _names(status: str):
    """The names of the execution's attempts in `status`, joined (an index range, cut short)."""
    some = (select(A.c.step_name).where(A.c.execution_id == bindparam("pk"), A.c.status == status)
            .order_by(A.c.id).limit(CURRENT_STEP_NAMES).subquery())
    return select(func.aggregate_strings(some.c.step_name, ", ")).scalar_subquery()


# current_step: the running steps, else the queued ones; returns it (None: none of either)
CURRENT_STEP = (
    W.update().where(W.c.id == bindparam("pk"))
    .values(current_step=func.substr(func.coalesce(_names("running"), _names("queued")), 1, 120))
    .returning(W.c.current_step)
)


def _outputs_query():
    a, b = A.alias("a"), A.alias("b")
    later = select(b.c.id).where(
        b.c.execution_id == a.c.execution_id, b.c.step_id == a.c.step_id, b.c.status == "success",
        (b.c.retry_count > a.c.retry_count) | ((b.c.retry_count == a.c.retry_count) & (b.c.id > a.c.id)))
    return select(a.c.step_id, a.c.step_name, a.c.output_data).where(
        a.c.execution_id == bindparam("pk"), a.c.status == "success",
        func.length(cast(a.c.output_data, Text)) > 2,  # neither "{}" nor "null"
        ~later.exists())


# outputs of the latest success of each step that wrote any
OUTPUTS = _outputs_query()
