"""Workflow metrics endpoints (/api/v1): one pipeline (AnsFlow's workflow-metrics) and overall."""
from __future__ import annotations

from flask import jsonify, request

from ..security import api_role_required
from ..services import metrics
from ..services import pipelines as pipelines_svc
from . import bp, error
from .openapi import _op, register


def _window() -> tuple[int, int]:
    return metrics.clamp_window(request.args.get("days"), request.args.get("limit"))


@bp.get("/pipelines/<int:pipeline_id>/workflow-metrics/")
@api_role_required("viewer")
def pipeline_workflow_metrics(pipeline_id: int):
    p = pipelines_svc.get_pipeline(pipeline_id)
    if p is None:
        return error("pipeline not found", 404)
    days, limit = _window()
    data = metrics.workflow_metrics(p.id, days=days, limit=limit)
    return jsonify(metrics.jsonable({"pipeline": {"id": p.id, "name": p.name, "version": p.version}, **data}))


@bp.get("/metrics/")
@api_role_required("viewer")
def overall_metrics():
    days, limit = _window()
    return jsonify(metrics.jsonable(metrics.workflow_metrics(None, days=days, limit=limit)))


def _document() -> None:
    params = [
        {"name": "days", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": metrics.MAX_DAYS, "default": metrics.DEFAULT_DAYS},
         "description": "window: executions created in the last N days"},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": metrics.MAX_LIMIT, "default": metrics.DEFAULT_LIMIT},
         "description": "window: at most the N most recent of those executions"},
    ]
    described = (
        "Executions by status, success rate (successful / finished, %), successful executions with bypassed "
        "steps (bypassed_executions), median, p95 and average duration, average queue wait of step attempts, "
        "retry attempts and the executions that had them, most failing steps (executions in which the step "
        "finally failed, with its failed attempts), flaky steps (executions in which it failed, then passed on "
        "a retry), slowest steps (median of attempts), recent failures and executions per day (for windows up "
        "to 90 days), over a bounded window")
    one = _op(f"Workflow metrics of a pipeline: {described}", tags=["metrics"])
    one["parameters"] = params
    one["responses"]["404"] = {"description": "Not found", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    register("/api/v1/pipelines/{id}/workflow-metrics/", "get", one)
    overall = _op(f"Workflow metrics of all pipelines, with a row per pipeline: {described}", tags=["metrics"])
    overall["parameters"] = params
    register("/api/v1/metrics/", "get", overall)


_document()
