"""Executions: start, advance, cancel, resume, retry_step, bypass_step (DESIGN §3).

`advance` is the heart: it reads one snapshot, asks `engine.planner.plan`, and applies the
decisions in one transaction serialised per execution (`database.begin_locked`). Every state
change is a conditional UPDATE from the expected state, so a redelivered job or a second
worker changes nothing. Jobs are enqueued only after the commit that justifies them.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import defer

from ..database import allocate_ids, begin_locked, insert_many
from ..engine import graph
from ..engine.planner import (
    AwaitApproval, Cancel, Enqueue, FinishExecution, FinishGroup, ScheduleRetry, Skip, WakeAt,
    actionable, focus_after_success, plan, plan_after_success, plan_resume, plan_retry_step,
)
from ..engine.retry import PolicyError, RetryPolicy
from ..extensions import db
from ..models import ApprovalRequest, Pipeline, StepExecutionHistory, User, WorkflowExecution, utcnow
from ..models.snapshots import (
    ATTEMPT_COLUMNS, LOG_TAIL, Frozen, execution_snapshot, frozen, pipeline_def, remember_frozen,
)
from ..queues import CONTROL, enqueue, enqueue_steps, request_stop, step_job_id
from .accounts import ValidationError
from . import errors, run_summary
from . import secrets_store
from . import step_sql as sql
from .pipelines import freeze

SEH = StepExecutionHistory
ACTIVE_STEP_STATES = ("queued", "running", "waiting_approval", "retry_scheduled")
OPEN_STEP_STATES = ("pending",) + ACTIVE_STEP_STATES
TERMINAL_EXECUTION = ("success", "failed", "cancelled")
SECRET_NAME = re.compile(r"(secret|token|password|passwd|api_?key|private)", re.I)
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Conflict(errors.Conflict):
    """The request is valid but the current state forbids it."""


# ------------------------------------------------------------------ starting

def _check_variables(variables: Any) -> dict[str, Any]:
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise ValidationError("Variables must be a mapping of name to value.", {"variables": "expected an object"})
    bad = [k for k in variables if not isinstance(k, str) or not VAR_NAME.match(k)]
    if bad:
        raise ValidationError("Invalid variable name.", {"variables": f"invalid variable name {bad[0]!r}: use letters, digits and _"})
    return dict(variables)


def max_retries_of(step: dict) -> int:
    if not step.get("retry_policy"):
        return 0
    try:
        return RetryPolicy.from_dict(step.get("retry_policy")).max_retries
    except PolicyError:
        return 0


def start(
    pipeline: Pipeline,
    trigger_data: dict | None = None,
    variables: dict | None = None,
    user: User | None = None,
    trigger_type: str = "manual",
    secret_variables: Iterable[str] | None = None,
    *,
    snapshot: dict | None = None,
    parent: WorkflowExecution | None = None,
    kept: dict[int, StepExecutionHistory] | None = None,
) -> WorkflowExecution:
    """Freeze the definition, create the execution and its pending attempts, advance it."""
    begin_locked()
    if not pipeline.active and parent is None:
        raise Conflict(f"Pipeline '{pipeline.name}' is inactive: activate it to run it.")
    variables = _check_variables(variables)
    if trigger_data is not None and not isinstance(trigger_data, dict):
        raise ValidationError("trigger_data must be an object.", {"trigger_data": "expected an object"})
    frozen = snapshot or freeze(pipeline)
    if not frozen["steps"]:
        raise ValidationError("This pipeline has no steps yet.", {"steps": "add a step first"})
    definition = pipeline_def(frozen)
    problems = graph.validate(definition)
    if problems:
        raise ValidationError("The pipeline definition is invalid.", {"definition": problems[0].message})
    secrets_ = sorted(set(secret_variables or []) | {k for k in variables if SECRET_NAME.search(k)})
    from ..runners.masking import short_secrets  # a marked secret under 8 characters would mask ordinary text

    short = short_secrets({k: variables.get(k) for k in sorted(set(secret_variables or []))})
    if short:
        raise ValidationError("A secret variable is too short to be masked safely.", {"variables": next(iter(short.values()))})
    stored_variables, sealed = secrets_store.split(variables, secrets_)   # never a secret in clear in the row
    now = utcnow()
    execution = WorkflowExecution(
        pipeline_id=pipeline.id, execution_id=secrets.token_hex(8), status="running",
        trigger_type=trigger_type, trigger_data=trigger_data or {}, context_variables=stored_variables,
        secret_variables=secrets_, secret_values=sealed, pipeline_snapshot=frozen, pipeline_version=frozen.get("version", 1),
        triggered_by_id=user.id if user is not None and getattr(user, "id", None) else None,
        parent_execution_id=parent.id if parent is not None else None,
        step_results={}, failed_steps=[], pending_approvals=[], started_at=now, created_at=now,
    )
    db.session.add(execution)
    db.session.flush()
    from . import notifications

    notifications.learn_heard(execution, frozen)
    fz = remember_frozen(execution.execution_id, frozen, definition)
    rows: dict[int, dict] = {}
    for step in frozen["steps"]:
        old = (kept or {}).get(step["id"])
        row = {
            "execution_id": execution.id, "step_id": step["id"], "step_name": step["name"],
            "status": "pending", "retry_count": 0, "max_retries": max_retries_of(step), "logs": "",
            "error_message": "", "output_data": {}, "created_at": now, "upstream_failed": False, "bypassed": False,
            # every row names the same columns: one executemany
            "exit_code": None, "skip_reason": None, "started_at": None, "finished_at": None, "duration_seconds": None,
            "queued_at": None, "rq_job_id": None, "definition_version": execution.pipeline_version,
        }
        if old is not None:
            row.update(
                definition_version=old.definition_version or parent.pipeline_version,
                status=old.status, output_data=old.output_data or {}, exit_code=old.exit_code,
                skip_reason=old.skip_reason, bypassed=old.bypassed, started_at=old.started_at,
                finished_at=old.finished_at, duration_seconds=old.duration_seconds,
                logs=f"[kept from execution {parent.execution_id}, attempt {old.retry_count + 1}]\n" + (old.logs or ""),
            )
        rows[step["id"]] = row
    for row, attempt_id in zip(rows.values(), allocate_ids(_SEH_TABLE, len(rows))):
        row["id"] = attempt_id
    first = _first_enqueues(execution, rows, definition, now)
    jobs = []
    for d in first or ():
        row = rows[d.step_id]
        row.update(status="queued", queued_at=now, rq_job_id=step_job_id(d.attempt_id))
        jobs.append((d.attempt_id, job_timeout(fz.steps[d.step_id])))
    # not the ORM's bulk insert: no object needs tracking, and at 500 rows the ORM's
    # bookkeeping cost as much as the statement
    insert_many(_SEH_TABLE, list(rows.values()))
    pk = execution.id  # read before the commit expires it (a reload reads the whole snapshot)
    if first is not None:
        _refresh_summary(execution, fz, {sid: (r["step_name"], r["status"]) for sid, r in rows.items()})
    db.session.commit()
    emit_event("started", execution)
    if first is None:
        advance(pk)
    else:
        enqueue_steps(jobs)
    return execution


def _first_enqueues(execution: WorkflowExecution, rows: dict[int, dict], definition, now: datetime) -> list | None:
    """The first plan of a new execution, made before its attempts are written: when it only
    enqueues steps (the usual start), they are written as queued at once, which spares the
    first advance re-reading every attempt and updating the ones it enqueues. None: the plan
    decides more (skips, approvals, a finished resume...), which the first advance applies."""
    from types import SimpleNamespace

    fresh = [SimpleNamespace(failure_kind=None, scheduled_for=None, **row) for row in rows.values()]
    decisions = plan(execution_snapshot(execution, fresh, {}, definition=definition), now)
    if not decisions or any(not isinstance(d, Enqueue) for d in decisions):
        return None
    return decisions


# ------------------------------------------------------------------ advancing

def request_advance(execution_pk: int, at: datetime | None = None) -> None:
    """Ask a worker to advance this execution (now, or at `at`)."""
    job_id = f"advance-{execution_pk}-{int(at.timestamp())}" if at else None
    enqueue(CONTROL, "webapp.tasks.steps.advance_execution", execution_pk, job_id=job_id, at=at)


def _approval_states(execution_pk: int, latest_ids: set[int]) -> dict[int, str]:
    rows = db.session.execute(
        select(ApprovalRequest.step_id, ApprovalRequest.attempt_id, ApprovalRequest.status)
        .where(ApprovalRequest.execution_id == execution_pk).order_by(ApprovalRequest.id)
    ).all()
    return {step_id: status for step_id, attempt_id, status in rows if attempt_id in latest_ids}


def _execution_row(execution_pk: int) -> WorkflowExecution | None:
    """The execution, fresh, without its big JSON columns (the snapshot is parsed once per process)."""
    return db.session.execute(
        select(WorkflowExecution)
        .options(defer(WorkflowExecution.pipeline_snapshot), defer(WorkflowExecution.step_results))
        .where(WorkflowExecution.id == execution_pk)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _load(execution_pk: int):
    """Everything plan() needs, in three small queries: the execution row (without its big
    JSON columns), the attempts' planning columns, and (only if some attempt failed) log tails."""
    execution = _execution_row(execution_pk)
    if execution is None:
        return None, None, [], {}, {}
    fz = frozen_of(execution.execution_id, execution_pk)
    rows = db.session.execute(
        select(*ATTEMPT_COLUMNS).where(SEH.execution_id == execution_pk).order_by(SEH.id)).all()
    latest = _latest_by_step(rows)
    failed = [a.id for a in latest.values() if a.status in ("failed", "timed_out")]
    tails: dict[int, str] = {}
    if failed:  # retry_on "log:REGEX" reads the end of the log of a failed attempt
        tails = {i: (logs or "")[-LOG_TAIL:] for i, logs in db.session.execute(
            select(SEH.id, SEH.logs).where(SEH.id.in_(failed))).all()}
    approvals: dict[int, str] = {}
    if fz.has_approvals:
        approvals = _approval_states(execution_pk, {a.id for a in latest.values()})
    return execution, fz, rows, approvals, tails


