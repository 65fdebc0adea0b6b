"""Notifications endpoints (/api/v1): named channels, the delivery log, test sends, a step's notification settings."""
from __future__ import annotations

from flask import jsonify, request
from flask_login import current_user

from ..models.notification import DELIVERY_STATES
from ..security import api_role_required
from ..services import notifications as svc
from ..services.accounts import ValidationError
from ..services.errors import Conflict, NotFound
from ..schemas import api as schema
from . import body, bp, found, query
from .spec import validate

TAGS = ("notifications",)


# ---------------------------------------------------------------- channels

@bp.get("/notification-channels/")
@api_role_required("maintainer")
@validate(tags=TAGS, out=schema.ChannelList)
def list_channels():
    """List named notification channels (secrets masked)"""
    return jsonify({"results": [svc.channel_json(c) for c in svc.list_channels()]})


@bp.post("/notification-channels/")
@api_role_required("admin")
@validate(tags=TAGS, json=schema.ChannelBody, ok=201, out=schema.Channel)
def create_channel():
    """Create a named channel (admin)"""
    return jsonify(svc.channel_json(svc.save_channel(body()))), 201


@bp.get("/notification-channels/<id:channel_id>/")
@api_role_required("maintainer")
@validate(tags=TAGS, out=schema.ChannelDetail)
def get_channel(channel_id: int):
    """A channel (secrets masked) and the pipelines that use it"""
    channel = found(svc.get_channel(channel_id), "channel")
    return jsonify({**svc.channel_json(channel), "used_by": svc.channel_users(channel.name)})


@bp.put("/notification-channels/<id:channel_id>/")
@api_role_required("admin")
@validate(tags=TAGS, json=schema.ChannelBody, out=schema.Channel)
def update_channel(channel_id: int):
    """Update a channel (admin); omitted secrets are kept"""
    channel = found(svc.get_channel(channel_id), "channel")
    return jsonify(svc.channel_json(svc.save_channel(body(), channel)))


@bp.delete("/notification-channels/<id:channel_id>/")
@api_role_required("admin")
@validate(tags=TAGS, ok=204, HTTP_409=schema.ErrorBody)
def delete_channel(channel_id: int):
    """Delete a channel that no pipeline uses (admin; 409 while pipelines use it)"""
    channel = found(svc.get_channel(channel_id), "channel")
    try:
        svc.delete_channel(channel)
    except ValidationError as e:  # the service says "in use" with a ValidationError: the state, not the input
        raise Conflict(e.message, e.fields) from None
    return "", 204


# ---------------------------------------------------------------- deliveries

@bp.get("/notification-deliveries/")
@api_role_required("viewer")
@validate(tags=TAGS, query=schema.DeliveryListQuery, out=schema.DeliveryList)
def list_deliveries():
    """The delivery log, newest first"""
    q = query()
    if q.status and q.status not in DELIVERY_STATES:
        raise ValidationError(f"status must be one of {', '.join(DELIVERY_STATES)}.", {"status": "unknown status"})
    rows, total = svc.list_deliveries(status=q.status or None, channel=q.channel or None,
                                      execution=q.execution or None, event=q.event or None,
                                      limit=q.limit, offset=q.offset)
    return jsonify({"count": total, "results": [svc.delivery_json(d, ex) for d, ex in rows]})


@bp.get("/notification-deliveries/<id:delivery_id>/")
@api_role_required("viewer")
@validate(tags=TAGS, out=schema.Delivery)
def get_delivery(delivery_id: int):
    """One delivery with its message and every attempt's error"""
    return jsonify(svc.delivery_json(found(svc.get_delivery(delivery_id), "delivery")))


# ---------------------------------------------------------------- test send and step settings

@bp.post("/pipelines/notifications/test/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.TestNotificationBody, out=schema.TestNotificationResult)
def test_notification():
    """Send a real test message now and report the true result: {success, status, error, delivery_id}"""
    row = svc.send_test(body(), current_user)
    return jsonify({"success": row.status == "delivered", "status": row.status, "delivery_id": row.id,
                    "channel": row.channel, "target": row.target,
                    "error": row.error.split(": ", 1)[-1] if row.error else None,
                    "message": {"subject": row.subject, "body": row.body}})


@bp.put("/pipelines/<id:pipeline_id>/steps/<id:step_id>/notifications/")
@api_role_required("maintainer")
@validate(tags=TAGS, json=schema.StepNotificationsBody, out=schema.StepNotifications)
def put_step_notifications(pipeline_id: int, step_id: int):
    """Validate and save a step's notification_config (null removes it); the pipeline version goes up"""
    data = request.get_json(silent=True)
    if isinstance(data, dict) and set(data) == {"notification_config"}:
        data = data["notification_config"]
    if data is not None and not isinstance(data, dict):
        raise ValidationError("Send the notification settings as a JSON object (or null to remove them).",
                              {"body": "expected an object or null"})
    try:
        step = svc.save_step_notification_config(pipeline_id, step_id, data)
    except LookupError:
        raise NotFound("No such step in that pipeline.") from None
    return jsonify({"pipeline_id": pipeline_id, "step_id": step.id, "step": step.name,
                    "notification_config": step.notification_config, "pipeline_version": step.pipeline.version})
