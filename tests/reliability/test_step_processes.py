"""A step's processes live and die with its attempt (issue 14), at every isolation level this
machine runs (the test ids name them):

- bwrap: kill -9 of the worker takes the step's whole process tree with it within a second (the
  pid namespace's init dies with its parent);
- user and none: the step's shell dies with its worker (parent-death signal); what it left running
  is stopped before the retry starts, so a retry never runs beside its orphan;
- at every level nothing a step started (setsid and double forks included) outlives the step.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from webapp.runners import lifetime, sandbox

from ..conftest import wait_for
from ..tasks.helpers import attempts, latest, make_pipeline, run, wait_finished, wait_status

pytestmark = pytest.mark.integration

# the `user` level's steps must be able to search the workspace root (pytest's tmp dirs are 0700)
ROOT = Path(tempfile.mkdtemp(prefix="ansflow-lifetime-"))
os.chmod(ROOT, 0o711)
LEVELS = sandbox.available(ROOT / "probe")


def teardown_module(module):
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture
def app_settings(app_settings, request):
    workspaces = ROOT / request.node.name.replace("[", "_").replace("]", "")
    workspaces.mkdir()
    os.chmod(workspaces, 0o711)
    return {**app_settings, "WORKSPACE_ROOT": str(workspaces)}


@pytest.fixture
def marker(request):
    """A `sleep` argument unique to this test run: a sleep this test leaves behind (the retry's own,
    still running when the workers are stopped) must not be counted by a later run on this machine
    (CI runs the suite twice), and is killed at teardown."""
    made = f"1031.{secrets.randbelow(10**6):06d}"
    yield made
    for pid in _with_marker(made):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _levels():
    if "bwrap" not in LEVELS:
        # `make test` installs bubblewrap: without it the strongest promise would go untested
        pytest.fail(f"bwrap cannot run here ({sandbox.bwrap_problem()})")
    return LEVELS


def _with_marker(marker: str) -> list[int]:
    """Pids of the live `sleep MARKER` processes on this machine (not the shells and wrappers whose
    command lines merely contain the text)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read() == b"sleep\x00" + marker.encode() + b"\x00":
                    with open(f"/proc/{name}/stat") as st:
                        if st.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(name))
        except OSError:
            continue
    return found


def _step_shells(execution_id: str) -> list[int]:
    """The step's bash (and wrappers) of `execution_id`: the processes carrying its cookie that are
    not the sleeps."""
    return [pid for pid in lifetime.carriers(f"{execution_id}.")
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x00")]


@pytest.mark.parametrize("level", sandbox.available(ROOT / "probe"))
def test_kill_9_of_the_worker_never_lets_a_retry_run_beside_its_orphan(app, workers, level, marker):
    _levels()
    (first,) = workers(1, env={"ANSFLOW_STEP_ISOLATION": level})
    p = make_pipeline([{"name": "long", "parameters": {"command": f"setsid sleep {marker} & sleep {marker}; true"},
                        "retry_policy": {"max_retries": 1, "delay_seconds": 0, "retry_on": ["error"]}}])
    e = run(p)
    wait_status(e, "long", "running")
    wait_for(lambda: len(_with_marker(marker)) >= 2, timeout=30, message="the step's two sleeps")
    os.kill(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    if level == "bwrap":
        wait_for(lambda: not _with_marker(marker), timeout=10, message="the step's processes to die with their worker")
        print(f"\n[{level}] step processes gone {time.monotonic() - killed:.2f} s after kill -9 of their worker")
    else:
        wait_for(lambda: not _step_shells(e.execution_id), timeout=10, message="the step's shell to die with its worker")
        print(f"\n[{level}] step shell gone {time.monotonic() - killed:.2f} s after kill -9 of its worker;"
              f" {len(_with_marker(marker))} sleeps left for the retry's fence")
    workers(1, env={"ANSFLOW_STEP_ISOLATION": level})
    wait_for(lambda: len(attempts(e, "long")) == 2 and attempts(e, "long")[1].status == "running",
             timeout=60, message="the retry to start")
    retry = lifetime.cookie(e.execution_id, "long", attempts(e, "long")[1].id)
    mine = wait_for(lambda: (lambda s: s if len(s) >= 2 else None)(set(_with_marker(marker)) & set(lifetime.carriers(retry, exact=True))),
                    timeout=30, message="the retry's two sleeps")
    # only the retry's own two sleeps: the orphan's were gone before the retry's shell started
    assert set(_with_marker(marker)) == mine
    assert attempts(e, "long")[0].error_message.startswith("worker lost")
    if level != "bwrap":
        wait_for(lambda: "earlier attempt left running" in (latest(e, "long").logs or ""), timeout=10,
                 message="the retry's log to say what it stopped")


@pytest.mark.parametrize("level", sandbox.available(ROOT / "probe"))
def test_nothing_a_step_started_outlives_the_step(app, workers, level, marker):
    _levels()
    workers(1, env={"ANSFLOW_STEP_ISOLATION": level})
    p = make_pipeline([{"name": "escapes", "parameters": {
        "command": f"setsid sleep {marker} & (sleep {marker} &) ; nohup sleep {marker} >/dev/null 2>&1 &"
                   f" (setsid bash -c 'sleep {marker} & sleep {marker}' &) ; echo started"}}])
    e = wait_finished(run(p))
    assert e.status == "success" and "started" in latest(e, "escapes").logs
    wait_for(lambda: not _with_marker(marker), timeout=10, message="the step's descendants to be gone")
