"""Pipelines collection, step advanced config, condition evaluation, analysis, YAML import/export,
and PipelineToolMapping CRUD (/api/v1, AnsFlow's shapes)."""
from __future__ import annotations

from flask import Response, jsonify, request
from flask_login import current_user

from ..security import api_role_required
from ..services import analysis
from ..services import pipeline_access as access
from ..services import pipelines as svc
from . import bp, error
from .openapi import _op, register


def pipeline_json(p, full: bool = False) -> dict:
    out = {
        "id": p.id, "name": p.name, "description": p.description, "active": p.active,
        "version": p.version, "owner": p.owner.username if p.owner else None,
        "maintainers": [m.username for m in p.maintainers],
        "steps": len(p.steps), "created_at": p.created_at.isoformat() + "Z",
        "updated_at": p.updated_at.isoformat() + "Z",
    }
    if full:
        out["definition"] = svc.export_definition(p)
        out["step_ids"] = {s.name: s.id for s in p.steps}
        out["groups"] = [{"id": g.id, "name": g.name, "sync_policy": g.sync_policy,
                          "timeout_seconds": g.timeout_seconds} for g in p.groups]
    return out


def step_json(s) -> dict:
    return {
        "id": s.id, "pipeline": s.pipeline_id, "name": s.name, "order": s.order, "step_type": s.step_type,
        "parameters": s.parameters or {}, "dependencies": s.dependencies, "parallel_group": s.parallel_group,
        "conditions": s.conditions, "approval_required": s.approval_required or s.step_type == "approval",
        "approval_users": s.approval_users or [], "approval_config": s.approval_config or {},
        "retry_policy": s.retry_policy, "notification_config": s.notification_config,
        "timeout_seconds": s.timeout_seconds, "continue_on_failure": s.continue_on_failure,
        "estimated_duration": s.estimated_duration,
    }


def mapping_json(m) -> dict:
    return {"id": m.id, "pipeline": m.pipeline_id, "pipeline_name": m.pipeline.name if m.pipeline else None,
            "tool_name": m.tool_name, "tool_type": m.tool_type, "tool_url": m.tool_url,
            "external_job_name": m.external_job_name, "active": m.active,
            "created_at": m.created_at.isoformat() + "Z" if m.created_at else None}


def _json_body(optional: bool = False) -> dict:
    if optional and not request.get_data():
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise svc.ValidationError("Send a JSON object.", {"body": "expected a JSON object"})
    return data


def _bool_arg(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise svc.ValidationError(f"?{name}= must be true or false.", {name: "expected true or false"})


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise svc.ValidationError(f"?{name}= must be an id.", {name: "expected an integer id"}) from None


@bp.errorhandler(access.Forbidden)
def _forbidden(e: access.Forbidden):
    """Not this user's to change (services/pipeline_access.py): 403, nothing saved."""
    return error(e.message, 403, e.fields)


def _pipeline_and_step(pipeline_id: int, step_id: int):
    p = svc.get_pipeline(pipeline_id)
    if p is None:
        return None, None, error("pipeline not found", 404)
    step = svc.step_by_id(p, step_id)
    if step is None:
        return p, None, error("step not found in this pipeline", 404)
    return p, step, None


# --------------------------------------------------------------------------- pipelines


@bp.get("/pipelines/")
@api_role_required("viewer")
def list_pipelines():
    items = svc.list_pipelines(search=request.args.get("search"), active=_bool_arg("active"))
    return jsonify({"results": [pipeline_json(p) for p in items]})


@bp.post("/pipelines/")
@api_role_required("maintainer")
def create_pipeline():
    p = svc.save_definition(_json_body(), owner=current_user)
    return jsonify(pipeline_json(p, full=True)), 201


@bp.get("/pipelines/<int:pipeline_id>/")
@api_role_required("viewer")
def get_pipeline(pipeline_id: int):
    p = svc.get_pipeline(pipeline_id)
    if p is None:
        return error("pipeline not found", 404)
    return jsonify(pipeline_json(p, full=True))


@bp.put("/pipelines/<int:pipeline_id>/")
@api_role_required("maintainer")
def update_pipeline(pipeline_id: int):
    p = svc.get_pipeline(pipeline_id)
    if p is None:
        return error("pipeline not found", 404)
    p = svc.save_definition(_json_body(), pipeline=p)
    return jsonify(pipeline_json(p, full=True))


@bp.delete("/pipelines/<int:pipeline_id>/")
@api_role_required("maintainer")
def delete_pipeline(pipeline_id: int):
    p = svc.get_pipeline(pipeline_id)
    if p is None:
        return error("pipeline not found", 404)
    svc.delete_pipeline(p)
    return "", 204


@bp.get("/pipelines/<int:pipeline_id>/audit/")
@api_role_required("viewer")
def pipeline_audit(pipeline_id: int):
    """Who changed the pipeline, its approval rules, owner and maintainers, newest first."""
    p = svc.get_pipeline(pipeline_id)
    if p is None:
        return error("pipeline not found", 404)
    return jsonify({"results": [access.audit_json(e) for e in access.audit_log(p)]})


@bp.get("/pipelines/<int:pipeline_id>/export/")
@api_role_required("viewer")
def export_pipeline(pipeline_id: int):
    p = svc.get_pipeline(pipeline_id)
    if p is None:
        return error("pipeline not found", 404)
    return Response(svc.to_yaml(p), mimetype="text/yaml")


@bp.post("/pipelines/import/")
@api_role_required("maintainer")
def import_pipeline():
    """The body is the YAML itself (any content type), or JSON {"yaml": "..."}."""
    text = None
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("yaml"), str):
            text = body["yaml"]
    if text is None:
        text = request.get_data(as_text=True)
    p = svc.import_yaml(text, owner=current_user)
    return jsonify(pipeline_json(p, full=True)), 201


