"""services.pipelines piece-by-piece edits, analysis and graph layout, on a real database."""
import pytest
from sqlalchemy import event

from webapp.extensions import db
from webapp.models import ParallelGroup, Pipeline, PipelineStep, WorkflowExecution
from webapp.services import analysis, graph_svg
from webapp.services import pipelines as svc
from webapp.services.accounts import ValidationError

BASE = {
    "name": "release",
    "description": "build and ship",
    "groups": [{"id": "tests", "name": "Tests", "sync_policy": "wait_all", "timeout_seconds": 600}],
    "steps": [
        {"name": "build", "type": "shell", "parameters": {"command": "make"}, "estimated_duration": 100},
        {"name": "unit", "type": "shell", "parallel_group": "tests", "parameters": {"command": "make unit"}, "estimated_duration": 50},
        {"name": "lint", "type": "shell", "parallel_group": "tests", "parameters": {"command": "make lint"}, "estimated_duration": 10},
        {"name": "deploy", "type": "shell", "parameters": {"command": "make deploy"},
         "conditions": {"type": "expression", "expression": '$variables.env === "prod"'}, "estimated_duration": 30},
        {"name": "report", "type": "shell", "depends_on": ["deploy"], "parameters": {"command": "echo"},
         "conditions": {"type": "always"}},
    ],
}


@pytest.fixture
def pipeline(app):
    return svc.save_definition(BASE)


def step(p, name):
    return next(s for s in p.steps if s.name == name)


def snapshot(p):
    db.session.expire_all()
    return svc.export_definition(db.session.get(Pipeline, p.id)), db.session.get(Pipeline, p.id).version


def test_add_step_goes_last_and_bumps_version(pipeline):
    s = svc.save_step(pipeline, {"name": "notify", "type": "notification",
                                 "parameters": {"channels": ["ops"], "message": "done"}, "depends_on": ["report"]})
    assert pipeline.version == 2
    assert [x.name for x in pipeline.steps][-1] == "notify"
    assert s.dependencies == [step(pipeline, "report").id]


def test_edit_keeps_other_parameters_and_the_id_when_renamed(pipeline):
    build = step(pipeline, "build")
    svc.save_step(pipeline, {"parameters": {"command": "make all", "timeout": 5}}, build.id)  # unknown param kept as given
    svc.save_step(pipeline, {"name": "compile", "parameters": {"command": "make all"}}, build.id)
    db.session.expire_all()
    renamed = db.session.get(PipelineStep, build.id)
    assert renamed.name == "compile" and renamed.parameters == {"command": "make all", "timeout": 5}


def test_rename_follows_explicit_references(pipeline):
    deploy = step(pipeline, "deploy")
    svc.save_step(pipeline, {"name": "ship"}, deploy.id)
    report = step(pipeline, "report")
    assert [d.name for d in report.depends_on] == ["ship"] and report.depends_on[0].id == deploy.id


def test_a_cycle_is_refused_with_the_cycle_named_and_nothing_saved(pipeline):
    before = snapshot(pipeline)
    with pytest.raises(ValidationError) as e:
        svc.save_step(pipeline, {"depends_on": ["report"]}, step(pipeline, "build").id)
    assert "Dependency cycle: build -> " in e.value.fields["depends_on"]
    assert e.value.fields["depends_on"].endswith("-> build")
    assert snapshot(pipeline) == before


def test_field_errors_are_keyed_for_the_form_and_nothing_is_saved(pipeline):
    before = snapshot(pipeline)
    with pytest.raises(ValidationError) as e:
        svc.save_step(pipeline, {"name": "bad", "type": "shell", "parameters": {"command": ""},
                                 "retry_policy": {"max_retries": 99}, "conditions": {"type": "expression", "expression": "variables.x =="},
                                 "approval": {"users": ["a"], "required_approvals": 3}})
    f = e.value.fields
    assert set(f) >= {"parameters.command", "retry_policy.max_retries", "conditions.expression", "approval.required_approvals"}
    assert snapshot(pipeline) == before


def test_stale_version_is_refused(pipeline):
    with pytest.raises(svc.StaleVersion):
        svc.save_step(pipeline, {"name": "x", "type": "wait", "parameters": {"seconds": 1}}, expected_version=0)


def test_delete_step_drops_references_and_reports_them(pipeline):
    touched = svc.delete_step(pipeline, step(pipeline, "deploy").id)
    assert touched == ["report"]
    assert step(pipeline, "report").dependencies == []  # explicit and empty: now a root


