"""Executions pages."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("executions", __name__, url_prefix="/executions")
