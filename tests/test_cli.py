"""CLI commands: create-user and seed-demo."""
from webapp.extensions import db
from webapp.models import Pipeline, User


def test_create_user_command(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-user", "dora", "--role", "approver", "--password", "long-enough-pw"])
    assert result.exit_code == 0, result.output
    user = db.session.execute(db.select(User).filter_by(username="dora")).scalar_one()
    assert user.role == "approver" and user.check_password("long-enough-pw")


def test_create_user_command_rejects_bad_input(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-user", "d", "--role", "king", "--password", "x"])
    assert result.exit_code == 2
    assert "role" in result.output and "password" in result.output
    assert db.session.execute(db.select(User)).first() is None


def test_seed_demo_is_idempotent_and_complete(app):
    runner = app.test_cli_runner()
    assert "Seeded" in runner.invoke(args=["seed-demo"]).output
    assert "already" in runner.invoke(args=["seed-demo"]).output
    roles = sorted(u.role for u in db.session.execute(db.select(User)).scalars())
    assert roles.count("approver") == 3 and "admin" in roles and "maintainer" in roles and "viewer" in roles
    pipelines = db.session.execute(db.select(Pipeline)).scalars().all()
    assert len(pipelines) == 3
    policies = {g.sync_policy for p in pipelines for g in p.groups}
    assert policies == {"wait_all", "wait_any", "fail_fast"}
    steps = [s for p in pipelines for s in p.steps]
    assert any(s.approval_required and (s.approval_config or {}).get("required_approvals") == 2
               and len(s.approval_users) == 3 for s in steps)
    assert any((s.retry_policy or {}).get("max_retries") for s in steps)
    assert any((s.conditions or {}).get("type") == "on_success" and (s.conditions or {}).get("expression") for s in steps)
    assert any((p.notification_config or {}).get("webhook_url") for p in pipelines)
