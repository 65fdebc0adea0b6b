"""The raw RQ side's jobs. `run_true` does the same work as the AnsFlow shell step `true`:
one `bash -c true` subprocess, waited for."""
from __future__ import annotations

import subprocess


def run_true() -> int:
    return subprocess.run(["bash", "-c", "true"]).returncode


def noop() -> None:
    """The gate job that releases a prepared graph of jobs (it runs no subprocess)."""
    return None
