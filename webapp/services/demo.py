"""Demo users and three pipelines that exercise every feature of DESIGN.md."""
from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import Pipeline, User
from .accounts import create_user
from .pipelines import save_definition

DEMO_PASSWORD = "ansflow-demo"
DEMO_USERS = [
    ("admin", "admin", "Ada Admin"),
    ("maintainer", "maintainer", "Max Maintainer"),
    ("approver1", "approver", "Alice Approver"),
    ("approver2", "approver", "Bob Approver"),
    ("approver3", "approver", "Carol Approver"),
    ("viewer", "viewer", "Vic Viewer"),
]

# A flaky step: fails on its first two attempts, succeeds on the third (the attempt number
# reaches the command as an environment variable).
FLAKY = 'echo "attempt $ANSFLOW_ATTEMPT"; if [ "$ANSFLOW_ATTEMPT" -lt 3 ]; then echo "flaky failure" >&2; exit 75; fi; echo ok'

DEMO_PIPELINES = [
    {
        "name": "Web app release",
        "description": "Build, test in parallel, gate on two approvers, deploy; notifies a local webhook.",
        "notification_config": {"on_failure": True, "on_success": True, "webhook_url": "http://127.0.0.1:5000/notifications/demo-webhook"},
        "groups": [{"id": "tests", "name": "Tests", "sync_policy": "wait_all", "timeout_seconds": 600}],
        "steps": [
            {"name": "checkout", "type": "shell", "parameters": {"command": "echo checking out $GIT_REF; echo COMMIT=abc123 >> $ANSFLOW_OUTPUT"},
             "estimated_duration": 5},
            {"name": "build", "type": "shell", "parameters": {"command": "echo building; sleep 2; echo ARTIFACT=app-1.0.tar.gz >> $ANSFLOW_OUTPUT"},
             "estimated_duration": 120},
            {"name": "unit tests", "type": "shell", "parallel_group": "tests", "parameters": {"command": "echo unit; sleep 1"},
             "estimated_duration": 90},
            {"name": "lint", "type": "shell", "parallel_group": "tests", "parameters": {"command": "echo lint"}, "estimated_duration": 30},
            {"name": "integration tests", "type": "shell", "parallel_group": "tests", "parameters": {"command": FLAKY},
             "retry_policy": {"max_retries": 3, "delay_seconds": 1, "backoff": "exponential", "retry_on": [75]},
             "estimated_duration": 240},
            {"name": "release approval", "type": "approval",
             "approval": {"users": ["approver1", "approver2", "approver3"], "required_approvals": 2, "timeout_hours": 24,
                          "message": "Ship this build to production?"},
             # only production releases need the two approvals (like a protected environment)
             "conditions": {"expression": 'has(variables.env) && $variables.env === "production"'}},
            {"name": "deploy", "type": "shell", "parameters": {"command": "echo deploying $STEP_BUILD_ARTIFACT to $ENV"},
             "conditions": {"type": "on_success"}, "timeout_seconds": 300, "estimated_duration": 60},
            {"name": "rollback", "type": "shell", "depends_on": ["deploy"], "parameters": {"command": "echo rolling back"},
             "conditions": {"type": "on_failure"}},
            {"name": "report", "type": "shell", "depends_on": ["deploy"], "parameters": {"command": "echo report"},
             "conditions": {"type": "always"}},
        ],
    },
    {
        "name": "Multi-region smoke",
        "description": "A wait_any race between mirrors and a fail_fast region check.",
        "groups": [
            {"id": "mirrors", "name": "Fastest mirror", "sync_policy": "wait_any"},
            {"id": "regions", "name": "Regions", "sync_policy": "fail_fast", "timeout_seconds": 120},
        ],
        "steps": [
            {"name": "mirror eu", "type": "shell", "parallel_group": "mirrors", "parameters": {"command": "sleep 1; echo eu"}},
            {"name": "mirror us", "type": "shell", "parallel_group": "mirrors", "parameters": {"command": "sleep 3; echo us"}},
            {"name": "region a", "type": "shell", "parallel_group": "regions", "parameters": {"command": "echo a"}},
            {"name": "region b", "type": "shell", "parallel_group": "regions", "parameters": {"command": "echo b"}},
            {"name": "region c", "type": "wait", "parallel_group": "regions", "parameters": {"seconds": 2}},
            {"name": "summary", "type": "shell", "parameters": {"command": "echo all regions answered"},
             "conditions": {"type": "none_failed"}},
        ],
    },
    {
        "name": "Nightly data job",
        "description": "Conditions on outputs, continue-on-failure, an http health check and explicit dependencies.",
        "steps": [
            {"name": "extract", "type": "shell", "depends_on": [],
             "parameters": {"command": "echo ROWS=42 >> $ANSFLOW_OUTPUT"}},
            {"name": "optional cleanup", "type": "shell", "depends_on": [], "continue_on_failure": True,
             "parameters": {"command": "echo cleanup failed >&2; exit 1"}},
            {"name": "load", "type": "shell", "depends_on": ["extract"],
             "conditions": {"expression": "int(steps.extract.outputs.ROWS) > 0"},
             "parameters": {"command": "echo loading $STEP_EXTRACT_ROWS rows"}},
            {"name": "health", "type": "http", "depends_on": ["load"],
             "parameters": {"url": "http://127.0.0.1:5000/login", "method": "GET", "expected_status": [200]}},
            {"name": "pause", "type": "wait", "depends_on": ["load"], "parameters": {"seconds": 1}},
            {"name": "alert on failure", "type": "shell", "depends_on": ["health", "pause"],
             "conditions": {"type": "on_failure"}, "parameters": {"command": "echo something failed"}},
        ],
    },
]


def seed(force: bool = False) -> bool:
    if not force and db.session.execute(select(User.id).filter_by(username="admin")).first():
        return False
    users = {}
    for username, role, name in DEMO_USERS:
        existing = db.session.execute(select(User).filter_by(username=username)).scalar_one_or_none()
        users[username] = existing or create_user(username, DEMO_PASSWORD, role, display_name=name,
                                                  email=f"{username}@example.test")
    for definition in DEMO_PIPELINES:
        if db.session.execute(select(Pipeline.id).filter_by(name=definition["name"])).first():
            continue
        save_definition(definition, owner=users["maintainer"])
    return True
