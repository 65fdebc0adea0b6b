"""Duties per pipeline (issue 13): who may edit a pipeline (its owner, named maintainers, admins),
who may change its approval rules (the owner and admins), that whoever set the rules never
self-approves their own run, and the audit of every such change."""
from __future__ import annotations

import secrets

import pytest

from webapp.extensions import db
from webapp.models import Pipeline, PipelineAuditEntry, StepExecutionHistory, User, WorkflowExecution, utcnow
from webapp.services import approvals
from webapp.services import pipelines as svc
from webapp.services.accounts import create_user

from ..conftest import PASSWORD

GATE = {"users": ["approver1", "approver2", "role:maintainer"], "required_approvals": 1}
DEFN = {"name": "release", "steps": [
    {"name": "build", "type": "shell", "parameters": {"command": "echo build"}},
    {"name": "deploy", "type": "shell", "parameters": {"command": "echo deploy"}, "approval": GATE},
]}
# the step form for "deploy" as it is: a save of it changes the command only
DEPLOY_FORM = {"name": "deploy", "type": "shell", "command": "echo deploy v2", "deps_mode": "stage",
               "approval_required": "1", "approval_users": "approver1, approver2, role:maintainer",
               "approval_required_approvals": "1", "estimated_duration": "60"}


@pytest.fixture
def people(users):
    users["maintainer2"] = create_user("maintainer2", PASSWORD, "maintainer")
    return users


@pytest.fixture
def owned(api_as, people):
    """'release', created through the API by maintainer1, who thereby owns it."""
    resp = api_as("maintainer").post("/api/v1/pipelines/", json=DEFN)
    assert resp.status_code == 201, resp.json
    return db.session.get(Pipeline, resp.json["id"])


def fresh(p: Pipeline) -> Pipeline | None:
    db.session.expire_all()
    return db.session.get(Pipeline, p.id)


def audit_of(p: Pipeline) -> list[PipelineAuditEntry]:
    db.session.expire_all()
    return list(db.session.execute(db.select(PipelineAuditEntry).filter_by(pipeline_id=p.id)
                                   .order_by(PipelineAuditEntry.id)).scalars())


def step_id(p: Pipeline, name: str) -> int:
    return next(s.id for s in fresh(p).steps if s.name == name)


def add_maintainer(client_as, p: Pipeline, username: str, as_user: str = "maintainer"):
    return client_as(as_user).post(f"/pipelines/{p.id}/maintainers", data={"username": username})


# --------------------------------------------------------------------------- who may edit


def test_a_maintainer_cannot_change_a_pipeline_they_neither_own_nor_maintain(owned, client_as, api_as):
    before = svc.export_definition(fresh(owned)), fresh(owned).version
    deploy = step_id(owned, "deploy")
    web = client_as("maintainer2")
    assert web.get(f"/pipelines/{owned.id}/").status_code == 200  # reading stays open
    for path, data in [
        (f"/pipelines/{owned.id}/steps/{deploy}/edit", {**DEPLOY_FORM, "version": str(owned.version)}),
        (f"/pipelines/{owned.id}/steps/new", {"name": "x", "type": "shell", "command": "id"}),
        (f"/pipelines/{owned.id}/settings", {"name": "hijacked", "description": ""}),
        (f"/pipelines/{owned.id}/yaml", {"yaml": "name: hijacked\nsteps: []\n"}),
        (f"/pipelines/{owned.id}/active", {"active": "0"}),
        (f"/pipelines/{owned.id}/steps/{deploy}/delete", {}),
        (f"/pipelines/{owned.id}/groups/new", {"name": "g"}),
        (f"/pipelines/{owned.id}/delete", {"confirm_name": "release"}),
        (f"/pipelines/{owned.id}/maintainers", {"username": "maintainer2"}),
        (f"/pipelines/{owned.id}/owner", {"owner": "maintainer2"}),
    ]:
        assert web.post(path, data=data).status_code == 403, path
    assert web.get(f"/pipelines/{owned.id}/steps/{deploy}/edit").status_code == 403
    settings = web.get(f"/pipelines/{owned.id}/settings").get_data(as_text=True)
    assert "Save settings" not in settings and "Delete pipeline" not in settings
    assert f'action="/pipelines/{owned.id}/active"' not in web.get("/pipelines/").get_data(as_text=True)

    api = api_as("maintainer2")
    calls = [
        ("put", f"/api/v1/pipelines/{owned.id}/", {"json": {**DEFN, "description": "hijacked"}}),
        ("put", f"/api/v1/pipelines/{owned.id}/steps/{deploy}/advanced-config/", {"json": {"timeout_seconds": 5}}),
        ("put", f"/api/v1/pipelines/{owned.id}/steps/{deploy}/notifications/", {"json": {"on_failure": True, "recipients": ["x@example.test"]}}),
        ("post", "/api/v1/parallel-groups/", {"json": {"pipeline": owned.id, "name": "g"}}),
        ("post", "/api/v1/pipeline-mappings/", {"json": {"pipeline": owned.id, "tool_name": "Jenkins"}}),
        ("delete", f"/api/v1/pipelines/{owned.id}/", {}),
    ]
    for method, path, kw in calls:
        resp = getattr(api, method)(path, **kw)
        assert resp.status_code == 403, (path, resp.status_code, resp.get_data(as_text=True))
        assert "owner" in resp.json["error"] and "fields" in resp.json
    p = fresh(owned)
    assert (svc.export_definition(p), p.version) == before and p.active and p.steps[1].notification_config is None
    assert not svc.list_mappings(p.id)
    assert [e.action for e in audit_of(p)] == ["pipeline_created"]  # nothing refused was recorded


