"""Step jobs: run one attempt, advance an execution. Ids only; every write is conditional."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

from flask import current_app
from sqlalchemy import update

from . import app_context

log = logging.getLogger(__name__)


def _worker_name() -> str:
    try:
        from rq import get_current_job

        job = get_current_job()
        if job is not None and job.worker_name:
            return job.worker_name
    except Exception:  # outside a worker (tests calling the job directly)
        pass
    return f"{socket.gethostname()}:{os.getpid()}"


def _job_id() -> str | None:
    try:
        from rq import get_current_job

        job = get_current_job()
        return job.id if job else None
    except Exception:
        return None


class _Heartbeat(threading.Thread):
    """Marks the running attempt alive in the database so the reconciler can tell a dead worker.

    One thread per worker process beating every `every` seconds for whichever attempt is
    running now. Telling it costs an attribute assignment: a thread per step, or waking this
    one at each step, cost a measurable share of a short step. A new attempt's first beat comes
    at most `every` seconds after it started (its claim already set heartbeat_at).
    """

    def __init__(self, every: float):
        super().__init__(daemon=True, name="ansflow-heartbeat")
        self.every = every
        self.target: tuple | None = None  # (engine, attempt id)
        self.ticks = threading.Event()  # never set: its wait is an interruptible periodic timer
        # attempt id -> the status the database gave it while this worker still runs it (a cancel
        # whose Redis signal was lost, or "worker lost" after an outage): the runner stops it
        self.ended: dict[int, str] = {}

    def watch(self, engine, attempt_id: int, summary_of: int | None = None) -> None:
        """Beat for this attempt; with `summary_of` (an execution pk), also refresh that
        execution's current_step at the first beat (see services.executions.Claim)."""
        self.target = (engine, attempt_id, summary_of)

    def release(self) -> None:
        self.target = None

    def run(self) -> None:
        while True:
            self.ticks.wait(self.every)
            target = self.target
            if target is not None:
                ended = _beat(*target)
                if ended is not None and self.target is target:
                    self.ended[target[1]] = ended
                if target[2] is not None and self.target is target:
                    self.target = (*target[:2], None)

    def stop_for(self, attempt_id: int) -> str | None:
        return self.ended.get(attempt_id)


def _beat(engine, attempt_id: int, summary_of: int | None = None) -> str | None:
    """One heartbeat; returns the attempt's status when the database no longer has it running."""
    from sqlalchemy import select

    from ..models import StepExecutionHistory as SEH, utcnow
    from ..services import step_sql

    ended = None
    try:
        with engine.begin() as conn:
            beat = conn.execute(update(SEH).where(SEH.id == attempt_id, SEH.status == "running")
                                .values(heartbeat_at=utcnow()))
            if beat.rowcount == 0:
                status = conn.execute(select(SEH.status).where(SEH.id == attempt_id)).scalar()
                ended = "timed_out" if status == "timed_out" else "cancelled"
        if summary_of is not None:
            # A transaction of its own: holding the attempt's row while waiting for the
            # execution's row would deadlock with this worker's own record of the attempt,
            # which takes them in the other order (execution, then attempt).
            with engine.begin() as conn:
                conn.execute(step_sql.CURRENT_STEP, {"pk": summary_of})
    except Exception:  # a busy database skips one beat; the next one retries
        pass
    return ended


_HEARTBEATS: dict[int, _Heartbeat] = {}


def _heartbeat(every: float) -> _Heartbeat:
    """This process's heartbeat thread (a forked work-horse starts its own)."""
    beat = _HEARTBEATS.get(os.getpid())
    if beat is None or beat.every != every:
        _HEARTBEATS.clear()
        beat = _HEARTBEATS[os.getpid()] = _Heartbeat(every)
        beat.start()
    return beat


def run_step(attempt_id: int) -> str:
    with app_context():
        return _run_step(attempt_id)


