"""A step's processes live and die with its attempt (issue 14): under the bwrap sandbox, kill -9 of
the worker takes the step's whole process tree with it (so a retry never overlaps its orphan), and
nothing a step started (setsid and double forks included) outlives the step."""
from __future__ import annotations

import os
import signal
import time

import pytest

from webapp.runners import sandbox

from ..conftest import wait_for
from ..tasks.helpers import attempts, latest, make_pipeline, run, wait_finished, wait_status

pytestmark = pytest.mark.integration
HAS_BWRAP = sandbox.bwrap_problem() is None


def _with_marker(marker: str) -> list[int]:
    """Pids of the `sleep MARKER` processes on this machine (not the shells and wrappers whose
    command lines merely contain the text)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().startswith(b"sleep\x00" + marker.encode()):
                    with open(f"/proc/{name}/stat") as st:
                        if st.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(name))
        except OSError:
            continue
    return found


def _bwrap_workers(workers, n=1):
    if not HAS_BWRAP:
        # only bwrap's pid namespace makes this promise (README "When things fail"); `make test` installs it
        pytest.fail(f"bwrap cannot run here ({sandbox.bwrap_problem()}): a step's processes would not be"
                    " bound to its attempt")
    return workers(n, env={"ANSFLOW_STEP_ISOLATION": "bwrap"})


def test_kill_9_of_the_worker_takes_the_steps_processes_with_it(app, workers):
    first = _bwrap_workers(workers)[0]
    marker = "1031.25"
    p = make_pipeline([{"name": "long", "parameters": {"command": f"setsid sleep {marker} & sleep {marker}; true"},
                        "retry_policy": {"max_retries": 1, "delay_seconds": 0, "retry_on": ["error"]}}])
    e = run(p)
    wait_status(e, "long", "running")
    wait_for(lambda: len(_with_marker(marker)) >= 2, timeout=30, message="the step's two sleeps")
    os.kill(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not _with_marker(marker), timeout=10, message="the step's processes to die with their worker")
    gone_after = time.monotonic() - killed
    print(f"\nstep processes gone {gone_after:.2f} s after kill -9 of their worker")
    # the retry runs on another worker once the reconciler declares the attempt lost: never beside an orphan
    _bwrap_workers(workers)
    wait_for(lambda: len(attempts(e, "long")) == 2 and attempts(e, "long")[1].status == "running",
             timeout=60, message="the retry to start")
    assert len(_with_marker(marker)) <= 2  # only the retry's own two sleeps
    assert attempts(e, "long")[0].error_message.startswith("worker lost")


def test_nothing_a_step_started_outlives_the_step(app, workers):
    _bwrap_workers(workers)
    marker = "1047.5"
    p = make_pipeline([{"name": "escapes", "parameters": {
        "command": f"setsid sleep {marker} & (sleep {marker} &) ; nohup sleep {marker} >/dev/null 2>&1 & echo started"}}])
    e = wait_finished(run(p))
    assert e.status == "success" and "started" in latest(e, "escapes").logs
    wait_for(lambda: not _with_marker(marker), timeout=10, message="the step's descendants to be gone")
