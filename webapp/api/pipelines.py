"""Pipelines collection, step advanced config, condition evaluation, analysis, YAML import/export,
and PipelineToolMapping CRUD (/api/v1, AnsFlow's shapes)."""
from __future__ import annotations

from flask import Response, jsonify, request
from flask_login import current_user

from ..security import api_role_required
from ..services import analysis
from ..services import pipeline_access as access
from ..services import pipelines as svc
from ..schemas import api as schema
from . import body, bp, found, query
from .spec import validate

TAGS = ("pipelines",)
MAPPINGS = ("pipeline-mappings",)


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


def _step(pipeline_id: int, step_id: int):
    p = found(svc.get_pipeline(pipeline_id), "pipeline")
    return p, found(svc.step_by_id(p, step_id), "step in this pipeline")


def _definition() -> dict:
    """The definition as sent: the service validates it whole."""
    body()  # refused unless a JSON object that matches PipelineBody
    return request.get_json()


# --------------------------------------------------------------------------- pipelines


@bp.get("/pipelines/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.PipelineListQuery, out=schema.PipelineList)
def list_pipelines():
    """List pipelines"""
    q = query()
    return jsonify({"results": [pipeline_json(p) for p in svc.list_pipelines(search=q.search, active=q.active)]})


@bp.post("/pipelines/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.PipelineBody, ok=201, out=schema.PipelineFull)
def create_pipeline():
    """Create a pipeline from a definition"""
    p = svc.save_definition(_definition(), owner=current_user)
    return jsonify(pipeline_json(p, full=True)), 201


@bp.get("/pipelines/<id:pipeline_id>/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.PipelineFull)
def get_pipeline(pipeline_id: int):
    """A pipeline with its definition"""
    return jsonify(pipeline_json(found(svc.get_pipeline(pipeline_id), "pipeline"), full=True))


@bp.put("/pipelines/<id:pipeline_id>/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.PipelineBody, out=schema.PipelineFull)
def update_pipeline(pipeline_id: int):
    """Replace a pipeline's definition"""
    p = found(svc.get_pipeline(pipeline_id), "pipeline")
    return jsonify(pipeline_json(svc.save_definition(_definition(), pipeline=p), full=True))


@bp.delete("/pipelines/<id:pipeline_id>/")
@api_role_required("maintainer")
@validate(tags=TAGS, ok=204)
def delete_pipeline(pipeline_id: int):
    """Delete a pipeline"""
    svc.delete_pipeline(found(svc.get_pipeline(pipeline_id), "pipeline"))
    return "", 204


@bp.get("/pipelines/<id:pipeline_id>/audit/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.AuditList)
def pipeline_audit(pipeline_id: int):
    """Who changed the pipeline, its approval rules, owner and maintainers, newest first"""
    p = found(svc.get_pipeline(pipeline_id), "pipeline")
    return jsonify({"results": [access.audit_json(e) for e in access.audit_log(p)]})


@bp.get("/pipelines/<id:pipeline_id>/export/")
@api_role_required("viewer")
@validate(tags=TAGS)
def export_pipeline(pipeline_id: int):
    """The pipeline's definition as YAML (text/yaml)"""
    return Response(svc.to_yaml(found(svc.get_pipeline(pipeline_id), "pipeline")), mimetype="text/yaml")


@bp.post("/pipelines/import/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.ImportBody, ok=201, out=schema.PipelineFull)
def import_pipeline():
    """Create a pipeline from a YAML definition: the body itself (any content type), or JSON {yaml}"""
    text = body().get("yaml") if request.is_json else None
    if text is None:
        text = request.get_data(as_text=True)
    p = svc.import_yaml(text, owner=current_user)
    return jsonify(pipeline_json(p, full=True)), 201


# --------------------------------------------------------------------------- steps


@bp.put("/pipelines/<id:pipeline_id>/steps/<id:step_id>/advanced-config/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.AdvancedConfigBody, out=schema.Step)
def advanced_config(pipeline_id: int, step_id: int):
    """Update a step's conditions, approval, retry policy, timeout, group and dependencies (ids); the whole definition is validated"""
    p, step = _step(pipeline_id, step_id)
    return jsonify(step_json(svc.update_advanced_config(p, step, body())))


@bp.post("/pipelines/<id:pipeline_id>/steps/<id:step_id>/evaluate-condition/")
@api_role_required("viewer")
@validate(tags=TAGS, json=schema.EvaluateConditionBody, out=schema.ConditionResult)
def evaluate_condition(pipeline_id: int, step_id: int):
    """Evaluate the step's saved (or the given) conditions against a sample context: {result, error, explanation}"""
    p, step = _step(pipeline_id, step_id)
    data = body() if request.get_data() else {}
    kwargs = {"context": data.get("context")}
    if "conditions" in data:
        kwargs["conditions"] = data["conditions"]
    return jsonify(analysis.evaluate_condition(p, step, **kwargs))


@bp.get("/pipelines/<id:pipeline_id>/analyze-workflow/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.Analysis)
def analyze_workflow(pipeline_id: int):
    """Critical path, slack, parallelism, redundant edges and suggestions of the saved definition"""
    return jsonify(analysis.analyze_pipeline(found(svc.get_pipeline(pipeline_id), "pipeline")))


# --------------------------------------------------------------------------- tool mappings


@bp.get("/pipeline-mappings/")
@api_role_required("viewer")
@validate(tags=MAPPINGS, query=schema.MappingListQuery, out=schema.MappingList)
def list_mappings():
    """List tool mappings"""
    return jsonify({"results": [mapping_json(m) for m in svc.list_mappings(query().pipeline)]})


@bp.post("/pipeline-mappings/")
@api_role_required("maintainer")
@validate(tags=MAPPINGS, json=schema.MappingBody, ok=201, out=schema.Mapping)
def create_mapping():
    """Create a tool mapping"""
    return jsonify(mapping_json(svc.save_mapping(body()))), 201


@bp.get("/pipeline-mappings/<id:mapping_id>/")
@api_role_required("viewer")
@validate(tags=MAPPINGS, out=schema.Mapping)
def get_mapping(mapping_id: int):
    """A tool mapping"""
    return jsonify(mapping_json(found(svc.get_mapping(mapping_id), "mapping")))


@bp.put("/pipeline-mappings/<id:mapping_id>/")
@api_role_required("maintainer")
@validate(tags=MAPPINGS, json=schema.MappingBody, out=schema.Mapping)
def update_mapping(mapping_id: int):
    """Update a tool mapping (the fields sent)"""
    m = found(svc.get_mapping(mapping_id), "mapping")
    return jsonify(mapping_json(svc.save_mapping(body(), mapping=m)))


@bp.delete("/pipeline-mappings/<id:mapping_id>/")
@api_role_required("maintainer")
@validate(tags=MAPPINGS, ok=204)
def delete_mapping(mapping_id: int):
    """Delete a tool mapping"""
    svc.delete_mapping(found(svc.get_mapping(mapping_id), "mapping"))
    return "", 204