def _run_step(attempt_id: int) -> str:
    from ..services import executions as svc

    claimed = svc.mark_running(attempt_id, _worker_name(), _job_id())
    if claimed is None:
        return "skipped: attempt is not queued (cancelled, duplicate or stale job)"
    # what RQ's prepare_job_execution gave the worker and this job (SimpleWorker: timeout + 60)
    _registered_until[0] = time.monotonic() + svc.job_timeout_of(claimed[0]) + 60
    ran: Counter[str] = Counter()
    while claimed is not None:
        status, claimed = _run_claimed(*claimed)
        ran[status] += 1
    if ran.total() == 1:
        return next(iter(ran))
    return f"{ran.total()} steps: " + ", ".join(f"{n} {status}" for status, n in ran.most_common())


def _run_claimed(claimed, outputs: dict, summary_stale: bool = False):
    """Run one claimed attempt (given the outputs of the steps upstream of it) and record it;
    returns (its status, the attempt this worker claimed to run next as (row, outputs), or
    None: see _next_work)."""
    from ..engine import graph
    from ..extensions import db
    from ..models import StepExecutionHistory as SEH, utcnow
    from ..queues import stop_requested
    from ..runners import registry
    from ..runners.base import StepContext, StepResult
    from ..runners.env import build_env
    from ..services import executions as svc
    from ..services import secrets_store

    attempt_id = claimed.id
    job = svc.job_context(claimed.execution_id)
    fz = svc.frozen_of(job.execution_id, job.id)
    step = fz.steps[claimed.step_id]
    cfg = current_app.config
    workspace = Path(cfg["WORKSPACE_ROOT"]) / job.execution_id
    workspace.mkdir(parents=True, exist_ok=True)
    try:  # the secrets' clear values live only here, in the step's env and the masker
        variables, unsealable = secrets_store.clear_variables(job.context_variables, job.secret_values), None
    except secrets_store.SecretsUnavailable as e:   # a key problem fails the attempt, not the worker
        variables, unsealable = dict(job.context_variables or {}), str(e)
    secrets = [str(variables[k]) for k in job.secret_variables or [] if k in variables and str(variables[k])]
    engine = db.engine

    def on_log(text: str) -> None:
        # The runner calls this only when the log changed, at most twice a second. A live view missed
        # while the database is away is no reason to fail the step: the whole log is recorded at its end.
        try:
            with engine.begin() as conn:
                conn.execute(update(SEH).where(SEH.id == attempt_id, SEH.status == "running")
                             .values(logs=text, heartbeat_at=utcnow()))
        except Exception as exc:  # noqa: BLE001 - only the database being away is let pass
            if not _database_away(exc):
                raise

    heartbeat = _heartbeat(cfg["HEARTBEAT_SECONDS"])

    def should_stop() -> str | None:
        # The runners enforce the step timeout themselves; this carries cancel requests: Redis's
        # signal, or the database's word at the last heartbeat (a signal lost in a Redis outage)
        return heartbeat.stop_for(attempt_id) or stop_requested(attempt_id)

    attempt_number = claimed.retry_count + 1
    ctx = StepContext(
        execution_id=job.execution_id, attempt_id=attempt_id, attempt_number=attempt_number,
        step_name=step["name"], step_type=step["step_type"], parameters=step.get("parameters") or {},
        env=build_env(execution_id=job.execution_id, attempt_number=attempt_number, step_name=step["name"],
                      variables=variables, trigger=job.trigger_data or {},
                      outputs=outputs, output_file=None, workspace=workspace),
        workspace=workspace, timeout_seconds=step.get("timeout_seconds"), secrets=secrets,
        log_max_bytes=cfg["LOG_MAX_BYTES"], on_log=on_log, should_stop=should_stop,
    )
    db.session.commit()  # release any read transaction before a long step
    heartbeat.watch(engine, attempt_id, job.id if summary_stale else None)
    try:
        result = (StepResult("failed", failure="error", error_message=unsealable, logs=unsealable) if unsealable
                  else registry.run_step(ctx))  # a runner bug becomes a failed attempt (masked), never a dead worker
        claim = _next_work(result.status == "success" and svc.may_unlock(fz, claimed.step_id))
        if claim is not None and claim.attempt_id is None:  # a successor: its upstream is ours and this step
            claim.known = (graph.upstream(fz.definition, claimed.step_id) | {claimed.step_id},
                           {**outputs, **({step["name"]: result.outputs} if result.outputs else {})})
        # the heartbeat goes on until the result is in: a database outage must not make it "worker lost"
        recorded, claim = _record(attempt_id, job.id, claimed, result, claim)
    finally:
        heartbeat.release()
        heartbeat.ended.pop(attempt_id, None)
    if recorded:
        event = {"success": "step_success", "failed": "step_failed", "timed_out": "timed_out"}.get(result.status)
        if event:
            try:
                svc.emit_step_event(event, job.id, fz, attempt_id)
            except Exception as exc:  # noqa: BLE001 - a lost event must not strand the claimed next step
                if not _database_away(exc):
                    raise
                log.warning("attempt %s: its %s event was lost to a database outage", attempt_id, event)
    if claim is not None and claim.row is None and claim.attempt_id is not None:
        # the taken job's attempt belongs to another execution (or is no longer queued)
        claim.take_queued_alone()
    if claim is None or claim.row is None:
        return result.status, None
    _rearm_backstop(svc.job_timeout_of(claim.row))
    return result.status, (claim.row, claim.outputs, claim.summary_stale)


