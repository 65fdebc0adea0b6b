"""`shell` step: `bash -c <command>` in the execution's workspace (DESIGN §3).

- The command runs in a NEW process group (session) with stdin from /dev/null and
  stdout+stderr merged into one pipe, read by a reader thread; the log (masked, capped to the
  tail) is streamed through ctx.on_log at most every LOG_INTERVAL seconds.
- A timeout (ctx.timeout_seconds) or should_stop() ("cancelled"/"timed_out") sends SIGTERM to
  the WHOLE group, then SIGKILL after KILL_GRACE seconds.
- When bash exits, whatever is left of its group (e.g. `sleep 100 &`) is killed: a step never
  leaves processes behind and never waits for a background job that holds the pipe.
- No zombies: bash is reaped; while a step runs the worker process is a "child subreaper"
  (Linux prctl), so orphaned grandchildren are re-parented to it and reaped here too.
- Context values reach the command only as environment variables (ctx.env, then the step's
  static parameters["env"]); the command text is passed to bash untouched.
- bash runs in the worker's sandbox (sandbox.py: bwrap, user or none). Under bwrap the group
  also holds bwrap itself: SIGTERM goes to the group's other members (bwrap would pass it on as
  SIGKILL to all, leaving the step no grace), SIGKILL to the whole group.
- The worker touches a workspace a step may own through directory descriptors and O_NOFOLLOW
  only, so links the step plants there lead nowhere.
- Outputs: $ANSFLOW_OUTPUT names a fresh file (unique per attempt, under
  <workspace>/.ansflow/); after the process ends its `KEY=value` lines become the outputs
  (blank, comment and malformed lines ignored, KEY an identifier, last one wins, 64 KB read).
"""
from __future__ import annotations

import ctypes
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

from . import lifetime
from . import sandbox as sandboxes
from .base import (
    CANCELLED, FAILED, SUCCESS, TIMED_OUT, LogBuffer, StepContext, StepResult, error_result, mask,
    safe_on_log, safe_should_stop, stop_status,
)
from .env import IDENTIFIER, base_env, env_value

BASH = shutil.which("bash") or "/bin/bash"
LOG_INTERVAL = 0.5        # seconds between two on_log calls
STOP_POLL = 0.2           # seconds between two should_stop() calls
TICK = 0.05               # supervision loop period
KILL_GRACE = 3.0          # SIGTERM -> SIGKILL
REAP_TIMEOUT = 5.0        # how long to wait for the killed group to disappear
FAST_REAP = 0.05          # seconds a finished group is polled without a /proc scan
OUTPUT_MAX_BYTES = 64 * 1024
RESERVED_ENV = ("ANSFLOW_OUTPUT", "ANSFLOW_WORKSPACE", lifetime.COOKIE_VAR)


