"""`flask` commands: create-user, seed-demo, worker, dev (what `make run` serves)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import click
from flask import Flask, current_app


def register(app: Flask) -> None:
    for command in (create_user_cmd, deactivate_user_cmd, seed_demo_cmd, worker_cmd, reconciler_cmd, dev_cmd,
                    trigger_cmd, rotate_secrets_key_cmd):
        app.cli.add_command(command)


@click.command("deactivate-user")
@click.argument("username")
@click.option("--force", is_flag=True, help="Deactivate even if some approval gate then lacks approvers.")
def deactivate_user_cmd(username, force):
    """Deactivate a user (no sign-in, no API, no approvals); refused while a gate needs them."""
    from .services.accounts import StillNeeded, ValidationError, deactivate_user

    try:
        gates = deactivate_user(username, force=force)
    except StillNeeded as e:
        click.echo(f"error: {username} is the approver these gates cannot do without:", err=True)
        for gate in e.gates:
            click.echo(f"  - {gate}", err=True)
        click.echo("Change those approver lists first, or run again with --force.", err=True)
        raise SystemExit(2)
    except ValidationError as e:
        click.echo(f"error: {e.fields.get('username') or e.message}", err=True)
        raise SystemExit(2)
    for gate in gates:
        click.echo(f"warning: {gate} (it cannot reach its quorum now without an admin)", err=True)
    click.echo(f"Deactivated {username}.")


@click.command("rotate-secrets-key")
def rotate_secrets_key_cmd():
    """Seal every stored secret variable again with the current (first) key of ANSFLOW_SECRETS_KEY."""
    from .services.secrets_store import SecretsUnavailable, rotate_all

    try:
        rotated, unreadable = rotate_all()
    except SecretsUnavailable as e:
        raise click.ClickException(str(e))
    click.echo(f"Re-encrypted the secret variables of {rotated} execution(s) with the current key.")
    if unreadable:
        click.echo(f"error: no key in ANSFLOW_SECRETS_KEY opens the secrets of {len(unreadable)} execution(s): "
                   + ", ".join(unreadable[:20]) + (" ..." if len(unreadable) > 20 else "")
                   + ". They were left as they were; add their key after the current one and run this again.", err=True)
        raise SystemExit(1)


@click.command("create-user")
@click.argument("username")
@click.option("--role", default="viewer", show_default=True, help="admin, maintainer, approver or viewer")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--email", default="")
@click.option("--display-name", default="")
def create_user_cmd(username, role, password, email, display_name):
    """Create a user account."""
    from .services.accounts import ValidationError, create_user

    try:
        user = create_user(username, password, role, display_name=display_name, email=email)
    except ValidationError as e:
        for field, message in e.fields.items():
            click.echo(f"error: {field}: {message}", err=True)
        raise SystemExit(2)
    click.echo(f"Created {user.username} ({user.role}).")


@click.command("seed-demo")
@click.option("--force", is_flag=True, help="Seed even if demo data exists.")
def seed_demo_cmd(force):
    """Demo users and pipelines (once)."""
    from .services.demo import seed

    created = seed(force=force)
    click.echo("Seeded demo data." if created else "Demo data already present.")


@click.command("worker")
@click.option("--queues", default="", help="Comma-separated purposes (control,notifications,steps); default all.")
@click.option("--burst", is_flag=True, help="Quit when the queues are empty.")
@click.option("--fork/--no-fork", default=False, show_default=True,
              help="Fork a child per job (isolates a crashing job; about 4x slower). Steps always run in "
                   "their own subprocess either way.")
@click.option("--name", default=None)
@click.option("--scheduler/--no-scheduler", default=True, show_default=True)
def worker_cmd(queues, burst, fork, name, scheduler):
    """Run an RQ worker with its scheduler."""
    from rq import SimpleWorker, Worker
    from rq.serializers import JSONSerializer

    from .queues import ALL_QUEUES, get_queue, redis_conn
    from .tasks.worker import resilient, serve

    box = _start_sandbox(current_app)
    click.echo(box.describe(), err=True)
    if box.level == "none":
        click.echo("WARNING: steps are not isolated from this worker: they can read instance/, the database "
                   "and the worker's files (fine for a trusted single-user setup only).", err=True)
    purposes = [q.strip() for q in queues.split(",") if q.strip()] or list(ALL_QUEUES)
    worker_cls = resilient(Worker if fork else SimpleWorker)
    name = name or f"{socket.gethostname()}.{os.getpid()}"  # kept across the restarts of RQ's loop

    def make_worker():
        conn = redis_conn()
        return worker_cls([get_queue(p, conn) for p in purposes], connection=conn, serializer=JSONSerializer,
                          name=name)

    serve(current_app._get_current_object(), make_worker, burst=burst, with_scheduler=scheduler,
          logging_level="WARNING")


@click.command("reconciler")
def reconciler_cmd():
    """Run only the reconciler (no steps), so a fleet of busy or dead step workers still gets reconciled.

    Every worker also runs one in a thread; a Redis lock lets one pass run at a time across them all."""
    from .tasks.reconcile import Reconciler

    click.echo(f"AnsFlow reconciler: a pass every {current_app.config['RECONCILE_SECONDS']} s", err=True)
    reconciler = Reconciler(current_app._get_current_object())
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        reconciler.run()  # in this thread: it returns when stopped
    except KeyboardInterrupt:
        reconciler.stopped.set()


def _sandbox_for(app: Flask):
    """The step sandbox the app's settings ask for (raises SandboxError with the reason)."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from .config import INSTANCE
    from .runners import sandbox

    cfg = app.config
    root = Path(cfg["WORKSPACE_ROOT"])
    url = make_url(cfg["SQLALCHEMY_DATABASE_URI"])
    db_files = [Path(url.database)] if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") else []
    masked = tuple(str(p) for p in (INSTANCE, root, *db_files))
    box = sandbox.choose(cfg.get("STEP_ISOLATION"), workspace_root=root, uids=cfg.get("STEP_UIDS"), masked=masked)
    return box, INSTANCE, db_files, root