def test_viewers_and_approvers_edit_nothing_even_when_named(owned, client_as, api_as, people):
    resp = add_maintainer(client_as, owned, "approver1")
    assert resp.status_code == 422
    assert "only users with the maintainer or admin role" in resp.get_data(as_text=True)
    assert fresh(owned).maintainers == []
    # a named maintainer who loses the role loses the pipeline with it
    assert add_maintainer(client_as, owned, "maintainer2").status_code == 303
    people["maintainer2"].role = "approver"
    db.session.commit()
    resp = api_as("maintainer2").put(f"/api/v1/pipelines/{owned.id}/steps/{step_id(owned, 'build')}/advanced-config/",
                                     json={"timeout_seconds": 5})
    assert resp.status_code == 403
    assert api_as("viewer").put(f"/api/v1/pipelines/{owned.id}/", json=DEFN).status_code == 403


def test_the_owner_names_maintainers_on_the_settings_page(owned, client_as):
    owner = client_as("maintainer")
    resp = add_maintainer(client_as, owned, "nobody-here")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "There is no user named &#39;nobody-here&#39;." in html
    assert 'id="err-username"' in html and 'value="nobody-here"' in html
    assert fresh(owned).maintainers == [] and [e.action for e in audit_of(owned)] == ["pipeline_created"]

    assert add_maintainer(client_as, owned, "maintainer2").status_code == 303
    page = owner.get(f"/pipelines/{owned.id}/settings").get_data(as_text=True)
    assert "maintainer2" in page and "Remove maintainer2 from the maintainers" in page
    assert [m.username for m in fresh(owned).maintainers] == ["maintainer2"]
    # the named maintainer may not name others
    assert add_maintainer(client_as, owned, "admin1", as_user="maintainer2").status_code == 403
    resp = owner.post(f"/pipelines/{owned.id}/maintainers/maintainer2/remove")
    assert resp.status_code == 303 and fresh(owned).maintainers == []
    entries = [e for e in audit_of(owned) if e.action == "maintainers_changed"]
    assert [(e.actor, e.before, e.after) for e in entries] == [
        ("maintainer1", {"maintainers": []}, {"maintainers": ["maintainer2"]}),
        ("maintainer1", {"maintainers": ["maintainer2"]}, {"maintainers": []}),
    ]


