"""Running one job graph on each side and reading back its own timestamps.

AnsFlow: a saved pipeline of shell steps `true`, started with services.executions.start; the
times are the attempts' started_at/finished_at (StepExecutionHistory) and, for "when was it in
the queue", the RQ job of the attempt (`step-<attempt id>`, enqueued_at).

Raw RQ: the same graph as RQ jobs of bench.rawjobs.run_true linked by `depends_on`; the graph is
prepared behind a gate job (a no-op, not counted) and released at once by enqueueing the gate,
so the client's enqueue loop never competes with the workers. Independent jobs go in one
`enqueue_many` pipeline. Times are the jobs' own enqueued_at/started_at/ended_at.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .stack import Stack, wait_until

TERMINAL = ("success", "failed", "cancelled")
Graph = list[tuple[str, list[str]]]  # (name, dependency names), in topological order


def ts(dt: datetime | None) -> float | None:
    """A timestamp as epoch seconds: AnsFlow's are naive UTC, RQ's are aware UTC."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class Step:
    enqueued: float | None
    start: float
    end: float


@dataclass
class Run:
    steps: dict[str, Step] = field(default_factory=dict)
    submit_s: float = 0.0

    @property
    def span_s(self) -> float:
        """First step's start -> last step's end."""
        return max(s.end for s in self.steps.values()) - min(s.start for s in self.steps.values())


# ------------------------------------------------------------------ graphs

def chain(n: int) -> Graph:
    return [(f"s{i:04d}", [] if i == 0 else [f"s{i - 1:04d}"]) for i in range(n)]


def fan(width: int) -> Graph:
    mids = [f"m{i:03d}" for i in range(width)]
    return [("root", [])] + [(m, ["root"]) for m in mids] + [("join", mids)]


def flat(n: int) -> Graph:
    return [(f"j{i:04d}", []) for i in range(n)]


# ------------------------------------------------------------------ AnsFlow

def define_pipeline(name: str, graph: Graph) -> int:
    """Save the graph as a pipeline of shell steps `true` with explicit dependencies."""
    from webapp.extensions import db
    from webapp.services.pipelines import save_definition

    steps = [{"name": step, "type": "shell", "parameters": {"command": "true"}, "depends_on": deps}
             for step, deps in graph]
    pipeline = save_definition({"name": name, "steps": steps})
    pid = pipeline.id
    db.session.remove()
    return pid


def ansflow_run(stack: Stack, pipeline_id: int, timeout: float = 600) -> Run:
    from sqlalchemy import select

    from webapp.extensions import db
    from webapp.models import Pipeline, StepExecutionHistory as SEH, WorkflowExecution as WE
    from webapp.services import executions as svc

    db.session.remove()
    pipeline = db.session.get(Pipeline, pipeline_id)
    t0 = time.perf_counter()
    execution = svc.start(pipeline)
    submit_s = time.perf_counter() - t0
    pk = execution.id
    db.session.remove()

    # One connection for the whole wait (a checkout per poll cost the machine as much CPU as
    # half a step, on the cores the workers use): each poll is one query, then the read
    # transaction ends so the next one sees new commits (SQLite's snapshot would not).
    query = select(WE.status).where(WE.id == pk)
    with db.engine.connect() as conn:
        def finished():
            stack.check_alive()
            try:
                return conn.execute(query).scalar_one() in TERMINAL
            finally:
                conn.rollback()
        wait_until(finished, timeout, interval=0.02, what=f"AnsFlow execution {pk}")

    with db.engine.connect() as conn:
        status, reason = conn.execute(select(WE.status, WE.status_reason).where(WE.id == pk)).one()
        rows = conn.execute(select(SEH.step_name, SEH.status, SEH.queued_at, SEH.started_at, SEH.finished_at,
                                   SEH.error_message).where(SEH.execution_id == pk)).all()
    if status != "success":
        bad = [f"{r.step_name}: {r.status} {r.error_message}" for r in rows if r.status != "success"][:5]
        raise RuntimeError(f"AnsFlow execution {pk} ended {status} ({reason}): {bad}")
    # The attempt's own queued_at (set in the transaction that decided to run it, just before
    # the RQ enqueue); step jobs keep no RQ record after success (result_ttl=0).
    run = Run(submit_s=submit_s)
    for r in rows:
        run.steps[r.step_name] = Step(ts(r.queued_at), ts(r.started_at), ts(r.finished_at))
    return run