# --------------------------------------------------------------------------- steps


@bp.put("/pipelines/<int:pipeline_id>/steps/<int:step_id>/advanced-config/")
@api_role_required("maintainer")
def advanced_config(pipeline_id: int, step_id: int):
    p, step, err = _pipeline_and_step(pipeline_id, step_id)
    if err:
        return err
    saved = svc.update_advanced_config(p, step, _json_body())
    return jsonify(step_json(saved))


@bp.post("/pipelines/<int:pipeline_id>/steps/<int:step_id>/evaluate-condition/")
@api_role_required("viewer")
def evaluate_condition(pipeline_id: int, step_id: int):
    p, step, err = _pipeline_and_step(pipeline_id, step_id)
    if err:
        return err
    body = _json_body(optional=True)
    unknown = sorted(set(body) - {"conditions", "context"})
    if unknown:
        raise svc.ValidationError("Send {conditions, context}.", {k: "unknown field" for k in unknown})
    kwargs = {"context": body.get("context")}
    if "conditions" in body:
        kwargs["conditions"] = body["conditions"]
    return jsonify(analysis.evaluate_condition(p, step, **kwargs))


@bp.get("/pipelines/<int:pipeline_id>/analyze-workflow/")
@api_role_required("viewer")
def analyze_workflow(pipeline_id: int):
    p = svc.get_pipeline(pipeline_id)
    if p is None:
        return error("pipeline not found", 404)
    return jsonify(analysis.analyze_pipeline(p))


# --------------------------------------------------------------------------- tool mappings


@bp.get("/pipeline-mappings/")
@api_role_required("viewer")
def list_mappings():
    return jsonify({"results": [mapping_json(m) for m in svc.list_mappings(_int_arg("pipeline"))]})


@bp.post("/pipeline-mappings/")
@api_role_required("maintainer")
def create_mapping():
    return jsonify(mapping_json(svc.save_mapping(_json_body()))), 201


@bp.get("/pipeline-mappings/<int:mapping_id>/")
@api_role_required("viewer")
def get_mapping(mapping_id: int):
    m = svc.get_mapping(mapping_id)
    if m is None:
        return error("mapping not found", 404)
    return jsonify(mapping_json(m))


@bp.put("/pipeline-mappings/<int:mapping_id>/")
@api_role_required("maintainer")
def update_mapping(mapping_id: int):
    m = svc.get_mapping(mapping_id)
    if m is None:
        return error("mapping not found", 404)
    return jsonify(mapping_json(svc.save_mapping(_json_body(), mapping=m)))


@bp.delete("/pipeline-mappings/<int:mapping_id>/")
@api_role_required("maintainer")
def delete_mapping(mapping_id: int):
    m = svc.get_mapping(mapping_id)
    if m is None:
        return error("mapping not found", 404)
    svc.delete_mapping(m)
    return "", 204


# --------------------------------------------------------------------------- OpenAPI


