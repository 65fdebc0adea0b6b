"""The condition shape of issue 12 through YAML and the API: the trigger rule and the expression
are stored apart; AnsFlow's older ``type: "expression"`` still imports (as on_success + the
expression) and rows stored before the change read as the new shape."""
import yaml

from webapp.extensions import db
from webapp.models import Pipeline, PipelineStep
from webapp.services import pipelines as svc

EXPR = '$variables.env === "production"'


def _yaml(conditions):
    return yaml.safe_dump({"name": "shape", "steps": [
        {"name": "tests", "type": "shell", "parameters": {"command": "true"}},
        {"name": "deploy", "type": "shell", "parameters": {"command": "true"}, "conditions": conditions}]})


def _stored(pid, name="deploy"):
    db.session.expire_all()
    return next(s for s in db.session.get(Pipeline, pid).steps if s.name == name).conditions


def test_yaml_round_trips_rule_and_expression(api_as, users):
    api = api_as("maintainer")
    resp = api.post("/api/v1/pipelines/import/", data=_yaml({"type": "always", "expression": "failure()"}),
                    content_type="text/yaml")
    assert resp.status_code == 201, resp.json
    pid = resp.json["id"]
    assert _stored(pid) == {"type": "always", "expression": "failure()"}
    exported = yaml.safe_load(api.get(f"/api/v1/pipelines/{pid}/export/").get_data(as_text=True))
    deploy = next(s for s in exported["steps"] if s["name"] == "deploy")
    assert deploy["conditions"] == {"type": "always", "expression": "failure()"}


def test_the_old_ansflow_shape_still_imports_as_on_success_and_the_expression(api_as, users):
    api = api_as("maintainer")
    resp = api.post("/api/v1/pipelines/import/", data=_yaml({"type": "expression", "expression": EXPR}),
                    content_type="text/yaml")
    assert resp.status_code == 201, resp.json
    assert _stored(resp.json["id"]) == {"type": "on_success", "expression": EXPR}
    # the old shape without its expression is still refused, naming the field
    resp = api.post("/api/v1/pipelines/import/", data=_yaml({"type": "expression"}), content_type="text/yaml")
    assert resp.status_code == 422 and "steps[1].conditions.expression" in resp.json["fields"]


def test_advanced_config_takes_both_shapes_and_answers_the_new_one(api_as, users):
    api = api_as("maintainer")
    p = svc.import_yaml(_yaml(None), owner=users["maintainer"])
    deploy = next(s for s in p.steps if s.name == "deploy")
    url = f"/api/v1/pipelines/{p.id}/steps/{deploy.id}/advanced-config/"
    resp = api.put(url, json={"conditions": {"type": "expression", "expression": EXPR}})
    assert resp.status_code == 200, resp.json
    assert resp.json["conditions"] == {"type": "on_success", "expression": EXPR}
    resp = api.put(url, json={"conditions": {"type": "none_failed", "expression": "!cancelled()"}})
    assert resp.json["conditions"] == {"type": "none_failed", "expression": "!cancelled()"}
    resp = api.put(url, json={"conditions": {"expression": "success(1)"}})
    assert resp.status_code == 422 and "takes no arguments" in resp.json["fields"]["conditions.expression"]


def _pipeline_with_an_old_row(owner):
    """A pipeline whose deploy step is stored as written before the change (an earlier version's row)."""
    p = svc.import_yaml(_yaml(None), owner=owner)
    step = next(s for s in p.steps if s.name == "deploy")
    db.session.execute(db.update(PipelineStep).where(PipelineStep.id == step.id)
                       .values(conditions={"type": "expression", "expression": EXPR}))
    db.session.commit()
    db.session.expire_all()
    return p, step


def test_rows_stored_in_the_old_shape_read_as_the_new_one(app, users):
    p, _ = _pipeline_with_an_old_row(users["maintainer"])
    p = db.session.get(Pipeline, p.id)
    deploy = next(s for s in svc.export_definition(p)["steps"] if s["name"] == "deploy")
    assert deploy["conditions"] == {"type": "on_success", "expression": EXPR}


def test_the_editor_shows_the_rule_and_the_expression_apart(client_as, users):
    p, step = _pipeline_with_an_old_row(users["maintainer"])
    c = client_as("maintainer")
    html = c.get(f"/pipelines/{p.id}/steps/{step.id}/edit").get_data(as_text=True)
    assert 'value="on_success" selected' in html and 'value="expression"' not in html
    assert "and this expression is true" in html and "variables.env === &#34;production&#34;" in html
    # saving the form keeps the rule and the expression apart
    resp = c.post(f"/pipelines/{p.id}/steps/{step.id}/edit", data={
        "name": "deploy", "type": "shell", "command": "true", "deps_mode": "stage",
        "cond_type": "none_failed", "cond_expression": "variables.env == 'prod'"})
    assert resp.status_code in (302, 303), resp.get_data(as_text=True)[:2000]
    assert _stored(p.id) == {"type": "none_failed", "expression": "variables.env == 'prod'"}
    # the old form value without an expression: a field error, nothing saved
    resp = c.post(f"/pipelines/{p.id}/steps/{step.id}/edit", data={
        "name": "deploy", "type": "shell", "command": "true", "deps_mode": "stage", "cond_type": "expression"})
    assert resp.status_code == 422 and "an expression is required" in resp.get_data(as_text=True)
    assert _stored(p.id) == {"type": "none_failed", "expression": "variables.env == 'prod'"}