_latest_by_step = run_summary.latest_by_step


def advance(execution_pk: int, first: Callable[[], int | None] | None = None, claim: "Claim | None" = None) -> list:
    """Plan and apply until nothing more can be decided now. Safe to call any number of times.

    `first` runs inside the first locked transaction before planning (the step job records its
    result there, so a finished step and the decisions it unlocks commit together). When it
    returns the id of a step that just succeeded, the focused plan is tried first: it reads only
    that step's neighbourhood, and leaves anything else to the full plan in the same transaction.
    """
    applied: list = []
    for _ in range(20):  # a plan is a fixpoint; a zero-delay retry needs one more round
        after: list[Callable[[], None]] = []
        locked = begin_locked(execution_pk, read=sql.EXECUTION_ROW_LOCKED if first is not None else None)
        if first is not None:
            succeeded, first = first(), None
            if succeeded is not None and _advance_after_success(locked, succeeded, after, applied, claim):
                db.session.commit()
                for action in after:
                    action()
                return applied
        execution, fz, rows, approvals, tails = _load(execution_pk)
        if execution is None or execution.status in TERMINAL_EXECUTION:
            db.session.commit()
            return applied
        now = utcnow()
        snap = execution_snapshot(execution, rows, approvals, log_tails=tails, definition=fz.definition)
        decisions = plan(snap, now)
        by_id = {a.id: a for a in rows}
        state = {sid: (a.step_name, a.status) for sid, a in _latest_by_step(rows).items()}
        applied.extend(_enqueue_all([d for d in decisions if isinstance(d, Enqueue)], fz, now, after, state))
        again = False
        for d in decisions:
            if not isinstance(d, Enqueue) and _apply(d, execution, fz, by_id, now, after, state):
                applied.append(d)
            if isinstance(d, ScheduleRetry) and d.run_at <= now:
                again = True
        _refresh_summary(execution, fz, state)
        db.session.commit()
        for action in after:
            action()
        if not again or not actionable(decisions):
            break
    return applied