def _not_found(op: dict) -> dict:
    op["responses"]["404"] = {"description": "Not found", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return op


def _query(op: dict, *params: tuple[str, str, str]) -> dict:
    op["parameters"] = [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
                        for n, t, d in params]
    return op


def _document() -> None:
    t = ["pipelines"]
    list_op = _query(_op("List pipelines", tags=t), ("active", "boolean", "only active (true) or inactive (false) pipelines"),
                     ("search", "string", "case-insensitive match on name or description"))
    register("/api/v1/pipelines/", "get", list_op)
    export = _not_found(_op("The pipeline's definition as YAML", tags=t))
    export["responses"]["200"] = {"description": "YAML", "content": {"text/yaml": {"schema": {"type": "string"}}}}
    register("/api/v1/pipelines/{id}/export/", "get", export)
    register("/api/v1/pipelines/{id}/audit/", "get", _not_found(_op(
        "The pipeline's audit log, newest first: {results: [{actor, action, version, summary, before, after, at}]}"
        " (before/after hold the approval rules, owner or maintainers a change touched)", tags=t)))
    imp = _op("Create a pipeline from a YAML definition (the body, or JSON {yaml})", ok=201, tags=t)
    imp["requestBody"] = {"required": True, "content": {
        "text/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object", "properties": {"yaml": {"type": "string"}}}}}}
    imp["responses"]["422"] = {"description": "Invalid YAML or definition", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    register("/api/v1/pipelines/import/", "post", imp)
    register("/api/v1/pipelines/{id}/steps/{step_id}/advanced-config/", "put", _not_found(_body(_op(
        "Update a step's conditions, approval, retry policy, timeout, group and dependencies (ids); "
        "the whole definition is validated", body="-", tags=t), ADVANCED_CONFIG)))
    register("/api/v1/pipelines/{id}/steps/{step_id}/evaluate-condition/", "post", _not_found(_body(_op(
        "Evaluate the step's saved (or the given) conditions against a sample context: {result, error, explanation}",
        body="-", tags=t), EVALUATE_CONDITION, required=False)))
    register("/api/v1/pipelines/{id}/analyze-workflow/", "get", _not_found(_op(
        "Critical path, slack, parallelism, redundant edges and suggestions of the saved definition", tags=t)))
    tm = ["pipeline-mappings"]
    register("/api/v1/pipeline-mappings/", "get", _query(_op("List tool mappings", tags=tm),
                                                         ("pipeline", "integer", "only this pipeline's mappings")))
    register("/api/v1/pipeline-mappings/", "post", _body(_op("Create a tool mapping", body="-", ok=201, tags=tm), MAPPING))
    register("/api/v1/pipeline-mappings/{id}/", "get", _not_found(_op("A tool mapping", tags=tm)))
    register("/api/v1/pipeline-mappings/{id}/", "put", _not_found(_body(_op("Update a tool mapping (the fields sent)", body="-", tags=tm), MAPPING)))
    register("/api/v1/pipeline-mappings/{id}/", "delete", _not_found(_op("Delete a tool mapping", ok=204, tags=tm)))


def _body(op: dict, schema: dict, required: bool = True) -> dict:
    op["requestBody"] = {"required": required, "content": {"application/json": {"schema": schema}}}
    return op


ADVANCED_CONFIG = {"type": "object", "properties": {
    "conditions": {"type": "object", "nullable": True, "properties": {
        "type": {"type": "string", "enum": ["on_success", "on_failure", "always", "one_success", "none_failed", "expression"],
                 "description": "The trigger rule (default on_success). 'expression' is AnsFlow's older form and is"
                                " stored as on_success plus the expression."},
        "expression": {"type": "string", "description": "Optional CEL, checked in addition to the rule; it"
                       " replaces on_success only when it calls always(), success(), failure() or cancelled()."},
        "depends_on": {"type": "array", "items": {"type": "integer"}}}},
    "approval_required": {"type": "boolean"}, "approval_users": {"type": "array", "items": {"type": "string"}},
    "approval_config": {"type": "object", "properties": {
        "required_approvals": {"type": "integer"}, "timeout_hours": {"type": "number"},
        "auto_approve_on_timeout": {"type": "boolean"}, "reminder_hours": {"type": "number"}, "message": {"type": "string"}}},
    "retry_policy": {"type": "object", "nullable": True}, "timeout_seconds": {"type": "integer", "nullable": True},
    "continue_on_failure": {"type": "boolean"}, "parallel_group": {"type": "string", "nullable": True},
    "dependencies": {"type": "array", "items": {"type": "integer"}, "nullable": True,
                     "description": "step ids; null: the stage rule"}}}
EVALUATE_CONDITION = {"type": "object", "properties": {
    "conditions": {"type": "object", "description": "default: the step's saved conditions (depends_on as step ids)"},
    "context": {"type": "object", "description": "laid over a sample where every step succeeded; "
                "dependency_outcomes {name: success|failed|skipped|cancelled|upstream_failed} decides trigger rules"}}}
MAPPING = {"type": "object", "properties": {
    "pipeline": {"type": "integer"}, "tool_name": {"type": "string"}, "tool_type": {"type": "string"},
    "tool_url": {"type": "string"}, "external_job_name": {"type": "string"}, "active": {"type": "boolean"}}}

_document()
