"""Secret variables at rest (issue 13): encrypted in the database with a key from the environment,
rotated by `flask rotate-secrets-key`, decrypted only by the worker that builds a step's environment,
shown only masked. A key that opens nothing fails the step with a clear error; the worker goes on."""
from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from webapp.config import Config
from webapp.extensions import db
from webapp.runners.masking import secret_forms
from webapp.services import executions as svc
from webapp.services import secrets_store
from webapp.services.secrets_store import SecretsUnavailable, clear_variables, unseal

from ..conftest import ROOT, settings_env
from ..tasks.helpers import latest, make_pipeline, refresh, run, wait_finished
from .test_identity import _insert, _settings

SECRET = "the-secret-value-123"
MIGRATION = "0007_secret_values_sealed"
BEFORE = "0006_pipeline_duties"
# the step checks the clear value by its digest: the secret itself in the command would be in the database
DIGEST = hashlib.sha256(SECRET.encode()).hexdigest()
USE_SECRET = "\n".join([
    f'test "$(printf %s "$TOKEN" | sha256sum | cut -d" " -f1)" = {DIGEST} && echo "ok $TOKEN"',
    'test -z "${ANSFLOW_SECRETS_KEY:-}" && echo "no key here"',
    'test "$PHASE" = "second"',
])


def new_key() -> str:
    return Fernet.generate_key().decode()


def database_text(engine=None) -> str:
    """Every row of every table, as text (what anyone with the database file would read)."""
    if engine is None:
        db.session.commit()   # end the read transaction: the workers' writes must be seen
        engine = db.engine
    with engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        return "\n".join(repr(row) for t in tables for row in conn.execute(sa.text(f'SELECT * FROM "{t}"')).all())


def assert_nowhere(text: str, secret: str = SECRET) -> None:
    shown = [form for form in secret_forms(secret) if form in text]
    assert not shown, f"the secret is readable in the database as {shown}"


@pytest.mark.integration
def test_a_secret_is_sealed_in_the_database_and_clear_only_in_the_steps_env(app, workers, api_as, client_as):
    key = new_key()
    app.config["SECRETS_KEY"] = key
    workers(1, env={"ANSFLOW_SECRETS_KEY": key})
    p = make_pipeline([{"name": "use", "parameters": {"command": USE_SECRET}}], name="sealed")
    api = api_as("maintainer")
    resp = api.post("/api/v1/workflow-executions/", json={
        "pipeline": p.id, "variables": {"TOKEN": SECRET, "PHASE": "first", "ENV": "staging"},
        "secret_variables": ["TOKEN"]})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["context_variables"] == {"TOKEN": "***", "PHASE": "first", "ENV": "staging"}
    first = wait_finished(svc.get_execution(resp.get_json()["execution_id"]))
    attempt = latest(first, "use")
    assert first.status == "failed" and "ok ***" in attempt.logs and "no key here" in attempt.logs, attempt.logs

    # resumed: the child runs with its parent's secret, sealed again
    resp = api.post(f"/api/v1/pipelines/executions/{first.execution_id}/resume/", json={"variables": {"PHASE": "second"}})
    assert resp.status_code == 201, resp.get_json()
    child = wait_finished(svc.get_execution(resp.get_json()["execution_id"]))
    attempt = latest(child, "use")
    assert child.status == "success" and "ok ***" in attempt.logs, attempt.logs

    assert_nowhere(database_text())
    for e in (refresh(first), refresh(child)):
        assert e.context_variables["TOKEN"] == "***" and e.secret_values.startswith("gAAAAA")  # a Fernet token
        assert Fernet(key.encode()).decrypt(e.secret_values.encode()) == json.dumps({"TOKEN": SECRET}).encode()
    assert child.secret_values != first.secret_values

    # shown only masked: the API and the page
    detail = api_as("viewer").get(f"/api/v1/workflow-executions/{child.execution_id}/").get_json()
    assert detail["context_variables"]["TOKEN"] == "***" and detail["context_variables"]["PHASE"] == "second"
    page = client_as("viewer").get(f"/executions/{child.execution_id}").get_data(as_text=True)
    assert "TOKEN" in page and "\u2022\u2022\u2022\u2022" in page and SECRET not in page


@pytest.mark.integration
def test_a_key_that_opens_nothing_fails_the_step_clearly_and_the_worker_goes_on(app, workers):
    app.config["SECRETS_KEY"] = new_key()
    [worker] = workers(1, env={"ANSFLOW_SECRETS_KEY": new_key()})   # not the key that sealed them
    p = make_pipeline([{"name": "use", "parameters": {"command": "echo ran"},
                        "retry_policy": {"max_retries": 1, "delay_seconds": 0, "retry_on": ["any"]}}], name="wrong-key")
    e = wait_finished(run(p, variables={"TOKEN": SECRET}, secret_variables=["TOKEN"]))
    attempt = latest(e, "use")
    assert e.status == "failed" and attempt.retry_count == 1   # its retry policy, then done: no loop
    assert "cannot be decrypted" in attempt.error_message and "ANSFLOW_SECRETS_KEY" in attempt.error_message
    assert "ran" not in attempt.logs   # the step never ran without its secrets
    assert worker.poll() is None
    plain = make_pipeline([{"name": "s", "parameters": {"command": "echo fine"}}], name="no-secrets")
    assert wait_finished(run(plain)).status == "success"


