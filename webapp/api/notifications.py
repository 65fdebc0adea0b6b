"""Notifications endpoints (/api/v1): named channels, the delivery log, test sends, a step's notification settings."""
from __future__ import annotations

from typing import Any

from flask import jsonify, request
from flask_login import current_user

from ..models.notification import CHANNEL_TYPES, DELIVERY_STATES
from ..security import api_role_required
from ..services import notifications as svc
from ..services.accounts import ValidationError
from . import bp, error
from .openapi import ERROR, register

PREFIX = "/api/v1"


def _body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("Send a JSON object.", {"body": "expected a JSON object"})
    return data


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number.", {name: "not a number"})
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}.", {name: f"between {lo} and {hi}"})
    return value


# ---------------------------------------------------------------- channels

@bp.get("/notification-channels/")
@api_role_required("maintainer")
def list_channels():
    return jsonify({"results": [svc.channel_json(c) for c in svc.list_channels()]})


@bp.post("/notification-channels/")
@api_role_required("admin")
def create_channel():
    channel = svc.save_channel(_body())
    return jsonify(svc.channel_json(channel)), 201


@bp.get("/notification-channels/<int:channel_id>/")
@api_role_required("maintainer")
def get_channel(channel_id: int):
    channel = svc.get_channel(channel_id)
    if channel is None:
        return error("No such channel.", 404)
    return jsonify({**svc.channel_json(channel), "used_by": svc.channel_users(channel.name)})


@bp.put("/notification-channels/<int:channel_id>/")
@api_role_required("admin")
def update_channel(channel_id: int):
    channel = svc.get_channel(channel_id)
    if channel is None:
        return error("No such channel.", 404)
    channel = svc.save_channel(_body(), channel)
    return jsonify(svc.channel_json(channel))


@bp.delete("/notification-channels/<int:channel_id>/")
@api_role_required("admin")
def delete_channel(channel_id: int):
    channel = svc.get_channel(channel_id)
    if channel is None:
        return error("No such channel.", 404)
    try:
        svc.delete_channel(channel)
    except ValidationError as e:
        return error(e.message, 409, e.fields)
    return "", 204


# ---------------------------------------------------------------- deliveries

@bp.get("/notification-deliveries/")
@api_role_required("viewer")
def list_deliveries():
    status = request.args.get("status") or None
    if status and status not in DELIVERY_STATES:
        raise ValidationError(f"status must be one of {', '.join(DELIVERY_STATES)}.", {"status": "unknown status"})
    rows, total = svc.list_deliveries(
        status=status, channel=request.args.get("channel") or None, execution=request.args.get("execution") or None,
        event=request.args.get("event") or None, limit=_int_arg("limit", 50, 1, 500), offset=_int_arg("offset", 0, 0, 10**9))
    return jsonify({"count": total, "results": [svc.delivery_json(d, ex) for d, ex in rows]})


@bp.get("/notification-deliveries/<int:delivery_id>/")
@api_role_required("viewer")
def get_delivery(delivery_id: int):
    d = svc.get_delivery(delivery_id)
    if d is None:
        return error("No such delivery.", 404)
    return jsonify(svc.delivery_json(d))


# ---------------------------------------------------------------- test send and step settings

@bp.post("/pipelines/notifications/test/")
@api_role_required("maintainer")
def test_notification():
    row = svc.send_test(_body(), current_user)
    return jsonify({"success": row.status == "delivered", "status": row.status, "delivery_id": row.id,
                    "channel": row.channel, "target": row.target,
                    "error": row.error.split(": ", 1)[-1] if row.error else None,
                    "message": {"subject": row.subject, "body": row.body}})


@bp.put("/pipelines/<int:pipeline_id>/steps/<int:step_id>/notifications/")
@api_role_required("maintainer")
def put_step_notifications(pipeline_id: int, step_id: int):
    data = request.get_json(silent=True)
    if isinstance(data, dict) and set(data) == {"notification_config"}:
        data = data["notification_config"]
    if data is not None and not isinstance(data, dict):
        raise ValidationError("Send the notification settings as a JSON object (or null to remove them).",
                              {"body": "expected an object or null"})
    try:
        step = svc.save_step_notification_config(pipeline_id, step_id, data)
    except LookupError:
        return error("No such step in that pipeline.", 404)
    return jsonify({"pipeline_id": pipeline_id, "step_id": step.id, "step": step.name,
                    "notification_config": step.notification_config, "pipeline_version": step.pipeline.version})


# ---------------------------------------------------------------- OpenAPI

