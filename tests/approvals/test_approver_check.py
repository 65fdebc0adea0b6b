"""Approver lists are checked when saved (service, step form, advanced-config API, YAML import), and a
user a gate cannot do without is not deactivated by accident (service and CLI)."""
from __future__ import annotations

import pytest
import yaml

from webapp.extensions import db
from webapp.models import Pipeline, PipelineStep, User
from webapp.services import pipelines
from webapp.services.accounts import StillNeeded, ValidationError, create_user, deactivate_user

from .conftest import gated_definition

PASSWORD = "correct-horse-battery"


def gate(users_list, required=1, name="gated"):
    return gated_definition(name, {"users": users_list, "required_approvals": required})


def refused(defn) -> dict[str, str]:
    with pytest.raises(ValidationError) as e:
        pipelines.save_definition(defn)
    assert db.session.execute(db.select(Pipeline).filter_by(name=defn["name"])).first() is None
    return e.value.fields


def test_unknown_usernames_and_roles_are_named(users):
    fields = refused(gate(["approver1", "ghost", "role:wizard", "nobody"]))
    message = fields["steps[1].approval.users"]
    assert "'ghost'" in message and "'nobody'" in message and "role:wizard" in message
    assert "approver1" not in message  # the known one is not blamed
    assert "roles: admin, maintainer, approver, viewer" in message


def test_quorum_larger_than_the_possible_approvers_is_refused(users):
    fields = refused(gate(["approver1", "approver2"], required=3))
    assert fields["steps[1].approval.required_approvals"] == (
        "required_approvals (3) is more than the 2 people who can approve (approver1, approver2).")
    # a role counts its active members ranked approver or higher: 3 approvers here
    assert "3 people" in refused(gate(["role:approver"], required=4))["steps[1].approval.required_approvals"]
    assert pipelines.save_definition(gate(["role:approver"], required=3, name="three")).id
    # a name and a role that cover the same person count them once
    assert "3 people" in refused(gate(["approver1", "role:approver"], required=4, name="x"))[
        "steps[1].approval.required_approvals"]


def test_an_empty_list_means_the_default_approvers(users):
    # DEFAULT_APPROVERS: role:approver (3 users) and role:maintainer (1)
    assert pipelines.save_definition(gate([], required=4, name="four")).id
    message = refused(gate([], required=5, name="five"))["steps[1].approval.required_approvals"]
    assert "4 people" in message and "maintainer1" in message


def test_viewers_and_deactivated_users_do_not_count(users):
    users["approver3"].active = False
    db.session.commit()
    message = refused(gate(["approver3", "viewer1", "approver1"], required=2))["steps[1].approval.required_approvals"]
    assert "the 1 person who can approve (approver1)" in message
    assert "approver3 (deactivated)" in message and "viewer1 (a viewer: cannot approve)" in message


def test_a_role_nobody_holds(app):
    create_user("solo", PASSWORD, "admin")
    message = refused(gate(["role:maintainer"]))["steps[1].approval.required_approvals"]
    assert "(nobody)" in message and "No active user holds role:maintainer." in message


def test_step_form_shows_the_field_errors_and_saves_nothing(client_as, users):
    p = pipelines.save_definition({"name": "release", "steps": [
        {"name": "build", "type": "shell", "parameters": {"command": "make"}}]}, owner=users["maintainer"])
    resp = client_as("maintainer").post(f"/pipelines/{p.id}/steps/new", data={
        "name": "gate", "type": "approval", "deps_mode": "stage", "cond_type": "on_success", "retry_backoff": "fixed",
        "approval_required": "1", "approval_users": "approver1, ghost, role:wizard",
        "approval_required_approvals": "3", "version": str(p.version)})
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert 'id="err-approval-users"' in html and "no user named &#39;ghost&#39;" in html and "role:wizard" in html
    assert 'id="err-approval-required_approvals"' in html
    assert "required_approvals (3) is more than the 1 person who can approve (approver1)." in html
    db.session.expire_all()
    assert [s.name for s in db.session.get(Pipeline, p.id).steps] == ["build"]


