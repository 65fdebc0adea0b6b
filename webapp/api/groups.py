"""Parallel groups (/api/v1/pipelines/parallel-groups/, alias /api/v1/parallel-groups/).

Group ids are global keys ("tests-3fa2c1"); a new group's `id`, when given, is its id inside
the pipeline definition and becomes the key's prefix. Every change saves the whole pipeline
definition through services.pipelines, so it is validated like any other edit."""
from __future__ import annotations

from flask import jsonify

from ..security import api_role_required
from ..services import pipelines as svc
from ..schemas import api as schema
from . import body, bp, found, query
from .spec import validate

TAGS = ("parallel-groups",)
REFUSED = "The parallel group was not saved: fix the fields below."


def group_json(g) -> dict:
    return {"id": g.id, "pipeline": g.pipeline_id, "name": g.name, "description": g.description or "",
            "sync_policy": g.sync_policy, "timeout_seconds": g.timeout_seconds,
            "steps": svc.group_member_ids(g)}


@bp.get("/pipelines/parallel-groups/")
@bp.get("/parallel-groups/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.GroupListQuery, out=schema.GroupList)
def list_groups():
    """List parallel groups"""
    return jsonify({"results": [group_json(g) for g in svc.list_groups(query().pipeline)]})


@bp.post("/pipelines/parallel-groups/")
@bp.post("/parallel-groups/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.GroupCreateBody, ok=201, out=schema.Group)
def create_group():
    """Create a parallel group"""
    data = body()
    p = svc.get_pipeline(data["pipeline"]) if "pipeline" in data else None
    if p is None:
        raise svc.ValidationError(REFUSED, {"pipeline": "pipeline must be the id of an existing pipeline"})
    fields = {k: data[k] for k in ("id", "name", "description", "sync_policy", "timeout_seconds") if k in data}
    if not fields.get("name"):
        fields["name"] = fields.get("id") or ""
        if not fields["name"]:
            raise svc.ValidationError(REFUSED, {"name": "a parallel group needs a name"})
    return jsonify(group_json(svc.save_group(p, fields, members=data.get("steps")))), 201


@bp.put("/pipelines/parallel-groups/<group_id>/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.GroupUpdateBody, out=schema.Group)
def update_group(group_id: str):
    """Update a parallel group (the fields sent)"""
    g = found(svc.get_group(group_id), "parallel group")
    data = body()
    if "pipeline" in data and data["pipeline"] != g.pipeline_id:
        raise svc.ValidationError("A group cannot move to another pipeline.",
                                  {"pipeline": "a group stays in its pipeline"})
    fields = {k: data[k] for k in ("name", "description", "sync_policy", "timeout_seconds") if k in data}
    return jsonify(group_json(svc.save_group(g.pipeline, fields, g.id, members=data.get("steps"))))


@bp.delete("/pipelines/parallel-groups/<group_id>/")
@api_role_required("maintainer")
@validate(tags=TAGS, ok=204)
def delete_group(group_id: str):
    """Delete a parallel group (its steps stay, outside any group)"""
    g = found(svc.get_group(group_id), "parallel group")
    svc.delete_group(g.pipeline, g.id)
    return "", 204
