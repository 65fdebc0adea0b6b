"""A step's processes live and die with its attempt, at every sandbox level (issue 14).

bwrap gives this for free: a pid namespace whose init dies with the worker. Without it
(``user`` and ``none``), a process that leaves the step's process group (``setsid``, a daemon's
double fork) escapes the group kill, and kill -9 of the worker leaves bash itself running.
Three measures close that, the way Jenkins' ProcessTreeKiller does:

- every step process carries a cookie in its environment (``ANSFLOW_STEP_RUN``, inherited by
  every descendant that does not wipe its environment); at the end of the step, every process
  on this host with that cookie is killed;
- bash gets SIGKILL as its parent-death signal (setpriv ``--pdeathsig``), so kill -9 of the
  worker takes the step's shell with it;
- before a retry starts, the earlier attempts' processes still running on this host (an
  orphan of a killed worker) are killed and waited for: a retry never runs beside its orphan.

A process that clears its environment (``env -i``) or runs a set-user-ID binary is not found
this way; the bwrap level has no such gap (README "When things fail").
"""
from __future__ import annotations

import hashlib
import os
import signal
import time

COOKIE_VAR = "ANSFLOW_STEP_RUN"
PDEATHSIG = ["--pdeathsig", "KILL"]   # setpriv's option: the step's shell dies with its worker


def lineage(execution_id: str, step_name: str) -> str:
    """What every attempt of one step shares: the cookie's prefix."""
    digest = hashlib.sha256(str(step_name).encode()).hexdigest()[:16]
    return f"{execution_id}.{digest}."


def cookie(execution_id: str, step_name: str, attempt_id: int) -> str:
    return f"{lineage(execution_id, step_name)}{attempt_id}"


def has_children() -> bool:
    """Any child at all (running or not)? No /proc scan: the common end of a step has none."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def carriers(prefix: str, *, exact: bool = False) -> list[int]:
    """Pids of the live processes on this host whose cookie is (or starts with) `prefix`."""
    needle = f"{COOKIE_VAR}={prefix}".encode()
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:   # gone, or not ours to read
            continue
        for entry in env.split(b"\0"):
            if entry == needle or (not exact and entry.startswith(needle)):
                if _state(name) != "Z":
                    found.append(int(name))
                break
    return found


def kill_carriers(prefix: str, *, exact: bool = False, timeout: float = 5.0) -> int:
    """SIGKILL every process carrying the cookie until none is left (or `timeout`); reap the ones
    that became this process's children. How many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = carriers(prefix, exact=exact)
        _reap(killed)
        if not pids or time.monotonic() > deadline:
            return len(killed)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def sweep(step_cookie: str) -> int:
    """At the end of a step: kill what escaped its process group. Such a process was re-parented
    to this worker (a child subreaper while steps run), so with no child left there is nothing to
    look for."""
    if not has_children():
        return 0
    return kill_carriers(step_cookie, exact=True)


def _reap(pids: set[int]) -> None:
    # only the ones killed here: waiting for any child would steal another step's bash from Popen
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return "Z"
    return data[data.rfind(b")") + 2:][:1].decode() or "Z"