def test_advanced_config_api_refuses_unknown_approvers(api_as, users):
    p = pipelines.save_definition({"name": "release", "steps": [
        {"name": "build", "type": "shell", "parameters": {"command": "make"}},
        {"name": "deploy", "type": "shell", "parameters": {"command": "make deploy"}}]}, owner=users["maintainer"])
    deploy = next(s for s in p.steps if s.name == "deploy")
    url = f"/api/v1/pipelines/{p.id}/steps/{deploy.id}/advanced-config/"
    api = api_as("maintainer")
    resp = api.put(url, json={"approval_required": True, "approval_users": ["approver1", "ghost"],
                              "approval_config": {"required_approvals": 1}})
    assert resp.status_code == 422
    assert "'ghost'" in resp.json["fields"]["approval_users"]
    resp = api.put(url, json={"approval_required": True, "approval_users": ["approver1"],
                              "approval_config": {"required_approvals": 2}})
    assert resp.status_code == 422 and "1 person" in resp.json["fields"]["approval_config.required_approvals"]
    assert db.session.get(PipelineStep, deploy.id).approval_required is False
    ok = api.put(url, json={"approval_required": True, "approval_users": ["approver1", "role:maintainer"],
                            "approval_config": {"required_approvals": 2}})
    assert ok.status_code == 200, ok.json


def test_yaml_import_refuses_unknown_approvers(api_as, users):
    text = yaml.safe_dump(gate(["approver1", "ghost"]))
    resp = api_as("maintainer").post("/api/v1/pipelines/import/", data=text, content_type="text/yaml")
    assert resp.status_code == 422
    assert "'ghost'" in resp.json["fields"]["steps[1].approval.users"]
    with pytest.raises(ValidationError) as e:
        pipelines.import_yaml(text)
    assert "'ghost'" in e.value.fields["steps[1].approval.users"]
    assert db.session.execute(db.select(Pipeline)).first() is None


def test_the_open_request_api_checks_approvers_too(api_as, make_gate):
    execution, attempt, step = make_gate(open_it=False)
    api = api_as("maintainer")
    body = {"execution_id": execution.execution_id, "step_id": step["id"]}
    resp = api.post("/api/v1/pipelines/approval-requests/", json={**body, "approvers": ["ghost"]})
    assert resp.status_code == 422 and "'ghost'" in resp.json["fields"]["approvers"]
    resp = api.post("/api/v1/pipelines/approval-requests/", json={**body, "approvers": ["approver1"],
                                                                  "required_approvals": 2})
    assert resp.status_code == 422 and "required_approvals" in resp.json["fields"]
    assert api.post("/api/v1/pipelines/approval-requests/", json=body).status_code == 201


def _active(username) -> bool:
    db.session.expire_all()
    return db.session.execute(db.select(User.active).filter_by(username=username)).scalar_one()


def test_deactivating_the_only_approver_of_a_gate_is_refused(users):
    pipelines.save_definition(gate(["approver1"], name="hotfix"))
    with pytest.raises(StillNeeded) as e:
        deactivate_user("approver1")
    assert e.value.gates == ["pipeline 'hotfix', step 'gate': needs 1 approval, 0 other approvers left"]
    assert "--force" in e.value.message and _active("approver1")
    assert deactivate_user("approver2") == [] and not _active("approver2")  # nobody relies on them alone
    assert deactivate_user("approver1", force=True) == e.value.gates
    assert not _active("approver1")
    with pytest.raises(ValidationError, match="No such user"):
        deactivate_user("ghost")


def test_a_pending_request_that_would_lose_its_quorum_is_named(make_gate, users):
    req = make_gate()  # 2 of approver1..3, requested by maintainer1
    assert deactivate_user("approver1") == []  # 2 left for 2 approvals
    with pytest.raises(StillNeeded) as e:
        deactivate_user("approver2")
    assert f"pipeline 'release 1', step 'gate': needs 2 approvals, 1 other approver left" in e.value.gates
    assert (f"pending approval #{req.id} (pipeline 'release 1', step 'gate'): 2 more approvals needed, "
            "1 other approver left") in e.value.gates


def test_deactivate_user_command(app, users):
    pipelines.save_definition(gate(["approver1"], name="hotfix"))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["deactivate-user", "approver1"])
    assert result.exit_code == 2
    assert "pipeline 'hotfix', step 'gate'" in result.output and "--force" in result.output
    assert _active("approver1")
    result = runner.invoke(args=["deactivate-user", "approver1", "--force"])
    assert result.exit_code == 0, result.output
    assert "Deactivated approver1." in result.output and "cannot reach its quorum" in result.output
    assert not _active("approver1")
    assert runner.invoke(args=["deactivate-user", "ghost"]).exit_code == 2
