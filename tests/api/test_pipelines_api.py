"""Pipeline-side JSON API: filters, YAML import/export, advanced config, condition evaluation,
analysis, parallel groups and tool mappings, with their error shapes."""
import pytest
import yaml

from webapp.extensions import db
from webapp.models import Pipeline, PipelineStep
from webapp.services import pipelines as svc

DEFN = {
    "name": "release",
    "groups": [{"id": "checks", "name": "Checks", "sync_policy": "wait_all"}],
    "steps": [
        {"name": "build", "type": "shell", "parameters": {"command": "make"}, "estimated_duration": 100},
        {"name": "unit", "type": "shell", "parallel_group": "checks", "parameters": {"command": "t"}, "estimated_duration": 50},
        {"name": "lint", "type": "shell", "parallel_group": "checks", "parameters": {"command": "l"}, "estimated_duration": 10},
        {"name": "deploy", "type": "shell", "depends_on": ["build", "unit"], "parameters": {"command": "d"},
         "estimated_duration": 20, "conditions": {"type": "expression", "expression": '$variables.env === "prod"'}},
    ],
}


@pytest.fixture
def pipeline(app, users):
    return svc.save_definition(DEFN, owner=users["maintainer"])


@pytest.fixture
def api(api_as):
    return api_as("maintainer")


def ids(p):
    db.session.expire_all()
    return {s.name: s.id for s in db.session.get(Pipeline, p.id).steps}


def is_error(resp, status, *fields):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert set(resp.json) == {"error", "fields"}
    for f in fields:
        assert f in resp.json["fields"], resp.json
    return resp.json


def test_list_filters(api, pipeline):
    svc.save_definition({"name": "nightly", "description": "Backups", "active": False, "steps": []})
    names = lambda r: [p["name"] for p in r.json["results"]]  # noqa: E731
    assert names(api.get("/api/v1/pipelines/?active=false")) == ["nightly"]
    assert names(api.get("/api/v1/pipelines/?active=true")) == ["release"]
    assert names(api.get("/api/v1/pipelines/?search=backup")) == ["nightly"]
    assert names(api.get("/api/v1/pipelines/")) == ["nightly", "release"]
    is_error(api.get("/api/v1/pipelines/?active=maybe"), 422, "active")


def test_export_and_import_round_trip(api, pipeline):
    resp = api.get(f"/api/v1/pipelines/{pipeline.id}/export/")
    assert resp.status_code == 200 and resp.mimetype == "text/yaml"
    data = yaml.safe_load(resp.get_data(as_text=True))
    assert data == svc.export_definition(pipeline)
    data["name"] = "release copy"
    resp = api.post("/api/v1/pipelines/import/", data=yaml.safe_dump(data), content_type="text/yaml")
    assert resp.status_code == 201
    assert {**resp.json["definition"], "name": "release"} == svc.export_definition(pipeline)
    resp = api.post("/api/v1/pipelines/import/", json={"yaml": yaml.safe_dump({**data, "name": "third"})})
    assert resp.status_code == 201 and resp.json["name"] == "third"
    is_error(api.post("/api/v1/pipelines/import/", data="name: release\nsteps: []", content_type="text/yaml"), 422, "name")
    err = is_error(api.post("/api/v1/pipelines/import/", data="steps: [", content_type="text/yaml"), 422, "yaml")
    assert "line" in err["error"]
    is_error(api.post("/api/v1/pipelines/import/", data="", content_type="text/yaml"), 422, "yaml")
    assert api.get("/api/v1/pipelines/999/export/").status_code == 404


