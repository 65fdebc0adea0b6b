"""The cookie that binds a step's processes to its attempt (runners/lifetime.py), on real processes."""
from __future__ import annotations

import os
import subprocess
import sys

from webapp.runners import lifetime

from ..conftest import wait_for


def _spawn(cookie: str) -> int:
    """A `sleep` that left its parent's session (as a step's `setsid sleep &` does); its pid."""
    out = subprocess.run(["bash", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                         env={**os.environ, lifetime.COOKIE_VAR: cookie}, check=True)
    return int(out.stdout)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def test_cookies_of_one_step_share_a_lineage_and_differ_per_attempt():
    first, second = lifetime.cookie("e1", "build", 7), lifetime.cookie("e1", "build", 8)
    assert first != second and first.startswith(lifetime.lineage("e1", "build"))
    assert second.startswith(lifetime.lineage("e1", "build"))
    assert not first.startswith(lifetime.lineage("e1", "build.x")) and not first.startswith(lifetime.lineage("e2", "build"))


def test_kill_carriers_stops_every_attempt_of_a_step_and_nothing_else():
    old = _spawn(lifetime.cookie("e1", "build", 1))
    other_step = _spawn(lifetime.cookie("e1", "test", 2))
    try:
        assert set(lifetime.carriers(lifetime.lineage("e1", "build"))) == {old}
        assert lifetime.kill_carriers(lifetime.lineage("e1", "build")) == 1
        wait_for(lambda: not _alive(old), timeout=5, message="the old attempt's process to be gone")
        assert _alive(other_step)
    finally:
        _stop(other_step)


def test_exact_cookie_is_not_a_prefix_match():
    a = _spawn(lifetime.cookie("e1", "build", 1))
    b = _spawn(lifetime.cookie("e1", "build", 12))
    try:
        wait_for(lambda: len(lifetime.carriers(lifetime.lineage("e1", "build"))) == 2, timeout=5, message="both")
        assert lifetime.kill_carriers(lifetime.cookie("e1", "build", 1), exact=True) == 1
        wait_for(lambda: not _alive(a), timeout=5, message="attempt 1's process to be gone")
        assert _alive(b)
    finally:
        _stop(b)


def test_sweep_without_children_reads_nothing():
    # In a fresh process: the suite's own process has children (Redis, workers) by design.
    probe = ("from webapp.runners import lifetime\n"
             "assert not lifetime.has_children()\n"
             "assert lifetime.sweep('anything') == 0\n"
             "import subprocess; p = subprocess.Popen(['true']); p.wait()\n"
             "assert not lifetime.has_children()\n"
             "z = subprocess.Popen(['true']); import os; os.waitid(os.P_PID, z.pid, os.WEXITED | os.WNOWAIT)\n"
             "assert lifetime.has_children()\n")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