def _advance_after_success(execution, step_id: int, after: list, applied: list,
                           claim: "Claim | None" = None) -> bool:
    """The hot path of a finished step: the focused plan (engine.planner.plan_after_success) on
    the attempts of the step's neighbourhood, and current_step in one statement. True when
    that was enough; False leaves the rest (failures, skips, approvals, groups, the execution's
    end) to the full plan, which then sees whatever this applied. With a `claim`, the first
    step it unlocks goes straight to running for the calling worker instead of to the queue.
    `execution` is its row as read when the write lock was taken (step_sql.EXECUTION_ROW)."""
    if execution is None or execution.status != "running" or execution.cancel_requested:
        return False
    conn = db.session.connection()
    execution_pk = execution.id
    fz = frozen_of(execution.execution_id, execution_pk)
    focus = focus_after_success(fz.definition, step_id)
    if focus is None:
        return False
    now = utcnow()
    if len(focus) == 1:  # nothing depends on the step: its success decides nothing but the end
        rows, decisions = [], []
    else:
        rows = conn.execute(sql.FOCUS_ATTEMPTS, {"pk": execution_pk, "steps": list(focus)}).all()
        decisions = plan_after_success(execution_snapshot(execution, rows, {}, definition=fz.definition), now,
                                       step_id)
        if decisions is None:
            return False
    if claim is not None and claim.attempt_id is None and decisions:
        first = decisions[0]
        claim.row = conn.execute(sql.CLAIM_PENDING, {
            "aid": first.attempt_id, "now": now, "worker": claim.worker_name, "job": claim.job_id}).first()
        if claim.row is not None:
            claim.outputs = claim.successor_outputs(fz, execution_pk, claim.row.step_id)
            applied.append(first)
            decisions = decisions[1:]
    if decisions:
        state = {sid: (a.step_name, a.status) for sid, a in _latest_by_step(rows).items()}
        applied.extend(_enqueue_all(decisions, fz, now, after, state))
    if claim is not None and claim.row is not None and claim.row.execution_id == execution_pk:
        # the claimed step runs: the execution goes on, and current_step can wait for its
        # heartbeat (a statement less on a chain step's critical path: 0.4 ms on PostgreSQL)
        claim.summary_stale = True
        return True
    # None: nothing runs or waits in the queue, so the execution ends or waits for an approval
    return conn.execute(sql.CURRENT_STEP, {"pk": execution_pk}).scalar() is not None


_SEH_TABLE = SEH.__table__


def _set(attempt_id: int, expected: Iterable[str], **values) -> bool:
    """A conditional update from the expected state; True when this call made the change.

    Core, on the session's connection: the ORM's bulk-update machinery costs more than the
    statement on this hot path, and no ORM object needs synchronising.
    """
    t = _SEH_TABLE
    result = db.session.connection().execute(
        t.update().where(t.c.id == attempt_id, t.c.status.in_(tuple(expected))).values(**values))
    return result.rowcount == 1


def job_timeout(step: dict) -> int:
    """RQ's timeout for a step's job: a backstop behind the runners' own step timeout."""
    return int(step.get("timeout_seconds") or 24 * 3600) + 120


def may_unlock(fz: Frozen, step_id: int) -> bool:
    """Can this step's success unlock a dependent the focused plan would hand to a Claim?"""
    focus = focus_after_success(fz.definition, step_id)
    return focus is not None and len(focus) > 1


@dataclass
class Claim:
    """A step job's offer to run another attempt itself (see tasks.steps._next_work): the queued
    `attempt_id` whose job it took from the head of the queue (`job_id`), or, without one, the
    first successor its step unlocks. `row` is the attempt it claimed (id, execution_id, step_id,
    retry_count, started_at), if any, and `outputs` its step_outputs, read in the same transaction."""
    worker_name: str
    job_id: str | None
    attempt_id: int | None = None
    row: Any = None
    outputs: dict | None = None
    # (step ids, their outputs by step name): what the caller already knows of the outputs of
    # its step and of everything upstream of it
    known: tuple[frozenset[int], dict[str, dict]] | None = None
    # True when the transaction that claimed `row` left the execution's current_step as it was
    # (a successor claimed: something runs, so the execution cannot have ended); the claimer's
    # heartbeat refreshes it at its first beat, off the chain's critical path
    summary_stale: bool = False

    def successor_outputs(self, fz: Frozen, execution_pk: int, step_id: int) -> dict:
        """step_outputs of a claimed successor, without a query when every step upstream of it
        is one whose outputs the caller knows (a chain's next step: its upstream is the finished
        step and that step's own upstream, whose outputs can no longer change)."""
        up = graph.upstream(fz.definition, step_id)
        if self.known is None or not up <= self.known[0]:
            return step_outputs(execution_pk, step_id)
        names = {fz.steps[s]["name"] for s in up}
        return {name: outputs for name, outputs in self.known[1].items() if name in names}

    def take_queued(self, conn, now: datetime, execution_pk: int | None = None) -> None:
        """queued -> running; with `execution_pk`, only an attempt of that execution (whose lock
        the caller holds: claiming another execution's attempt there could deadlock two workers
        on PostgreSQL, each holding an attempt of the execution the other one locked)."""
        params = {"aid": self.attempt_id, "now": now, "worker": self.worker_name, "job": self.job_id}
        if execution_pk is None:
            self.row = conn.execute(sql.CLAIM_QUEUED, params).first()
        else:
            self.row = conn.execute(sql.CLAIM_QUEUED_IN, dict(params, pk=execution_pk)).first()
        if self.row is not None:
            self.outputs = step_outputs(self.row.execution_id, self.row.step_id)

    def take_queued_alone(self) -> None:
        """take_queued in a transaction of its own."""
        begin_locked()
        self.take_queued(db.session.connection(), utcnow())
        db.session.commit()