def test_a_named_maintainer_edits_steps_but_not_the_approval_rules(owned, client_as, api_as):
    assert add_maintainer(client_as, owned, "maintainer2").status_code == 303
    web, api = client_as("maintainer2"), api_as("maintainer2")
    deploy = step_id(owned, "deploy")

    # the command of a gated step: theirs to change
    resp = web.post(f"/pipelines/{owned.id}/steps/{deploy}/edit", data={**DEPLOY_FORM, "version": str(owned.version)})
    assert resp.status_code == 303, resp.get_data(as_text=True)[:2000]
    assert fresh(owned).steps[1].parameters["command"] == "echo deploy v2"
    assert api.put(f"/api/v1/pipelines/{owned.id}/steps/{deploy}/advanced-config/",
                   json={"retry_policy": {"max_retries": 1}}).status_code == 200
    rules_before = svc.export_definition(fresh(owned))["steps"][1]["approval"]
    version = fresh(owned).version

    # ... its approvers, quorum, self-approval and the gate itself: not
    resp = web.post(f"/pipelines/{owned.id}/steps/{deploy}/edit",
                    data={**DEPLOY_FORM, "approval_users": "maintainer2", "version": str(version)})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 403 and 'id="err-approval"' in html and "owner or an admin" in html
    resp = web.post(f"/pipelines/{owned.id}/steps/{deploy}/edit",
                    data={k: v for k, v in DEPLOY_FORM.items() if not k.startswith("approval")} | {"version": str(version)})
    assert resp.status_code == 403  # un-gating the step is a rule change too
    resp = web.post(f"/pipelines/{owned.id}/settings", data={"name": "release", "description": "",
                                                              "allow_self_approval": "1", "version": str(version)})
    assert resp.status_code == 403 and 'id="err-allow_self_approval"' in resp.get_data(as_text=True)
    resp = web.post(f"/pipelines/{owned.id}/yaml", data={"version": str(version), "yaml": svc.to_yaml(fresh(owned))
                                                          .replace("required_approvals: 1", "required_approvals: 2")})
    assert resp.status_code == 403 and "approval rules" in resp.get_data(as_text=True)
    resp = web.post(f"/pipelines/{owned.id}/steps/{deploy}/delete")
    assert resp.status_code == 303 and step_id(owned, "deploy") == deploy  # refused, said in the notice
    resp = api.put(f"/api/v1/pipelines/{owned.id}/steps/{deploy}/advanced-config/",
                   json={"approval_users": ["maintainer2"]})
    assert resp.status_code == 403 and "approval rules" in resp.json["fields"]["approval_config"], resp.json
    resp = api.put(f"/api/v1/pipelines/{owned.id}/steps/{deploy}/advanced-config/",
                   json={"approval_config": {"required_approvals": 1, "auto_approve_on_timeout": True, "timeout_hours": 1}})
    assert resp.status_code == 403
    resp = api.put(f"/api/v1/pipelines/{owned.id}/", json={**svc.export_definition(fresh(owned)), "allow_self_approval": True})
    assert resp.status_code == 403 and set(resp.json["fields"]) == {"allow_self_approval"}
    p = fresh(owned)
    assert p.version == version and not p.allow_self_approval
    assert svc.export_definition(p)["steps"][1]["approval"] == rules_before
    # a message is not a rule: a named maintainer may reword it
    assert api.put(f"/api/v1/pipelines/{owned.id}/steps/{deploy}/advanced-config/",
                   json={"approval_config": {"required_approvals": 1, "message": "Ship?"}}).status_code == 200

    # the owner may change them, and the audit keeps before and after
    resp = api_as("maintainer").put(f"/api/v1/pipelines/{owned.id}/steps/{deploy}/advanced-config/",
                                    json={"approval_users": ["approver1", "approver2"], "approval_config": {"required_approvals": 2}})
    assert resp.status_code == 200, resp.json
    last = audit_of(owned)[-1]
    assert (last.actor, last.action) == ("maintainer1", "approval_rules_changed")
    assert last.before["approval_rules"]["gates"]["deploy"]["users"] == ["approver1", "approver2", "role:maintainer"]
    assert last.after["approval_rules"]["gates"]["deploy"] == {
        "users": ["approver1", "approver2"], "required_approvals": 2, "timeout_hours": None, "auto_approve_on_timeout": False}
    assert fresh(owned).approval_rules_by == "maintainer1"


def test_a_pipeline_without_an_owner_is_for_admins_until_one_is_assigned(app, client_as, people):
    p = svc.save_definition(DEFN)  # e.g. created by a CLI, or its owner's account deleted
    assert p.owner is None
    maint = client_as("maintainer")
    assert maint.post(f"/pipelines/{p.id}/settings", data={"name": "release", "description": "x"}).status_code == 403
    assert "only admins may edit it" in maint.get(f"/pipelines/{p.id}/settings").get_data(as_text=True)
    admin = client_as("admin")
    resp = admin.post(f"/pipelines/{p.id}/owner", data={"owner": "viewer1"})
    assert resp.status_code == 422 and "only users with the maintainer or admin role" in resp.get_data(as_text=True)
    assert admin.post(f"/pipelines/{p.id}/owner", data={"owner": "maintainer1"}).status_code == 303
    assert fresh(p).owner.username == "maintainer1"
    resp = maint.post(f"/pipelines/{p.id}/settings", data={"name": "release", "description": "x", "version": str(fresh(p).version)})
    assert resp.status_code == 303 and fresh(p).description == "x"
    # the owner may hand it on, and then it is no longer theirs
    assert maint.post(f"/pipelines/{p.id}/owner", data={"owner": "maintainer2"}).status_code == 303
    assert maint.post(f"/pipelines/{p.id}/settings", data={"name": "release", "description": "y"}).status_code == 403
    owners = [(e.actor, e.before, e.after) for e in audit_of(p) if e.action == "owner_changed"]
    assert owners == [("admin1", {"owner": None}, {"owner": "maintainer1"}),
                      ("maintainer1", {"owner": "maintainer1"}, {"owner": "maintainer2"})]


