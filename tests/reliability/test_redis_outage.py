"""Redis restarted while every worker is busy (issue 14): the workers that finish a step during
the outage stay alive and carry on once Redis is back; every execution finishes, every step once."""
from __future__ import annotations

import os
import time

import pytest

from webapp.embedded_redis import EmbeddedRedis

from ..conftest import wait_for
from ..tasks.helpers import attempts, latest, make_pipeline, run, status_map, wait_finished, wait_status

pytestmark = pytest.mark.integration
SCALE = int(os.environ.get("ANSFLOW_SOAK", "1"))  # make soak: more executions


@pytest.fixture
def redis_server(tmp_path):
    """This module's own Redis server, so stopping it disturbs no other test."""
    server = EmbeddedRedis(workdir=tmp_path / "redis").start()
    yield server
    server.stop()


def test_workers_survive_a_redis_restart_with_every_worker_busy(app, workers, redis_server, tmp_path):
    gate = tmp_path / "gate"
    runs = tmp_path / "runs"
    runs.mkdir()

    def step(name, deps):
        return {"name": name, "depends_on": deps,
                "parameters": {"command": f"echo x >> {runs}/{name}; while [ ! -e {gate} ]; do sleep 0.05; done"}}

    # the pipelines first: saving one (a read, then a write, outside the web's writer queue) would race
    # the busy workers' writes on SQLite, which is not what this test is about
    pipelines = [make_pipeline([step("a", []), step("b", ["a"]), step("c", ["b"])], name=f"chain-{n}")
                 for n in range(2 * SCALE)]
    procs = workers(2)
    executions = [run(p) for p in pipelines]
    # every worker busy (with more executions than workers, the rest wait in Redis and are lost with it)
    wait_for(lambda: sum(latest(e, "a").status == "running" for e in executions) == len(procs), timeout=60,
             message="every worker to be busy")

    port = redis_server.port
    redis_server.stop()
    gate.touch()  # the running steps finish while Redis is down: their post-commit enqueue fails
    wait_for(lambda: sum(latest(e, "a").status == "success" for e in executions) >= len(procs), timeout=60,
             message="the running steps to finish during the outage")
    restarted = EmbeddedRedis(port=port, workdir=tmp_path / "redis2").start()
    redis_server.proc = restarted.proc  # stopped by the fixture
    back = time.monotonic()

    for e in executions:
        e = wait_finished(e, timeout=90)
        assert e.status == "success", status_map(e)
        assert [a.status for a in attempts(e)] == ["success"] * 3
    recovered_in = time.monotonic() - back
    dead = [p for p in procs if p.poll() is not None]
    assert not dead, "a worker exited:\n" + "\n".join((workers.logs / f"{p.name}.log").read_text()[-3000:] for p in dead)
    counts = {name: (runs / name).read_text().count("x") for name in ("a", "b", "c")}
    print(f"\nredis restart with every worker busy: {len(executions)} executions finished {recovered_in:.1f} s"
          f" after Redis came back, {sum(counts.values()) / (3 * len(executions)):.2f} runs per step")
    assert counts == {name: len(executions) for name in counts}  # once per execution, never twice