def run(ctx: StepContext) -> StepResult:
    params = ctx.parameters or {}
    command = params.get("command")
    if not isinstance(command, str) or not command.strip():
        return error_result("A shell step needs a command.", ctx)
    static_env = params.get("env") or {}
    if not isinstance(static_env, dict):
        return error_result("env must be a mapping of NAME: value.", ctx)
    box = sandboxes.current()
    try:
        workspace = Path(ctx.workspace)
        workspace.mkdir(parents=True, exist_ok=True)
        uid = sandboxes.workspace_owner(box, workspace, ctx.execution_id)
        output_file = _fresh_output_file(ctx, workspace, uid)
    except (OSError, sandboxes.SandboxError) as exc:
        return error_result(f"cannot prepare the workspace: {exc}", ctx)
    env = step_env(ctx.env, static_env, workspace, output_file)
    log = LogBuffer(ctx.log_max_bytes, ctx.secrets)
    for name, value in sandboxes.step_env_overrides(box, workspace).items():
        if name not in static_env:   # the worker's HOME and TMPDIR are not the step's to use
            env[name] = value
    run_cookie = lifetime.cookie(ctx.execution_id, ctx.step_name, ctx.attempt_id)
    env[lifetime.COOKIE_VAR] = run_cookie
    if ctx.attempt_number > 1:
        fenced = lifetime.kill_carriers(lifetime.lineage(ctx.execution_id, ctx.step_name))
        if fenced:
            log.line(f"[ansflow] stopped {fenced} process(es) an earlier attempt left running on this host")
    if not os.access(BASH, os.X_OK):   # every level starts bash through a wrapper, which would only exit 127
        return error_result(f"could not start bash: {BASH} is not executable", ctx)

    _subreaper_acquire()
    try:
        try:
            proc = subprocess.Popen(
                box.wrap([BASH, "-c", command], workspace, uid), cwd=str(workspace), env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return error_result(f"could not start bash: {exc}", ctx)
        group = _Group(proc, log, wrapper=box.level == sandboxes.BWRAP)
        try:
            reason, why = _supervise(group, ctx, log)
            stop = stop_status(reason)
            if stop:
                log.line(f"[ansflow] {why}: stopping the process group")
                group.terminate(KILL_GRACE)
        finally:
            code = group.finish()
            escaped = lifetime.sweep(run_cookie)
            if escaped:
                log.line(f"[ansflow] stopped {escaped} process(es) that left the step's process group")
    finally:
        _subreaper_release()

    outputs = read_outputs(output_file, ctx.secrets, log, owner=uid)
    exit_code = code if code >= 0 else 128 - code   # killed by signal N -> 128+N, as the shell reports it
    logs = log.text()
    if stop:
        status, failure = stop
        return StepResult(status=status, exit_code=exit_code, failure=failure, error_message=mask(why, ctx.secrets),
                          logs=logs, outputs=outputs)
    if exit_code == 0:
        return StepResult(status=SUCCESS, exit_code=0, logs=logs, outputs=outputs)
    return StepResult(status=FAILED, exit_code=exit_code, failure="exit",
                      error_message=f"command exited with code {exit_code}", logs=logs, outputs=outputs)


def step_env(context_env: dict | None, static_env: dict, workspace: Path, output_file: Path) -> dict[str, str]:
    """Minimal base <- context env (env.build_env) <- the step's static env; AnsFlow paths last."""
    env = base_env()
    for source in (context_env or {}, static_env or {}):
        for name, value in source.items():
            name = str(name)
            if IDENTIFIER.match(name) and name not in RESERVED_ENV:
                env[name] = env_value(value)
    env["ANSFLOW_WORKSPACE"] = str(workspace)
    env["ANSFLOW_OUTPUT"] = str(output_file)
    return env


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _fresh_output_file(ctx: StepContext, workspace: Path, owner: int | None = None) -> Path:
    """An empty <workspace>/.ansflow/<step>.<attempt>.out, the step's (`owner`'s) to write."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(ctx.step_name))[:80] or "step"
    name = f"{safe}.{ctx.attempt_id}.out"
    ws_fd = os.open(workspace, _DIR_FLAGS)
    try:
        try:
            os.mkdir(".ansflow", 0o755, dir_fd=ws_fd)
        except FileExistsError:
            pass
        dir_fd = os.open(".ansflow", _DIR_FLAGS, dir_fd=ws_fd)
    finally:
        os.close(ws_fd)
    try:
        if owner is not None:
            os.fchown(dir_fd, owner, owner)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            if owner is not None:
                os.fchown(fd, owner, owner)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    return workspace / ".ansflow" / name


def read_outputs(path: Path, secrets: list[str], log: LogBuffer | None = None,
                 owner: int | None = None) -> dict[str, str]:
    """`KEY=value` lines of the outputs file (a regular file only: never block on a FIFO). With
    an `owner`, only a file of that uid with one link: not a server file the step linked there."""
    try:
        dir_fd = os.open(Path(path).parent, _DIR_FLAGS)
    except OSError:
        return {}
    try:
        fd = os.open(Path(path).name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return {}
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (owner is not None and (st.st_uid != owner or st.st_nlink != 1)):
            return {}
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            data = fh.read(OUTPUT_MAX_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > OUTPUT_MAX_BYTES:
        data = data[:OUTPUT_MAX_BYTES]
        data = data[: data.rfind(b"\n") + 1]   # drop the partial last line
        if log is not None:
            log.line(f"[ansflow] outputs file larger than {OUTPUT_MAX_BYTES} bytes: the rest was ignored")
    return parse_outputs(data.decode("utf-8", "replace"), secrets)


def parse_outputs(text: str, secrets: list[str] | None = None) -> dict[str, str]:
    outputs: dict[str, str] = {}
    for line in text.split("\n"):
        line = line.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if not IDENTIFIER.match(key):
            continue
        outputs.pop(key, None)   # last one wins (and moves to the end)
        outputs[key] = mask(value.replace("\x00", ""), secrets or [])
    return outputs


def _supervise(group: "_Group", ctx: StepContext, log: LogBuffer) -> tuple[str | None, str]:
    """Wait for bash to exit, streaming the log; return (stop reason, why) when it must be stopped."""
    timeout = ctx.timeout_seconds
    deadline = time.monotonic() + timeout if timeout is not None and timeout > 0 else None
    # A step that ends within its first STOP_POLL / LOG_INTERVAL costs no Redis round trip and
    # no log write: its whole log is recorded with its result. (A cancel sent before it started
    # was already seen by the claim, which finds the attempt no longer queued.)
    started = time.monotonic()
    next_stop_check = started + STOP_POLL
    last_emit = started
    emitted = 0   # a fresh buffer's version: once the interval has passed, emit what was read
    while not group.exited():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return TIMED_OUT, f"step timed out after {timeout:g} s"
        if now >= next_stop_check:
            reason = safe_should_stop(ctx)
            if reason:
                return reason, ("stopped: the attempt timed out" if reason == TIMED_OUT else "step cancelled")
            next_stop_check = now + STOP_POLL
        if log.version != emitted and now - last_emit >= LOG_INTERVAL:
            emitted = log.version
            safe_on_log(ctx, log.text(final=False))
            last_emit = time.monotonic()
        group.wait_exit(TICK)
    return None, ""


class _Group:
    """bash, its process group and the thread reading their merged output."""

    def __init__(self, proc: subprocess.Popen, log: LogBuffer, wrapper: bool = False):
        self.proc = proc
        self.pgid = proc.pid      # start_new_session: bash (or its sandbox wrapper) leads its own group
        self.wrapper = wrapper    # proc is bwrap: the step's processes are the group's other members
        self.log = log
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"shell-log-{proc.pid}", daemon=True)
        self._reader.start()
        # A pidfd becomes readable the moment bash exits (without reaping it), so a short step
        # is noticed at once instead of at the next supervision tick.
        try:
            self._pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._backoff = 0.001

    def wait_exit(self, timeout: float) -> None:
        """Return when bash exits or after `timeout` seconds, whichever comes first."""
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], timeout)
            return
        # no pidfd (old kernel): poll fast at first, then at the tick
        time.sleep(min(timeout, self._backoff))
        self._backoff = min(self._backoff * 2, timeout)

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        drained = 0
        while True:
            stopping = self._stop.is_set()
            if not poller.poll(0 if stopping else 100):
                if stopping:
                    return
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.log.append(data)
            if stopping:
                drained += len(data)
                if drained > 4 * 1024 * 1024:   # an escaped daemon still writing: give up
                    return

    def exited(self) -> bool:
        """Has bash exited? (without reaping it: its zombie keeps the group id reserved)"""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def signal(self, sig: int) -> None:
        if self.wrapper and sig != signal.SIGKILL:
            for pid, _, state in _group_members(self.pgid):
                if pid != self.proc.pid and state != "Z":
                    try:
                        os.kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            return
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, grace: float) -> None:
        """SIGTERM to the group; wait up to `grace` s for bash and the group's processes to end."""
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)   # a stopped process can only act on SIGTERM once continued
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.exited() and not _group_alive(self.pgid, exclude=self.proc.pid):
                return
            time.sleep(TICK)

    def finish(self) -> int:
        """SIGKILL what is left of the group, reap bash and the orphans, stop the reader; bash's status."""
        self.signal(signal.SIGKILL)
        code = self.proc.wait()
        _reap_group(self.pgid, REAP_TIMEOUT)
        self._stop.set()
        self._reader.join(timeout=10)
        self.proc.stdout.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return code