def _database_away(exc: BaseException) -> bool:
    """An error that says the database did not answer (it may answer again), not a refusal."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _record(attempt_id: int, execution_pk: int, claimed, result, claim):
    """finish_attempt, retried with backoff while the database is away (a finished step's result is
    never dropped: before, one raise lost it and the attempt later failed as "worker lost" although
    its worker was alive). Returns (recorded, the claim to go on with).

    An error may come after the commit (a connection lost during COMMIT, or an after-commit action):
    so before trying again the attempt is read back, and when its record is in, the worker goes on
    with the successor that transaction claimed for it, if any. A retry gives the claim up: a step
    job it took from the queue stays queued without its job, which the reconciler re-queues."""
    import random

    from ..extensions import db
    from ..services import executions as svc

    deadline = time.monotonic() + current_app.config["RECORD_RETRY_SECONDS"]
    delay, said, in_doubt = 0.1, False, False
    while True:
        try:
            if in_doubt:
                settled = _recorded_meanwhile(attempt_id, result.status, claim)
                if settled is not None:
                    return settled
                claim = None
            return svc.finish_attempt(attempt_id, execution_pk, claimed.started_at, result,
                                      step_id=claimed.step_id, claim=claim), claim
        except Exception as exc:  # noqa: BLE001 - only the database being away is retried
            if not _database_away(exc) or time.monotonic() > deadline:
                raise
            try:
                db.session.rollback()
            except Exception:  # noqa: BLE001 - the connection is gone; remove() drops it
                pass
            db.session.remove()
            if not said:
                log.warning("attempt %s finished %s but the database is away: retrying until it answers",
                            attempt_id, result.status)
                said = True
            in_doubt = True
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(1.0, delay * 2)


def _recorded_meanwhile(attempt_id: int, status: str, claim):
    """(recorded, claim) when the attempt is no longer running (its record committed after all, or
    the reconciler gave up on it), keeping the claim only if its attempt runs in this worker's name;
    None when it still waits for its record."""
    from sqlalchemy import select

    from ..extensions import db
    from ..models import StepExecutionHistory as SEH

    row = db.session.execute(select(SEH.status).where(SEH.id == attempt_id)).first()
    kept = None
    if row is not None and row.status != "running" and claim is not None and claim.row is not None:
        mine = db.session.execute(select(SEH.status, SEH.worker_name).where(SEH.id == claim.row.id)).first()
        if mine is not None and mine.status == "running" and mine.worker_name == claim.worker_name:
            kept = claim
    db.session.commit()
    if row is not None and row.status == "running":
        return None
    return (row is not None and row.status == status), kept


def _next_work(may_unlock: bool):
    """What this worker runs after its step, instead of going back to RQ for its next job: a
    svc.Claim, or None (back to RQ).

    When the job at the head of the step queue is a step job, the worker takes it from the queue
    itself (exactly the job RQ would hand it next) and claims its attempt in the transaction that
    records this step. When the queues are empty and this step's success unlocks dependents, it
    claims the first of them there instead of enqueueing it (a chain runs in one job). Either way
    the next step saves RQ's job bookkeeping, a Redis round trip and a claim transaction (most of
    a short step's orchestration cost), and the queue's order is kept: a job waiting in a queue
    this worker serves before the step queue (control, notifications) sends it back to RQ.

    Only in a non-forking worker (a forked work-horse runs one step, for isolation) that is not
    shutting down, and when RQ's timeout backstop can be re-armed for the next step.
    """
    from .. import tasks
    from ..queues import STEPS, attempt_of_step_job, get_queue, take_step_head
    from ..services import executions as svc

    worker = tasks._worker
    if worker is None or not current_app.config["INLINE_SUCCESSORS"] or os.getpid() != tasks._worker_pid:
        return None
    if getattr(worker, "_stop_requested", True) or not _backstop_rearmable():
        return None
    keys = [q.key for q in worker.queues]
    step_key = get_queue(STEPS).key
    if step_key not in keys:
        return None
    try:
        verdict, job_id = take_step_head(keys[:keys.index(step_key) + 1])
    except Exception:  # noqa: BLE001 - when in doubt, enqueue as usual
        return None
    if verdict == "took":
        return svc.Claim(_worker_name(), job_id, attempt_id=attempt_of_step_job(job_id))
    if verdict == "empty" and may_unlock:
        return svc.Claim(_worker_name(), _job_id())
    return None


def _backstop_rearmable() -> bool:
    from rq.timeouts import UnixSignalDeathPenalty

    handler = signal.getsignal(signal.SIGALRM)
    return (threading.current_thread() is threading.main_thread()
            and isinstance(getattr(handler, "__self__", None), UnixSignalDeathPenalty))


def _rearm_backstop(seconds: int) -> None:
    """Give a next step run by this job the same RQ timeout backstop its own job would have had
    (RQ's death penalty for this job is a SIGALRM alarm; _next_work checked that), and keep
    RQ's records of the worker and of this job alive as long as it runs steps."""
    handler = signal.getsignal(signal.SIGALRM)
    penalty = getattr(handler, "__self__", None)
    if penalty is not None:
        penalty._timeout = seconds  # its message names the timeout
    signal.alarm(seconds)
    _keep_registered(seconds)


_registered_until = [0.0]


def _keep_registered(seconds: int) -> None:
    """RQ gave the worker and this job a time to live from the first step's timeout; renew it
    (for at least the next step's timeout) when it would otherwise end, a round trip every five
    minutes at most, so that a long run of steps in one job never looks like a dead worker to RQ."""
    from rq import get_current_job
    from rq.utils import now

    from .. import tasks

    clock = time.monotonic()
    if _registered_until[0] - clock >= seconds + 60:
        return
    worker, job = tasks._worker, get_current_job()
    if worker is None or job is None:
        return
    ttl = seconds + 60 + 300
    try:
        with worker.connection.pipeline() as pipe:
            worker.heartbeat(ttl, pipeline=pipe)
            job.heartbeat(now(), ttl, pipeline=pipe)
            pipe.execute()
        _registered_until[0] = clock + ttl
    except Exception:  # noqa: BLE001 - RQ's bookkeeping; the step runs either way
        pass


def advance_execution(execution_pk: int) -> str:
    with app_context():
        from ..services import executions as svc

        decisions = svc.advance(execution_pk)
        return f"{len(decisions)} decisions"


def requeue_attempt(attempt_id: int) -> None:
    from ..queues import STEPS, enqueue, step_job_id

    enqueue(STEPS, "webapp.tasks.steps.run_step", attempt_id, job_id=step_job_id(attempt_id))
