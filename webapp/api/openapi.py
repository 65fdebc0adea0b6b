"""The OpenAPI 3 document. A test checks that it lists exactly the routes the API serves."""
from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


def _op(summary: str, *, body: str | None = None, ok: int = 200, tags: list[str] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": tags or [],
        "responses": {
            str(ok): {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            "401": {"description": "No or bad token", "content": {"application/json": {"schema": ERROR}}},
            "403": {"description": "Role too low", "content": {"application/json": {"schema": ERROR}}},
        },
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
        op["responses"]["422"] = {"description": "Invalid input", "content": {"application/json": {"schema": ERROR}}}
    return op


# path -> {method: operation}; paths use OpenAPI {param} syntax
PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/me/": {"get": _op("The authenticated user", tags=["accounts"])},
    "/api/v1/openapi.json": {"get": _op("This document", tags=["meta"])},
    "/api/v1/pipelines/": {
        "get": _op("List pipelines", tags=["pipelines"]),
        "post": _op("Create a pipeline from a definition", body="PipelineDefinition", ok=201, tags=["pipelines"]),
    },
    "/api/v1/pipelines/{id}/": {
        "get": _op("A pipeline with its definition", tags=["pipelines"]),
        "put": _op("Replace a pipeline's definition", body="PipelineDefinition", tags=["pipelines"]),
        "delete": _op("Delete a pipeline", ok=204, tags=["pipelines"]),
    },
}


def register(path: str, method: str, operation: dict[str, Any]) -> None:
    PATHS.setdefault(path, {})[method] = operation


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "AnsFlow API", "version": "1.0.0",
                 "description": "Authenticate with 'Authorization: Bearer <token>' (create one on your account page)."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "fields"],
                          "properties": {"error": {"type": "string"}, "fields": {"type": "object"}}},
                "StartExecution": {"type": "object", "required": ["pipeline"], "properties": {
                    "pipeline": {"type": "integer"}, "variables": {"type": "object"},
                    "trigger_data": {"type": "object"}, "secret_variables": {"type": "array", "items": {"type": "string"}}}},
                "Resume": {"type": "object", "properties": {
                    "from_step": {"type": "string"}, "variables": {"type": "object"},
                    "use_current_definition": {"type": "boolean"}}},
                "Bypass": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
                "PipelineDefinition": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "description": {"type": "string"},
                    "groups": {"type": "array", "items": {"type": "object"}},
                    "steps": {"type": "array", "items": {"type": "object"}}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": PATHS,
    }
