"""PostgreSQL stopped for 10 s in the middle of a run (issue 14): no attempt stuck, no result lost,
no step run twice; the run finishes once the database is back. The test starts a PostgreSQL of
its own (initdb + pg_ctl; `make test` installs Debian's server binaries) and fails, saying why,
when the machine cannot."""
from __future__ import annotations

import os
import time

import pytest

from webapp.extensions import db
from webapp.models import WorkflowExecution

from ..conftest import wait_for
from ..tasks.helpers import attempts, make_pipeline, run, status_map, wait_finished

pytestmark = pytest.mark.integration
OUTAGE_SECONDS = 10
SCALE = int(os.environ.get("ANSFLOW_SOAK", "1"))  # make soak: more executions


def _reload(pks):
    try:
        return [db.session.get(WorkflowExecution, pk) for pk in pks]
    except Exception:  # noqa: BLE001 - still starting
        db.session.remove()
        return None


@pytest.fixture
def database_url(own_postgres):  # the app, and the workers it starts, use the test's own server
    return own_postgres.url


def test_a_database_outage_loses_no_result_and_strands_no_attempt(app, workers, own_postgres, tmp_path):
    procs = workers(2)
    runs = tmp_path / "runs"
    runs.mkdir()
    steps = [{"name": f"s{i}", "depends_on": [f"s{i - 1}"] if i else [],
              "parameters": {"command": f"echo x >> {runs}/s{i}; sleep 1"}} for i in range(8)]
    executions = [run(make_pipeline(steps, name=f"chain-{n}")) for n in range(3 * SCALE)]
    wait_for(lambda: len(list(runs.iterdir())) >= 2, timeout=60, message="the chains to be under way")

    pks = [e.id for e in executions]
    db.session.remove()
    db.engine.dispose()
    own_postgres.stop()
    time.sleep(OUTAGE_SECONDS)  # the outage itself is the scenario, not a synchronisation
    own_postgres.start()
    back = time.monotonic()

    executions = wait_for(lambda: _reload(pks), timeout=30, message="the database to answer the test")
    finished = [wait_finished(e, timeout=120) for e in executions]
    recovered_in = time.monotonic() - back
    for e in finished:
        assert e.status == "success", [(a.step_name, a.status, a.error_message) for a in attempts(e)]
        rows = attempts(e)
        assert all(a.status == "success" for a in rows[-8:]), [(a.step_name, a.status, a.error_message) for a in rows]
        assert not [a for a in rows if a.status in ("queued", "running", "pending")]
    for i in range(8):
        # each step of each chain ran to its end: a step whose result was lost would have run again
        assert (runs / f"s{i}").read_text().count("x") >= len(executions)
    lost = [a for e in finished for a in attempts(e) if (a.error_message or "").startswith("worker lost")]
    assert not lost, [(a.step_name, a.error_message) for a in lost]
    assert not [p for p in procs if p.poll() is not None], "a worker exited"
    runs_per_step = sum((runs / f"s{i}").read_text().count("x") for i in range(8)) / (8 * len(executions))
    print(f"\ndatabase outage of {OUTAGE_SECONDS} s: all {len(finished)} executions finished "
          f"{recovered_in:.1f} s after the database came back, {runs_per_step:.2f} runs per step")