# --------------------------------------------------------------------------- never by the requester


def open_gate(p: Pipeline, requester: User, open_it: bool = True):
    """A run of `p` started by `requester`, waiting at 'deploy', as the runtime leaves it."""
    snapshot = svc.freeze(fresh(p))
    step = next(s for s in snapshot["steps"] if s["name"] == "deploy")
    execution = WorkflowExecution(pipeline_id=p.id, execution_id="ex-" + secrets.token_hex(5),
                                  status="waiting_approval", pipeline_snapshot=snapshot, trigger_type="manual",
                                  started_at=utcnow(), triggered_by_id=requester.id)
    db.session.add(execution)
    db.session.flush()
    attempt = StepExecutionHistory(execution_id=execution.id, step_id=step["id"], step_name="deploy",
                                   status="waiting_approval")
    db.session.add(attempt)
    db.session.flush()
    if not open_it:
        db.session.commit()
        return execution, step
    req = approvals.open_request(execution, attempt, step)
    db.session.commit()
    return req


def test_whoever_set_the_rules_never_approves_the_runs_they_start(owned, client_as, api_as, people):
    owner = client_as("maintainer")
    assert add_maintainer(client_as, owned, "maintainer2").status_code == 303
    resp = owner.post(f"/pipelines/{owned.id}/settings", data={
        "name": "release", "description": "", "allow_self_approval": "1", "version": str(owned.version)})
    assert resp.status_code == 303 and fresh(owned).allow_self_approval
    entry = audit_of(owned)[-1]
    assert (entry.actor, entry.action) == ("maintainer1", "approval_rules_changed")
    assert (entry.before["approval_rules"]["allow_self_approval"], entry.after["approval_rules"]["allow_self_approval"]) \
        == (False, True)

    own_run = open_gate(owned, people["maintainer"])
    others_run = open_gate(owned, people["maintainer2"])
    # the owner switched self-approval on: it is for the others, not for the owner's own runs
    resp = api_as("maintainer").post(f"/api/v1/approval-requests/{own_run.id}/respond/", json={"action": "approve"})
    assert resp.status_code == 403 and "set this pipeline's approval rules yourself" in resp.json["error"]
    assert own_run not in approvals.waiting_for(people["maintainer"])
    assert others_run in approvals.waiting_for(people["maintainer2"])
    assert approvals.decide(others_run.id, people["maintainer2"], "approve").request.status == "approved"

    # an admin takes the rules over: runs started from now on may be self-approved by the owner;
    # the run already waiting keeps the rules (and their author) it started with
    resp = client_as("admin").post(f"/pipelines/{owned.id}/settings", data={
        "name": "release", "description": "", "allow_self_approval": "1", "notification_config": "",
        "version": str(fresh(owned).version)})
    assert resp.status_code == 303
    # nothing changed in the rules, so their author stays the owner
    assert fresh(owned).approval_rules_by == "maintainer1"
    deploy = step_id(owned, "deploy")
    assert api_as("admin").put(f"/api/v1/pipelines/{owned.id}/steps/{deploy}/advanced-config/",
                               json={"approval_config": {"required_approvals": 1, "timeout_hours": 48}}).status_code == 200
    assert fresh(owned).approval_rules_by == "admin1"
    new_run = open_gate(owned, people["maintainer"])
    assert approvals.decide(new_run.id, people["maintainer"], "approve").request.status == "approved"
    with pytest.raises(approvals.Forbidden, match="approval rules yourself"):
        approvals.decide(own_run.id, people["maintainer"], "approve")


def test_opening_a_gate_by_hand_is_editing_and_choosing_its_approvers_is_a_rule(owned, client_as, api_as, people):
    """POST /pipelines/approval-requests/ (a step waiting without a request) may name approvers,
    a quorum and a timeout: the owner's and admins' to choose, like the gate's own."""
    execution, step = open_gate(owned, people["maintainer2"], open_it=False)
    body = {"execution_id": execution.execution_id, "step_id": step["id"]}
    path = "/api/v1/pipelines/approval-requests/"
    resp = api_as("maintainer2").post(path, json=body)
    assert resp.status_code == 403 and "owner" in resp.json["error"]
    assert add_maintainer(client_as, owned, "maintainer2").status_code == 303
    for override in ({"approvers": ["maintainer2"]}, {"required_approvals": 1}, {"auto_approve_on_timeout": True}):
        resp = api_as("maintainer2").post(path, json={**body, **override})
        assert resp.status_code == 403 and "approvers, quorum or timeout" in resp.json["error"], override
    assert not approvals.requests_for_execution(execution.id)
    resp = api_as("maintainer2").post(path, json={**body, "message": "please"})
    assert resp.status_code == 201 and resp.json["approvers"] == GATE["users"]


