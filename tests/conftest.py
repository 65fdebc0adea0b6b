"""Test harness: a real Redis server, real RQ worker processes, a fresh database per test
(SQLite file, or a PostgreSQL schema when TEST_DATABASE_URL is set), clients per role, Chromium."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from webapp import create_app
from webapp.embedded_redis import EmbeddedRedis
from webapp.extensions import db

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"
ROLES = ("admin", "maintainer", "approver", "viewer")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes (no sleeps as sync)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """Is `pid` a live process (not gone, not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pg_base_url() -> str | None:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        return None
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    return url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(workdir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def database_url(tmp_path):
    base = _pg_base_url()
    if base is None:
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    schema = "t_" + secrets.token_hex(6)
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


@pytest.fixture
def app_settings(database_url, redis_server, tmp_path):
    """Settings shared by the test app and the worker processes it starts (as env vars)."""
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_server.url,
        "QUEUE_PREFIX": "t" + secrets.token_hex(4),
        "WORKSPACE_ROOT": str(tmp_path / "workspaces"),
        "NOTIFY_ALLOWLIST": ["127.0.0.1", "::1", "localhost"],
        "RECONCILE_SECONDS": 2,
        "HEARTBEAT_SECONDS": 1,
    }


def settings_env(settings: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": settings["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": settings["REDIS_URL"],
        "ANSFLOW_QUEUE_PREFIX": settings["QUEUE_PREFIX"],
        "ANSFLOW_WORKSPACE": settings["WORKSPACE_ROOT"],
        "ANSFLOW_NOTIFY_ALLOWLIST": ",".join(settings["NOTIFY_ALLOWLIST"]),
        "ANSFLOW_RECONCILE_SECONDS": str(settings["RECONCILE_SECONDS"]),
        "ANSFLOW_HEARTBEAT_SECONDS": str(settings["HEARTBEAT_SECONDS"]),
        "SECRET_KEY": "test-secret",
        # Steps of these tests coordinate through files of the test's tmp dir, which a sandboxed
        # step cannot see: tests/security runs workers at each level instead.
        "ANSFLOW_STEP_ISOLATION": "none",
    })
    for key, value in settings.get("EXTRA_ENV", {}).items():
        env[key] = value
    return env


def _fresh_g(sender, **extra):
    """Requests of the test client reuse the test's app context, and so its `g`: empty it at the
    start of each request, as a real server's fresh g would be (Flask-Login caches the user
    there, Flask-WTF the CSRF token), so each client is who its own cookie or token says."""
    from flask import g

    for name in list(g):
        g.pop(name, None)


@pytest.fixture
def app(app_settings):
    from flask import request_started

    app = create_app({"TESTING": True, "SECRET_KEY": "test-secret", **app_settings})
    request_started.connect(_fresh_g, app)
    with app.app_context():
        db.create_all()
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def users(app):
    from webapp.services.accounts import create_user

    made = {role: create_user(f"{role}1", PASSWORD, role, display_name=f"{role.title()} One") for role in ROLES}
    made["approver2"] = create_user("approver2", PASSWORD, "approver")
    made["approver3"] = create_user("approver3", PASSWORD, "approver")
    return made


class AppClient:
    """A Flask test client that sends the CSRF token the way our pages do (X-CSRFToken)."""

    def __init__(self, flask_client):
        self.c = flask_client
        self.token = None

    def refresh_token(self, path: str = "/login") -> str:
        html = self.c.get(path).get_data(as_text=True)
        m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'"X-CSRFToken": "([^"]+)"', html)
        assert m, f"no CSRF token on {path}"
        self.token = m.group(1)
        return self.token

    def _headers(self, kwargs):
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.token and "X-CSRFToken" not in headers:
            headers["X-CSRFToken"] = self.token
        return headers

    def get(self, *a, **kw):
        return self.c.get(*a, **kw)

    def post(self, *a, **kw):
        return self.c.post(*a, headers=self._headers(kw), **kw)

    def put(self, *a, **kw):
        return self.c.put(*a, headers=self._headers(kw), **kw)

    def delete(self, *a, **kw):
        return self.c.delete(*a, headers=self._headers(kw), **kw)

    def login(self, username: str, password: str = PASSWORD):
        self.refresh_token("/login")
        resp = self.c.post("/login", data={"username": username, "password": password, "csrf_token": self.token})
        assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
        self.refresh_token("/account")
        return self


@pytest.fixture
def client_as(app, users):
    """client_as("maintainer") -> a client signed in through the real login form."""
    def make(role_or_username: str) -> AppClient:
        username = role_or_username if role_or_username[-1].isdigit() else f"{role_or_username}1"
        return AppClient(app.test_client()).login(username)
    return make


@pytest.fixture
def api_as(app, users):
    """api_as("maintainer") -> a test client that sends a real bearer token."""
    def make(role_or_username: str):
        user = users.get(role_or_username) or next(u for u in users.values() if u.username == role_or_username)
        token = user.new_api_token()
        db.session.commit()
        return ApiClient(app.test_client(), token)
    return make


class ApiClient:
    def __init__(self, flask_client, token: str):
        self.c, self.headers = flask_client, {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method):
        def call(path, **kw):
            headers = {**self.headers, **kw.pop("headers", {})}
            return getattr(self.c, method)(path, headers=headers, **kw)
        return call


@pytest.fixture
def workers(app, app_settings, tmp_path):
    """workers(n) starts n real `flask worker` processes; they are killed after the test."""
    from rq import Worker

    from webapp.queues import redis_conn

    procs: list[subprocess.Popen] = []
    logs = tmp_path / "worker-logs"
    logs.mkdir(exist_ok=True)

    def start(n: int = 1, *, fork: bool = False, queues: str = "", extra: list[str] | None = None,
              env: dict[str, str] | None = None) -> list[subprocess.Popen]:
        env = {**settings_env(app_settings), **(env or {})}
        new = []
        for _ in range(n):
            name = f"w{len(procs)}-{secrets.token_hex(3)}"
            log = open(logs / f"{name}.log", "wb")
            cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--name", name]
            if fork:
                cmd.append("--fork")
            if queues:
                cmd += ["--queues", queues]
            proc = subprocess.Popen(cmd + (extra or []), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            proc.name = name  # type: ignore[attr-defined]
            procs.append(proc)
            new.append(proc)
        conn = redis_conn()
        names = {p.name for p in new}  # type: ignore[attr-defined]
        wait_for(lambda: names <= {w.name for w in Worker.all(connection=conn)} or _dead(new),
                 timeout=60, message="workers to register")
        dead = _dead(new)
        assert not dead, "a worker exited at start:\n" + "\n".join((logs / f"{p.name}.log").read_text() for p in dead)
        return new

    start.logs = logs  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _dead(procs):
    return [p for p in procs if p.poll() is not None]


# ---------- browser ----------

def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is not installed: `make test` installs Debian's chromium package (or set CHROMIUM_PATH).")
    return path


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(
        executable_path=chromium_path(), headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def live_server(app):
    """The app served over real HTTP on a free loopback port (a thread of this process)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()


@pytest.fixture
def page(browser, live_server, tmp_path):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15000)
    yield pg
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    try:
        pg.screenshot(path=str(artifacts / f"last-{os.getpid()}.png"))
    except Exception:
        pass
    context.close()


def browser_login(page, username: str, password: str = PASSWORD):
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/pipelines/.*"))
