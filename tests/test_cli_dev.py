"""`flask dev` (what `make run` serves) stops everything it started, on Ctrl-C and on SIGTERM."""
import os
import signal
import subprocess
import sys

import pytest

from webapp.embedded_redis import free_port

from .conftest import ROOT, process_alive, settings_env, wait_for


def _children(pid: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(name))
    return out



@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_dev_server_stops_its_worker_and_redis(app, app_settings, tmp_path, sig):
    env = settings_env(app_settings)
    env.pop("REDIS_URL")  # so it starts its own embedded Redis, as `make run` does
    port = free_port()
    log = open(tmp_path / "dev.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"AnsFlow is at" in (tmp_path / "dev.log").read_bytes(), timeout=60, message="dev to serve")
        children = wait_for(lambda: (lambda c: c if len(c) >= 2 else None)(_children(proc.pid)), timeout=30,
                            message="the worker and Redis processes")
        proc.send_signal(sig)
        proc.wait(30)
        wait_for(lambda: not any(process_alive(c) for c in children), timeout=20, message="children to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
