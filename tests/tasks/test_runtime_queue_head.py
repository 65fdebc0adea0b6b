"""After a step, a worker takes the next step job from the head of the queue itself, instead of
going back to RQ for it (tasks.steps._next_work, queues.take_step_head)."""
from __future__ import annotations

from rq.job import Job

from webapp.queues import CONTROL, STEPS, get_queue, redis_conn, take_step_head
from webapp.services import executions as svc
from webapp.tasks.steps import requeue_attempt

from .helpers import attempts, latest, make_pipeline, run, wait_finished, wait_status


def _flat(n: int, first: str = "true", name: str = "flat"):
    steps = [{"name": "first", "parameters": {"command": first}}]
    steps += [{"name": f"x{i}", "depends_on": [], "parameters": {"command": f"echo x{i}"}} for i in range(1, n + 1)]
    return make_pipeline(steps, name=name)


def test_a_worker_takes_the_step_jobs_waiting_at_the_head_of_the_queue_itself(app, workers, tmp_path):
    gate = tmp_path / "gate"
    e = run(_flat(5, first=f"while [ ! -e {gate} ]; do sleep 0.05; done"))
    workers(1)
    first = wait_status(e, "first", "running")  # the only worker runs it; x1..x5 wait in the queue
    conn = redis_conn()
    queued = [j.decode() for j in conn.lrange(get_queue(STEPS).key, 0, -1)]
    xs = [latest(e, f"x{i}") for i in range(1, 6)]
    assert queued == [f"step-{x.id}" for x in xs] and all(x.status == "queued" for x in xs)
    gate.touch()
    e = wait_finished(e)
    assert e.status == "success", e.status_reason
    xs = [latest(e, f"x{i}") for i in range(1, 6)]
    # each ran as its own job, in the queue's order, by the worker that ran `first`...
    assert [x.rq_job_id for x in xs] == queued
    assert all(x.worker_name == first.worker_name and x.logs.strip() == f"x{i}" for i, x in enumerate(xs, 1))
    assert [x.started_at for x in xs] == sorted(x.started_at for x in xs)
    assert first.started_at <= xs[0].started_at
    # ...within first's RQ job: RQ never handed them out (it keeps a finished job's record a minute)
    assert conn.llen(get_queue(STEPS).key) == 0
    assert not any(Job.exists(job_id, connection=conn) for job_id in queued)
    job = Job.fetch(first.rq_job_id, connection=conn, serializer=get_queue(STEPS).serializer)
    assert job.return_value() == "6 steps: 6 success"


def test_the_head_is_taken_only_when_rq_would_hand_out_that_step_job_next(app):
    conn = redis_conn()
    control, steps = get_queue(CONTROL).key, get_queue(STEPS).key
    keys = [control, steps]
    assert take_step_head(keys) == ("empty", None)

    conn.rpush(steps, "step-41", "step-42")
    conn.hset(Job.key_for("step-41"), "status", "queued")
    conn.rpush(control, "advance-7")  # a job in a queue served first goes first
    assert take_step_head(keys) == ("busy", None)
    assert conn.llen(steps) == 2

    conn.delete(control)
    assert take_step_head(keys) == ("took", "step-41")
    assert [j.decode() for j in conn.lrange(steps, 0, -1)] == ["step-42"]
    assert not conn.exists(Job.key_for("step-41"))  # as if dequeued: a dead taker's attempt is requeued

    conn.lpush(steps, "notify-3")  # not a step job: RQ runs it
    assert take_step_head(keys) == ("busy", None)
    assert conn.llen(steps) == 2
    conn.delete(steps)


def test_an_attempt_whose_job_a_dead_worker_took_is_requeued_by_the_reconciler(app, workers):
    e = run(_flat(2, name="orphan"))
    queue_key = get_queue(STEPS).key
    first = latest(e, "first")
    # a worker takes the head and dies before claiming the attempt
    assert take_step_head([queue_key]) == ("took", f"step-{first.id}")
    assert latest(e, "first").status == "queued"
    conn = redis_conn()
    report = svc.reconcile(app.config["HEARTBEAT_SECONDS"], queued_grace=0,
                           job_exists=lambda job_id: Job.exists(job_id, connection=conn), requeue=requeue_attempt)
    assert report["requeued"] == [first.id]
    workers(1)
    e = wait_finished(e)
    assert e.status == "success"
    assert [a.status for a in attempts(e)] == ["success"] * 3
