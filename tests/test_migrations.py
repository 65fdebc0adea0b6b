"""The Alembic migrations create exactly the schema the models declare."""
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from webapp.extensions import db

from .conftest import settings_env

ROOT = Path(__file__).resolve().parent.parent


def test_migrated_schema_matches_models(app_settings):
    env = settings_env(app_settings)
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    engine = sa.create_engine(app_settings["SQLALCHEMY_DATABASE_URI"])
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, db.metadata)
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert {"users", "pipelines", "pipeline_steps", "parallel_groups", "workflow_executions",
            "step_execution_history", "approval_requests", "approval_decisions", "notification_deliveries",
            "notification_channels", "pipeline_tool_mappings", "pipeline_step_dependencies"} <= tables
