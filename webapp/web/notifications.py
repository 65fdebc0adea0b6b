"""Notifications pages: the delivery log, named channels (admin) with a real "Send test", and the
demo webhook receiver."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, request, url_for
from flask_login import current_user

from ..extensions import csrf
from ..models.notification import CHANNEL_TYPES, DELIVERY_STATES
from ..security import has_role, role_required
from ..services import notifications as svc
from ..services.accounts import ValidationError
from .render import is_partial_request, render

bp = Blueprint("notifications", __name__, url_prefix="/notifications")

PAGE_SIZE = 50

# How each config field of a channel is asked for on the form.
FIELDS = {
    "to": {"label": "Recipients", "help": "Email addresses, separated by commas.", "kind": "text", "required": True},
    "from": {"label": "Sender address", "help": "Optional; the MAIL_FROM setting is used when empty.", "kind": "text"},
    "smtp_host": {"label": "SMTP server", "help": "Optional; the server settings of AnsFlow (SMTP_*) are used when empty.",
                  "kind": "text"},
    "smtp_port": {"label": "SMTP port", "help": "25, 587 (STARTTLS) or 465 (SSL). With an SMTP server only.", "kind": "number"},
    "smtp_user": {"label": "SMTP user", "help": "With an SMTP server only.", "kind": "text"},
    "smtp_password": {"label": "SMTP password", "help": "With an SMTP server only.", "kind": "secret"},
    "smtp_tls": {"label": "Encryption", "help": "With an SMTP server only.", "kind": "select", "choices": svc.SMTP_TLS},
    "url": {"label": "Webhook URL", "help": "", "kind": "url", "required": True},
    "secret": {"label": "Signing secret", "help": "", "kind": "secret"},
    "headers": {"label": "Extra headers (JSON)", "help": 'For example {"Authorization": "Bearer ..."}. Values are kept secret.',
                "kind": "json"},
    "apprise_url": {"label": "Apprise URL (instead of a webhook URL)", "help": "", "kind": "secret"},
}
TYPE_HELP = {
    "email": "Sends a plain-text email through SMTP.",
    "webhook": "POSTs a JSON document. With a signing secret, the header X-AnsFlow-Signature is "
               "sha256=HMAC-SHA256(secret, X-AnsFlow-Timestamp + '.' + body) in hex, so the receiver can verify it.",
    "slack": "Paste the Incoming Webhook URL (https://hooks.slack.com/services/...).",
    "dingtalk": "Paste the robot's webhook URL (https://oapi.dingtalk.com/robot/send?access_token=...). "
                "If the robot uses signing, paste its secret (SEC...).",
    "wecom": "Paste the group robot's webhook URL (https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...).",
    "feishu": "Paste the bot's webhook URL (https://open.feishu.cn/open-apis/bot/v2/hook/...). "
              "If the bot checks signatures, paste its secret.",
}
APPRISE_HELP = {
    "slack": "slack://TokenA/TokenB/TokenC or slack://xoxb-bot-token/#channel (bot tokens post to any channel).",
    "dingtalk": "dingtalk://secret@token/mobile1/mobile2 (mentions those phone numbers).",
    "wecom": "wecombot://key",
    "feishu": "feishu://token",
}


def _see_other(endpoint: str, **kw):
    return redirect(url_for(endpoint, **kw), code=303)


# --------------------------------------------------------------------------- delivery log

@bp.get("/")
@role_required("viewer")
def index():
    return _see_other("notifications.deliveries")


@bp.get("/deliveries")
@role_required("viewer")
def deliveries():
    filters = {k: request.args.get(k, "").strip() for k in ("status", "channel", "execution", "event")}
    if filters["status"] not in DELIVERY_STATES:
        filters["status"] = ""
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    rows, total = svc.list_deliveries(**{k: v or None for k, v in filters.items()}, limit=PAGE_SIZE,
                                      offset=(page - 1) * PAGE_SIZE)
    return render("notifications/deliveries.html", "results", rows=rows, total=total, filters=filters, page=page,
                  deliveries=[d for d, _ in rows], execution_ids={d.execution_id: ex for d, ex in rows if ex},
                  pages=max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE), statuses=DELIVERY_STATES,
                  channels=svc.delivery_channels(), events=svc.EVENTS + ("approval_reminder", "step", "test"),
                  live=any(d.status in svc.OPEN_STATES for d, _ in rows))


# --------------------------------------------------------------------------- channels

@bp.get("/channels")
@role_required("maintainer")
def channels():
    items = svc.list_channels()
    return render("notifications/channels.html", None, channels=items, can_admin=has_role(current_user, "admin"),
                  masked={c.id: svc.masked_config(c) for c in items}, type_labels=svc.TYPE_LABELS,
                  targets={c.id: svc.channel_destination(c).target for c in items},
                  adhoc_types=[t for t in CHANNEL_TYPES if t != "email"], test_values={}, test_errors={})


def _form_data(kind: str) -> dict:
    data = {"name": request.form.get("name", ""), "channel_type": kind, "active": "active" in request.form}
    for key in svc.CHANNEL_FIELDS[kind]:
        if key in request.form:
            data[key] = request.form.get(key, "")
    return data


def _channel_form(kind: str, channel=None, errors=None, values=None, status=200):
    values = values if values is not None else (
        {**{k: v for k, v in (channel.config or {}).items() if k not in svc.KEEP_IF_BLANK},
         "name": channel.name, "active": channel.active} if channel else {"active": True})
    if isinstance(values.get("to"), list):
        values = {**values, "to": ", ".join(values["to"])}
    return render("notifications/channel_form.html", None, status=status, kind=kind, channel=channel,
                  errors=errors or {}, values=values, fields=[(k, FIELDS[k]) for k in svc.CHANNEL_FIELDS[kind]],
                  masked=svc.masked_config(channel) if channel else {}, type_labels=svc.TYPE_LABELS,
                  type_help=TYPE_HELP.get(kind, ""), apprise_help=APPRISE_HELP.get(kind, ""), types=CHANNEL_TYPES)


@bp.route("/channels/new", methods=["GET", "POST"])
@role_required("admin")
def new_channel():
    kind = request.values.get("type", "webhook")
    if kind not in CHANNEL_TYPES:
        kind = "webhook"
    if request.method == "POST":
        try:
            channel = svc.save_channel(_form_data(kind))
        except ValidationError as e:
            values = {k: v for k, v in _form_data(kind).items() if k not in svc.SECRET_FIELDS}  # never echo secrets
            return _channel_form(kind, None, e.fields, values, status=422)
        flash(f"Channel '{channel.name}' created. Use “Send test” to check that it works.", "success")
        return _see_other("notifications.channels")
    return _channel_form(kind)


@bp.route("/channels/<int:channel_id>/edit", methods=["GET", "POST"])
@role_required("admin")
def edit_channel(channel_id: int):
    channel = svc.get_channel(channel_id) or abort(404)
    if request.method == "POST":
        try:
            svc.save_channel(_form_data(channel.channel_type), channel)
        except ValidationError as e:
            values = {k: v for k, v in _form_data(channel.channel_type).items() if k not in svc.KEEP_IF_BLANK}
            return _channel_form(channel.channel_type, channel, e.fields, values, status=422)
        flash(f"Channel '{channel.name}' saved.", "success")
        return _see_other("notifications.channels")
    return _channel_form(channel.channel_type, channel)


@bp.post("/channels/<int:channel_id>/delete")
@role_required("admin")
def delete_channel(channel_id: int):
    channel = svc.get_channel(channel_id) or abort(404)
    name = channel.name
    try:
        svc.delete_channel(channel)
    except ValidationError as e:
        flash(e.message, "error")
    else:
        flash(f"Channel '{name}' deleted.", "success")
    return _see_other("notifications.channels")


@bp.post("/channels/<int:channel_id>/test")
@role_required("maintainer")
def test_channel(channel_id: int):
    channel = svc.get_channel(channel_id) or abort(404)
    result = svc.send_test({"channel": channel.name}, current_user)
    return _test_response(result, f"test-result-{channel.id}")


@bp.post("/test")
@role_required("maintainer")
def test_adhoc():
    values = {k: request.form.get(k, "").strip() for k in ("webhook_url", "channel_type", "secret", "recipients")}
    data = {k: v for k, v in values.items() if v}
    if data.get("channel_type") == "email":
        data.pop("webhook_url", None)
    try:
        result = svc.send_test(data, current_user)
    except ValidationError as e:
        if is_partial_request():
            return render("notifications/channels.html", "adhoc_form", status=422, test_values=values,
                          test_errors=e.fields, adhoc_types=[t for t in CHANNEL_TYPES if t != "email"], result=None)
        flash(e.message, "error")
        return _see_other("notifications.channels")
    if is_partial_request():
        return render("notifications/channels.html", "adhoc_form", test_values=values, test_errors={},
                      adhoc_types=[t for t in CHANNEL_TYPES if t != "email"], result=result)
    return _test_response(result, "test-result-adhoc")


def _test_response(result, region: str):
    if is_partial_request():
        return render("notifications/channels.html", "test_result", result=result, region=region)
    if result.status == "delivered":
        flash(f"Test message delivered to {result.target}.", "success")
    else:
        flash(f"Test message {result.status}: {result.error.rsplit(chr(10), 1)[-1]}", "error")
    return _see_other("notifications.channels")


# --------------------------------------------------------------------------- demo receiver
# It takes posts from anyone into a list every viewer sees, so it exists only in dev mode
# (DEMO_RECEIVER, which `flask dev` sets): elsewhere each of its routes is a 404.

@bp.before_request
def _demo_receiver_only_in_dev_mode():
    if request.endpoint and request.endpoint.startswith("notifications.demo_webhook") \
            and not current_app.config.get("DEMO_RECEIVER"):
        abort(404)


@bp.get("/demo-webhook")
@role_required("viewer")
def demo_webhook():
    return render("notifications/demo_webhook.html", "posts", posts=svc.demo_webhook_posts(),
                  receiver_url=svc.demo_webhook_url(), can_admin=has_role(current_user, "admin"))


@bp.post("/demo-webhook")
@csrf.exempt
def demo_webhook_receive():
    """A receiver for the demo pipeline's webhook: keeps the last posts (no login: it is a receiver; dev mode only)."""
    if (request.content_length or 0) > svc.DEMO_MAX_BYTES:
        return jsonify({"error": "payload too large", "fields": {}}), 413
    item = svc.record_demo_webhook(dict(request.headers), request.get_data(cache=False))
    return jsonify({"ok": True, "signature": item["signature"]})


@bp.post("/demo-webhook/clear")
@role_required("admin")
def demo_webhook_clear():
    svc.clear_demo_webhook()
    flash("The demo receiver's posts were cleared.", "success")
    return _see_other("notifications.demo_webhook")
