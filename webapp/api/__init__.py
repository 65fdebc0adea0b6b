"""JSON API (/api/v1). Errors are {error, fields} with the right 4xx (DESIGN §5)."""
from __future__ import annotations

from flask import Blueprint, jsonify

from ..security import require_token_for_writes
from ..services.accounts import ValidationError

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(require_token_for_writes)


@bp.errorhandler(ValidationError)
def _validation_error(e: ValidationError):
    return jsonify({"error": e.message, "fields": e.fields}), 422


def error(message: str, status: int, fields: dict | None = None):
    return jsonify({"error": message, "fields": fields or {}}), status


from . import approvals, core, executions, groups, metrics, notifications, pipelines  # noqa: E402,F401  (routes register on bp)
