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


def enqueue_steps(jobs: list[tuple[int, int]]) -> None:
    """Enqueue run_step for many attempts in one Redis pipeline: (attempt id, job timeout) pairs."""
    if not jobs:
        return
    q = get_queue(STEPS)
    datas = [Queue.prepare_data("webapp.tasks.steps.run_step", args=(attempt_id,), job_id=f"step-{attempt_id}",
                                timeout=timeout, result_ttl=STEP_RESULT_TTL, failure_ttl=24 * 3600)
             for attempt_id, timeout in jobs]
    q.enqueue_many(datas)


def cancel_key(attempt_id: int) -> str:
    # Namespaced like the queues: attempt ids repeat across databases sharing one Redis.
    return f"{current_app.config['QUEUE_PREFIX']}:cancel:{attempt_id}"


def request_stop(attempt_id: int, status: str = "cancelled") -> None:
    """Tell the worker running this attempt to kill its process group (checked while it runs)."""
    redis_conn().set(cancel_key(attempt_id), status, ex=24 * 3600)


def stop_requested(attempt_id: int) -> str | None:
    value = redis_conn().get(cancel_key(attempt_id))
    return value.decode() if value else None
