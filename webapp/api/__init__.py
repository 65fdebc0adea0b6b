"""JSON API (/api/v1). Errors are {error, fields} with the right 4xx (DESIGN §5): api/errors.py
maps them in one place; api/spec.py validates every route against its models."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..security import require_token_for_writes
from ..services.accounts import ValidationError
from ..services.errors import NotFound
from . import errors, ids

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.record_once(lambda state: ids.register(state.app))
bp.before_request(require_token_for_writes)
errors.register(bp)


def body() -> dict[str, Any]:
    """The validated JSON body, holding only the fields the client sent."""
    model = getattr(getattr(request, "context", None), "json", None)
    if model is None:
        raise ValidationError("Send a JSON object.", {"body": "expected a JSON object (Content-Type: application/json)"})
    return model.model_dump(exclude_unset=True)


def query():
    return request.context.query


def found(obj, what: str):
    if obj is None:
        raise NotFound(f"{what} not found")
    return obj


from . import approvals, core, executions, groups, metrics, notifications, pipelines  # noqa: E402,F401  (routes register on bp)