def _enqueue_all(decisions: list, fz: Frozen, now: datetime, after: list, state: dict) -> list:
    """All Enqueue decisions of a plan as one conditional UPDATE ... RETURNING and one Redis
    pipeline (a fan-out of N steps costs two round trips, not 2N)."""
    if not decisions:
        return []
    won = set(db.session.connection().execute(
        sql.ENQUEUE, {"ids": [d.attempt_id for d in decisions], "now": now}).scalars())
    done = [d for d in decisions if d.attempt_id in won]
    jobs = []
    for d in done:
        state[d.step_id] = (state[d.step_id][0], "queued")
        jobs.append((d.attempt_id, job_timeout(fz.steps[d.step_id])))
    if jobs:
        after.append(lambda: enqueue_steps(jobs))
    return done


def _apply(d, execution: WorkflowExecution, fz: Frozen, by_id: dict, now: datetime, after: list,
           state: dict[int, tuple[str, str]]) -> bool:
    """Apply one decision with a conditional update; `state` (step id -> (name, status)) follows."""
    ok = _apply_one(d, execution, fz, by_id, now, after)
    if ok:
        new_status = {Skip: "skipped", AwaitApproval: "waiting_approval",
                      ScheduleRetry: "retry_scheduled"}.get(type(d)) or (d.status if isinstance(d, Cancel) else None)
        if new_status is not None:
            state[d.step_id] = (state[d.step_id][0], new_status)
    return ok


def _apply_one(d, execution: WorkflowExecution, fz: Frozen, by_id: dict, now: datetime, after: list) -> bool:
    steps = fz.steps
    if isinstance(d, Skip):
        reason = _skip_reason(d, execution, fz)
        return _set(d.attempt_id, ("pending",), status="skipped", skip_reason=reason,
                    upstream_failed=d.upstream_failed, finished_at=now)
    elif isinstance(d, AwaitApproval):
        if _set(d.attempt_id, ("pending",), status="waiting_approval"):
            from . import approvals

            request = approvals.open_request(execution, db.session.get(SEH, d.attempt_id), steps[d.step_id])
            db.session.flush()
            request_id = request.id
            after.append(lambda: approvals.on_opened(request_id))
            return True
    elif isinstance(d, ScheduleRetry):
        failed = by_id[d.failed_attempt_id]
        exists = db.session.execute(select(SEH.id).where(
            SEH.execution_id == execution.id, SEH.step_id == d.step_id, SEH.retry_count == d.retry_count)).first()
        if exists:
            return False
        db.session.execute(insert(SEH).values(
            execution_id=execution.id, step_id=d.step_id, step_name=failed.step_name, status="retry_scheduled",
            retry_count=d.retry_count, max_retries=failed.max_retries, scheduled_for=d.run_at, created_at=now,
            logs="", error_message="", output_data={}, upstream_failed=False, bypassed=False,
            definition_version=execution.pipeline_version,
        ))
        if d.run_at > now:
            after.append(lambda: request_advance(execution.id, at=d.run_at))
        failed_id = failed.id
        after.append(lambda: emit_event("retrying", execution, attempt_id=failed_id,
                                   extra={"retry_count": d.retry_count, "delay_seconds": d.delay_seconds}))
        return True
    elif isinstance(d, Cancel):
        attempt = by_id[d.attempt_id]
        was = attempt.status
        if _set(d.attempt_id, OPEN_STEP_STATES, status=d.status, error_message=d.reason, finished_at=now,
                failure_kind="cancelled" if d.status == "cancelled" else "timeout"):
            if was in ("queued", "running"):
                after.append(lambda: request_stop(d.attempt_id, d.status))
            if was == "waiting_approval":  # its request closes with the reason; approvers are told
                from . import approvals

                approvals.cancel_for_execution(execution, d.reason, after, attempt_id=d.attempt_id)
            if d.status == "timed_out":
                after.append(lambda: emit_event("timed_out", execution, attempt_id=d.attempt_id))
            return True
    elif isinstance(d, FinishGroup):
        groups = dict((execution.recovery_point or {}).get("groups", {}))
        if d.group_id not in groups:
            status, reason = _group_record(d, execution, fz)
            groups[d.group_id] = {"status": status, "reason": reason, "at": now.isoformat()}
            execution.recovery_point = {**(execution.recovery_point or {}), "groups": groups}
            return True
    elif isinstance(d, FinishExecution):
        reason = d.reason
        if d.status == "failed":
            reason = run_summary.truthful_reason(reason, _skipped_group_names(execution, fz))
        if d.status == "cancelled":
            from . import approvals

            approvals.cancel_for_execution(execution.id)
            if (execution.status_reason or "").startswith("cancel requested by"):  # keep who asked
                reason = f"{d.reason} ({execution.status_reason})"
        execution.status = d.status
        execution.status_reason = reason
        execution.finished_at = now
        after.append(lambda: emit_event(d.status, execution))
        return True
    elif isinstance(d, WakeAt):
        after.append(lambda: request_advance(execution.id, at=d.at))
    return False