def test_existing_pipelines_take_their_owner_as_the_author_of_their_rules(owned, people):
    """What migration 0006 assumes for rows it cannot know about: snapshots frozen before it say
    nothing about the author, so the pipeline's recorded author decides."""
    owned.approval_rules_by = "maintainer1"
    owned.allow_self_approval = True
    db.session.commit()
    req = open_gate(owned, people["maintainer"])
    execution = db.session.get(WorkflowExecution, req.execution_id)
    snapshot = dict(execution.pipeline_snapshot)
    del snapshot["approval_rules_by"]
    execution.pipeline_snapshot = snapshot
    db.session.commit()
    assert not approvals.self_approval_allowed(req)
    owned = fresh(owned)
    owned.approval_rules_by = None  # rules set by the system (seed-demo)
    db.session.commit()
    assert approvals.self_approval_allowed(req)


# --------------------------------------------------------------------------- the audit


def test_the_audit_says_who_changed_what_and_outlives_the_pipeline(owned, client_as, api_as):
    owner = client_as("maintainer")
    resp = owner.post(f"/pipelines/{owned.id}/steps/new", data={"name": "smoke", "type": "shell", "command": "true",
                                                               "deps_mode": "stage", "version": str(owned.version)})
    assert resp.status_code == 303
    resp = owner.post(f"/pipelines/{owned.id}/settings", data={"name": "release", "description": "",
                                                                "allow_self_approval": "1", "version": str(fresh(owned).version)})
    assert resp.status_code == 303

    listing = api_as("viewer").get(f"/api/v1/pipelines/{owned.id}/audit/")
    assert listing.status_code == 200
    rows = listing.json["results"]
    assert [(r["actor"], r["action"], r["version"]) for r in rows] == [
        ("maintainer1", "approval_rules_changed", 3), ("maintainer1", "pipeline_edited", 2),
        ("maintainer1", "pipeline_created", 1)]
    assert rows[1]["summary"] == "v1 → v2: steps added: smoke" and rows[1]["before"] is None
    assert rows[0]["before"]["approval_rules"]["allow_self_approval"] is False
    assert rows[0]["after"]["approval_rules"]["allow_self_approval"] is True
    assert rows[0]["at"].endswith("Z")

    page = client_as("viewer").get(f"/pipelines/{owned.id}/settings").get_data(as_text=True)
    assert "Recent changes" in page and "approval rules changed" in page and "steps added: smoke" in page
    assert api_as("viewer").get("/api/v1/pipelines/999999/audit/").status_code == 404

    # deletion is the owner's, recorded, and the log survives it
    pid = owned.id
    assert client_as("maintainer").post(f"/pipelines/{pid}/delete", data={"confirm_name": "release"}).status_code == 303
    db.session.expire_all()
    gone = db.session.execute(db.select(PipelineAuditEntry).filter_by(pipeline_name="release")
                              .order_by(PipelineAuditEntry.id)).scalars().all()
    assert [e.action for e in gone][-1] == "pipeline_deleted" and {e.pipeline_id for e in gone} == {None}


def test_the_migration_makes_each_existing_owner_the_author_of_the_rules(tmp_path):
    """0006 on a database with pipelines: owners kept, rules authored by the owner, nobody named."""
    import subprocess
    import sys

    import sqlalchemy as sa

    from ..conftest import ROOT, settings_env
    from .test_identity import _insert, _settings

    url = f"sqlite:///{tmp_path / 'old.db'}"
    env = settings_env(_settings(url))
    upgrade = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
    out = subprocess.run(upgrade + ["0005_session_nonce"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _insert(conn, "users", id=1, username="olga", role="maintainer")
        _insert(conn, "pipelines", id=1, name="owned", owner_id=1, allow_self_approval=1)
        _insert(conn, "pipelines", id=2, name="orphan")
    out = subprocess.run(upgrade + ["0006_pipeline_duties"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with engine.begin() as conn:
        rows = conn.exec_driver_sql("SELECT name, owner_id, approval_rules_by FROM pipelines ORDER BY id").all()
        assert [tuple(r) for r in rows] == [("owned", 1, "olga"), ("orphan", None, None)]
        assert conn.exec_driver_sql("SELECT count(*) FROM pipeline_maintainers").scalar() == 0
    engine.dispose()
