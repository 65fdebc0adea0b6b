"""Workflow metrics endpoints (/api/v1): one pipeline (AnsFlow's workflow-metrics) and overall."""
from __future__ import annotations

from flask import jsonify

from ..schemas import api as schema
from ..security import api_role_required
from ..services import metrics
from ..services import pipelines as pipelines_svc
from . import bp, found, query
from .spec import validate

TAGS = ("metrics",)
DESCRIBED = (
    "Executions by status, success rate (successful / finished, %), successful executions with bypassed "
    "steps (bypassed_executions), median, p95 and average duration, average queue wait of step attempts, "
    "retry attempts and the executions that had them, most failing steps, flaky steps, slowest steps, "
    "recent failures and executions per day, over a bounded window (days, limit; larger values are capped)")


def _window() -> tuple[int, int]:
    q = query()
    return metrics.clamp_window(q.days, q.limit)


@bp.get("/pipelines/<id:pipeline_id>/workflow-metrics/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.MetricsQuery, out=schema.Metrics)
def pipeline_workflow_metrics(pipeline_id: int):
    p = found(pipelines_svc.get_pipeline(pipeline_id), "pipeline")
    days, limit = _window()
    data = metrics.workflow_metrics(p.id, days=days, limit=limit)
    return jsonify(metrics.jsonable({"pipeline": {"id": p.id, "name": p.name, "version": p.version}, **data}))


@bp.get("/metrics/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.MetricsQuery, out=schema.Metrics)
def overall_metrics():
    days, limit = _window()
    return jsonify(metrics.jsonable(metrics.workflow_metrics(None, days=days, limit=limit)))


pipeline_workflow_metrics.__doc__ = f"Workflow metrics of a pipeline\n\n{DESCRIBED}"
overall_metrics.__doc__ = f"Workflow metrics of all pipelines, with a row per pipeline\n\n{DESCRIBED}"