def _group_record(d: FinishGroup, execution: WorkflowExecution, fz: Frozen) -> tuple[str, str]:
    """The group's outcome as recorded for people (run_summary.group_verdict)."""
    if d.status != "failed":
        return d.status, d.reason
    return _group_verdict(execution, fz, d.group_id) or (d.status, d.reason)


def _group_verdict(execution: WorkflowExecution, fz: Frozen, group_id: str) -> tuple[str, str] | None:
    members = [sid for sid, s in fz.steps.items() if s.get("parallel_group") == group_id]
    # read here, not from the plan's rows: the skips of this very plan are already written
    rows = db.session.execute(select(SEH.step_id, SEH.step_name, SEH.status, SEH.upstream_failed, SEH.retry_count, SEH.id)
                              .where(SEH.execution_id == execution.id, SEH.step_id.in_(members))).all()
    return run_summary.group_verdict("failed", _latest_by_step(rows).values())


def _skip_reason(d: Skip, execution: WorkflowExecution, fz: Frozen) -> str:
    """The engine's reason, except that a group whose members were only skipped because of an
    upstream failure is named so, not as failed."""
    if not d.upstream_failed or not fz.definition.groups:
        return d.reason
    reason = d.reason
    for g in fz.definition.groups:
        said = f"dependency {g.name or g.id} failed"
        if said in reason and _group_verdict(execution, fz, g.id) is not None:
            reason = reason.replace(said, f"dependency {g.name or g.id} was {run_summary.GROUP_SKIPPED}")
    return reason


def _skipped_group_names(execution: WorkflowExecution, fz: Frozen) -> list[str]:
    recorded = (execution.recovery_point or {}).get("groups", {})
    return [g.name or g.id for g in fz.definition.groups if recorded.get(g.id, {}).get("status") == "skipped"]


def _refresh_summary(execution: WorkflowExecution, fz: Frozen, state: dict[int, tuple[str, str]]) -> None:
    """Keep the AnsFlow summary fields true, from the state advance() already holds (no re-read)."""
    running = [name for name, st in state.values() if st == "running"]
    queued = [name for name, st in state.values() if st == "queued"]
    waiting = [name for name, st in state.values() if st == "waiting_approval"]
    failed = sorted(name for name, st in state.values() if st in ("failed", "timed_out"))
    current = ", ".join(running or queued or waiting)[:120] or None  # as step_sql.CURRENT_STEP
    if execution.current_step != current:
        execution.current_step = current
    if execution.failed_steps != failed:
        execution.failed_steps = failed
    if execution.status in ("running", "waiting_approval"):
        status = "waiting_approval" if waiting and not (running or queued) else "running"
        if execution.status != status:
            execution.status = status
    if fz.has_approvals:
        pending = list(db.session.execute(select(ApprovalRequest.id).where(
            ApprovalRequest.execution_id == execution.id, ApprovalRequest.status == "pending")).scalars())
        if execution.pending_approvals != pending:
            execution.pending_approvals = pending
    if execution.status in TERMINAL_EXECUTION:
        execution.step_results = step_results(execution.id)
        execution.current_step = None
        execution.recovery_point = {
            **(execution.recovery_point or {}),
            "resumable": execution.status in ("failed", "cancelled"),
            "succeeded_steps": sorted(name for name, st in state.values() if st == "success"),
            "failed_steps": failed,
        }


def step_results(execution_pk: int) -> dict[str, Any]:
    """Per step name: the latest attempt's result (the live view and the final record)."""
    attempts = db.session.execute(select(SEH).where(SEH.execution_id == execution_pk).order_by(SEH.id)).scalars().all()
    counts: dict[int, int] = {}
    for a in attempts:
        counts[a.step_id] = counts.get(a.step_id, 0) + 1
    out: dict[str, Any] = {}
    for a in _latest_by_step(list(attempts)).values():
        out[a.step_name] = {
            "status": a.status, "exit_code": a.exit_code, "outputs": a.output_data or {},
            "attempts": counts[a.step_id], "duration_seconds": a.duration_seconds,
            "error": a.error_message or None, "skip_reason": a.skip_reason, "bypassed": a.bypassed,
        }
    return out


def emit_event(event: str, execution: WorkflowExecution, attempt_id: int | None = None, extra: dict | None = None) -> None:
    try:
        from . import notifications
    except ImportError:  # the notifications service is optional at this layer
        return
    if not notifications.hears(event, execution):
        return
    attempt = db.session.get(SEH, attempt_id) if attempt_id else None
    notifications.emit(event, execution, attempt, extra)


def emit_step_event(event: str, execution_pk: int, fz: Frozen, attempt_id: int) -> None:
    """emit_event for the step job: the execution row is read only when someone listens."""
    from . import notifications

    if notifications.hears_frozen(event, fz):
        emit_event(event, db.session.get(WorkflowExecution, execution_pk), attempt_id=attempt_id)


# ------------------------------------------------------------------ step results (called by the step job)

def mark_running(attempt_id: int, worker_name: str, job_id: str | None):
    """queued -> running; returns (row, upstream outputs) or None if the attempt was not queued
    (cancelled, a duplicate or a stale job). The row is (id, execution_id, step_id, retry_count,
    started_at); the outputs (see step_outputs) are read in the same transaction."""
    claim = Claim(worker_name, job_id, attempt_id)
    claim.take_queued_alone()
    return None if claim.row is None else (claim.row, claim.outputs)


