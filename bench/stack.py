"""What a benchmark runs on: its own Redis, a fresh database, and worker processes for both sides.

A Stack is one database (SQLite file, or a fresh PostgreSQL schema) with N AnsFlow workers
(`flask --app wsgi worker`, exactly as in production) and N raw RQ workers (bench.rawworker)
of the same class, all on the same Redis server. Nothing here is shared with tests or `make run`.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from .progress import say

ROOT = Path(__file__).resolve().parent.parent
# Config() would otherwise write instance/secret_key; the bench needs no stable key.
os.environ.setdefault("SECRET_KEY", "bench-secret")


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value (never a fixed sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def pg_url(raw: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    return raw


class Database:
    """A throw-away database: a SQLite file under the work dir, or a fresh PostgreSQL schema."""

    def __init__(self, workdir: Path, base_url: str | None = None):
        self.workdir = workdir
        self.base_url = pg_url(base_url) if base_url else None
        self.schema: str | None = None

    @property
    def kind(self) -> str:
        return "postgresql" if self.base_url else "sqlite"

    def create(self) -> str:
        if self.base_url is None:
            self.url = f"sqlite:///{self.workdir / 'bench.db'}"
            return self.url
        self.schema = "bench_" + secrets.token_hex(5)
        engine = sa.create_engine(self.base_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.schema}"))
        engine.dispose()
        sep = "&" if "?" in self.base_url else "?"
        self.url = f"{self.base_url}{sep}options=-csearch_path%3D{self.schema}"
        return self.url

    def drop(self) -> None:
        if self.base_url and self.schema:
            engine = sa.create_engine(self.base_url)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
            engine.dispose()


class Stack:
    def __init__(self, workdir: Path, redis_url: str, database: Database, workers: int, fork: bool):
        self.workdir = workdir
        self.redis_url = redis_url
        self.database = database
        self.n_workers = workers
        self.fork = fork
        self.prefix = "bench" + secrets.token_hex(3)
        self.raw_queue_name = f"{self.prefix}-raw"
        self.ansflow_procs: list[subprocess.Popen] = []
        self.raw_procs: list[subprocess.Popen] = []
        self.app = None
        self._ctx = None

    # ------------------------------------------------------------------ set-up
    def start(self) -> "Stack":
        from webapp import create_app
        from webapp.extensions import db

        url = self.database.create()
        self.settings = {
            "SQLALCHEMY_DATABASE_URI": url, "REDIS_URL": self.redis_url, "QUEUE_PREFIX": self.prefix,
            "WORKSPACE_ROOT": str(self.workdir / "workspaces"),
        }
        self.app = create_app(dict(self.settings))
        self._ctx = self.app.app_context()
        self._ctx.push()
        db.create_all()
        db.session.commit()
        say(f"  database {self.database.kind} ready; starting {self.n_workers} AnsFlow + {self.n_workers} raw RQ "
            f"{self.worker_class} workers")
        self.ansflow_procs = self._spawn_ansflow(self.n_workers)
        self.raw_procs = self._spawn_raw(self.n_workers)
        self.wait_registered(self.ansflow_procs + self.raw_procs)
        return self

    @property
    def worker_class(self) -> str:
        return "Worker (forking)" if self.fork else "SimpleWorker (non-forking)"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": self.settings["SQLALCHEMY_DATABASE_URI"],
            "REDIS_URL": self.redis_url,
            "ANSFLOW_QUEUE_PREFIX": self.prefix,
            "ANSFLOW_WORKSPACE": self.settings["WORKSPACE_ROOT"],
            "SECRET_KEY": "bench-secret",
            # The targets measure orchestration against raw RQ, whose jobs run `true` unsandboxed: AnsFlow's
            # steps run unsandboxed too unless BENCH_STEP_ISOLATION asks for a level (the sandbox's own cost per
            # step, measured apart, is in bench/README.md: none ~3 ms, user ~8 ms, bwrap ~25 ms).
            "ANSFLOW_STEP_ISOLATION": os.environ.get("BENCH_STEP_ISOLATION", "none"),
        })
        return env

    def _popen(self, cmd: list[str], name: str) -> subprocess.Popen:
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        log = open(logs / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.bench_name = name  # type: ignore[attr-defined]
        proc.bench_log = logs / f"{name}.log"  # type: ignore[attr-defined]
        return proc

    def _spawn_ansflow(self, n: int) -> list[subprocess.Popen]:
        procs = []
        for i in range(n):
            name = f"{self.prefix}-ansflow-{i}"
            cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--name", name]
            if self.fork:
                cmd.append("--fork")
            procs.append(self._popen(cmd, name))
        return procs

    def _spawn_raw(self, n: int) -> list[subprocess.Popen]:
        procs = []
        for i in range(n):
            name = f"{self.prefix}-raw-{i}"
            cmd = [sys.executable, "-m", "bench.rawworker", "--url", self.redis_url, "--queue", self.raw_queue_name,
                   "--name", name] + (["--fork"] if self.fork else [])
            procs.append(self._popen(cmd, name))
        return procs

    def wait_registered(self, procs: list[subprocess.Popen]) -> None:
        from rq import Worker

        conn = self.redis()
        names = {p.bench_name for p in procs}  # type: ignore[attr-defined]

        def ready():
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                tail = "\n".join(p.bench_log.read_text()[-2000:] for p in dead)  # type: ignore[attr-defined]
                raise RuntimeError(f"a worker exited at start:\n{tail}")
            return names <= {w.name for w in Worker.all(connection=conn)}
        wait_until(ready, timeout=90, interval=0.1, what="workers to register")

    def restart_ansflow_workers(self) -> None:
        """Fresh AnsFlow worker processes (for the memory figure: RSS from a known start)."""
        self._stop(self.ansflow_procs)
        self.prefix_workers_generation = getattr(self, "prefix_workers_generation", 0) + 1
        procs = []
        for i in range(self.n_workers):
            name = f"{self.prefix}-ansflow-g{self.prefix_workers_generation}-{i}"
            cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--name", name]
            if self.fork:
                cmd.append("--fork")
            procs.append(self._popen(cmd, name))
        self.ansflow_procs = procs
        self.wait_registered(procs)

    # ------------------------------------------------------------------ handles
    def redis(self):
        from webapp.queues import redis_conn

        return redis_conn(self.redis_url)

    def raw_queue(self, name: str | None = None):
        from rq import Queue
        from rq.serializers import JSONSerializer

        return Queue(name or self.raw_queue_name, connection=self.redis(), serializer=JSONSerializer)

    def check_alive(self) -> None:
        dead = [p for p in self.ansflow_procs + self.raw_procs if p.poll() is not None]
        if dead:
            tail = "\n".join(p.bench_log.read_text()[-2000:] for p in dead)  # type: ignore[attr-defined]
            raise RuntimeError(f"a worker died:\n{tail}")

    # ------------------------------------------------------------------ tear-down
    @staticmethod
    def _stop(procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    def stop(self) -> None:
        from webapp.extensions import db

        self._stop(self.ansflow_procs + self.raw_procs)
        if self._ctx is not None:
            db.session.remove()
            db.engine.dispose()
            self._ctx.pop()
            self._ctx = None
        self.database.drop()
