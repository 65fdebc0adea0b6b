"""Home and small shared pages."""
from __future__ import annotations

from flask import Blueprint, redirect, url_for
from flask_login import login_required

bp = Blueprint("pages", __name__)


@bp.route("/")
@login_required
def home():
    return redirect(url_for("pipelines.index"))
