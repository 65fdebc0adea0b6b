"""The pipeline editor pages: what viewers see, what maintainers change through the forms, and
that a refused form shows its errors in the page and changes nothing in the database."""
import re

import pytest

from webapp.extensions import db
from webapp.models import Pipeline, PipelineStep
from webapp.services import pipelines as svc

DEFN = {
    "name": "release",
    "groups": [{"id": "checks", "name": "Checks", "sync_policy": "fail_fast"}],
    "steps": [
        {"name": "build", "type": "shell", "parameters": {"command": "make"}, "estimated_duration": 100},
        {"name": "unit", "type": "shell", "parallel_group": "checks", "parameters": {"command": "make unit"}},
        {"name": "lint", "type": "shell", "parallel_group": "checks", "parameters": {"command": "make lint"}},
        {"name": "deploy", "type": "shell", "parameters": {"command": "make deploy"},
         "conditions": {"type": "expression", "expression": 'variables.env == "prod"'}},
    ],
}


@pytest.fixture
def pipeline(app, users):
    return svc.save_definition(DEFN, owner=users["maintainer"])


def fresh(p):
    db.session.expire_all()
    return db.session.get(Pipeline, p.id)


def step_id(p, name):
    return next(s.id for s in fresh(p).steps if s.name == name)


def step_form(**over):
    data = {"name": "package", "type": "shell", "command": "make dist", "deps_mode": "stage",
            "estimated_duration": "30", "retry_backoff": "fixed", "cond_type": "on_success"}
    data.update(over)
    return data


def test_viewer_sees_every_tab_but_no_edit_controls(client_as, pipeline):
    c = client_as("viewer")
    for path in ("/pipelines/", f"/pipelines/{pipeline.id}/", f"/pipelines/{pipeline.id}/graph",
                 f"/pipelines/{pipeline.id}/yaml", f"/pipelines/{pipeline.id}/settings"):
        resp = c.get(path)
        assert resp.status_code == 200, path
        html = resp.get_data(as_text=True)
        assert "Add step" not in html and "Delete pipeline" not in html and "New pipeline" not in html
    html = c.get(f"/pipelines/{pipeline.id}/").get_data(as_text=True)
    assert "build" in html and "Checks" in html and "fail fast" in html and "stage rule" in html
    assert c.get(f"/pipelines/{pipeline.id}/export.yaml").headers["Content-Type"].startswith("text/yaml")


VIEWER_FORBIDDEN = [
    ("post", "/pipelines/new"), ("get", "/pipelines/new"), ("post", "/pipelines/import"),
    ("get", "/pipelines/{p}/steps/new"), ("post", "/pipelines/{p}/steps/new"), ("get", "/pipelines/{p}/steps/{s}/edit"),
    ("post", "/pipelines/{p}/steps/{s}/edit"), ("post", "/pipelines/{p}/steps/{s}/delete"),
    ("post", "/pipelines/{p}/steps/{s}/move"), ("get", "/pipelines/{p}/groups/new"), ("post", "/pipelines/{p}/groups/new"),
    ("post", "/pipelines/{p}/groups/{g}/edit"), ("post", "/pipelines/{p}/groups/{g}/delete"),
    ("post", "/pipelines/{p}/settings"), ("post", "/pipelines/{p}/yaml"), ("post", "/pipelines/{p}/delete"),
    ("post", "/pipelines/{p}/conditions/test"), ("post", "/pipelines/{p}/active"),
]


def test_viewer_cannot_change_anything(client_as, pipeline):
    c = client_as("viewer")
    before = svc.export_definition(fresh(pipeline))
    group = fresh(pipeline).groups[0].id
    for method, path in VIEWER_FORBIDDEN:
        url = path.format(p=pipeline.id, s=step_id(pipeline, "build"), g=group)
        resp = getattr(c, method)(url, data=step_form(confirm_name="release", name="x", yaml="name: x"))
        assert resp.status_code == 403, (method, url)
    assert svc.export_definition(fresh(pipeline)) == before and fresh(pipeline).version == 1


