"""`flask trigger PIPELINE --var k=v --wait` from a real shell, against real workers."""
import subprocess
import sys

import pytest

from ..conftest import ROOT, settings_env
from .helpers import make_pipeline

pytestmark = pytest.mark.integration


def _trigger(app_settings, *args):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "trigger", *args], cwd=ROOT,
                          env=settings_env(app_settings), capture_output=True, text=True, timeout=120)


def test_trigger_waits_and_exits_with_the_status(app, app_settings, workers):
    workers(1)
    make_pipeline([{"name": "greet", "parameters": {"command": 'echo "hello $WHO"'}},
                   {"name": "check", "parameters": {"command": '[ "$WHO" = world ]'}}], name="hello")
    ok = _trigger(app_settings, "hello", "--var", "WHO=world", "--wait")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Started" in ok.stdout and "[2/2] success" in ok.stdout
    bad = _trigger(app_settings, "hello", "--var", "WHO=moon", "--wait")
    assert bad.returncode == 1 and "failed steps: check" in bad.stdout


def test_trigger_reports_bad_input(app, app_settings):
    make_pipeline([{"name": "a", "parameters": {"command": "true"}}], name="solo")
    missing = _trigger(app_settings, "nope")
    assert missing.returncode != 0 and "No pipeline named 'nope'" in missing.stderr
    bad_var = _trigger(app_settings, "solo", "--var", "novalue")
    assert bad_var.returncode != 0 and "KEY=VALUE" in bad_var.stderr