def test_advanced_config(api, pipeline):
    s = ids(pipeline)
    url = f"/api/v1/pipelines/{pipeline.id}/steps/{s['deploy']}/advanced-config/"
    group_id = next(g["id"] for g in api.get(f"/api/v1/pipelines/{pipeline.id}/").json["groups"])
    resp = api.put(url, json={
        "conditions": {"type": "none_failed", "depends_on": [s["build"]]},
        "approval_required": True, "approval_users": ["approver1", "role:admin"],
        "approval_config": {"required_approvals": 2, "timeout_hours": 8, "auto_approve_on_timeout": True},
        "retry_policy": {"max_retries": 3, "delay_seconds": 2, "backoff": "exponential", "retry_on": ["timeout", 2]},
        "timeout_seconds": 300, "continue_on_failure": True, "parallel_group": None, "dependencies": [s["build"]]})
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["id"] == s["deploy"] and body["dependencies"] == [s["build"]]
    assert body["conditions"] == {"type": "none_failed", "depends_on": [s["build"]]}
    assert body["approval_required"] and body["approval_users"] == ["approver1", "role:admin"]
    assert body["approval_config"]["required_approvals"] == 2 and body["approval_config"]["auto_approve_on_timeout"]
    assert body["retry_policy"]["max_retries"] == 3 and body["timeout_seconds"] == 300 and body["continue_on_failure"]
    assert db.session.get(Pipeline, pipeline.id).version == 2

    # partial: only the keys sent change; the stage rule with null
    resp = api.put(url, json={"dependencies": None, "parallel_group": group_id})
    assert resp.status_code == 200 and resp.json["dependencies"] is None and resp.json["parallel_group"] == group_id
    assert resp.json["retry_policy"]["max_retries"] == 3

    version = db.session.get(Pipeline, pipeline.id).version
    is_error(api.put(url, json={"retry_policy": {"max_retries": 99, "backoff": "sometimes"}}), 422,
             "retry_policy.max_retries", "retry_policy.backoff")
    is_error(api.put(url, json={"dependencies": [12345], "parallel_group": "nope", "colour": 1}), 422, "colour")
    is_error(api.put(url, json={"dependencies": [12345], "parallel_group": "nope"}), 422,
             "dependencies", "parallel_group")
    is_error(api.put(url, json={"conditions": {"type": "expression", "expression": "1 +"}}), 422, "conditions.expression")
    is_error(api.put(url, json={"approval_required": True, "approval_users": ["a"],
                                "approval_config": {"required_approvals": 3}}), 422, "approval_config.required_approvals")
    err = is_error(api.put(f"/api/v1/pipelines/{pipeline.id}/steps/{s['build']}/advanced-config/",
                           json={"dependencies": [s["deploy"]]}), 422, "dependencies")
    assert "Dependency cycle: build -> deploy -> build" in err["fields"]["dependencies"]
    is_error(api.put(url, data="[]", content_type="application/json"), 422, "body")
    db.session.expire_all()
    assert db.session.get(Pipeline, pipeline.id).version == version  # nothing was saved

    assert api.put(f"/api/v1/pipelines/{pipeline.id}/steps/99999/advanced-config/", json={}).status_code == 404
    assert api.put(f"/api/v1/pipelines/99999/steps/{s['build']}/advanced-config/", json={}).status_code == 404


# One role per test: the test app keeps one app context, so flask_login's cached user (g) would
# carry over from one client's request to the next within a test.
@pytest.mark.parametrize("role,status", [("viewer", 403), ("approver", 403), (None, 401)])
def test_changes_need_the_maintainer_role(api_as, app, pipeline, role, status):
    s = ids(pipeline)
    client = api_as(role) if role else app.test_client()
    calls = [
        ("put", f"/api/v1/pipelines/{pipeline.id}/steps/{s['deploy']}/advanced-config/", {"timeout_seconds": 5}),
        ("post", "/api/v1/pipelines/import/", None),
        ("post", "/api/v1/parallel-groups/", {"pipeline": pipeline.id, "name": "x"}),
        ("post", "/api/v1/pipelines/parallel-groups/", {"pipeline": pipeline.id, "name": "x"}),
        ("put", "/api/v1/pipelines/parallel-groups/whatever/", {}),
        ("delete", "/api/v1/pipelines/parallel-groups/whatever/", None),
        ("post", "/api/v1/pipeline-mappings/", {"pipeline": pipeline.id, "tool_name": "x"}),
        ("put", "/api/v1/pipeline-mappings/1/", {}),
        ("delete", "/api/v1/pipeline-mappings/1/", None),
    ]
    for method, url, body in calls:
        kw = {"json": body} if body is not None else {}
        is_error(getattr(client, method)(url, **kw), status)
    reads = [f"/api/v1/pipelines/{pipeline.id}/export/", f"/api/v1/pipelines/{pipeline.id}/analyze-workflow/",
             "/api/v1/parallel-groups/", "/api/v1/pipeline-mappings/"]
    for url in reads:
        assert client.get(url).status_code == (200 if role else 401), url
    assert db.session.get(Pipeline, pipeline.id).version == 1