def test_anonymous_is_sent_to_login(app, pipeline):
    resp = app.test_client().get(f"/pipelines/{pipeline.id}/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_list_search_filter_and_partial(client_as, pipeline):
    svc.save_definition({"name": "nightly", "description": "backups", "active": False, "steps": []})
    c = client_as("viewer")
    html = c.get("/pipelines/?q=back").get_data(as_text=True)
    assert "nightly" in html and ">release<" not in html
    html = c.get("/pipelines/?state=active").get_data(as_text=True)
    assert "release" in html and "nightly" not in html
    part = c.get("/pipelines/?q=zzz", headers={"HX-Request": "true"})
    body = part.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="pipeline-list"') and "No pipeline matches" in body
    assert "<html" not in body and "HX-Request" in part.headers["Vary"]
    assert "never run" in c.get("/pipelines/").get_data(as_text=True)


def test_empty_states(client_as, app, users):
    c = client_as("maintainer")
    assert "No pipelines yet" in c.get("/pipelines/").get_data(as_text=True)
    resp = c.post("/pipelines/new", data={"name": "fresh", "description": "d"})
    assert resp.status_code == 303
    html = c.get(resp.headers["Location"]).get_data(as_text=True)
    assert "No steps yet — add the first step" in html
    p = db.session.execute(db.select(Pipeline).filter_by(name="fresh")).scalar_one()
    assert p.owner.username == "maintainer1"
    assert "No steps yet" in c.get(f"/pipelines/{p.id}/graph").get_data(as_text=True)


def test_new_pipeline_name_errors_in_page(client_as, pipeline):
    resp = client_as("maintainer").post("/pipelines/new", data={"name": "release"})
    assert resp.status_code == 422
    assert re.search(r'aria-invalid="true"[^>]*>\s*<p class="hint|already exists', resp.get_data(as_text=True))
    assert db.session.execute(db.select(db.func.count(Pipeline.id))).scalar() == 1


def test_maintainer_adds_edits_moves_and_deletes_a_step(client_as, pipeline):
    c = client_as("maintainer")
    assert c.get(f"/pipelines/{pipeline.id}/steps/new").status_code == 200
    resp = c.post(f"/pipelines/{pipeline.id}/steps/new", data=step_form(
        deps_mode="explicit", depends_on=["build", "deploy"], retry_max_retries="2", retry_delay_seconds="5",
        retry_backoff="exponential", retry_on="75, timeout", timeout_seconds="600", continue_on_failure="1",
        approval_required="1", approval_users="approver1, approver2", approval_required_approvals="2",
        approval_timeout_hours="4", approval_message="Ship it?", env="A=1\nB=two", version=str(pipeline.version)))
    assert resp.status_code == 303
    s = db.session.get(PipelineStep, step_id(pipeline, "package"))
    assert [d.name for d in s.depends_on] == ["build", "deploy"] and s.explicit_dependencies
    assert s.parameters == {"command": "make dist", "env": {"A": "1", "B": "two"}}
    assert s.retry_policy == {"max_retries": 2, "delay_seconds": 5, "backoff": "exponential", "retry_on": [75, "timeout"]}
    assert s.approval_users == ["approver1", "approver2"] and s.approval_config["required_approvals"] == 2
    assert s.timeout_seconds == 600 and s.continue_on_failure and s.estimated_duration == 30
    assert fresh(pipeline).version == 2

    edit = c.get(f"/pipelines/{pipeline.id}/steps/{s.id}/edit").get_data(as_text=True)
    assert 'value="approver1, approver2"' in edit and "make dist" in edit

    resp = c.post(f"/pipelines/{pipeline.id}/steps/{s.id}/edit", data=step_form(
        name="bundle", type="wait", seconds="5", cond_type="always", parallel_group="checks"))
    assert resp.status_code == 303
    s = db.session.get(PipelineStep, s.id)
    assert s.name == "bundle" and s.step_type == "wait" and s.parameters == {"seconds": 5}
    assert s.conditions == {"type": "always"} and s.explicit_dependencies is False
    assert s.approval_required is False and s.retry_policy is None and s.parallel_group.startswith("checks-")

    resp = c.post(f"/pipelines/{pipeline.id}/steps/{s.id}/move", data={"direction": "up"})
    assert resp.status_code == 303
    assert [x.name for x in fresh(pipeline).steps] == ["build", "unit", "lint", "bundle", "deploy"]

    part = c.post(f"/pipelines/{pipeline.id}/steps/{s.id}/delete", headers={"HX-Request": "true"})
    html = part.get_data(as_text=True)
    assert part.status_code == 200 and html.lstrip().startswith('<div id="steps-panel">')
    assert "Step &#39;bundle&#39; deleted." in html and 'hx-swap-oob="true"' in html
    assert db.session.get(PipelineStep, s.id) is None


def test_bad_step_input_shows_errors_next_to_fields_and_saves_nothing(client_as, pipeline):
    c = client_as("maintainer")
    before = svc.export_definition(fresh(pipeline))
    resp = c.post(f"/pipelines/{pipeline.id}/steps/new", data=step_form(
        command="", retry_max_retries="50", cond_type="expression", cond_expression="variables.env ==",
        timeout_seconds="soon"))
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert 'id="err-timeout_seconds"' in html and "Enter a whole number of seconds." in html
    # the parse error alone is reported first; fix it and the service's errors come back
    resp = c.post(f"/pipelines/{pipeline.id}/steps/new", data=step_form(
        command="", retry_max_retries="50", cond_type="expression", cond_expression="variables.env =="))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "Nothing was saved." in html
    for field in ("parameters-command", "retry_policy-max_retries", "conditions-expression"):
        assert f'id="err-{field}"' in html, field
    assert re.search(r'id="f-command"[^>]*aria-invalid="true"', html)
    assert 'value="package"' in html  # what was typed is kept
    assert svc.export_definition(fresh(pipeline)) == before and fresh(pipeline).version == 1


def test_a_cycle_is_refused_with_the_cycle_named(client_as, pipeline):
    c = client_as("maintainer")
    resp = c.post(f"/pipelines/{pipeline.id}/steps/new", data=step_form(name="test", deps_mode="explicit", depends_on=["build"]))
    assert resp.status_code == 303
    before = svc.export_definition(fresh(pipeline))
    resp = c.post(f"/pipelines/{pipeline.id}/steps/{step_id(pipeline, 'build')}/edit",
                  data=step_form(name="build", command="make", deps_mode="explicit", depends_on=["test"]))
    assert resp.status_code == 422
    assert "build -&gt; test -&gt; build" in resp.get_data(as_text=True)
    assert svc.export_definition(fresh(pipeline)) == before


def test_stale_form_is_refused(client_as, pipeline):
    resp = client_as("maintainer").post(f"/pipelines/{pipeline.id}/steps/new", data=step_form(version="0"))
    assert resp.status_code == 422 and "while you were editing" in resp.get_data(as_text=True)


def test_test_condition_inline_and_without_javascript(client_as, pipeline):
    c = client_as("maintainer")
    deploy = step_id(pipeline, "deploy")
    form = c.get(f"/pipelines/{pipeline.id}/steps/{deploy}/edit").get_data(as_text=True)
    assert "&#34;env&#34;: &#34;&#34;" in form  # the sample lists the variable the expression reads
    data = {"step_id": str(deploy), "cond_type": "expression", "cond_expression": 'variables.env == "prod"',
            "cond_context": '{"variables": {"env": "prod"}}'}
    part = c.post(f"/pipelines/{pipeline.id}/conditions/test", data=data, headers={"HX-Request": "true"})
    html = part.get_data(as_text=True)
    assert html.lstrip().startswith('<div id="condition-result"') and "would run" in html and "variables.env was" in html
    full = c.post(f"/pipelines/{pipeline.id}/conditions/test", data={**data, "cond_context": '{"variables": {"env": "dev"}}'})
    html = full.get_data(as_text=True)
    assert "<html" in html and "would be skipped" in html and "Save step" in html
    bad = c.post(f"/pipelines/{pipeline.id}/conditions/test", data={**data, "cond_context": "{nope"},
                 headers={"HX-Request": "true"})
    assert "not valid JSON" in bad.get_data(as_text=True)
    rule = c.post(f"/pipelines/{pipeline.id}/conditions/test", headers={"HX-Request": "true"}, data={
        "cond_type": "on_failure", "deps_mode": "explicit", "depends_on": ["build"],
        "cond_context": '{"dependency_outcomes": {"build": "failed"}}'})
    assert "would run" in rule.get_data(as_text=True)
    assert fresh(pipeline).version == 1


def test_groups_through_the_forms(client_as, pipeline):
    c = client_as("maintainer")
    assert c.get(f"/pipelines/{pipeline.id}/groups/new").status_code == 200
    resp = c.post(f"/pipelines/{pipeline.id}/groups/new", data={
        "name": "Ship", "sync_policy": "wait_any", "timeout_seconds": "90", "members": [str(step_id(pipeline, "deploy"))]})
    assert resp.status_code == 303
    p = fresh(pipeline)
    g = next(x for x in p.groups if x.name == "Ship")
    assert g.sync_policy == "wait_any" and g.timeout_seconds == 90
    assert next(s for s in p.steps if s.name == "deploy").parallel_group == g.id

    before = svc.export_definition(p)
    resp = c.post(f"/pipelines/{pipeline.id}/groups/{g.id}/edit", data={"name": "Checks", "sync_policy": "wait_all"})
    assert resp.status_code == 422 and "already named" in resp.get_data(as_text=True)
    resp = c.post(f"/pipelines/{pipeline.id}/groups/{g.id}/edit", data={"name": "Ship", "sync_policy": "wait_all",
                                                                      "timeout_seconds": "-5"})
    assert resp.status_code == 422
    assert svc.export_definition(fresh(pipeline)) == before

    resp = c.post(f"/pipelines/{pipeline.id}/groups/{g.id}/delete")
    assert resp.status_code == 303
    p = fresh(pipeline)
    assert "Ship" not in [x.name for x in p.groups]
    assert next(s for s in p.steps if s.name == "deploy").parallel_group is None


def test_settings_and_delete(client_as, pipeline):
    c = client_as("maintainer")
    resp = c.post(f"/pipelines/{pipeline.id}/settings", data={
        "name": "release", "description": "new words", "notification_config": "{not json"})
    assert resp.status_code == 422 and "not valid JSON" in resp.get_data(as_text=True)
    assert fresh(pipeline).description == ""
    resp = c.post(f"/pipelines/{pipeline.id}/settings", data={
        "name": "release 2", "description": "new words", "allow_self_approval": "1",
        "notification_config": '{"on_failure": true}'})
    assert resp.status_code == 422 and "where to send" in resp.get_data(as_text=True)
    resp = c.post(f"/pipelines/{pipeline.id}/settings", data={
        "name": "release 2", "description": "new words", "allow_self_approval": "1",
        "notification_config": '{"on_failure": true, "recipients": ["ops@example.test"]}'})
    assert resp.status_code == 303
    p = fresh(pipeline)
    assert (p.name, p.active, p.allow_self_approval, p.notification_config, p.version) == \
        ("release 2", False, True, {"on_failure": True, "recipients": ["ops@example.test"]}, 2)
    resp = c.post(f"/pipelines/{pipeline.id}/delete", data={"confirm_name": "release"})
    assert resp.status_code == 422 and fresh(pipeline) is not None
    from webapp.models import WorkflowExecution
    db.session.add(WorkflowExecution(pipeline_id=pipeline.id, execution_id="old-run", status="success"))
    db.session.commit()
    resp = c.post(f"/pipelines/{pipeline.id}/delete", data={"confirm_name": "release 2"})
    assert resp.status_code == 303 and db.session.get(Pipeline, pipeline.id) is None
    db.session.expire_all()
    assert db.session.execute(db.select(WorkflowExecution)).first() is None
    listing = c.get("/pipelines/").get_data(as_text=True)
    assert "Pipeline &#39;release 2&#39; deleted." in listing and "No pipelines yet" in listing


def test_yaml_round_trip_through_the_pages(client_as, pipeline):
    c = client_as("maintainer")
    exported = c.get(f"/pipelines/{pipeline.id}/export.yaml").get_data(as_text=True)
    assert "attachment" in c.get(f"/pipelines/{pipeline.id}/export.yaml").headers["Content-Disposition"]
    before = svc.export_definition(fresh(pipeline))
    resp = c.post(f"/pipelines/{pipeline.id}/yaml", data={"yaml": exported})
    assert resp.status_code == 303
    assert svc.export_definition(fresh(pipeline)) == before and fresh(pipeline).version == 2

    resp = c.post("/pipelines/import", data={"yaml": exported.replace("name: release", "name: copy", 1)})
    assert resp.status_code == 303
    copy = db.session.execute(db.select(Pipeline).filter_by(name="copy")).scalar_one()
    assert {**svc.export_definition(copy), "name": "release"} == before

    broken = exported.replace("command: make unit", "command: ''")
    resp = c.post(f"/pipelines/{pipeline.id}/yaml", data={"yaml": broken})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 422 and "steps[1].parameters.command" in html and "A shell step needs a command." in html
    assert svc.export_definition(fresh(pipeline)) == before
    from io import BytesIO
    resp = c.post("/pipelines/import", data={"yaml_file": (BytesIO(b"name: [oops"), "p.yaml")},
                  content_type="multipart/form-data")
    assert resp.status_code == 422 and "could not be read at line 1" in resp.get_data(as_text=True)


def test_graph_page_draws_the_svg(client_as, pipeline):
    html = client_as("maintainer").get(f"/pipelines/{pipeline.id}/graph").get_data(as_text=True)
    svg = html[html.index("<svg class=\"dag\""):html.index("</svg>", html.index("<svg class=\"dag\""))]
    assert svg.count('class="dag-node') == 4
    # implicit (stage rule) edges are dashed; the one out of the group box starts at the group
    assert re.search(r'class="dag-edge implicit[^"]*"[^>]*stroke-dasharray="6 4"[^>]*data-from="build" data-to="unit"', svg)
    assert re.search(r'data-from="Checks" data-to="deploy"', svg)
    assert 'data-sync-policy="fail_fast"' in svg and "Checks · fail_fast" in svg
    # the critical path: build -> unit -> deploy (unit and lint both 60s: the first one)
    assert re.search(r'class="dag-edge implicit critical"[^>]*data-from="build" data-to="unit"', svg)
    assert re.search(r'class="dag-node critical" data-step="\d+"', svg)
    assert "Critical path" in html and "3m 40s" in html and "Max parallelism" in html
    assert f'href="/pipelines/{pipeline.id}/steps/' in svg  # nodes link to their step form


def test_graph_macro_colours_statuses(app, pipeline):
    from flask import render_template_string

    from webapp.services import analysis
    layout, _ = analysis.graph_view(pipeline)
    build = step_id(pipeline, "build")
    with app.test_request_context():
        svg = render_template_string('{% from "_graph.html" import graph_svg %}{{ graph_svg(layout, statuses=st, id="run") }}',
                                     layout=layout, st={build: "failed", str(step_id(pipeline, "unit")): "success"})
    assert 'class="dag-node critical st-failed"' in svg and "fill:var(--fail-bg);stroke:var(--fail)" in svg
    assert "st-success" in svg and 'id="run-arrow"' in svg


def test_activate_and_deactivate_from_the_list(client_as, pipeline):
    c = client_as("maintainer")
    part = c.post(f"/pipelines/{pipeline.id}/active", data={"active": "0", "state": "active"}, headers={"HX-Request": "true"})
    html = part.get_data(as_text=True)
    assert html.lstrip().startswith('<section id="pipeline-list"') and "deactivated" in html
    assert "No pipeline matches among the active ones" in html  # the list keeps its filter
    assert fresh(pipeline).active is False
    resp = c.post(f"/pipelines/{pipeline.id}/active", data={"active": "1", "q": "rel"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/pipelines/?q=rel")
    assert fresh(pipeline).active is True
