"""Nothing is known by a database id that can be handed to another row (issue 13, "Identity")."""
from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from webapp.extensions import db
from webapp.models import Pipeline, WorkflowExecution
from webapp.services.pipelines import delete_pipeline

from ..conftest import ROOT, settings_env
from ..tasks.helpers import attempts, make_pipeline, run, wait_finished

pytestmark = pytest.mark.integration


def test_a_new_execution_never_runs_a_deleted_pipelines_command(app, workers):
    """P1 runs on a worker (which caches what it learnt of that execution), P1 and its execution
    are deleted, P2 runs on the same worker: P2's command runs, with P2's variables."""
    workers(1)
    p1 = make_pipeline([{"name": "only", "parameters": {"command": 'echo "ran P1 with $WHO"; echo WHO=p1 >> "$ANSFLOW_OUTPUT"'}}],
                       name="p1")
    e1 = wait_finished(run(p1, variables={"who": "first"}), timeout=60)
    assert e1.status == "success" and attempts(e1)[0].logs == "ran P1 with first\n"
    old_pk, old_id = e1.id, e1.execution_id
    delete_pipeline(db.session.get(Pipeline, p1.id))
    assert db.session.get(WorkflowExecution, old_pk) is None

    p2 = make_pipeline([{"name": "only", "parameters": {"command": 'echo "ran P2 with $WHO"; echo WHO=p2 >> "$ANSFLOW_OUTPUT"'}}],
                       name="p2")
    e2 = run(p2, variables={"who": "second"})
    assert e2.id != old_pk and e2.execution_id != old_id   # the id is not handed out again
    e2 = wait_finished(e2, timeout=60)
    (attempt,) = attempts(e2)
    assert e2.status == "success"
    assert attempt.logs == "ran P2 with second\n" and attempt.output_data == {"WHO": "p2"}


def test_deleted_top_ids_are_not_reused_for_executions_or_attempts(app):
    p = make_pipeline([{"name": "a", "parameters": {"command": "true"}}], name="ids")
    first = run(p)
    first_pk, first_attempts = first.id, [a.id for a in attempts(first)]
    db.session.delete(first)
    db.session.commit()
    second = run(p)
    assert second.id > first_pk
    assert min(a.id for a in attempts(second)) > max(first_attempts)


def test_the_migration_makes_sqlite_ids_autoincrement_and_keeps_every_row(tmp_path):
    """Rebuilding the tables must not cascade-delete the rows that point at them."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    env = settings_env({**_settings(url)})
    upgrade = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
    out = subprocess.run(upgrade + ["0003_attempt_definition_version"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _insert(conn, "users", id=1, username="u", role="admin")
        _insert(conn, "pipelines", id=1, name="p")
        for pk in (1, 2, 3):
            _insert(conn, "workflow_executions", id=pk, pipeline_id=1, execution_id=f"e{pk}", status="success",
                    trigger_type="manual")
            _insert(conn, "step_execution_history", execution_id=pk, step_id=1, step_name="s", status="success")
        conn.exec_driver_sql("DELETE FROM step_execution_history WHERE execution_id = 3")
        conn.exec_driver_sql("DELETE FROM workflow_executions WHERE id = 3")   # the top id, freed before
    out = subprocess.run(upgrade, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with engine.begin() as conn:
        ddl = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all())
        assert "AUTOINCREMENT" in ddl["workflow_executions"] and "AUTOINCREMENT" in ddl["step_execution_history"]
        assert conn.exec_driver_sql("SELECT count(*) FROM workflow_executions").scalar() == 2
        assert conn.exec_driver_sql("SELECT count(*) FROM step_execution_history").scalar() == 2
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        conn.exec_driver_sql("DELETE FROM workflow_executions WHERE id = 2")
        _insert(conn, "workflow_executions", pipeline_id=1, execution_id="e4", status="success", trigger_type="manual")
        assert conn.exec_driver_sql("SELECT id FROM workflow_executions WHERE execution_id = 'e4'").scalar() == 3
    engine.dispose()


def _insert(conn, table: str, **values) -> None:
    """A row with the given values, and a neutral value in every other NOT NULL column (the
    schema grows; this test is about ids)."""
    for col in sa.inspect(conn).get_columns(table):
        if col["name"] in values or col["nullable"] or col["name"] == "id":
            continue
        kind = str(col["type"]).upper()
        values[col["name"]] = ("2026-01-01 00:00:00" if "DATE" in kind or "TIME" in kind else "{}" if "JSON" in kind
                               else 0 if any(k in kind for k in ("INT", "BOOL", "FLOAT", "NUM", "REAL")) else "")
    names = ", ".join(values)
    conn.execute(sa.text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)


def _settings(url: str) -> dict:
    return {"SQLALCHEMY_DATABASE_URI": url, "REDIS_URL": "redis://127.0.0.1:1/0", "QUEUE_PREFIX": "unused",
            "WORKSPACE_ROOT": "/nonexistent", "NOTIFY_ALLOWLIST": [], "RECONCILE_SECONDS": 2, "HEARTBEAT_SECONDS": 1}
