"""The shell runner against real bash processes."""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from webapp.runners import sandbox, shell
from webapp.runners.base import StepResult

from ..conftest import wait_for

# user needs a workspace root that other uids can search: the fixture makes one under /tmp
LEVELS = sandbox.available(Path(tempfile.gettempdir()) / "x")


@pytest.fixture(params=LEVELS)
def isolated(request, make_ctx):
    """make_ctx at each isolation level this machine supports (the test id names it), with a
    workspace of its own in a root as the worker makes it (0711)."""
    root = Path(tempfile.mkdtemp(prefix="ansflow-ws-"))
    os.chmod(root, 0o711)
    workspace = root / "ex-1"
    workspace.mkdir()
    previous = sandbox.configure(sandbox.choose(request.param, workspace_root=root))

    def make(*a, **kw):
        ctx = make_ctx(*a, **kw)
        ctx.workspace = workspace
        return ctx
    make.workspace = workspace
    make.level = request.param
    yield make
    sandbox.configure(previous)
    shutil.rmtree(root, ignore_errors=True)


def survivors(marker: str) -> list[int]:
    """Host pids of live processes whose command line holds `marker` (a pid a sandboxed step
    writes down is one of its own pid namespace, meaningless out here)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != b"Z":
            found.append(int(name))
    return found


def marker() -> str:
    return f"{secrets.randbelow(10**6)}"


def run_in_thread(ctx):
    box: dict[str, StepResult] = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", shell.run(ctx)), daemon=True)
    thread.start()

    def result(timeout=30.0) -> StepResult:
        thread.join(timeout)
        assert not thread.is_alive(), "the runner did not return"
        return box["result"]
    return result


# -- exit codes and start-up ------------------------------------------------------------------

def test_success_exit_zero_runs_in_the_workspace(isolated):
    r = shell.run(isolated(parameters={"command": "echo hello; pwd; touch made-here"}))
    assert r.status == "success" and r.exit_code == 0 and r.failure is None
    assert r.logs == f"hello\n{isolated.workspace}\n"
    assert (isolated.workspace / "made-here").is_file()


@pytest.mark.parametrize("code", [1, 3, 42, 255])
def test_non_zero_exit_is_a_failure_with_its_code(make_ctx, code):
    r = shell.run(make_ctx(parameters={"command": f"echo out; echo err >&2; exit {code}"}))
    assert (r.status, r.exit_code, r.failure) == ("failed", code, "exit")
    assert "out\n" in r.logs and "err\n" in r.logs   # stderr merged into the same log
    assert str(code) in r.error_message


def test_a_command_killed_by_a_signal_reports_128_plus_n(isolated):
    r = shell.run(isolated(parameters={"command": "kill -KILL $$"}))
    assert (r.status, r.exit_code, r.failure) == ("failed", 137, "exit")


def test_stdin_is_empty_so_reading_it_does_not_hang(make_ctx):
    r = shell.run(make_ctx(parameters={"command": "cat; echo read-done"}, timeout=10))
    assert r.status == "success" and r.logs == "read-done\n"


def test_failure_to_start_is_an_error(make_ctx, monkeypatch):
    monkeypatch.setattr(shell, "BASH", str(make_ctx.workspace / "no-such-bash"))
    r = shell.run(make_ctx(parameters={"command": "true"}))
    assert (r.status, r.failure, r.exit_code) == ("failed", "error", None)
    assert "could not start" in r.error_message and "could not start" in r.logs


def test_an_unusable_workspace_is_an_error(make_ctx, tmp_path):
    ctx = make_ctx(parameters={"command": "true"})
    ctx.workspace = tmp_path / "a-file"
    ctx.workspace.write_text("not a directory")
    r = shell.run(ctx)
    assert (r.status, r.failure) == ("failed", "error") and "workspace" in r.error_message


@pytest.mark.parametrize("params", [{}, {"command": "   "}, {"command": 42}, {"command": "true", "env": ["A=1"]}])
def test_bad_parameters_are_an_error_not_a_crash(make_ctx, params):
    r = shell.run(make_ctx(parameters=params))
    assert (r.status, r.failure) == ("failed", "error")


# -- environment: context values are data, never code -------------------------------------------

HOSTILE = ["$(touch pwned-subst)", "`touch pwned-backtick`", "; touch pwned-semicolon", "x' ; touch pwned-quote ; '",
           '"; touch pwned-dq; echo "', "a\nb && touch pwned-newline", "$((1+1)) ${HOME} * ?"]


def test_context_values_reach_the_command_as_plain_text(make_ctx):
    variables = {f"v{i}": value for i, value in enumerate(HOSTILE)}
    trigger = {"ref": "; touch pwned-trigger", "payload": {"cmd": "$(touch pwned-json)"}}
    outputs = {"prev step": {"val": "`touch pwned-output`"}}
    command = ("for n in $(seq 0 %d); do name=V$n; printf '%%s\\n' \"${!name}\"; done; "
               "printf '%%s\\n' \"$TRIGGER_REF\" \"$TRIGGER_PAYLOAD\" \"$STEP_PREV_STEP_val\" \"$ANSFLOW_VAR_V0\""
               % (len(HOSTILE) - 1))
    r = shell.run(make_ctx(parameters={"command": command}, variables=variables, trigger=trigger, outputs=outputs))
    assert r.status == "success", r.logs
    expected = HOSTILE + ["; touch pwned-trigger", '{"cmd": "$(touch pwned-json)"}', "`touch pwned-output`", HOSTILE[0]]
    assert r.logs == "".join(v + "\n" for v in expected)
    assert not [p.name for p in make_ctx.workspace.iterdir() if p.name.startswith("pwned")]


def test_the_worker_environment_does_not_leak_into_commands(make_ctx, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:pw@db/ansflow")
    monkeypatch.setenv("SECRET_KEY", "worker-secret-key")
    r = shell.run(make_ctx(parameters={"command": "env"}))
    names = {line.split("=", 1)[0] for line in r.logs.splitlines() if "=" in line}
    assert "DATABASE_URL" not in names and "SECRET_KEY" not in names
    assert {"PATH", "HOME", "LANG", "TMPDIR", "ANSFLOW_EXECUTION_ID", "ANSFLOW_ATTEMPT", "ANSFLOW_STEP",
            "ANSFLOW_OUTPUT", "ANSFLOW_WORKSPACE"} <= names


def test_static_env_is_merged_but_cannot_move_the_output_file(make_ctx):
    params = {"command": 'echo "$GREETING $COUNT"; echo "ws=$ANSFLOW_WORKSPACE"; echo K=v >> "$ANSFLOW_OUTPUT"',
              "env": {"GREETING": "hello", "COUNT": 3, "ANSFLOW_OUTPUT": "/tmp/elsewhere",
                      "ANSFLOW_WORKSPACE": "/nope"}}
    r = shell.run(make_ctx(parameters=params, variables={"greeting": "from-context"}))
    assert r.logs == f"hello 3\nws={make_ctx.workspace}\n"
    assert r.outputs == {"K": "v"}


def test_a_context_env_without_a_base_still_gets_a_minimal_one(make_ctx):
    r = shell.run(make_ctx(parameters={"command": 'echo "$ONLY"; command -v ls >/dev/null && echo has-path'},
                           env={"ONLY": "x"}))
    assert r.status == "success" and r.logs == "x\nhas-path\n"


# -- outputs ------------------------------------------------------------------------------------

def test_outputs_file_lines_become_outputs(isolated):
    command = r"""{
      echo 'VERSION=1.2.3'
      echo ''
      echo '# a comment'
      echo 'not a pair'
      echo '9BAD=nope'
      echo 'with space=nope'
      echo 'URL=https://x/?a=b=c'
      echo 'EMPTY='
      echo '  PADDED=kept value '
      printf 'CRLF=yes\r\n'
      echo 'VERSION=2.0.0'
    } >> "$ANSFLOW_OUTPUT"; exit 1"""
    r = shell.run(isolated(parameters={"command": command}))
    assert r.status == "failed"   # outputs are kept even when the step fails
    assert r.outputs == {"URL": "https://x/?a=b=c", "EMPTY": "", "PADDED": "kept value ", "CRLF": "yes",
                         "VERSION": "2.0.0"}


def test_each_attempt_gets_a_fresh_outputs_file(make_ctx):
    ctx = make_ctx(parameters={"command": 'echo A=1 >> "$ANSFLOW_OUTPUT"; cat "$ANSFLOW_OUTPUT" | wc -l'})
    first = shell.run(ctx)
    second = shell.run(ctx)   # same attempt re-delivered: the old file is replaced, not appended to
    assert first.outputs == second.outputs == {"A": "1"}
    assert first.logs.strip() == second.logs.strip() == "1"


def test_an_oversized_outputs_file_is_capped(make_ctx):
    command = 'echo FIRST=1 >> "$ANSFLOW_OUTPUT"; head -c 200000 /dev/zero | tr "\\0" "x" >> "$ANSFLOW_OUTPUT"'
    r = shell.run(make_ctx(parameters={"command": command}))
    assert r.status == "success" and r.outputs == {"FIRST": "1"}
    assert "outputs file larger than" in r.logs


def test_a_fifo_as_outputs_file_does_not_hang_the_runner(isolated):
    r = shell.run(isolated(parameters={"command": 'rm "$ANSFLOW_OUTPUT"; mkfifo "$ANSFLOW_OUTPUT"'}, timeout=20))
    assert r.status == "success" and r.outputs == {}


# -- streaming ------------------------------------------------------------------------------------

def test_log_streams_while_the_process_is_still_running(make_ctx, recorder):
    go = make_ctx.workspace / "go"
    command = 'echo first; while [ ! -e go ]; do sleep 0.05; done; echo second'
    result = run_in_thread(make_ctx(parameters={"command": command}, timeout=60))
    partial = wait_for(lambda: recorder.seen("first"), timeout=10, message="the first line in on_log")
    assert "second" not in partial   # it really was streamed before the process finished
    go.touch()
    r = result()
    assert r.status == "success" and r.logs == "first\nsecond\n"


def test_on_log_is_throttled(make_ctx, recorder):
    command = 'for i in $(seq 1 40); do echo line $i; sleep 0.05; done'
    started = time.monotonic()
    r = shell.run(make_ctx(parameters={"command": command}))
    elapsed = time.monotonic() - started
    assert r.status == "success"
    assert 1 <= len(recorder.logs) <= elapsed / shell.LOG_INTERVAL + 2
    assert all(recorder.logs[i] != recorder.logs[i + 1] for i in range(len(recorder.logs) - 1))


def test_a_failing_on_log_callback_does_not_fail_the_step(make_ctx):
    ctx = make_ctx(parameters={"command": "echo a; sleep 0.7; echo b"})

    def boom(text):
        raise RuntimeError("database is locked")
    ctx.on_log = boom
    r = shell.run(ctx)
    assert r.status == "success" and r.logs == "a\nb\n"


# -- timeout, cancel and the process group ----------------------------------------------------------

def test_timeout_kills_the_whole_process_group(isolated):
    m = marker()
    command = f'sleep 300.{m}1 & bash -c "sleep 300.{m}2 & wait" & echo started; wait'
    started = time.monotonic()
    r = shell.run(isolated(parameters={"command": command}, timeout=1))
    assert time.monotonic() - started < 10
    assert (r.status, r.failure) == ("timed_out", "timeout")
    assert "timed out after 1 s" in r.logs and "started" in r.logs
    assert survivors(f"300.{m}") == [], "a process of the step survived the timeout"


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(isolated, monkeypatch):
    monkeypatch.setattr(shell, "KILL_GRACE", 0.5)
    m = marker()
    command = f"trap '' TERM; : stubborn-{m}; echo ready; while :; do sleep 0.1; done"
    r = shell.run(isolated(parameters={"command": command}, timeout=0.5))
    assert r.status == "timed_out" and r.exit_code == 137
    assert survivors(f"stubborn-{m}") == []


def test_a_term_trap_gets_its_grace_before_the_kill(isolated):
    """SIGTERM reaches the step itself, not only its sandbox, so cleanup traps run."""
    command = "trap 'echo cleaned-up; exit 3' TERM; echo ready; while :; do sleep 0.1; done"
    r = shell.run(isolated(parameters={"command": command}, timeout=0.5))
    assert r.status == "timed_out" and r.exit_code == 3
    assert "cleaned-up" in r.logs


def test_should_stop_cancelled_kills_the_group(isolated, recorder):
    m = marker()
    command = f'sleep 300.{m} & echo running; wait'
    result = run_in_thread(isolated(parameters={"command": command}))
    wait_for(lambda: recorder.seen("running"), timeout=10, message="the step to start")
    recorder.stop_with = "cancelled"
    r = result()
    assert (r.status, r.failure) == ("cancelled", "cancelled")
    assert "step cancelled" in r.logs
    assert survivors(f"300.{m}") == []


def test_should_stop_timed_out_gives_timed_out(make_ctx, recorder):
    result = run_in_thread(make_ctx(parameters={"command": "echo running; sleep 300"}))
    wait_for(lambda: recorder.seen("running"), timeout=10, message="the step to start")
    recorder.stop_with = "timed_out"
    r = result()
    assert (r.status, r.failure) == ("timed_out", "timeout")


@pytest.mark.parametrize("redirect", ["", ">/dev/null 2>&1"])
def test_background_leftovers_do_not_hang_the_step_and_are_killed(isolated, redirect):
    m = marker()
    command = f"sleep 100.{m} {redirect} & echo done"
    started = time.monotonic()
    r = shell.run(isolated(parameters={"command": command}, timeout=60))
    assert time.monotonic() - started < 10
    assert r.status == "success" and r.logs == "done\n"
    assert survivors(f"100.{m}") == []


def test_no_file_descriptors_or_children_are_leaked(make_ctx):
    ctx = make_ctx(parameters={"command": "sleep 50 & echo x; echo K=v >> $ANSFLOW_OUTPUT"})
    shell.run(ctx)   # warm up (imports, lazily opened files)
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert shell.run(ctx).outputs == {"K": "v"}
    assert sorted(os.listdir("/proc/self/fd")) == before
    children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == os.getpid()]
    assert not [p for p in children if _comm(p) in ("bash", "sleep")]


def _ppid(pid: str) -> int | None:
    try:
        data = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2:].split()[1])


def _comm(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return ""


# -- masking and the log cap ------------------------------------------------------------------------

def test_secrets_are_masked_in_streamed_and_final_logs_and_outputs(make_ctx, recorder):
    secret = "hunter2-TOPSECRET"
    command = ("echo token=$TOKEN; printf 'hunter2-'; sleep 0.6; printf 'TOPSECRET\\n'; "
               'echo "KEY=$TOKEN" >> "$ANSFLOW_OUTPUT"; sleep 0.6; echo end')
    r = shell.run(make_ctx(parameters={"command": command}, variables={"token": secret}, secrets=[secret]))
    assert r.status == "success"
    assert r.logs == "token=***\n***\nend\n"
    assert r.outputs == {"KEY": "***"}
    assert recorder.logs, "on_log was never called"
    for text in recorder.logs:
        assert "hunter2-" not in text and "TOPSECRET" not in text


def test_log_cap_keeps_the_tail_and_says_how_much_was_cut(make_ctx):
    r = shell.run(make_ctx(parameters={"command": "seq 1 100000"}, log_max_bytes=4096))
    total = sum(len(f"{i}\n") for i in range(1, 100001))
    assert r.status == "success"
    assert len(r.logs.encode()) <= 4096
    first, rest = r.logs.split("\n", 1)
    assert first.startswith("[... ") and first.endswith(" bytes cut ...]")
    cut = int(first.split()[1])
    assert cut + len(rest.encode()) == total
    assert rest.endswith("99999\n100000\n")


def test_outputs_never_follow_a_link_the_step_planted(isolated, tmp_path):
    """The worker reads outputs through O_NOFOLLOW descriptors: a step that turns .ansflow into
    a link to a server directory gets nothing of it back."""
    server = tmp_path / "server"
    server.mkdir()
    (server / "build.7.out").write_text("LEAK=server-secret\n")
    command = f'rm -rf .ansflow && ln -s {server} .ansflow || true'
    r = shell.run(isolated(parameters={"command": command}))
    assert r.status == "success" and r.outputs == {}
    assert (server / "build.7.out").read_text() == "LEAK=server-secret\n"
