"""Shared helpers for the runner tests: a StepContext factory with recording callbacks."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from webapp.runners.base import StepContext
from webapp.runners.env import build_env


class Recorder:
    """Collects every on_log text; answers should_stop() with whatever the test sets."""

    def __init__(self):
        self.logs: list[str] = []
        self.stop_with: str | None = None
        self.stop_calls = 0
        self._lock = threading.Lock()

    def on_log(self, text: str) -> None:
        with self._lock:
            self.logs.append(text)

    def should_stop(self) -> str | None:
        self.stop_calls += 1
        return self.stop_with

    def seen(self, needle: str) -> str | None:
        with self._lock:
            return next((t for t in self.logs if needle in t), None)


@pytest.fixture
def recorder():
    rec = Recorder()
    yield rec
    rec.stop_with = "cancelled"   # a runner thread left behind by a failed test stops too


@pytest.fixture
def make_ctx(tmp_path, recorder):
    workspace = tmp_path / "ws"
    workspace.mkdir()

    def make(step_type="shell", parameters=None, *, variables=None, trigger=None, outputs=None, secrets=(),
             timeout=None, log_max_bytes=256 * 1024, step_name="build", env=None) -> StepContext:
        if env is None:
            env = build_env(execution_id="ex-1", attempt_number=1, step_name=step_name, variables=variables or {},
                            trigger=trigger or {}, outputs=outputs or {}, output_file=None)
        return StepContext(
            execution_id="ex-1", attempt_id=7, attempt_number=1, step_name=step_name, step_type=step_type,
            parameters=parameters or {}, env=env, workspace=workspace, timeout_seconds=timeout,
            secrets=list(secrets), log_max_bytes=log_max_bytes, on_log=recorder.on_log,
            should_stop=recorder.should_stop,
        )

    make.workspace = workspace
    return make


def gone(pid: int) -> bool:
    """True when no process `pid` exists any more (killed AND reaped: no zombie left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def read_pid(path: Path) -> int:
    return int(path.read_text().split()[0])
