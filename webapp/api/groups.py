"""Parallel groups (/api/v1/pipelines/parallel-groups/, alias /api/v1/parallel-groups/).

Group ids are global keys ("tests-3fa2c1"); a new group's `id`, when given, is its id inside
the pipeline definition and becomes the key's prefix. Every change saves the whole pipeline
definition through services.pipelines, so it is validated like any other edit."""
from __future__ import annotations

from flask import jsonify, request

from ..security import api_role_required
from ..services import pipelines as svc
from . import bp, error
from .openapi import _op, register

GROUP_FIELDS = ("pipeline", "id", "name", "description", "sync_policy", "timeout_seconds", "steps")


def group_json(g) -> dict:
    return {"id": g.id, "pipeline": g.pipeline_id, "name": g.name, "description": g.description or "",
            "sync_policy": g.sync_policy, "timeout_seconds": g.timeout_seconds,
            "steps": svc.group_member_ids(g)}


def _body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise svc.ValidationError("Send a JSON object.", {"body": "expected a JSON object"})
    return data


def _check(data: dict, allowed: tuple[str, ...]) -> list[int] | None:
    errors = {k: f"unknown field: use {', '.join(allowed)}" for k in sorted(set(data) - set(allowed))}
    steps = data.get("steps")
    if steps is not None and (not isinstance(steps, list)
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in steps)):
        errors["steps"] = "steps must be a list of step ids"
    if "id" in data and (not isinstance(data["id"], str) or not data["id"]):
        errors["id"] = "id must be a non-empty string"
    if errors:
        raise svc.ValidationError("The parallel group was not saved: fix the fields below.", errors)
    return steps


@bp.get("/pipelines/parallel-groups/")
@bp.get("/parallel-groups/")
@api_role_required("viewer")
def list_groups():
    raw = request.args.get("pipeline")
    pipeline_id = None
    if raw:
        if not raw.isdigit():
            raise svc.ValidationError("?pipeline= must be an id.", {"pipeline": "expected an integer id"})
        pipeline_id = int(raw)
    return jsonify({"results": [group_json(g) for g in svc.list_groups(pipeline_id)]})


@bp.post("/pipelines/parallel-groups/")
@bp.post("/parallel-groups/")
@api_role_required("maintainer")
def create_group():
    data = _body()
    steps = _check(data, GROUP_FIELDS)
    pid = data.get("pipeline")
    p = svc.get_pipeline(pid) if isinstance(pid, int) and not isinstance(pid, bool) else None
    if p is None:
        raise svc.ValidationError("The parallel group was not saved: fix the fields below.",
                                  {"pipeline": "pipeline must be the id of an existing pipeline"})
    fields = {k: data[k] for k in ("id", "name", "description", "sync_policy", "timeout_seconds") if k in data}
    if not fields.get("name"):
        fields["name"] = fields.get("id") or ""
        if not fields["name"]:
            raise svc.ValidationError("The parallel group was not saved: fix the fields below.",
                                      {"name": "a parallel group needs a name"})
    g = svc.save_group(p, fields, members=steps)
    return jsonify(group_json(g)), 201


@bp.put("/pipelines/parallel-groups/<group_id>/")
@api_role_required("maintainer")
def update_group(group_id: str):
    g = svc.get_group(group_id)
    if g is None:
        return error("parallel group not found", 404)
    data = _body()
    steps = _check(data, ("name", "description", "sync_policy", "timeout_seconds", "steps", "pipeline"))
    if "pipeline" in data and data["pipeline"] != g.pipeline_id:
        raise svc.ValidationError("A group cannot move to another pipeline.",
                                  {"pipeline": "a group stays in its pipeline"})
    fields = {k: data[k] for k in ("name", "description", "sync_policy", "timeout_seconds") if k in data}
    saved = svc.save_group(g.pipeline, fields, g.id, members=steps)
    return jsonify(group_json(saved))


@bp.delete("/pipelines/parallel-groups/<group_id>/")
@api_role_required("maintainer")
def delete_group(group_id: str):
    g = svc.get_group(group_id)
    if g is None:
        return error("parallel group not found", 404)
    svc.delete_group(g.pipeline, g.id)
    return "", 204


def _document() -> None:
    t = ["parallel-groups"]
    schema = {"type": "object", "properties": {
        "pipeline": {"type": "integer"}, "id": {"type": "string", "description": "local id (create only)"},
        "name": {"type": "string"}, "description": {"type": "string"},
        "sync_policy": {"type": "string", "enum": ["wait_all", "wait_any", "fail_fast"]},
        "timeout_seconds": {"type": "integer", "nullable": True},
        "steps": {"type": "array", "items": {"type": "integer"}, "description": "member step ids (replaces the members)"}}}

    def with_body(op):
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        return op

    def listing(summary):
        op = _op(summary, tags=t)
        op["parameters"] = [{"name": "pipeline", "in": "query", "required": False, "schema": {"type": "integer"},
                             "description": "only this pipeline's groups"}]
        return op

    def not_found(op):
        op["responses"]["404"] = {"description": "Not found",
                                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        return op

    for path in ("/api/v1/pipelines/parallel-groups/", "/api/v1/parallel-groups/"):
        register(path, "get", listing("List parallel groups"))
        register(path, "post", with_body(_op("Create a parallel group", body="-", ok=201, tags=t)))
    register("/api/v1/pipelines/parallel-groups/{group_id}/", "put",
             not_found(with_body(_op("Update a parallel group (the fields sent)", body="-", tags=t))))
    register("/api/v1/pipelines/parallel-groups/{group_id}/", "delete",
             not_found(_op("Delete a parallel group (its steps stay, outside any group)", ok=204, tags=t)))


_document()