def test_evaluate_condition(api_as, pipeline):
    api = api_as("viewer")  # evaluation saves nothing: viewers may try conditions
    s = ids(pipeline)
    url = f"/api/v1/pipelines/{pipeline.id}/steps/{s['deploy']}/evaluate-condition/"
    resp = api.post(url, json={"context": {"variables": {"env": "prod"}}})
    assert resp.status_code == 200 and resp.json["result"] is True and resp.json["error"] is None
    assert set(resp.json) == {"result", "error", "explanation"} and "variables.env" in resp.json["explanation"]
    assert api.post(url, json={"context": {"variables": {"env": "dev"}}}).json["result"] is False
    missing = api.post(url).json  # no body: the saved conditions against the bare sample
    assert missing["result"] is None and "Unknown key 'env'" in missing["error"]
    rule = api.post(url, json={"conditions": {"type": "on_failure"},
                               "context": {"dependency_outcomes": {"build": "success", "unit": "failed"}}}).json
    assert rule["result"] is True and "unit failed" in rule["explanation"]
    default_rule = api.post(url, json={"conditions": {"type": "on_success"}}).json
    assert default_rule["result"] is True and "build" in default_rule["explanation"]
    bad = api.post(url, json={"conditions": {"type": "expression", "expression": "variables.env =="}}).json
    assert bad["result"] is None and bad["error"]
    is_error(api.post(url, json={"context": "prod"}), 422, "context")
    is_error(api.post(url, json={"ctx": {}}), 422, "ctx")
    assert api.post(f"/api/v1/pipelines/{pipeline.id}/steps/99999/evaluate-condition/").status_code == 404


def test_analyze_workflow(api_as, pipeline):
    viewer = api_as("viewer")
    resp = viewer.get(f"/api/v1/pipelines/{pipeline.id}/analyze-workflow/")
    assert resp.status_code == 200
    a = resp.json
    assert a["pipeline_id"] == pipeline.id and a["version"] == 1 and a["valid"] is True
    assert a["critical_path"] == {"steps": ["build", "unit", "deploy"], "step_ids": [ids(pipeline)[n] for n in ("build", "unit", "deploy")],
                                  "total_seconds": 170.0}
    assert a["steps"]["lint"]["slack"] == 40.0 and a["max_parallelism"] == 2
    # deploy names one member of the group: the barrier makes it wait for lint too
    assert viewer.get("/api/v1/pipelines/999/analyze-workflow/").status_code == 404


def test_parallel_groups(api, pipeline):
    s = ids(pipeline)
    listed = api.get(f"/api/v1/pipelines/parallel-groups/?pipeline={pipeline.id}").json["results"]
    assert [(g["name"], g["steps"]) for g in listed] == [("Checks", [s["unit"], s["lint"]])]
    assert api.get("/api/v1/parallel-groups/").json == api.get("/api/v1/pipelines/parallel-groups/").json
    assert api.get("/api/v1/parallel-groups/?pipeline=999").json["results"] == []

    resp = api.post("/api/v1/parallel-groups/", json={"pipeline": pipeline.id, "id": "ship", "name": "Ship",
                                                     "sync_policy": "fail_fast", "timeout_seconds": 60, "steps": [s["deploy"]]})
    assert resp.status_code == 201, resp.json
    g = resp.json
    assert g["id"].startswith("ship-") and g["steps"] == [s["deploy"]] and g["sync_policy"] == "fail_fast"
    assert db.session.get(PipelineStep, s["deploy"]).parallel_group == g["id"]

    resp = api.put(f"/api/v1/pipelines/parallel-groups/{g['id']}/", json={"sync_policy": "wait_any", "steps": []})
    assert resp.status_code == 200 and resp.json["sync_policy"] == "wait_any" and resp.json["steps"] == []

    is_error(api.post("/api/v1/pipelines/parallel-groups/", json={"pipeline": 999, "name": "x"}), 422, "pipeline")
    is_error(api.post("/api/v1/pipelines/parallel-groups/", json={"pipeline": pipeline.id, "name": "Checks"}), 422, "name")
    is_error(api.post("/api/v1/pipelines/parallel-groups/", json={"pipeline": pipeline.id, "name": "Bad",
                                                                  "sync_policy": "sometimes"}), 422, "sync_policy")
    is_error(api.post("/api/v1/pipelines/parallel-groups/", json={"pipeline": pipeline.id, "name": "Bad",
                                                                  "steps": [99999]}), 422, "members")
    is_error(api.post("/api/v1/pipelines/parallel-groups/", json={"pipeline": pipeline.id, "id": "no spaces!"}), 422, "id")
    is_error(api.put(f"/api/v1/pipelines/parallel-groups/{g['id']}/", json={"colour": "red"}), 422, "colour")
    assert api.put("/api/v1/pipelines/parallel-groups/nope/", json={}).status_code == 404

    assert api.delete(f"/api/v1/pipelines/parallel-groups/{g['id']}/").status_code == 204
    assert api.delete(f"/api/v1/pipelines/parallel-groups/{g['id']}/").status_code == 404
    checks = listed[0]["id"]
    assert api.delete(f"/api/v1/pipelines/parallel-groups/{checks}/").status_code == 204
    assert db.session.get(PipelineStep, s["unit"]).parallel_group is None