def test_move_step_renumbers(pipeline):
    svc.move_step(pipeline, step(pipeline, "deploy").id, -1)
    assert [s.name for s in pipeline.steps] == ["build", "unit", "deploy", "lint", "report"]
    assert [s.order for s in pipeline.steps] == [1, 2, 3, 4, 5]


def test_groups_create_edit_members_and_delete(pipeline):
    g = svc.save_group(pipeline, {"name": "Finish", "sync_policy": "fail_fast"},
                       members=[step(pipeline, "report").id])
    assert g.id.startswith("finish-") and step(pipeline, "report").parallel_group == g.id
    svc.save_group(pipeline, {"name": "Finish line", "timeout_seconds": 30}, g.id, members=[])
    db.session.expire_all()
    same = db.session.get(ParallelGroup, g.id)
    assert same.name == "Finish line" and same.timeout_seconds == 30
    assert step(pipeline, "report").parallel_group is None  # an empty group may be saved
    tests_id = step(pipeline, "unit").parallel_group
    assert svc.delete_group(pipeline, tests_id) == ["unit", "lint"]
    assert step(pipeline, "unit").parallel_group is None


def test_members_of_a_group_may_not_depend_on_each_other(pipeline):
    with pytest.raises(ValidationError) as e:
        svc.save_step(pipeline, {"depends_on": ["unit"]}, step(pipeline, "lint").id)
    assert "another member of parallel group" in e.value.fields["depends_on"]


def test_duplicate_group_names_are_refused(pipeline):
    with pytest.raises(ValidationError) as e:
        svc.save_group(pipeline, {"name": "Tests"})
    assert "already named" in e.value.fields["name"]


def test_settings_and_inactive_survive_yaml_round_trip(pipeline):
    svc.update_settings(pipeline, {"active": False, "allow_self_approval": True,
                                   "notification_config": {"on_failure": True, "recipients": ["ops@example.test"]}})
    text = svc.to_yaml(pipeline)
    before = svc.export_definition(pipeline)
    svc.import_yaml(text, pipeline=pipeline)
    assert svc.export_definition(pipeline) == before and pipeline.active is False
    with pytest.raises(ValidationError) as e:
        svc.update_settings(pipeline, {"notification_config": ["x"]})
    assert "notification_config" in e.value.fields
    with pytest.raises(ValidationError) as e:  # an event with nowhere to send it
        svc.update_settings(pipeline, {"notification_config": {"on_failure": True}})
    assert "where to send" in e.value.fields["notification_config"]


def test_yaml_import_as_new_pipeline_and_bad_yaml(pipeline):
    copy = svc.import_yaml(svc.to_yaml(pipeline).replace("name: release", "name: release copy", 1))
    a, b = svc.export_definition(pipeline), svc.export_definition(copy)
    assert {**a, "name": "x"} == {**b, "name": "x"}
    with pytest.raises(ValidationError) as e:
        svc.import_yaml("name: [unclosed")
    assert "line 1" in e.value.message


def test_list_filters_and_latest_execution_in_one_query(app, pipeline):
    other = svc.save_definition({"name": "Nightly_backup", "active": False, "steps": []})
    svc.save_definition({"name": "Nightly backup", "active": False, "steps": []})
    assert [p.name for p in svc.list_pipelines(search="y_b")] == ["Nightly_backup"]  # _ is no wildcard
    assert [p.name for p in svc.list_pipelines(search="SHIP")] == ["release"]  # description, any case
    assert [p.name for p in svc.list_pipelines(active=True)] == ["release"]
    for i, status in enumerate(["failed", "success"]):
        db.session.add(WorkflowExecution(pipeline_id=pipeline.id, execution_id=f"e{i}", status=status))
    db.session.commit()
    ids = [pipeline.id, other.id]
    statements = []
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        latest = svc.latest_executions(ids)
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert latest[ids[0]]["status"] == "success" and ids[1] not in latest


def test_dependency_view_marks_the_stage_rule(pipeline):
    view = analysis.dependency_view(pipeline)
    assert view[step(pipeline, "deploy").id] == {"names": ["unit", "lint"], "implicit": True}
    assert view[step(pipeline, "report").id] == {"names": ["deploy"], "implicit": False}


