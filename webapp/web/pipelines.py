"""Pipelines list and pages."""
from __future__ import annotations

from flask import Blueprint

from ..security import role_required
from ..services import pipelines as svc
from .render import render

bp = Blueprint("pipelines", __name__, url_prefix="/pipelines")


@bp.get("/")
@role_required("viewer")
def index():
    return render("pipelines/index.html", "list", pipelines=svc.list_pipelines())
