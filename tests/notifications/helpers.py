"""Build executions by hand (with a frozen snapshot) to drive notifications.emit directly."""
from __future__ import annotations

import secrets
from datetime import timedelta

from webapp.extensions import db
from webapp.models import StepExecutionHistory, WorkflowExecution, utcnow
from webapp.services.pipelines import freeze, save_definition


def pipeline(notification_config=None, steps=None, name="notify-me", owner=None):
    steps = steps or [{"name": "build", "type": "shell", "parameters": {"command": "true"}},
                      {"name": "deploy", "type": "shell", "parameters": {"command": "true"}}]
    return save_definition({"name": name, "notification_config": notification_config, "steps": steps}, owner=owner)


def execution(p, status="running", finished_offset=0.0, **fields):
    now = utcnow()
    row = WorkflowExecution(
        pipeline_id=p.id, execution_id="ex-" + secrets.token_hex(4), status=status, trigger_type="manual",
        pipeline_snapshot=freeze(p), pipeline_version=p.version, started_at=now - timedelta(seconds=75),
        finished_at=(now + timedelta(seconds=finished_offset)) if status in ("success", "failed", "cancelled") else None,
        context_variables={"env": "staging", "api_token": "tok-should-not-show"}, secret_variables=["api_token"],
        **fields,
    )
    db.session.add(row)
    db.session.commit()
    return row


def attempt(ex, step_name, status="failed", retry_count=0, error="", max_retries=0):
    step = next(s for s in ex.pipeline_snapshot["steps"] if s["name"] == step_name)
    row = StepExecutionHistory(execution_id=ex.id, step_id=step["id"], step_name=step_name, status=status,
                               retry_count=retry_count, max_retries=max_retries, error_message=error,
                               started_at=utcnow() - timedelta(seconds=3), finished_at=utcnow(), duration_seconds=3.2,
                               exit_code=1 if status == "failed" else 0)
    db.session.add(row)
    db.session.commit()
    return row