def test_evaluate_condition_with_sample_and_given_context(pipeline):
    deploy = step(pipeline, "deploy")
    missing = analysis.evaluate_condition(pipeline, deploy)  # the sample has no variables
    assert missing["result"] is None and "Unknown key 'env'" in missing["error"]
    ok = analysis.evaluate_condition(pipeline, deploy, context={"variables": {"env": "prod"}})
    assert ok["result"] is True and "variables.env" in ok["explanation"]
    report = step(pipeline, "report")
    rule = analysis.evaluate_condition(pipeline, report, {"type": "on_failure"},
                                       {"dependency_outcomes": {"deploy": "failed"}})
    assert rule == {"result": True, "error": None, "explanation": "runs: dependency deploy failed (rule on_failure)"}
    bad = analysis.evaluate_condition(pipeline, report, {"type": "expression", "expression": "nope =="})
    assert bad["result"] is None and bad["error"]
    # the rule of a step after a group sees the group, as the planner does
    assert analysis.sample_context(pipeline, deploy)["dependency_outcomes"] == {"Tests": "success"}
    with pytest.raises(ValidationError):
        analysis.evaluate_condition(pipeline, report, context={"dependency_outcomes": ["x"]})


def test_graph_layout(pipeline):
    layout, result = analysis.graph_view(pipeline)
    names = {n["name"]: n for n in layout["nodes"]}
    assert set(names) == {"build", "unit", "lint", "deploy", "report"}
    assert names["build"]["x"] < names["unit"]["x"] < names["deploy"]["x"] < names["report"]["x"]
    assert names["unit"]["x"] == names["lint"]["x"] and names["unit"]["y"] != names["lint"]["y"]
    (group,) = layout["groups"]
    assert group["sync_policy"] == "wait_all" and "Tests" in group["label"]
    assert group["x"] < names["unit"]["x"] and group["y"] + group["h"] > max(names["unit"]["y"], names["lint"]["y"])
    edges = {(e["from"], e["to"]): e for e in layout["edges"]}
    assert edges[("build", "unit")]["implicit"] and edges[("Tests", "deploy")]["from_group"]
    assert not edges[("deploy", "report")]["implicit"]
    assert result["critical_path"]["steps"] == ["build", "unit", "deploy", "report"]
    assert names["unit"]["critical"] and not names["lint"]["critical"]
    assert edges[("build", "unit")]["critical"] and edges[("Tests", "deploy")]["critical"]
    assert all(n["x"] + n["w"] <= layout["width"] and n["y"] + n["h"] <= layout["height"] for n in layout["nodes"])


def test_layout_of_a_cycle_draft_does_not_fail():
    from webapp.engine.types import PipelineDef, StepDef
    defn = PipelineDef(steps=(StepDef(1, "a", 1, dependencies=(2,)), StepDef(2, "b", 2, dependencies=(1,))))
    assert len(graph_svg.layout(defn)["nodes"]) == 2


def test_advanced_config_uses_ids_and_ansflow_keys(pipeline):
    from webapp.services.accounts import create_user

    create_user("alice", "correct-horse-battery", "approver")  # listed approvers must exist (approver_check)
    deploy, build = step(pipeline, "deploy"), step(pipeline, "build")
    saved = svc.update_advanced_config(pipeline, deploy, {
        "dependencies": [build.id], "approval_required": True, "approval_users": ["alice"],
        "approval_config": {"required_approvals": 1, "timeout_hours": 2}, "retry_policy": {"max_retries": 2},
        "conditions": {"type": "on_success", "depends_on": [build.id]}, "parallel_group": None, "timeout_seconds": 60,
        "continue_on_failure": True})
    assert saved.dependencies == [build.id] and saved.approval_users == ["alice"]
    assert saved.conditions == {"type": "on_success", "depends_on": [build.id]} and saved.continue_on_failure
    with pytest.raises(ValidationError) as e:
        svc.update_advanced_config(pipeline, deploy, {"dependencies": [999], "color": "red"})
    assert set(e.value.fields) == {"dependencies", "color"}
    with pytest.raises(ValidationError) as e:
        svc.update_advanced_config(pipeline, deploy, {"approval_required": True, "approval_users": ["a"],
                                                      "approval_config": {"required_approvals": 5}})
    assert "approval_config.required_approvals" in e.value.fields
    with pytest.raises(ValidationError) as e:
        svc.update_advanced_config(pipeline, build, {"dependencies": [step(pipeline, "report").id]})
    assert "cycle" in e.value.fields["dependencies"]


def test_tool_mappings(pipeline):
    m = svc.save_mapping({"pipeline": pipeline.id, "tool_name": "Jenkins", "tool_url": "https://ci.example.com",
                          "external_job_name": "release"})
    assert m.tool_type == "jenkins" and m.active
    svc.save_mapping({"active": False}, mapping=m)
    assert svc.list_mappings(pipeline.id)[0].active is False
    with pytest.raises(ValidationError) as e:
        svc.save_mapping({"pipeline": 999, "tool_name": "", "tool_url": "ftp://x", "extra": 1})
    assert set(e.value.fields) == {"pipeline", "tool_name", "tool_url", "extra"}