def job_timeout_of(row) -> int:
    """job_timeout of a claimed attempt's step (row as returned by a claim)."""
    job = job_context(row.execution_id)
    return job_timeout(frozen_of(job.execution_id, job.id).steps[row.step_id])


def step_outputs(execution_pk: int, step_id: int) -> dict[str, dict[str, str]]:
    """What a step's environment gets of earlier steps: the outputs of the steps upstream of it."""
    job = job_context(execution_pk)
    fz = frozen_of(job.execution_id, execution_pk)
    return outputs_by_step(execution_pk, graph.upstream(fz.definition, step_id))


_JOB_CONTEXT: dict[tuple[str, int], Any] = {}


def job_context(execution_pk: int):
    """What a step job needs of its execution (id, variables, trigger, secret names, sealed secret values).

    These never change during an execution, so each worker process reads them once. Keyed by
    the primary key, which is never handed to another execution (AUTOINCREMENT, migration 0004);
    the definition is then found by the immutable execution_id (frozen_of).
    """
    key = (str(db.engine.url), execution_pk)
    found = _JOB_CONTEXT.get(key)
    if found is None:
        found = db.session.execute(select(
            WorkflowExecution.id, WorkflowExecution.execution_id, WorkflowExecution.context_variables,
            WorkflowExecution.trigger_data, WorkflowExecution.secret_variables, WorkflowExecution.secret_values,
        ).where(WorkflowExecution.id == execution_pk)).one()
        if len(_JOB_CONTEXT) > 1024:
            _JOB_CONTEXT.clear()
        _JOB_CONTEXT[key] = found
    return found


def frozen_of(execution_id: str, execution_pk: int) -> Frozen:
    return frozen(execution_id, lambda: db.session.execute(
        select(WorkflowExecution.pipeline_snapshot).where(WorkflowExecution.id == execution_pk)).scalar_one())


def finish_attempt(attempt_id: int, execution_pk: int, started_at: datetime | None, result,
                   step_id: int | None = None, claim: Claim | None = None) -> bool:
    """Record a runner's result and advance the execution, in one locked transaction.

    The result is recorded only if the attempt is still running (else it was cancelled or
    declared lost meanwhile: its logs are kept, not its verdict). Returns whether it was recorded.
    With a `claim`, the queued attempt it names (if of this execution) or else a successor this
    success unlocks may be claimed for the caller (claim.row).
    """
    recorded: list[bool] = []

    def record() -> int | None:
        now = utcnow()
        duration = (now - started_at).total_seconds() if started_at else None
        conn = db.session.connection()
        ok = conn.execute(sql.RECORD, {
            "aid": attempt_id, "status": result.status, "exit_code": result.exit_code, "failure": result.failure,
            "error": result.error_message or "", "logs": result.logs, "outputs": result.outputs or {},
            "now": now, "duration": duration}).rowcount == 1
        if not ok:
            conn.execute(sql.RECORD_LOGS, {"aid": attempt_id, "logs": result.logs, "duration": duration})
        recorded.append(ok)
        if claim is not None and claim.attempt_id is not None:
            claim.take_queued(conn, now, execution_pk)
        return step_id if ok and result.status == "success" else None

    advance(execution_pk, first=record, claim=claim)
    if not recorded:  # the execution row is gone
        return False
    return recorded[0]


def fail_attempt(attempt_id: int, kind: str, message: str, expected: Iterable[str] = ("queued", "running")) -> bool:
    begin_locked()
    now = utcnow()
    ok = _set(attempt_id, tuple(expected), status="failed", failure_kind=kind, error_message=message, finished_at=now)
    db.session.commit()
    return ok


def outputs_by_step(execution_pk: int, step_ids: Iterable[int] | None = None) -> dict[str, dict[str, str]]:
    """Outputs of the latest successful attempt of each step (of `step_ids` only, when given).

    Most steps write no outputs, so the database returns only the attempts that did and that
    no later success of the same step replaced (a step re-run by retry_step): a deep chain's
    step neither decodes nor even receives a row per step above it.
    """
    if step_ids is not None:
        step_ids = set(step_ids)
        if not step_ids:
            return {}
    out: dict[str, dict[str, str]] = {}
    for step_id, name, data in db.session.connection().execute(sql.OUTPUTS, {"pk": execution_pk}):
        if step_ids is None or step_id in step_ids:
            out[name] = data or {}
    return out




# ------------------------------------------------------------------ people's actions

def get_execution(execution_id: str) -> WorkflowExecution | None:
    return db.session.execute(select(WorkflowExecution).filter_by(execution_id=execution_id)).scalar_one_or_none()


