"""Dashboard pages: workflow metrics, overall or for one pipeline (services.metrics)."""
from __future__ import annotations

from flask import Blueprint, abort, request

from ..security import role_required
from ..services import metrics
from ..services import pipelines as pipelines_svc
from .render import render

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

DAY_CHOICES = (7, 30, 90)


@bp.get("/")
@role_required("viewer")
def index():
    pid = request.args.get("pipeline", type=int)
    pipeline = pipelines_svc.get_pipeline(pid) if pid else None
    if pid and pipeline is None:
        abort(404)
    days, _ = metrics.clamp_window(request.args.get("days"), None)
    m = metrics.workflow_metrics(pipeline.id if pipeline else None, days=days)
    resp = render("dashboard/index.html", "metrics", m=m, pipeline=pipeline, pipelines=pipelines_svc.list_pipelines(),
                  days=days, day_choices=sorted(set(DAY_CHOICES) | {days}))
    resp.headers["Cache-Control"] = "no-store"
    return resp
