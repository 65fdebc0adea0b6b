"""Pipelines collection."""
from __future__ import annotations

from flask import jsonify, request
from flask_login import current_user

from ..services import pipelines as svc
from ..security import api_role_required
from . import bp, error


def pipeline_json(p, full: bool = False) -> dict:
    out = {
        "id": p.id, "name": p.name, "description": p.description, "active": p.active,
        "version": p.version, "owner": p.owner.username if p.owner else None,
        "steps": len(p.steps), "created_at": p.created_at.isoformat() + "Z",
        "updated_at": p.updated_at.isoformat() + "Z",
    }
    if full:
        out["definition"] = svc.export_definition(p)
        out["step_ids"] = {s.name: s.id for s in p.steps}
        out["groups"] = [{"id": g.id, "name": g.name, "sync_policy": g.sync_policy,
                          "timeout_seconds": g.timeout_seconds} for g in p.groups]
    return out


def _json_body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise svc.ValidationError("Send a JSON object.", {"body": "expected a JSON object"})
    return data


@bp.get("/pipelines/")
@api_role_required("viewer")
def list_pipelines():
    return jsonify({"results": [pipeline_json(p) for p in svc.list_pipelines()]})


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
