"""Who am I, and the OpenAPI document."""
from __future__ import annotations

from flask import jsonify
from flask_login import current_user

from ..security import api_role_required
from . import bp
from .openapi import document


@bp.get("/me/")
@api_role_required("viewer")
def me():
    return jsonify({"username": current_user.username, "role": current_user.role,
                    "display_name": current_user.display_name, "email": current_user.email})


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