def cancel(execution: WorkflowExecution, user: User | None = None) -> WorkflowExecution:
    begin_locked(execution.id)
    result = db.session.execute(
        update(WorkflowExecution)
        .where(WorkflowExecution.id == execution.id, WorkflowExecution.status.notin_(TERMINAL_EXECUTION))
        .values(cancel_requested=True,
                status_reason=f"cancel requested by {user.username if user else 'system'}")
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if result.rowcount != 1:
        raise Conflict(f"Execution {execution.execution_id} is already {execution.status}.")
    advance(execution.id)
    db.session.refresh(execution)
    return execution


def _snapshot_of(execution: WorkflowExecution):
    attempts = list(db.session.execute(select(SEH).where(SEH.execution_id == execution.id).order_by(SEH.id)).scalars())
    return execution_snapshot(execution, attempts, {}), attempts


def step_id_by_name_or_id(execution: WorkflowExecution, ref) -> int:
    for s in execution.pipeline_snapshot["steps"]:
        if str(s["id"]) == str(ref) or s["name"] == ref:
            return s["id"]
    raise ValidationError(f"No step {ref!r} in this execution.", {"step": f"unknown step {ref!r}"})


DEFINITIONS = ("original", "current")


def definition_choice(value, default: str) -> str:
    """Which definition re-run steps take: "original" (the one this execution froze, vN) or
    "current" (the pipeline's definition now, vM)."""
    if value in (None, ""):
        return default
    if value not in DEFINITIONS:
        raise ValidationError("Choose the definition to run: 'original' or 'current'.",
                              {"definition": "expected 'original' or 'current'"})
    return value


def current_version(execution: WorkflowExecution) -> int | None:
    """The pipeline's version now when it is not the one this execution runs, else None."""
    pipeline = execution.pipeline
    if pipeline is None or pipeline.version == execution.pipeline_version:
        return None
    return pipeline.version


def resume(execution: WorkflowExecution, from_step=None, user: User | None = None,
           variables: dict | None = None, use_current_definition: bool = True,
           definition: str | None = None) -> WorkflowExecution:
    """A new execution linked to this one: succeeded steps keep their results, the rest re-run.

    With the "current" `definition` (default; `use_current_definition` is the older spelling)
    the new execution freezes the pipeline's current definition (the usual "fix the command,
    resume" flow); steps are matched by id, and a step that no longer exists cannot be kept.
    """
    if execution.status not in ("failed", "cancelled"):
        raise Conflict(f"Only a failed or cancelled execution can be resumed; this one is {execution.status}.")
    choice = definition_choice(definition, "current" if use_current_definition else "original")
    from_ids = None if from_step in (None, "") else [step_id_by_name_or_id(execution, from_step)]
    return _rerun(execution, from_ids, choice == "current", user, variables)


def _rerun(execution: WorkflowExecution, from_ids: list[int] | None, use_current: bool, user: User | None,
           variables: dict | None = None, needed: int | None = None) -> WorkflowExecution:
    """The new execution of a resume (plan_resume decides what it keeps). `needed`: a step id
    that must exist in the definition it runs (the step a person asked to retry)."""
    snap, attempts = _snapshot_of(execution)
    rp = plan_resume(snap, from_ids)
    latest = _latest_by_step(attempts)
    pipeline = db.session.get(Pipeline, execution.pipeline_id)
    frozen = execution.pipeline_snapshot
    if use_current and pipeline is not None and pipeline.version != execution.pipeline_version:
        frozen = freeze(pipeline)
    ids_now = {s["id"] for s in frozen["steps"]}
    if needed is not None and needed not in ids_now:
        raise Conflict(f"Step '{latest[needed].step_name}' is not in the current definition (v{frozen['version']}): "
                       f"retry it as it ran (v{execution.pipeline_version}).")
    kept = {sid: latest[sid] for sid in rp.keep if sid in ids_now}
    try:  # the child runs with its parent's secrets, sealed again
        inherited = secrets_store.clear_variables(execution.context_variables, execution.secret_values)
    except secrets_store.SecretsUnavailable as e:
        raise Conflict(f"Execution {execution.execution_id} cannot be run again: {e}") from None
    merged_vars = {**inherited, **_check_variables(variables)}
    return start(
        pipeline, trigger_data={**(execution.trigger_data or {}), "resumed_from": execution.execution_id},
        variables=merged_vars, user=user, trigger_type="resume",
        secret_variables=execution.secret_variables, snapshot=frozen, parent=execution, kept=kept,
    )


def _reset_steps(execution: WorkflowExecution, step_ids: Iterable[int], attempts) -> None:
    latest = _latest_by_step(attempts)
    now = utcnow()
    steps = {s["id"]: s for s in execution.pipeline_snapshot["steps"]}
    rows = [{
        "execution_id": execution.id, "step_id": sid, "step_name": latest[sid].step_name, "status": "pending",
        "retry_count": latest[sid].retry_count + 1, "max_retries": max_retries_of(steps[sid]), "logs": "",
        "error_message": "", "output_data": {}, "created_at": now, "upstream_failed": False, "bypassed": False,
        "definition_version": execution.pipeline_version,
    } for sid in sorted(step_ids)]
    if rows:
        db.session.execute(insert(SEH), rows)


def _reopen(execution: WorkflowExecution) -> None:
    execution.status = "running"
    execution.finished_at = None
    execution.cancel_requested = False
    execution.status_reason = ""
    groups = dict((execution.recovery_point or {}).get("groups", {}))
    execution.recovery_point = {"groups": {}} if groups else None


def retry_step(execution: WorkflowExecution, step_ref, user: User | None = None,
               definition: str | None = None) -> WorkflowExecution:
    """Re-run one failed step of a finished execution and its downstream.

    "original" (default): in place, with the definition the execution froze. "current", when
    the pipeline changed since: a new execution (as resume: linked to this one, the succeeded
    steps kept) that freezes the current definition; returned instead of this one. An
    execution's snapshot never changes: every worker process caches it by execution id, and
    its page must keep telling what ran with which definition.
    """
    choice = definition_choice(definition, "original")
    sid = step_id_by_name_or_id(execution, step_ref)
    if choice == "current" and current_version(execution) is not None:
        db.session.refresh(execution)
        _check_retryable(execution, sid, _snapshot_of(execution)[1])
        return _rerun(execution, [sid], True, user, needed=sid)
    begin_locked(execution.id)
    db.session.refresh(execution)
    snap, attempts = _snapshot_of(execution)
    try:
        _check_retryable(execution, sid, attempts)
    except Conflict:
        db.session.rollback()
        raise
    _reset_steps(execution, plan_retry_step(snap, sid), attempts)
    _reopen(execution)
    db.session.commit()
    advance(execution.id)
    db.session.refresh(execution)
    return execution


def _check_retryable(execution: WorkflowExecution, sid: int, attempts) -> None:
    if execution.status not in TERMINAL_EXECUTION:
        raise Conflict("Wait for the execution to finish (or cancel it) before retrying a step.")
    tries = [a for a in attempts if a.step_id == sid]
    latest = _latest_by_step(tries)[sid]
    if latest.status not in ("failed", "timed_out", "cancelled"):
        raise Conflict(f"Step '{latest.step_name}' is {latest.status}: only a failed, timed-out or cancelled step can be retried.")
    if run_summary.never_ran(sorted(tries, key=lambda a: (a.retry_count, a.id))):
        raise Conflict(f"Step '{latest.step_name}' did not run (the execution was cancelled before it started): "
                       "resume the execution to run it.")


def bypass_step(execution: WorkflowExecution, step_ref, reason: str, user: User | None = None) -> WorkflowExecution:
    """A person marks a failed step skipped, with the reason, so its downstream can go on."""
    if not (reason or "").strip():
        raise ValidationError("Say why the step is bypassed.", {"reason": "a reason is required"})
    sid = step_id_by_name_or_id(execution, step_ref)
    begin_locked(execution.id)
    db.session.refresh(execution)
    snap, attempts = _snapshot_of(execution)
    latest = _latest_by_step(attempts)
    target = latest[sid]
    who = user.username if user else "system"
    if not _set(target.id, ("failed", "timed_out"), status="skipped", bypassed=True,
                skip_reason=f"bypassed by {who}: {reason.strip()}"):
        db.session.rollback()
        raise Conflict(f"Step '{target.step_name}' is {target.status}: only a failed or timed-out step can be bypassed.")
    downstream = {s for s in plan_retry_step(snap, sid) - {sid}
                  if latest[s].status in ("skipped", "cancelled") and (latest[s].upstream_failed or latest[s].status == "cancelled")}
    _reset_steps(execution, downstream, attempts)
    if execution.status in TERMINAL_EXECUTION:
        _reopen(execution)
    db.session.commit()
    advance(execution.id)
    db.session.refresh(execution)
    return execution


# ------------------------------------------------------------------ queries for views and the API

def list_executions(pipeline_id: int | None = None, status: str | None = None, limit: int = 50, offset: int = 0):
    q = select(WorkflowExecution).order_by(WorkflowExecution.id.desc())
    if pipeline_id:
        q = q.where(WorkflowExecution.pipeline_id == pipeline_id)
    if status:
        q = q.where(WorkflowExecution.status == status)
    return list(db.session.execute(q.limit(limit).offset(offset)).scalars())


def children_of(execution_pk: int) -> list[WorkflowExecution]:
    """Executions resumed from this one, oldest first."""
    return list(db.session.execute(select(WorkflowExecution).filter_by(parent_execution_id=execution_pk)
                                   .order_by(WorkflowExecution.id)).scalars())


def attempts_of(execution_pk: int, step_id: int | None = None, status: str | None = None):
    q = select(SEH).where(SEH.execution_id == execution_pk).order_by(SEH.id)
    if step_id is not None:
        q = q.where(SEH.step_id == step_id)
    if status:
        q = q.where(SEH.status == status)
    return list(db.session.execute(q).scalars())


def counts_by_status(execution_pk: int) -> dict[str, int]:
    attempts = attempts_of(execution_pk)
    out: dict[str, int] = {}
    for a in _latest_by_step(attempts).values():
        out[a.status] = out.get(a.status, 0) + 1
    return out


def reconcile(heartbeat_seconds: int, lost_after: float | None = None, queued_grace: float = 10.0,
              job_exists: Callable[[str], bool] | None = None, requeue: Callable[[int], None] | None = None) -> dict:
    """Find attempts whose worker died or whose job was lost, and executions that stalled.

    Running attempts without a heartbeat for `lost_after` seconds fail as "worker lost" (the
    planner then retries them by policy); queued attempts whose RQ job vanished (a Redis
    restart) are enqueued again; every unfinished execution is advanced (lost wake-ups).
    """
    now = utcnow()
    lost_after = lost_after or 3 * heartbeat_seconds
    report = {"lost": [], "requeued": [], "advanced": 0}
    begin_locked()
    stale = db.session.execute(select(SEH.id, SEH.execution_id).where(
        SEH.status == "running", func.coalesce(SEH.heartbeat_at, SEH.started_at) < now - timedelta(seconds=lost_after)
    )).all()
    for attempt_id, _ in stale:
        if _set(attempt_id, ("running",), status="failed", failure_kind="worker_lost",
                error_message="worker lost: no heartbeat for %.0f s" % lost_after, finished_at=now):
            report["lost"].append(attempt_id)
    db.session.commit()
    if job_exists is not None and requeue is not None:
        queued = db.session.execute(select(SEH.id, SEH.rq_job_id).where(
            SEH.status == "queued", SEH.queued_at < now - timedelta(seconds=queued_grace))).all()
        for attempt_id, job_id in queued:
            if not job_id or not job_exists(job_id):
                requeue(attempt_id)
                report["requeued"].append(attempt_id)
    open_ids = list(db.session.execute(select(WorkflowExecution.id).where(
        WorkflowExecution.status.in_(("pending", "running", "waiting_approval")))).scalars())
    for pk in open_ids:
        advance(pk)
        report["advanced"] += 1
    return report