def _start_sandbox(app: Flask):
    from .runners import sandbox

    try:
        box, instance, db_files, root = _sandbox_for(app)
    except sandbox.SandboxError as exc:
        raise click.ClickException(str(exc))
    if box.level != sandbox.NONE:
        sandbox.lock_down(instance, db_files, root)
    return sandbox.configure(box)


@click.command("dev")
@click.option("--port", default=5000, show_default=True)
@click.option("--workers", default=1, show_default=True)
def dev_cmd(port, workers):
    """Serve the app with worker(s), and an embedded Redis when REDIS_URL is unset. Ctrl-C stops all."""
    from .embedded_redis import EmbeddedRedis
    from .config import INSTANCE

    from .runners.sandbox import SandboxError

    try:
        click.echo(_sandbox_for(current_app)[0].describe())
    except SandboxError as exc:
        raise click.ClickException(str(exc))
    started = []
    env = dict(os.environ)
    redis_server = None
    if not os.environ.get("REDIS_URL"):
        redis_server = EmbeddedRedis(port=6390 if _port_free(6390) else None, workdir=INSTANCE / "redis").start()
        env["REDIS_URL"] = redis_server.url
        current_app.config["REDIS_URL"] = redis_server.url
        click.echo(f"Embedded Redis on {redis_server.url}")
    # the demo's http health check calls this server: in dev mode (only) its own address and port may be called
    own = f"127.0.0.1:{port}"
    env["ANSFLOW_OUTBOUND_ALLOWLIST"] = ",".join(x for x in (os.environ.get("ANSFLOW_OUTBOUND_ALLOWLIST"), own) if x)
    click.echo(f"http steps and webhooks may call this server ({own}): dev mode only")
    current_app.config["DEMO_RECEIVER"] = True   # anyone may post to it: dev mode only
    for i in range(workers):
        started.append(subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--name", f"dev-worker-{os.getpid()}-{i}"],
            env=env, start_new_session=True,
        ))
    # SIGTERM (kill, a supervisor) must stop the workers and Redis too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    click.echo(f"\nAnsFlow is at http://127.0.0.1:{port}")
    click.echo("Demo logins (password 'ansflow-demo'): admin, maintainer, approver1, approver2, approver3, viewer\n")
    try:
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", port, current_app._get_current_object(), threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        click.echo("Stopping AnsFlow...")
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if redis_server:
            redis_server.stop()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@click.command("trigger")
@click.argument("pipeline")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="A context variable (repeatable).")
@click.option("--secret", "secrets", multiple=True, metavar="KEY=VALUE", help="A variable masked in logs.")
@click.option("--as-user", default=None, help="Username recorded as the trigger (for approvals).")
@click.option("--wait", is_flag=True, help="Show live progress and exit with the execution's status.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait with --wait.")
def trigger_cmd(pipeline, variables, secrets, as_user, wait, timeout):
    """Start an execution of PIPELINE (name or id). Exit code with --wait: 0 success, 1 failed, 2 cancelled."""
    import time

    from sqlalchemy import select

    from .extensions import db
    from .models import Pipeline, User, WorkflowExecution
    from .services import executions as svc
    from .services.accounts import ValidationError

    query = select(Pipeline).where(Pipeline.name == pipeline)
    if pipeline.isdigit():
        query = select(Pipeline).where((Pipeline.id == int(pipeline)) | (Pipeline.name == pipeline))
    found = db.session.execute(query).scalars().first()
    if found is None:
        raise click.ClickException(f"No pipeline named {pipeline!r}.")
    values: dict[str, str] = {}
    for item in list(variables) + list(secrets):
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--var")
        values[key.strip()] = value
    user = None
    if as_user:
        user = db.session.execute(select(User).filter_by(username=as_user)).scalar_one_or_none()
        if user is None:
            raise click.ClickException(f"No user {as_user!r}.")
    try:
        execution = svc.start(found, variables=values, user=user, trigger_type="cli",
                              secret_variables=[s.partition("=")[0].strip() for s in secrets])
    except ValidationError as e:
        raise click.ClickException(f"{e.message} {e.fields}")
    except svc.Conflict as e:
        raise click.ClickException(e.message)
    click.echo(f"Started {execution.execution_id} ({found.name} v{execution.pipeline_version})")
    if not wait:
        return
    total = len(execution.pipeline_snapshot["steps"])
    deadline = time.monotonic() + timeout
    last = None
    while True:
        db.session.commit()  # a fresh snapshot each poll
        execution = db.session.get(WorkflowExecution, execution.id, populate_existing=True)
        counts = svc.counts_by_status(execution.id)
        done = sum(counts.get(s, 0) for s in ("success", "failed", "skipped", "cancelled", "timed_out"))
        line = f"[{done}/{total}] {execution.status}" + (f" running: {execution.current_step}" if execution.current_step else "")
        if line != last:
            click.echo(line)
            last = line
        if execution.status in svc.TERMINAL_EXECUTION:
            break
        if time.monotonic() > deadline:
            click.echo(f"Still {execution.status} after {timeout:.0f} s.")
            raise SystemExit(3)
        time.sleep(0.5)
    if execution.status_reason:
        click.echo(execution.status_reason)
    raise SystemExit({"success": 0, "failed": 1, "cancelled": 2}[execution.status])
