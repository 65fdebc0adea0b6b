"""A step cannot reach the server's secrets (issue 13, "Step sandbox"): at each isolation level
this machine supports (the test ids name them), a step of a real worker tries to read the
secret key, the database, another execution's workspace and the worker's environment, and to
signal the worker. Under `none` the same probes succeed: that level only filters the environment."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from webapp.config import INSTANCE
from webapp.runners import sandbox

from ..tasks.helpers import attempts, make_pipeline, run, wait_finished

pytestmark = pytest.mark.integration

# A root that other uids may search, as a deployment's would be (pytest's tmp dirs are 0700,
# which would refuse the `user` level's steps for the wrong reason).
SERVER_DIR = Path(tempfile.mkdtemp(prefix="ansflow-server-"))
os.chmod(SERVER_DIR, 0o711)
LEVELS = sandbox.available(SERVER_DIR / "workspaces")
PROBES = ("secret_key", "database", "other_workspace", "list_workspaces", "env", "worker_environ",
          "any_environ", "signal_worker")


def setup_module(module):
    print(f"\nstep isolation levels run here: {', '.join(LEVELS)} (bwrap: {sandbox.bwrap_problem() or 'works'})")


def teardown_module(module):
    shutil.rmtree(SERVER_DIR, ignore_errors=True)


@pytest.fixture
def server_dir(request):
    d = SERVER_DIR / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    os.chmod(d, 0o711)
    return d


@pytest.fixture
def database_url(server_dir):
    # always SQLite, also in the suite's PostgreSQL run: the probe reads the database *file*
    yield f"sqlite:///{server_dir / 'ansflow.db'}"


@pytest.fixture
def app_settings(app_settings, server_dir):
    return {**app_settings, "WORKSPACE_ROOT": str(server_dir / "workspaces")}


def _secret_key_file() -> Path:
    path = INSTANCE / "secret_key"
    if not path.exists():   # the worker reads SECRET_KEY from its environment here; the file is the target
        INSTANCE.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
    return path


def _probe_command(paths: dict[str, str]) -> str:
    """Each probe writes NAME=leaked or NAME=refused to the step's outputs."""
    checks = {
        "secret_key": f'cat {paths["secret_key"]}',
        "database": f'head -c 16 {paths["database"]} | grep -q "SQLite format"',
        "other_workspace": f'cat {paths["other_workspace"]}/mine.txt',
        "list_workspaces": f'ls {paths["workspaces"]} | grep -q {paths["other_id"]}',
        "env": "env | grep -qE '^(DATABASE_URL|SECRET_KEY|REDIS_URL|SMTP_PASSWORD)='",
        "worker_environ": f'grep -qa SECRET_KEY /proc/{paths["worker_pid"]}/environ',
        "any_environ": "grep -lqa smtp-password-of-the-server /proc/[0-9]*/environ",
        "signal_worker": f'kill -0 {paths["worker_pid"]}',
    }
    return "\n".join(f'if {cmd} >/dev/null 2>&1; then echo {name}=leaked; else echo {name}=refused; fi >> "$ANSFLOW_OUTPUT"'
                     for name, cmd in checks.items())


@pytest.mark.parametrize("level", LEVELS)
def test_a_step_cannot_reach_the_servers_secrets(app, workers, app_settings, level):
    (worker,) = workers(1, env={"ANSFLOW_STEP_ISOLATION": level, "SMTP_PASSWORD": "smtp-password-of-the-server"})
    log = (workers.logs / f"{worker.name}.log").read_text()
    assert f"Step isolation: {level}" in log
    assert ("WARNING: steps are not isolated" in log) == (level == "none")

    planted = make_pipeline([{"name": "plant", "parameters": {"command": "echo private-to-A > mine.txt"}}], name="a")
    a = wait_finished(run(planted), timeout=60)
    assert a.status == "success"
    root = Path(app_settings["WORKSPACE_ROOT"])
    assert (root / a.execution_id / "mine.txt").read_text() == "private-to-A\n"

    paths = {"secret_key": str(_secret_key_file()), "database": app_settings["SQLALCHEMY_DATABASE_URI"][len("sqlite:///"):],
             "other_workspace": str(root / a.execution_id), "workspaces": str(root), "other_id": a.execution_id,
             "worker_pid": str(worker.pid)}
    prober = make_pipeline([{"name": "probe", "parameters": {"command": _probe_command(paths)}}], name="b")
    b = wait_finished(run(prober), timeout=60)
    (attempt,) = attempts(b)
    assert b.status == "success", attempt.logs
    found = attempt.output_data
    assert set(found) == set(PROBES), attempt.logs
    assert found["env"] == "refused"   # the allow-listed environment, at every level
    if level == "none":
        # the probes do find what an unsandboxed step can reach (so "refused" above means something)
        assert {k for k, v in found.items() if v == "leaked"} >= {"secret_key", "database", "other_workspace",
                                                                  "worker_environ", "signal_worker"}
    else:
        assert found == {name: "refused" for name in PROBES}


@pytest.mark.parametrize("level", [lvl for lvl in LEVELS if lvl != "none"])
def test_workspaces_are_private_to_their_execution(app, workers, app_settings, level):
    workers(1, env={"ANSFLOW_STEP_ISOLATION": level})
    p = make_pipeline([{"name": "s", "parameters": {"command": "touch here"}}], name="ws")
    first, second = (wait_finished(run(p), timeout=60) for _ in range(2))
    root = Path(app_settings["WORKSPACE_ROOT"])
    st_root = os.stat(root)
    assert oct(st_root.st_mode & 0o777) == "0o711"   # no listing of executions
    owners = set()
    for e in (first, second):
        assert e.status == "success"
        st = os.stat(root / e.execution_id)
        assert st.st_mode & 0o777 == 0o700
        owners.add(st.st_uid)
    if os.geteuid() == 0:   # root workers give each execution its own uid
        assert len(owners) == 2 and not owners & {0}
