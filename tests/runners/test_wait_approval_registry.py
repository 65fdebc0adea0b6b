"""wait (cancellable sleep), approval (a pure gate) and the registry."""
from __future__ import annotations

import threading
import time

import pytest

from webapp.runners import approval, registry, shell, wait
from webapp.runners.base import StepResult

from ..conftest import wait_for


def test_wait_sleeps_then_succeeds(make_ctx, recorder):
    started = time.monotonic()
    r = wait.run(make_ctx("wait", {"seconds": 0.3}))
    assert time.monotonic() - started >= 0.3
    assert r.status == "success" and r.logs == "waiting 0.3 s\nwaited 0.3 s\n"
    assert recorder.logs == ["waiting 0.3 s\n"]   # visible while waiting


def test_wait_zero_seconds(make_ctx):
    assert wait.run(make_ctx("wait", {"seconds": 0})).status == "success"


def test_wait_is_cancellable(make_ctx, recorder):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", wait.run(make_ctx("wait", {"seconds": 300}))))
    thread.start()
    wait_for(lambda: recorder.stop_calls >= 2, timeout=10, message="the wait to poll should_stop")
    recorder.stop_with = "cancelled"
    thread.join(5)
    assert not thread.is_alive()
    r = box["r"]
    assert (r.status, r.failure) == ("cancelled", "cancelled") and "step cancelled" in r.logs


def test_wait_stopped_as_timed_out(make_ctx, recorder):
    recorder.stop_with = "timed_out"
    r = wait.run(make_ctx("wait", {"seconds": 300}))
    assert (r.status, r.failure) == ("timed_out", "timeout")


def test_wait_longer_than_the_step_timeout_times_out(make_ctx):
    started = time.monotonic()
    r = wait.run(make_ctx("wait", {"seconds": 300}, timeout=0.3))
    assert time.monotonic() - started < 3
    assert (r.status, r.failure) == ("timed_out", "timeout") and "timed out after 0.3 s" in r.logs


@pytest.mark.parametrize("params", [{}, {"seconds": None}, {"seconds": -1}, {"seconds": "10"}, {"seconds": True}])
def test_wait_rejects_bad_seconds(make_ctx, params):
    r = wait.run(make_ctx("wait", params))
    assert (r.status, r.failure) == ("failed", "error")


def test_approval_is_a_pure_gate(make_ctx):
    r = approval.run(make_ctx("approval", {}))
    assert r == StepResult(status="success", logs="approved gate passed\n")


@pytest.mark.parametrize("step_type,module", [("shell", shell), ("wait", wait), ("approval", approval)])
def test_registry_returns_each_runner(step_type, module):
    assert registry.get(step_type) is module.run


def test_registry_knows_http():
    from webapp.runners import http
    assert registry.get("http") is http.run


def test_registry_rejects_unknown_types():
    with pytest.raises(registry.UnknownStepType):
        registry.get("ftp")
    with pytest.raises(ValueError):
        registry.get("base")   # a module of the package, but not a step type


def test_run_step_turns_an_unknown_type_into_a_failed_result(make_ctx):
    r = registry.run_step(make_ctx("ftp", {}, secrets=["ftp"]))
    assert (r.status, r.failure) == ("failed", "error")
    assert "Unknown step type" in r.error_message and "'***'" in r.error_message


def test_run_step_runs_the_right_runner(make_ctx):
    r = registry.run_step(make_ctx("shell", {"command": "echo via-registry"}))
    assert r.status == "success" and r.logs == "via-registry\n"
