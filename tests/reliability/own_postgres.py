"""A PostgreSQL server of the test's own (initdb + pg_ctl), so a test can stop and start it."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from webapp.embedded_redis import free_port


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def unavailable() -> str | None:
    """Why this machine cannot run one (None when it can)."""
    if not (_tool("initdb") and _tool("pg_ctl")):
        return "no initdb/pg_ctl on this machine (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user for initdb"
    return None


class OwnPostgres:
    def __init__(self):
        # not under pytest's tmp dir: as root that is 0700, and the server runs as 'postgres'
        self.dir = Path(tempfile.mkdtemp(prefix="ansflow-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> "OwnPostgres":
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        self._run(_tool("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> None:
        self._run(_tool("pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.dir / "log"), "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run(_tool("pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
