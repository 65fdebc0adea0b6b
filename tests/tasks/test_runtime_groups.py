"""Parallel groups, cancel and the join race, with real workers (issue: Execution runtime)."""
import threading

import pytest

from webapp.extensions import db
from webapp.services import executions as svc

from ..conftest import wait_for
from .helpers import attempts, latest, make_pipeline, pid_alive, refresh, run, status_map, wait_finished, wait_status

pytestmark = pytest.mark.integration


def _pid_cmd(tmp_path, name, then):
    return f'echo $$ > {tmp_path}/{name}.pid; {then}'


def test_fan_out_runs_members_at_once_and_the_join_waits(app, workers, tmp_path):
    n_workers, n_members = 6, 20
    workers(n_workers)
    steps = [{"name": "start", "parameters": {"command": "true"}}]
    steps += [{"name": f"m{i:02d}", "parallel_group": "fan", "parameters": {"command": "sleep 0.6"}} for i in range(n_members)]
    steps += [{"name": "join", "parameters": {"command": "true"}}]
    p = make_pipeline(steps, groups=[{"id": "fan", "sync_policy": "wait_all"}])
    e = wait_finished(run(p), timeout=120)
    assert e.status == "success"
    members = [latest(e, f"m{i:02d}") for i in range(n_members)]
    events = sorted([(m.started_at, 1) for m in members] + [(m.finished_at, -1) for m in members])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == n_workers  # every worker busy at once
    join = latest(e, "join")
    assert join.started_at >= max(m.finished_at for m in members)
    assert latest(e, "start").finished_at <= min(m.started_at for m in members)


def test_wait_any_cancels_the_losers_and_kills_their_processes(app, workers, tmp_path):
    workers(3)
    p = make_pipeline([
        {"name": "fast", "parallel_group": "race", "parameters": {"command": "sleep 1.5"}},
        {"name": "slow1", "parallel_group": "race", "parameters": {"command": _pid_cmd(tmp_path, "slow1", "sleep 60")}},
        {"name": "slow2", "parallel_group": "race", "parameters": {"command": _pid_cmd(tmp_path, "slow2", "sleep 60")}},
        {"name": "after", "parameters": {"command": "true"}},
    ], groups=[{"id": "race", "sync_policy": "wait_any"}])
    e = wait_finished(run(p), timeout=60)
    assert e.status == "success"
    assert status_map(e) == {"fast": "success", "slow1": "cancelled", "slow2": "cancelled", "after": "success"}
    for name in ("slow1", "slow2"):
        pid = int((tmp_path / f"{name}.pid").read_text())
        wait_for(lambda: not pid_alive(pid), timeout=10, message=f"{name} process to die")
    assert e.recovery_point["groups"][next(iter(e.recovery_point["groups"]))]["status"] == "success"


def test_fail_fast_stops_siblings_on_the_first_failure(app, workers, tmp_path):
    workers(3)
    p = make_pipeline([
        {"name": "bad", "parallel_group": "g", "parameters": {"command": "sleep 0.5; exit 1"}},
        {"name": "long", "parallel_group": "g", "parameters": {"command": _pid_cmd(tmp_path, "long", "sleep 60")}},
        {"name": "later", "parallel_group": "g", "parameters": {"command": "sleep 60"}},
        {"name": "next", "parameters": {"command": "true"}},
    ], groups=[{"id": "g", "sync_policy": "fail_fast"}])
    e = wait_finished(run(p), timeout=60)
    s = status_map(e)
    assert e.status == "failed" and s["bad"] == "failed" and s["long"] == "cancelled" and s["later"] == "cancelled"
    assert s["next"] == "skipped"
    pid = int((tmp_path / "long.pid").read_text())
    wait_for(lambda: not pid_alive(pid), timeout=10, message="sibling process to die")


def test_group_timeout_cancels_unfinished_members_as_timed_out(app, workers):
    workers(2)
    p = make_pipeline([
        {"name": "quick", "parallel_group": "g", "parameters": {"command": "true"}},
        {"name": "stuck", "parallel_group": "g", "parameters": {"command": "sleep 60"}},
    ], groups=[{"id": "g", "sync_policy": "wait_all", "timeout_seconds": 2}])
    e = wait_finished(run(p), timeout=60)
    assert e.status == "failed"
    assert status_map(e) == {"quick": "success", "stuck": "timed_out"}


def test_cancel_stops_within_two_seconds_and_still_runs_always_steps(app, workers, tmp_path, users):
    workers(2)
    p = make_pipeline([
        {"name": "long", "parameters": {"command": _pid_cmd(tmp_path, "long", "sleep 120 & wait")}},
        {"name": "never", "parameters": {"command": "echo never"}},
        {"name": "teardown", "depends_on": ["never"], "conditions": {"type": "always"},
         "parameters": {"command": "echo tearing down"}},
    ])
    e = run(p)
    wait_status(e, "long", "running")
    wait_for(lambda: (tmp_path / "long.pid").exists(), timeout=10)
    svc.cancel(refresh(e), users["maintainer"])
    pid = int((tmp_path / "long.pid").read_text())
    # the contract: cancelled within two seconds, its whole process group gone
    wait_for(lambda: latest(e, "long").status == "cancelled" and not pid_alive(pid), timeout=2,
             message="the running step to be cancelled and its process group killed")
    e = wait_finished(e, timeout=15)
    assert e.status == "cancelled" and "cancel requested by maintainer1" in e.status_reason
    s = status_map(e)
    assert s["long"] == "cancelled" and s["never"] == "cancelled" and s["teardown"] == "success"
    assert not [a for a in attempts(e) if a.status in ("running", "queued", "pending")]


def test_the_join_starts_once_when_siblings_finish_together(app, workers, tmp_path):
    """Two workers finish siblings at the same instant, many times: the join runs once each time."""
    workers(4)
    marker = tmp_path / "joins"
    marker.mkdir()
    p = make_pipeline([
        {"name": "left", "depends_on": [], "parameters": {"command": "true"}},
        {"name": "right", "depends_on": [], "parameters": {"command": "true"}},
        {"name": "join", "depends_on": ["left", "right"],
         "parameters": {"command": f'echo x >> {marker}/$ANSFLOW_EXECUTION_ID'}},
    ])
    runs = [run(p) for _ in range(12)]
    for e in runs:
        e = wait_finished(e, timeout=90)
        assert e.status == "success"
        assert len(attempts(e, "join")) == 1
        assert (marker / e.execution_id).read_text() == "x\n"


def test_concurrent_advance_calls_apply_each_decision_once(app, app_settings):
    """Many threads advance one execution at once: every decision is applied exactly once."""
    from webapp import create_app

    p = make_pipeline([{"name": f"s{i}", "depends_on": [], "parameters": {"command": "true"}} for i in range(5)])
    e = svc.start(p)  # no workers: the attempts stay queued
    pk = e.id
    queued_after_start = sorted(a.id for a in attempts(e) if a.status == "queued")
    assert len(queued_after_start) == 5
    # put them back to pending so that every thread races to enqueue them
    from webapp.models import StepExecutionHistory as SEH
    db.session.execute(db.update(SEH).where(SEH.execution_id == pk).values(status="pending", queued_at=None))
    db.session.commit()
    applied = []
    other = create_app({"TESTING": True, **app_settings})

    def worker():
        with other.app_context():
            applied.extend(d for d in svc.advance(pk) if type(d).__name__ == "Enqueue")
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(d.attempt_id for d in applied) == queued_after_start
