"""The harness itself: real worker processes on a real Redis run a real job."""
from rq import Worker

from webapp.queues import CONTROL, enqueue, redis_conn

from ..conftest import wait_for


def test_workers_register_and_run_a_job(app, workers):
    procs = workers(2)
    assert len({w.name for w in Worker.all(connection=redis_conn())} & {p.name for p in procs}) == 2
    job = enqueue(CONTROL, "webapp.tasks.health.ping", "hello")
    assert wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30, message="job to finish")
    assert job.return_value() == "pong:hello"
