"""A worker runs a successor its step unlocks itself, when nothing else waits in its queues."""
from __future__ import annotations

from webapp.services import executions as svc

from ..conftest import process_alive, wait_for
from .helpers import latest, make_pipeline, refresh, run, wait_finished, wait_status


def _chain(*commands, name="chain"):
    steps = []
    for i, command in enumerate(commands):
        step = {"name": f"s{i + 1}", "parameters": {"command": command}}
        if i:
            step["depends_on"] = [f"s{i}"]
        steps.append(step)
    return make_pipeline(steps, name=name)


def test_a_worker_runs_the_successors_it_unlocks_itself(app, workers):
    workers(1)
    e = wait_finished(run(_chain("true", "echo two", "echo three")))
    assert e.status == "success", e.status_reason
    s1, s2, s3 = (latest(e, n) for n in ("s1", "s2", "s3"))
    # one RQ job ran the whole chain: the successors never went through the queue
    assert s1.rq_job_id == f"step-{s1.id}"
    assert s2.rq_job_id == s3.rq_job_id == s1.rq_job_id
    assert s2.worker_name == s3.worker_name == s1.worker_name
    assert s2.queued_at == s2.started_at and s3.queued_at == s3.started_at
    assert s1.finished_at <= s2.started_at <= s2.finished_at <= s3.started_at
    assert "three" in s3.logs and e.current_step is None


def test_work_already_waiting_goes_first(app, workers, tmp_path):
    workers(1)
    gate = tmp_path / "gate"
    a = run(_chain(f"while [ ! -e {gate} ]; do sleep 0.05; done", "true", name="long"))
    wait_status(a, "s1", "running")
    b = run(make_pipeline([{"name": "other", "parameters": {"command": "true"}}], name="other"))
    assert latest(b, "other").status == "queued"  # the only worker is busy with a's s1
    gate.touch()
    a, b = wait_finished(a), wait_finished(b)
    assert a.status == b.status == "success"
    s2, other = latest(a, "s2"), latest(b, "other")
    # b's job was waiting, so s2 went to the back of the queue instead of jumping ahead of it
    assert s2.rq_job_id == f"step-{s2.id}"
    assert other.started_at <= s2.started_at


def test_cancel_kills_a_successor_run_inline(app, workers, users, tmp_path):
    workers(1)
    pidfile = tmp_path / "pid"
    e = run(_chain("true", f"echo $$ > {pidfile}; exec sleep 300"))
    s2 = wait_status(e, "s2", "running")
    assert s2.rq_job_id == latest(e, "s1").rq_job_id
    pid = wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() and int(pidfile.read_text()),
                   timeout=15, message="the step's pid")
    assert process_alive(pid)
    svc.cancel(refresh(e), users["maintainer"])
    e = wait_finished(e)
    assert e.status == "cancelled" and latest(e, "s2").status == "cancelled"
    wait_for(lambda: not process_alive(pid), timeout=20, message="the cancelled step's process to be killed")


def test_every_step_has_its_own_job_when_inline_runs_are_off(app, workers):
    workers(1, env={"ANSFLOW_INLINE_SUCCESSORS": "0"})
    e = wait_finished(run(_chain("true", "true")))
    assert e.status == "success"
    s2 = latest(e, "s2")
    assert s2.rq_job_id == f"step-{s2.id}" and s2.queued_at <= s2.started_at


def test_a_forking_worker_runs_one_step_per_work_horse(app, workers):
    workers(1, fork=True)
    e = wait_finished(run(_chain("true", "true")))
    assert e.status == "success"
    s2 = latest(e, "s2")
    assert s2.rq_job_id == f"step-{s2.id}"


def test_a_successor_run_inline_gets_the_outputs_of_every_upstream_step(app, workers):
    workers(1)
    chain = wait_finished(run(make_pipeline([
        {"name": "a", "parameters": {"command": 'echo "A=from-a" >> "$ANSFLOW_OUTPUT"'}},
        {"name": "b", "depends_on": ["a"], "parameters": {"command": 'echo "B=from-b" >> "$ANSFLOW_OUTPUT"'}},
        {"name": "c", "depends_on": ["b"], "parameters": {"command": 'echo "c sees $STEP_A_A and $STEP_B_B"'}},
    ], name="outputs-chain")))
    # a join: when y unlocks z, x's outputs are not among those y's worker knows
    join = wait_finished(run(make_pipeline([
        {"name": "x", "parameters": {"command": 'echo "X=from-x" >> "$ANSFLOW_OUTPUT"'}},
        {"name": "y", "depends_on": [], "parameters": {"command": "true"}},
        {"name": "z", "depends_on": ["x", "y"], "parameters": {"command": 'echo "z sees $STEP_X_X"'}},
    ], name="outputs-join")))
    assert chain.status == join.status == "success"
    c, z = latest(chain, "c"), latest(join, "z")
    assert c.queued_at == c.started_at and z.queued_at == z.started_at  # both claimed as successors
    assert "c sees from-a and from-b" in c.logs
    assert "z sees from-x" in z.logs


def test_the_running_successor_shows_as_the_current_step(app, workers, tmp_path):
    workers(1)
    gate = tmp_path / "gate"
    e = run(_chain("true", f"while [ ! -e {gate} ]; do sleep 0.05; done", name="current"))
    s2 = wait_status(e, "s2", "running")
    assert s2.queued_at == s2.started_at  # claimed by s1's worker, in the transaction that recorded s1
    # that transaction left current_step alone; s2's first heartbeat brings it up to date
    wait_for(lambda: refresh(e).current_step == "s2", timeout=15, message="current_step to name s2")
    gate.touch()
    e = wait_finished(e)
    assert e.status == "success" and e.current_step is None