def test_pipeline_mappings(api, pipeline, users):
    other = svc.save_definition({"name": "other", "steps": []}, owner=users["maintainer"])
    resp = api.post("/api/v1/pipeline-mappings/", json={"pipeline": pipeline.id, "tool_name": "Jenkins prod",
                                                      "tool_type": "jenkins", "tool_url": "https://ci.example.com",
                                                      "external_job_name": "release-job"})
    assert resp.status_code == 201
    m = resp.json
    assert m["pipeline_name"] == "release" and m["active"] is True
    api.post("/api/v1/pipeline-mappings/", json={"pipeline": other.id, "tool_name": "GitLab", "tool_type": "gitlab_ci"})
    assert [x["tool_name"] for x in api.get(f"/api/v1/pipeline-mappings/?pipeline={pipeline.id}").json["results"]] == ["Jenkins prod"]
    assert len(api.get("/api/v1/pipeline-mappings/").json["results"]) == 2
    assert api.get(f"/api/v1/pipeline-mappings/{m['id']}/").json == m
    resp = api.put(f"/api/v1/pipeline-mappings/{m['id']}/", json={"active": False, "external_job_name": "release-2"})
    assert resp.status_code == 200 and resp.json["active"] is False and resp.json["tool_name"] == "Jenkins prod"
    is_error(api.post("/api/v1/pipeline-mappings/", json={"pipeline": 999, "tool_name": "", "tool_url": "x"}), 422,
             "pipeline", "tool_name", "tool_url")
    is_error(api.put(f"/api/v1/pipeline-mappings/{m['id']}/", json={"active": "yes"}), 422, "active")
    is_error(api.get("/api/v1/pipeline-mappings/?pipeline=abc"), 422, "pipeline")
    assert api.delete(f"/api/v1/pipeline-mappings/{m['id']}/").status_code == 204
    assert api.get(f"/api/v1/pipeline-mappings/{m['id']}/").status_code == 404
    assert api.put(f"/api/v1/pipeline-mappings/{m['id']}/", json={}).status_code == 404


def test_every_new_route_is_documented(app):
    from webapp.api.openapi import document
    paths = document()["paths"]
    for path, method in [("/api/v1/pipelines/{id}/steps/{step_id}/advanced-config/", "put"),
                         ("/api/v1/pipelines/{id}/steps/{step_id}/evaluate-condition/", "post"),
                         ("/api/v1/pipelines/{id}/analyze-workflow/", "get"), ("/api/v1/pipelines/{id}/export/", "get"),
                         ("/api/v1/pipelines/import/", "post"), ("/api/v1/pipelines/parallel-groups/", "post"),
                         ("/api/v1/parallel-groups/", "get"), ("/api/v1/pipelines/parallel-groups/{group_id}/", "delete"),
                         ("/api/v1/pipeline-mappings/{id}/", "put")]:
        op = paths[path][method]
        assert op["summary"] and "401" in op["responses"], (path, method)
