"""The shell runner against real bash processes."""
from __future__ import annotations

import os
import threading
import time

import pytest

from webapp.runners import shell
from webapp.runners.base import StepResult

from ..conftest import wait_for
from .conftest import gone, read_pid


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

def test_success_exit_zero_runs_in_the_workspace(make_ctx):
    r = shell.run(make_ctx(parameters={"command": "echo hello; pwd"}))
    assert r.status == "success" and r.exit_code == 0 and r.failure is None
    assert r.logs == f"hello\n{make_ctx.workspace}\n"


@pytest.mark.parametrize("code", [1, 3, 42, 255])
def test_non_zero_exit_is_a_failure_with_its_code(make_ctx, code):
    r = shell.run(make_ctx(parameters={"command": f"echo out; echo err >&2; exit {code}"}))
    assert (r.status, r.exit_code, r.failure) == ("failed", code, "exit")
    assert "out\n" in r.logs and "err\n" in r.logs   # stderr merged into the same log
    assert str(code) in r.error_message


def test_a_command_killed_by_a_signal_reports_128_plus_n(make_ctx):
    r = shell.run(make_ctx(parameters={"command": "kill -KILL $$"}))
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

def test_outputs_file_lines_become_outputs(make_ctx):
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
    r = shell.run(make_ctx(parameters={"command": command}))
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


def test_a_fifo_as_outputs_file_does_not_hang_the_runner(make_ctx):
    r = shell.run(make_ctx(parameters={"command": 'rm "$ANSFLOW_OUTPUT"; mkfifo "$ANSFLOW_OUTPUT"'}, timeout=20))
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

def test_timeout_kills_the_whole_process_group(make_ctx):
    command = 'sleep 300 & echo $! > bg.pid; bash -c "sleep 300 & echo \\$! > grand.pid; wait" & echo started; wait'
    started = time.monotonic()
    r = shell.run(make_ctx(parameters={"command": command}, timeout=1))
    assert time.monotonic() - started < 10
    assert (r.status, r.failure) == ("timed_out", "timeout")
    assert "timed out after 1 s" in r.logs and "started" in r.logs
    for name in ("bg.pid", "grand.pid"):
        pid = read_pid(make_ctx.workspace / name)
        assert gone(pid), f"{name} {pid} survived the timeout"


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(make_ctx, monkeypatch):
    monkeypatch.setattr(shell, "KILL_GRACE", 0.5)
    command = "trap '' TERM; echo $$ > stubborn.pid; echo ready; while :; do sleep 0.1; done"
    r = shell.run(make_ctx(parameters={"command": command}, timeout=0.5))
    assert r.status == "timed_out" and r.exit_code == 137
    assert gone(read_pid(make_ctx.workspace / "stubborn.pid"))


def test_should_stop_cancelled_kills_the_group(make_ctx, recorder):
    command = 'sleep 300 & echo $! > bg.pid; echo running; wait'
    result = run_in_thread(make_ctx(parameters={"command": command}))
    wait_for(lambda: recorder.seen("running"), timeout=10, message="the step to start")
    recorder.stop_with = "cancelled"
    r = result()
    assert (r.status, r.failure) == ("cancelled", "cancelled")
    assert "step cancelled" in r.logs
    assert gone(read_pid(make_ctx.workspace / "bg.pid"))


def test_should_stop_timed_out_gives_timed_out(make_ctx, recorder):
    result = run_in_thread(make_ctx(parameters={"command": "echo running; sleep 300"}))
    wait_for(lambda: recorder.seen("running"), timeout=10, message="the step to start")
    recorder.stop_with = "timed_out"
    r = result()
    assert (r.status, r.failure) == ("timed_out", "timeout")


@pytest.mark.parametrize("redirect", ["", ">/dev/null 2>&1"])
def test_background_leftovers_do_not_hang_the_step_and_are_killed(make_ctx, redirect):
    command = f"sleep 100 {redirect} & echo $! > bg.pid; echo done"
    started = time.monotonic()
    r = shell.run(make_ctx(parameters={"command": command}, timeout=60))
    assert time.monotonic() - started < 10
    assert r.status == "success" and r.logs == "done\n"
    assert gone(read_pid(make_ctx.workspace / "bg.pid"))


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