# -- process group bookkeeping (Linux /proc; elsewhere these are no-ops) ------------------------

def _group_members(pgid: int) -> list[tuple[int, int, str]]:
    """(pid, ppid, state) of every process whose process group is `pgid`."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        try:
            state, ppid, pgrp = fields[0].decode(), int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            continue
        if pgrp == pgid:
            members.append((int(name), ppid, state))
    return members


def _group_alive(pgid: int, exclude: int | None = None) -> bool:
    return any(state != "Z" for pid, _, state in _group_members(pgid) if pid != exclude)


def _reap_group(pgid: int, timeout: float) -> None:
    """Wait until the (killed) group is gone, reaping the orphans re-parented to this process.
    Zombies whose parent is someone else (no subreaper support) are left to that parent."""
    me = os.getpid()
    started = time.monotonic()
    deadline = started + timeout
    pause = 0.001
    while True:
        _reap_children_of_group(pgid)   # e.g. bwrap's pid 1, handed to this subreaper as it exits
        try:
            os.killpg(pgid, 0)   # zombies count as members, so ESRCH means nothing is left at all
        except ProcessLookupError:
            return               # the common case: no /proc scan needed
        except PermissionError:
            pass
        if time.monotonic() - started < FAST_REAP:   # a sandbox's last process ends within ms
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
            continue
        members = _group_members(pgid)
        pids = {pid for pid, _, _ in members}
        waiting = False
        for pid, ppid, state in members:
            if ppid == me:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                waiting = True
            elif state != "Z" or ppid in pids:
                waiting = True   # still dying, or about to be re-parented
        if not waiting or time.monotonic() > deadline:
            return
        try:
            os.killpg(pgid, signal.SIGKILL)   # anything forked since the last kill
        except (ProcessLookupError, PermissionError):
            pass
        time.sleep(0.01)


def _reap_children_of_group(pgid: int) -> None:
    """Reap every exited child of this process in group `pgid`, without a /proc scan."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37
_subreaper_lock = threading.Lock()
_subreaper_users = 0
_subreaper_was_set = True


_libc = None


def _prctl(option: int, arg) -> bool:
    global _libc
    try:
        if _libc is None:  # loading it costs more than the system call: once per process
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _subreaper_acquire() -> None:
    global _subreaper_users, _subreaper_was_set
    with _subreaper_lock:
        if _subreaper_users == 0:
            current = ctypes.c_int(0)
            known = _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(current))
            _subreaper_was_set = (not known) or bool(current.value)
            if not _subreaper_was_set:
                _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _subreaper_users += 1


def _subreaper_release() -> None:
    global _subreaper_users
    with _subreaper_lock:
        _subreaper_users -= 1
        if _subreaper_users == 0 and not _subreaper_was_set:
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)


__all__ = ["run", "step_env", "read_outputs", "parse_outputs", "CANCELLED", "TIMED_OUT"]
