"""Redis connections and RQ queues. Jobs are named by dotted path so services never import tasks.

A connection is never shared across a fork: each process (keyed by pid) opens its own.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from flask import current_app
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

STEPS, CONTROL, NOTIFICATIONS = "steps", "control", "notifications"
ALL_QUEUES = (CONTROL, NOTIFICATIONS, STEPS)  # a worker drains control first

_connections: dict[tuple[int, str], Redis] = {}


def redis_conn(url: str | None = None) -> Redis:
    url = url or current_app.config["REDIS_URL"]
    key = (os.getpid(), url)
    conn = _connections.get(key)
    if conn is None:
        # Drop connections inherited across a fork: they belong to the parent.
        for k in [k for k in _connections if k[0] != os.getpid()]:
            _connections.pop(k, None)
        conn = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        _connections[key] = conn
    return conn


def queue_name(purpose: str) -> str:
    return f"{current_app.config['QUEUE_PREFIX']}-{purpose}"


_queues: dict[tuple[int, str, int], Queue] = {}


def get_queue(purpose: str, connection: Redis | None = None) -> Queue:
    conn = connection or redis_conn()
    key = (os.getpid(), queue_name(purpose), id(conn))
    q = _queues.get(key)
    if q is None or q.connection is not conn:
        if len(_queues) > 64:
            _queues.clear()
        q = _queues[key] = Queue(queue_name(purpose), connection=conn, serializer=JSONSerializer)
    return q


def enqueue(purpose: str, func: str, *args, job_id: str | None = None, at: datetime | None = None, **options):
    """Enqueue `func` (dotted path) with JSON args; `at` (naive UTC) defers it to the scheduler."""
    q = get_queue(purpose)
    options.setdefault("result_ttl", 60)
    options.setdefault("failure_ttl", 24 * 3600)
    if job_id:
        options["job_id"] = job_id
    if at is not None:
        delay = (at - datetime.utcnow()).total_seconds()  # noqa: DTZ003 - naive UTC everywhere
        if delay > 0.05:
            return q.enqueue_in(timedelta(seconds=delay), func, *args, **options)
    return q.enqueue(func, *args, **options)


# A finished step job's record expires after this long. Not 0: RQ deletes a job with ttl 0
# at once, a dozen Redis commands on every step's critical path, where an EXPIRE is one.
STEP_RESULT_TTL = 60


def step_job_id(attempt_id: int) -> str:
    """A step job's id names its attempt (a worker taking it from the queue reads no record)."""
    return f"step-{attempt_id}"


def attempt_of_step_job(job_id: str) -> int:
    return int(job_id.removeprefix("step-"))


def enqueue_steps(jobs: list[tuple[int, int]]) -> None:
    """Enqueue run_step for many attempts in one Redis pipeline: (attempt id, job timeout) pairs."""
    if not jobs:
        return
    q = get_queue(STEPS)
    datas = [Queue.prepare_data("webapp.tasks.steps.run_step", args=(attempt_id,), job_id=step_job_id(attempt_id),
                                timeout=timeout, result_ttl=STEP_RESULT_TTL, failure_ttl=24 * 3600)
             for attempt_id, timeout in jobs]
    q.enqueue_many(datas)


# What a worker does after a step (tasks.steps._next_work), decided atomically in Redis: KEYS
# are the queues it serves in its order of priority, the step queue last. Any job waiting in a
# queue served before the step queue: 'busy' (back to RQ, which takes that job first). Nothing
# in the step queue either: 'empty'. A step job at its head: that job leaves the queue and its
# record is deleted, exactly as if this worker had dequeued it ('took', job id); without a record,
# the reconciler re-enqueues the attempt if the worker dies before claiming it. Any other job at
# the head: 'busy'.
_TAKE_HEAD = """
for i = 1, #KEYS - 1 do
  if redis.call('LLEN', KEYS[i]) > 0 then return {'busy'} end
end
local head = redis.call('LINDEX', KEYS[#KEYS], 0)
if not head then return {'empty'} end
if not string.match(head, '^step%-%d+$') then return {'busy'} end
redis.call('LPOP', KEYS[#KEYS])
redis.call('DEL', ARGV[1] .. head)
return {'took', head}
"""
_scripts: dict[int, object] = {}


def take_step_head(queue_keys: list[str]) -> tuple[str, str | None]:
    """('busy' | 'empty' | 'took', the taken job's id): see _TAKE_HEAD."""
    from rq.job import Job

    conn = redis_conn()
    script = _scripts.get(id(conn))
    if script is None:
        script = _scripts[id(conn)] = conn.register_script(_TAKE_HEAD)
    found = script(keys=queue_keys, args=[Job.redis_job_namespace_prefix])
    verdict = found[0].decode()
    return verdict, (found[1].decode() if len(found) > 1 else None)


def cancel_key(attempt_id: int) -> str:
    # Namespaced like the queues: attempt ids repeat across databases sharing one Redis.
    return f"{current_app.config['QUEUE_PREFIX']}:cancel:{attempt_id}"


def request_stop(attempt_id: int, status: str = "cancelled") -> None:
    """Tell the worker running this attempt to kill its process group (checked while it runs)."""
    redis_conn().set(cancel_key(attempt_id), status, ex=24 * 3600)


def stop_requested(attempt_id: int) -> str | None:
    value = redis_conn().get(cancel_key(attempt_id))
    return value.decode() if value else None
