"""API authentication, roles and the OpenAPI document."""
import re

from webapp.api.openapi import document


def test_api_needs_a_token(app):
    resp = app.test_client().get("/api/v1/pipelines/")
    assert resp.status_code == 401
    assert set(resp.json) == {"error", "fields"}


def test_bad_token_is_401(app, users):
    resp = app.test_client().get("/api/v1/me/", headers={"Authorization": "Bearer af_nope"})
    assert resp.status_code == 401


def test_viewer_cannot_create_pipelines(api_as):
    resp = api_as("viewer").post("/api/v1/pipelines/", json={"name": "x", "steps": []})
    assert resp.status_code == 403 and "maintainer" in resp.json["error"]


def test_openapi_lists_exactly_the_api_routes(app):
    doc = document()
    documented = {(re.sub(r"\{[a-z_]+\}", "{}", path), method.upper())
                  for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?[a-z_]+>", "{}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method))
    assert documented == served, f"undocumented: {served - documented}; stale: {documented - served}"


def test_openapi_is_served(app):
    resp = app.test_client().get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.json["openapi"].startswith("3.")