def test_rotation_re_seals_with_the_new_key_and_the_old_one_can_go(app):
    old, new = new_key(), new_key()
    app.config["SECRETS_KEY"] = old
    p = make_pipeline([{"name": "s", "parameters": {"command": "true"}}], name="rotate")
    e = run(p, variables={"TOKEN": SECRET, "ENV": "prod"}, secret_variables=["TOKEN"])
    db.session.commit()
    sealed_by_old = e.secret_values

    app.config["SECRETS_KEY"] = f"{new},{old}"   # a new current key: the old one still opens
    assert unseal(sealed_by_old) == {"TOKEN": SECRET}
    out = app.test_cli_runner().invoke(args=["rotate-secrets-key"])
    assert out.exit_code == 0, out.output
    assert "Re-encrypted the secret variables of 1 execution(s)" in out.output
    rotated = refresh(e).secret_values
    assert rotated != sealed_by_old

    app.config["SECRETS_KEY"] = new   # the old key dropped
    assert clear_variables(refresh(e).context_variables, rotated) == {"TOKEN": SECRET, "ENV": "prod"}
    with pytest.raises(SecretsUnavailable):
        unseal(sealed_by_old)
    app.config["SECRETS_KEY"] = old
    with pytest.raises(SecretsUnavailable, match="cannot be decrypted"):
        unseal(rotated)


def test_rotation_names_what_no_key_opens_and_leaves_it(app):
    p = make_pipeline([{"name": "s", "parameters": {"command": "true"}}], name="lost-key")
    app.config["SECRETS_KEY"] = lost = new_key()
    orphan = run(p, variables={"TOKEN": SECRET}, secret_variables=["TOKEN"])
    app.config["SECRETS_KEY"] = new_key()
    fine = run(p, variables={"TOKEN": SECRET}, secret_variables=["TOKEN"])
    db.session.commit()
    before = orphan.secret_values
    out = app.test_cli_runner().invoke(args=["rotate-secrets-key"])
    assert out.exit_code == 1 and orphan.execution_id in out.output and fine.execution_id not in out.output
    assert "of 1 execution(s)" in out.output
    assert refresh(orphan).secret_values == before
    app.config["SECRETS_KEY"] = lost
    assert unseal(before) == {"TOKEN": SECRET}


def test_a_malformed_key_is_refused_at_start_with_its_name(monkeypatch):
    monkeypatch.setenv("ANSFLOW_SECRETS_KEY", f"{new_key()},not-a-fernet-key")
    with pytest.raises(SystemExit) as refused:
        Config()
    assert "ANSFLOW_SECRETS_KEY: key 2 is not a Fernet key" in str(refused.value)


def test_without_a_key_in_the_environment_one_is_made_in_a_private_file(app, tmp_path):
    path = tmp_path / "instance" / "secrets_key"
    app.config.update(SECRETS_KEY="", SECRETS_KEY_FILE=str(path))
    token = secrets_store.seal({"TOKEN": SECRET})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Fernet(path.read_text().strip().encode()).decrypt(token.encode()) == json.dumps({"TOKEN": SECRET}).encode()
    assert unseal(secrets_store.seal({"TOKEN": SECRET})) == {"TOKEN": SECRET}   # the same key, kept
    assert [p.name for p in path.parent.iterdir()] == ["secrets_key"]            # no temporary file left


def test_the_migration_seals_existing_secrets_and_its_downgrade_opens_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    key = new_key()
    env = {**settings_env(_settings(url)), "ANSFLOW_SECRETS_KEY": key}
    flask = [sys.executable, "-m", "flask", "--app", "wsgi", "db"]

    def migrate(*args, **extra):
        return subprocess.run(flask + list(args), cwd=ROOT, env={**env, **extra}, capture_output=True, text=True)

    out = migrate("upgrade", BEFORE)
    assert out.returncode == 0, out.stderr
    engine = sa.create_engine(url)
    clear = {"TOKEN": SECRET, "ENV": "staging"}
    with engine.begin() as conn:
        _insert(conn, "pipelines", id=1, name="p")
        _insert(conn, "workflow_executions", id=1, pipeline_id=1, execution_id="e1", status="success",
                trigger_type="manual", context_variables=json.dumps(clear), secret_variables='["TOKEN"]')
        _insert(conn, "workflow_executions", id=2, pipeline_id=1, execution_id="e2", status="success",
                trigger_type="manual", context_variables='{"ENV": "dev"}', secret_variables="[]")
        _insert(conn, "step_execution_history", execution_id=1, step_id=1, step_name="s", status="success")
    out = migrate("upgrade", MIGRATION)
    assert out.returncode == 0, out.stderr

    def rows():
        with engine.connect() as conn:
            return {r.id: (json.loads(r.context_variables), r.secret_values) for r in conn.execute(sa.text(
                "SELECT id, context_variables, secret_values FROM workflow_executions ORDER BY id"))}

    sealed = rows()
    assert sealed[1][0] == {"TOKEN": "***", "ENV": "staging"} and sealed[2] == ({"ENV": "dev"}, None)
    assert json.loads(Fernet(key.encode()).decrypt(sealed[1][1].encode())) == {"TOKEN": SECRET}
    assert_nowhere(database_text(engine))

    out = migrate("downgrade", BEFORE, ANSFLOW_SECRETS_KEY=new_key())   # no key that opens them: nothing changes
    assert out.returncode != 0 and "cannot be decrypted" in out.stderr
    assert rows() == sealed
    out = migrate("downgrade", BEFORE)
    assert out.returncode == 0, out.stderr
    with engine.connect() as conn:
        assert "secret_values" not in {c["name"] for c in sa.inspect(conn).get_columns("workflow_executions")}
        assert json.loads(conn.execute(sa.text("SELECT context_variables FROM workflow_executions WHERE id = 1"))
                          .scalar()) == clear
        assert conn.execute(sa.text("SELECT count(*) FROM step_execution_history")).scalar() == 1
    engine.dispose()