def _doc(summary: str, *, ok: int = 200, body: dict | None = None, params: list | None = None,
         refusals: tuple[int, ...] = (), tag: str = "notifications") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary, "tags": [tag],
        "responses": {
            str(ok): {"description": "OK" if ok != 204 else "Deleted",
                      **({"content": {"application/json": {"schema": {"type": "object"}}}} if ok != 204 else {})},
            "401": {"description": "No or bad token", "content": {"application/json": {"schema": ERROR}}},
            "403": {"description": "Role too low", "content": {"application/json": {"schema": ERROR}}},
        },
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"]["422"] = {"description": "Invalid input", "content": {"application/json": {"schema": ERROR}}}
    for code in refusals:
        op["responses"][str(code)] = {"description": {404: "Not found", 409: "Conflict", 422: "Invalid input"}[code],
                                      "content": {"application/json": {"schema": ERROR}}}
    return op


def _path(name: str, type_: str = "integer") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": type_}}


def _query(name: str, type_: str, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_}, "description": description}


_CHANNEL = {"type": "object", "required": ["name", "channel_type"], "properties": {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"},
    "channel_type": {"type": "string", "enum": list(CHANNEL_TYPES)},
    "active": {"type": "boolean"},
    "config": {"type": "object", "description": (
        "email: to, from, smtp_host, smtp_port, smtp_user, smtp_password, smtp_tls (none|starttls|ssl); "
        "webhook: url, secret (HMAC-SHA256 signing key), headers; slack/wecom: url or apprise_url; "
        "dingtalk/feishu: url, secret (signing), or apprise_url. Secrets are never returned in full; "
        "leave a secret out (or empty) to keep the stored value.")}}}
_CONFIG = {"type": "object", "nullable": True, "properties": {
    "enabled": {"type": "boolean"}, "on_success": {"type": "boolean"}, "on_failure": {"type": "boolean"},
    "on_approval_required": {"type": "boolean"},
    "events": {"type": "array", "items": {"type": "string", "enum": list(svc.EVENTS)}},
    "channels": {"type": "array", "items": {"type": "string"}},
    "recipients": {"type": "array", "items": {"type": "string"}, "description": "emails, usernames or 'approvers'"},
    "webhook_url": {"type": "string"}, "message_template": {"type": "string"}, "subject_template": {"type": "string"}}}
_TEST = {"type": "object", "properties": {
    "channel": {"type": "string", "description": "a named channel"},
    "webhook_url": {"type": "string"}, "channel_type": {"type": "string", "enum": [t for t in CHANNEL_TYPES if t != "email"]},
    "secret": {"type": "string"}, "recipients": {"type": "array", "items": {"type": "string"}},
    "message": {"type": "string", "description": "a message template"}}}

register(f"{PREFIX}/notification-channels/", "get", _doc("List named notification channels (secrets masked)"))
register(f"{PREFIX}/notification-channels/", "post", _doc("Create a named channel (admin)", ok=201, body=_CHANNEL))
register(f"{PREFIX}/notification-channels/{{id}}/", "get", _doc(
    "A channel (secrets masked) and the pipelines that use it", params=[_path("id")], refusals=(404,)))
register(f"{PREFIX}/notification-channels/{{id}}/", "put", _doc(
    "Update a channel (admin); omitted secrets are kept", body=_CHANNEL, params=[_path("id")], refusals=(404,)))
register(f"{PREFIX}/notification-channels/{{id}}/", "delete", _doc(
    "Delete a channel that no pipeline uses (admin)", ok=204, params=[_path("id")], refusals=(404, 409)))
register(f"{PREFIX}/notification-deliveries/", "get", _doc(
    "The delivery log, newest first", refusals=(422,), params=[
        _query("status", "string", " | ".join(DELIVERY_STATES)), _query("channel", "string", "channel name"),
        _query("execution", "string", "execution_id"), _query("event", "string", "event name"),
        _query("limit", "integer", "1-500, default 50"), _query("offset", "integer", "default 0")]))
register(f"{PREFIX}/notification-deliveries/{{id}}/", "get", _doc(
    "One delivery with its message and every attempt's error", params=[_path("id")], refusals=(404,)))
register(f"{PREFIX}/pipelines/notifications/test/", "post", _doc(
    "Send a real test message now and report the true result: {success, status, error, delivery_id}",
    body=_TEST, tag="notifications"))
register(f"{PREFIX}/pipelines/{{id}}/steps/{{step_id}}/notifications/", "put", _doc(
    "Validate and save a step's notification_config (null removes it); the pipeline version goes up",
    body=_CONFIG, params=[_path("id"), _path("step_id")], refusals=(404,)))