def neutralise(execution_pk: int) -> None:
    """Mark an execution and its open attempts cancelled without running anything (the submit
    figure starts executions on a queue that no worker reads)."""
    from sqlalchemy import update

    from webapp.extensions import db
    from webapp.models import StepExecutionHistory as SEH, WorkflowExecution as WE

    with db.engine.begin() as conn:
        conn.execute(update(SEH).where(SEH.execution_id == execution_pk,
                                       SEH.status.in_(("pending", "queued"))).values(status="cancelled"))
        conn.execute(update(WE).where(WE.id == execution_pk).values(status="cancelled"))


# ------------------------------------------------------------------ raw RQ

RESULT_TTL = 600


def raw_run(stack: Stack, graph: Graph, timeout: float = 600) -> Run:
    """Prepare the graph behind a gate job, release it, wait, read the jobs' timestamps."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    conn = stack.redis()
    q = stack.raw_queue()
    gate = Job.create("bench.rawjobs.noop", connection=conn, serializer=JSONSerializer,
                      id=f"gate-{secrets.token_hex(6)}", origin=q.name, result_ttl=RESULT_TTL)
    gate.save()
    jobs: dict[str, Job] = {}
    for name, deps in graph:
        parents = [jobs[d] for d in deps] or [gate]
        jobs[name] = q.enqueue("bench.rawjobs.run_true", depends_on=parents, result_ttl=RESULT_TTL)
    t0 = time.perf_counter()
    q.enqueue_job(gate)
    sinks = [name for name in jobs if not any(name in deps for _, deps in graph)]
    _wait_raw(stack, [jobs[s].id for s in sinks], timeout)
    _wait_raw(stack, [j.id for j in jobs.values()], timeout)
    run = _read_raw(stack, jobs)
    run.submit_s = time.perf_counter() - t0
    return run


def raw_run_flat(stack: Stack, n: int, timeout: float = 600) -> Run:
    """n independent jobs in one enqueue_many pipeline (what a raw RQ client does at best)."""
    from rq import Queue

    q = stack.raw_queue()
    t0 = time.perf_counter()
    enqueued = q.enqueue_many([Queue.prepare_data("bench.rawjobs.run_true", result_ttl=RESULT_TTL) for _ in range(n)])
    submit_s = time.perf_counter() - t0
    jobs = {f"j{i:04d}": job for i, job in enumerate(enqueued)}
    conn = stack.redis()
    wait_until(lambda: stack.check_alive() or conn.llen(q.key) == 0, timeout, interval=0.02, what="raw queue to drain")
    _wait_raw(stack, [j.id for j in jobs.values()], timeout)
    run = _read_raw(stack, jobs)
    run.submit_s = submit_s
    return run


def _wait_raw(stack: Stack, ids: list[str], timeout: float) -> None:
    conn = stack.redis()

    def done():
        stack.check_alive()
        pipe = conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        statuses = [s.decode() if s else None for s in pipe.execute()]
        failed = [i for i, s in zip(ids, statuses) if s in ("failed", "stopped", "canceled")]
        if failed:
            raise RuntimeError(f"raw RQ job {failed[0]} {statuses[ids.index(failed[0])]}")
        return all(s == "finished" for s in statuses)
    wait_until(done, timeout, interval=0.02, what="raw RQ jobs")


def _read_raw(stack: Stack, jobs: dict) -> Run:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    names = list(jobs)
    fetched = Job.fetch_many([jobs[n].id for n in names], connection=stack.redis(), serializer=JSONSerializer)
    run = Run()
    for name, job in zip(names, fetched):
        run.steps[name] = Step(ts(job.enqueued_at), ts(job.started_at), ts(job.ended_at))
    return run
