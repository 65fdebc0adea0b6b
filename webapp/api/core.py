"""Who am I, the OpenAPI document and its browsable page."""
from __future__ import annotations

from flask import Response, jsonify, url_for
from flask_login import current_user
from markupsafe import escape

from ..schemas import api as schema
from ..security import api_role_required
from . import bp
from .spec import document, validate

TAGS = ("meta",)

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AnsFlow API</title>
<link rel="stylesheet" href="{css}"></head>
<body><div id="swagger-ui" data-url="{spec}"></div>
<script src="{bundle}"></script><script src="{init}"></script></body></html>
"""


@bp.get("/me/")
@api_role_required("viewer")
@validate(tags=("accounts",), out=schema.Me)
def me():
    """The authenticated user"""
    return jsonify({"username": current_user.username, "role": current_user.role,
                    "display_name": current_user.display_name, "email": current_user.email})


@bp.get("/openapi.json")
@validate(tags=TAGS, out=schema.OpenAPIDocument)
def openapi():
    """This document (OpenAPI 3.1, generated from the models of every route)"""
    return jsonify(document())


@bp.get("/docs")
@validate(tags=TAGS)
def docs():
    """The document, browsable (Swagger UI, vendored under static/vendor/swagger-ui)"""
    def static(name: str) -> str:
        return str(escape(url_for("static", filename=f"vendor/swagger-ui/{name}")))
    page = DOCS_PAGE.format(css=static("swagger-ui.css"), bundle=static("swagger-ui-bundle.js"),
                            init=static("init.js"), spec=escape(url_for("api.openapi")))
    return Response(page, mimetype="text/html")
