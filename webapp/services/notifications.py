"""Notifications: named channels, event routing, delivery with retries, test sends, the delivery log.

Routing. `notification_config` (on a pipeline and on a step) is AnsFlow's
`{on_success, on_failure, on_approval_required, channels, recipients, webhook_url,
message_template}` plus `subject_template`, `enabled` and an explicit `events` list. The flags
map to events by level:

    pipeline: on_success -> success        on_failure -> failed
    step:     on_success -> step_success   on_failure -> step_failed, timed_out
    both:     on_approval_required -> approval_required (and its reminders)

`step_failed` and `timed_out` are about a step's final failure: an attempt followed by a retry is
announced by `retrying` instead.

`events` adds any of EVENTS at either level (a pipeline listing step events hears them for every
step). `fixed` and `regression` compare an execution's outcome with the previous finished
(success/failed) execution of the same pipeline, by finish time.

Delivery. `emit()` is called by the runtime after each commit that produced events. With no
matching config it returns without a query. Otherwise it renders the message (sandboxed Jinja,
see notify_templates), stores one NotificationDelivery row per destination and enqueues one RQ
job per row on the notifications queue. The job (`deliver`) sends through notify_transports and
records every attempt on the row; transient failures are retried by RQ's Retry with backoff, and
the last failure is recorded as `failed`. A refused destination (private address...) is
`refused` at once.
"""
from __future__ import annotations

import json
import logging
import os
import re
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

from flask import current_app
from sqlalchemy import select, update

from ..database import begin_locked
from ..extensions import db
from ..models import NotificationChannel, NotificationDelivery, Pipeline, PipelineStep, StepExecutionHistory, User, WorkflowExecution, utcnow
from ..models.notification import CHANNEL_TYPES, DELIVERY_STATES
from ..models.snapshots import Frozen
from .accounts import ValidationError
from .notify_net import DeliveryFailed, Refused, check_url, mask_secret, mask_url, refusal, scrub
from .notify_templates import EVENT_LABELS, format_duration, render_message, template_error
from .notify_transports import (
    APPRISE_SCHEMES, Destination, Message, apprise_url_error, kind_for_url, send, webhook_signature,
)

log = logging.getLogger(__name__)

EXECUTION_EVENTS = ("started", "success", "failed", "cancelled", "fixed", "regression")
STEP_EVENTS = ("step_success", "step_failed", "retrying", "timed_out", "approval_required", "approval_decided")
EVENTS = EXECUTION_EVENTS + STEP_EVENTS
# a reminder, and the news that a request was cancelled, go where approval_required goes
ALIASES = {"approval_reminder": "approval_required", "approval_cancelled": "approval_required"}
CONFIG_KEYS = ("enabled", "on_success", "on_failure", "on_approval_required", "events", "channels", "recipients",
               "webhook_url", "message_template", "subject_template")
FINAL_STATES = ("delivered", "failed", "refused")
OPEN_STATES = ("pending", "sending", "retrying")
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$|^[^@\s,;<>]+@localhost$")
SMTP_TLS = ("none", "starttls", "ssl")
DEFAULT_RETRY_INTERVALS = (10, 60, 300)
MAX_ERROR_CHARS = 4000

CHANNEL_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("to", "from", "smtp_host", "smtp_port", "smtp_user", "smtp_password", "smtp_tls"),
    "webhook": ("url", "secret", "headers"),
    "slack": ("url", "apprise_url"),
    "dingtalk": ("url", "secret", "apprise_url"),
    "wecom": ("url", "apprise_url"),
    "feishu": ("url", "secret", "apprise_url"),
}
SECRET_FIELDS = ("secret", "smtp_password", "apprise_url")
KEEP_IF_BLANK = SECRET_FIELDS + ("url", "headers")   # a blank form field keeps the stored value
TYPE_LABELS = {"email": "Email", "webhook": "Webhook", "slack": "Slack", "dingtalk": "DingTalk",
               "wecom": "WeChat Work", "feishu": "Feishu"}

# Labels of destinations that come from a notification_config rather than a named channel
# (spaces make them impossible channel names).
ADHOC = {"pipeline webhook": ("pipeline", "webhook"), "step webhook": ("step", "webhook"),
         "pipeline email": ("pipeline", "email"), "step email": ("step", "email")}
RUNNER_LABELS = ("webhook", "email")


# ====================================================================== configuration

def retry_intervals() -> list[int]:
    raw = current_app.config.get("NOTIFY_RETRY_INTERVALS") or os.environ.get("ANSFLOW_NOTIFY_RETRY_INTERVALS")
    if isinstance(raw, str):
        raw = [x for x in raw.replace(" ", "").split(",") if x]
    try:
        values = [max(0, int(float(x))) for x in raw] if raw else list(DEFAULT_RETRY_INTERVALS)
    except (TypeError, ValueError):
        values = list(DEFAULT_RETRY_INTERVALS)
    return values


def allowlist(dest: Destination | str | None = None) -> list[str]:
    """NOTIFY_ALLOWLIST, plus this server's own host when `dest` (a destination or a URL) is
    exactly its demo receiver (so the demo pipeline's webhook works without configuration, and
    nothing else does). Saving and sending apply the same rule."""
    allowed = list(current_app.config.get("NOTIFY_ALLOWLIST") or [])
    url = dest if isinstance(dest, str) else (dest.url if dest is not None else None)
    if url and url.split("?", 1)[0].rstrip("/") == demo_webhook_url():
        from urllib.parse import urlsplit

        host = urlsplit(url).hostname
        if host:
            allowed.append(host)
    return allowed


def smtp_settings() -> dict[str, Any]:
    c = current_app.config
    return {"host": c.get("SMTP_HOST") or "127.0.0.1", "port": int(c.get("SMTP_PORT") or 25),
            "user": c.get("SMTP_USER") or "", "password": c.get("SMTP_PASSWORD") or "",
            "tls": c.get("SMTP_TLS") or "none", "from": c.get("MAIL_FROM") or "ansflow@localhost"}


def execution_url(execution_id: str) -> str:
    return f"{current_app.config.get('BASE_URL', '').rstrip('/')}/executions/{execution_id}"


def demo_webhook_url() -> str:
    return f"{current_app.config.get('BASE_URL', '').rstrip('/')}/notifications/demo-webhook"


def _str_list(value: Any) -> list[str] | None:
    """A list of non-blank strings from a list or a comma/newline separated string (None if neither)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in re.split(r"[,\n;]", value) if p.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    return None


def _static_url_error(url: Any, field: str = "URL", check_private: bool = True) -> str | None:
    """Checks that need no DNS: scheme, host, and literal private addresses (names are checked when sending)."""
    if not isinstance(url, str) or not url.strip():
        return f"A {field} is required."
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"That {field} is not valid."
    if parts.scheme not in ("http", "https") or not host:
        return f"The {field} must start with http:// or https:// and name a host."
    import ipaddress

    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = host in ("localhost", "localhost.")
    if literal and check_private:
        reason = refusal(host, "127.0.0.1" if host.startswith("localhost") else host, allowlist(url.strip()))
        if reason:
            return f"Refused: {reason}."
    return None


def validate_notification_config(cfg: Any, *, check_channels: bool = True) -> dict[str, str]:
    """Field -> message for a notification_config ({} when it can be saved). None is valid (no notifications)."""
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        return {"notification_config": "notification_config must be a mapping."}
    errors: dict[str, str] = {}
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        errors["notification_config"] = f"Unknown key(s): {', '.join(unknown)}. Use {', '.join(CONFIG_KEYS)}."
    for key in ("enabled", "on_success", "on_failure", "on_approval_required"):
        if key in cfg and not isinstance(cfg[key], bool):
            errors[key] = f"{key} must be true or false."
    events = cfg.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        errors["events"] = "events must be a list of event names."
    else:
        bad = [e for e in events if e not in EVENTS]
        if bad:
            errors["events"] = f"Unknown event '{bad[0]}'. Events: {', '.join(EVENTS)}."
    channels = _str_list(cfg.get("channels"))
    if channels is None:
        errors["channels"] = "channels must be a list of channel names."
    elif channels and check_channels:
        known = set(db.session.execute(select(NotificationChannel.name).where(NotificationChannel.name.in_(channels))).scalars())
        missing = [c for c in channels if c not in known]
        if missing:
            errors["channels"] = f"No channel named '{missing[0]}': create it on the Notifications > Channels page."
    recipients = _str_list(cfg.get("recipients"))
    if recipients is None:
        errors["recipients"] = "recipients must be a list of email addresses or usernames."
    else:
        bad = [r for r in recipients if "@" in r and not EMAIL.match(r)]
        if bad:
            errors["recipients"] = f"'{bad[0]}' is not a valid email address."
    if cfg.get("webhook_url") not in (None, ""):
        problem = _static_url_error(cfg.get("webhook_url"), "webhook_url")
        if problem:
            errors["webhook_url"] = problem
    for key in ("message_template", "subject_template"):
        problem = template_error(cfg.get(key))
        if problem:
            errors[key] = problem
    if not errors and cfg.get("enabled", True) is not False:
        if not (channels or recipients or cfg.get("webhook_url")):
            if subscribed_events(cfg, "step") or subscribed_events(cfg, "pipeline"):
                errors["channels"] = "Say where to send: channels, recipients or a webhook_url."
    return errors


def subscribed_events(cfg: dict | None, level: str) -> frozenset[str]:
    """The events a config listens to at a level ('pipeline' or 'step')."""
    if not cfg or cfg.get("enabled") is False:
        return frozenset()
    events = set(e for e in (cfg.get("events") or []) if isinstance(e, str))
    if cfg.get("on_success"):
        events.add("success" if level == "pipeline" else "step_success")
    if cfg.get("on_failure"):
        events.update(("failed",) if level == "pipeline" else ("step_failed", "timed_out"))
    if cfg.get("on_approval_required"):
        events.add("approval_required")
    return frozenset(events)


def _step_def(snapshot: dict, step_id: int | None) -> dict | None:
    if step_id is None:
        return None
    for s in snapshot.get("steps") or ():
        if s.get("id") == step_id:
            return s
    return None


def _step_by_name(snapshot: dict, name: str | None) -> dict | None:
    if not name:
        return None
    for s in snapshot.get("steps") or ():
        if s.get("name") == name:
            return s
    return None


# ====================================================================== emit

@dataclass
class _Plan:
    level: str            # "pipeline" | "step"
    cfg: dict
    events: list[str]     # events this config hears among the candidates


def emit(event: str, execution: WorkflowExecution, attempt: StepExecutionHistory | None = None,
         extra: dict | None = None) -> list[int]:
    """Route an event; returns the ids of the deliveries it created. Never raises into the caller."""
    try:
        plans, step = _plans(event, execution, attempt, extra)
        if not plans:
            return []
        return _emit(event, execution, attempt, extra or {}, plans, step)
    except Exception:  # noqa: BLE001 - a notification problem must never break an execution
        log.exception("notifications: emit(%s) for %s failed", event, getattr(execution, "execution_id", "?"))
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001
            pass
        return []


_HEARD: dict[tuple[str, Any], frozenset[str]] = {}


def hears(event: str, execution: WorkflowExecution) -> bool:
    """Does any notification config of this execution listen to `event`? (no SQL after the first call)"""
    return _listened(event, _events_heard(execution))


def _listened(event: str, heard: frozenset[str]) -> bool:
    key = ALIASES.get(event, event)
    return key in heard or (key in ("success", "failed") and bool(heard & {"fixed", "regression"}))


def _events_heard(execution: WorkflowExecution) -> frozenset[str]:
    """Every event some config of this execution's frozen snapshot hears, cached per process.

    The key is the row's identity (read without SQL even when the runtime's commit expired the
    object), so emitting for an execution without notifications costs no query after the first."""
    from sqlalchemy import inspect as sa_inspect

    identity = sa_inspect(execution).identity
    key = (str(db.engine.url), identity) if identity else None
    heard = _HEARD.get(key) if key else None
    if heard is None:
        snap = execution.pipeline_snapshot or {}
        heard = _heard_in(snap.get("notification_config"), snap.get("steps") or ())
        if key:
            if len(_HEARD) > 4096:
                _HEARD.clear()
            _HEARD[key] = heard
    return heard


def learn_heard(execution: WorkflowExecution, snapshot: dict) -> None:
    """Fill _events_heard's cache for a new execution from the snapshot in hand: starting one
    would otherwise read its whole snapshot back just to learn that nobody listens."""
    from sqlalchemy import inspect as sa_inspect

    identity = sa_inspect(execution).identity
    if identity:
        if len(_HEARD) > 4096:
            _HEARD.clear()
        _HEARD[(str(db.engine.url), identity)] = _heard_in(snapshot.get("notification_config"),
                                                           snapshot.get("steps") or ())


def _heard_in(pipeline_cfg: dict | None, steps: Iterable[dict]) -> frozenset[str]:
    found = set(subscribed_events(pipeline_cfg, "pipeline"))
    for s in steps:
        found |= subscribed_events(s.get("notification_config"), "step")
    return frozenset(found)


_HEARD_BY_FROZEN: "weakref.WeakKeyDictionary[Frozen, frozenset[str]]" = weakref.WeakKeyDictionary()


def hears_frozen(event: str, fz: Frozen) -> bool:
    """`hears` from an execution's parsed definition: the step job asks this before it loads
    the execution row (whose JSON snapshot costs more to read than the step's own bookkeeping)."""
    heard = _HEARD_BY_FROZEN.get(fz)
    if heard is None:
        heard = _HEARD_BY_FROZEN[fz] = _heard_in(fz.notification_config, fz.steps.values())
    return _listened(event, heard)


def _plans(event: str, execution: WorkflowExecution, attempt, extra) -> tuple[list[_Plan], dict | None]:
    """Pure and in memory: which configs of the frozen snapshot hear this event."""
    key = ALIASES.get(event, event)
    if not _listened(event, _events_heard(execution)):
        return [], None
    snap = execution.pipeline_snapshot or {}
    pcfg = snap.get("notification_config")
    if key in EXECUTION_EVENTS:
        if not pcfg:
            return [], None
        heard = subscribed_events(pcfg, "pipeline")
        candidates = [key] + (["fixed", "regression"] if key in ("success", "failed") else [])
        hits = [e for e in candidates if e in heard]
        return ([_Plan("pipeline", pcfg, hits)] if hits else []), None
    if key not in STEP_EVENTS:
        return [], None
    step_id = attempt.step_id if attempt is not None else (extra or {}).get("step_id")
    step = _step_def(snap, step_id) or _step_by_name(snap, (extra or {}).get("step_name"))
    plans = []
    scfg = step.get("notification_config") if step else None
    if scfg and key in subscribed_events(scfg, "step"):
        plans.append(_Plan("step", scfg, [key]))
    if pcfg and key in subscribed_events(pcfg, "pipeline"):
        plans.append(_Plan("pipeline", pcfg, [key]))
    return plans, step


def previous_outcome(execution: WorkflowExecution) -> WorkflowExecution | None:
    """The pipeline's previous finished (success/failed) execution, by finish time."""
    finished = execution.finished_at or utcnow()
    return db.session.execute(
        select(WorkflowExecution)
        .where(WorkflowExecution.pipeline_id == execution.pipeline_id, WorkflowExecution.id != execution.id,
               WorkflowExecution.status.in_(("success", "failed")), WorkflowExecution.finished_at.is_not(None),
               WorkflowExecution.finished_at <= finished)
        .order_by(WorkflowExecution.finished_at.desc(), WorkflowExecution.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _retried(attempt: StepExecutionHistory) -> bool:
    """Has this attempt a successor (a scheduled or running retry)?"""
    return db.session.execute(select(StepExecutionHistory.id).where(
        StepExecutionHistory.execution_id == attempt.execution_id, StepExecutionHistory.step_id == attempt.step_id,
        StepExecutionHistory.retry_count > attempt.retry_count).limit(1)).first() is not None


def _emit(event: str, execution: WorkflowExecution, attempt, extra: dict, plans: list[_Plan], step: dict | None) -> list[int]:
    key = ALIASES.get(event, event)
    if key in ("step_failed", "timed_out") and attempt is not None and _retried(attempt):
        return []  # not the step's final failure: "retrying" tells about this attempt
    previous = None
    if any(e in ("fixed", "regression") for p in plans for e in p.events):
        previous = previous_outcome(execution)
    rows: list[NotificationDelivery] = []
    seen: set[tuple] = set()
    for plan in plans:
        events = []
        for e in plan.events:
            if e == "fixed" and not (key == "success" and previous is not None and previous.status == "failed"):
                continue
            if e == "regression" and not (key == "failed" and previous is not None and previous.status == "success"):
                continue
            events.append(event if e == key else e)
        for ev in events:
            ctx = message_context(ev, execution, attempt, step, extra, previous)
            subject, body = render_message(ALIASES.get(ev, ev), ctx, plan.cfg.get("message_template"),
                                           plan.cfg.get("subject_template"))
            for label, target, where in _config_destinations(plan.cfg, plan.level, extra):
                dedupe = (ev, where)
                if dedupe in seen:
                    continue
                seen.add(dedupe)
                rows.append(NotificationDelivery(
                    execution_id=execution.id, step_id=step.get("id") if step else None, event=ev,
                    channel=label, target=target[:500], status="pending", attempts=0, error="",
                    subject=subject[:300], body=body))
    if not rows:
        return []
    begin_locked()
    db.session.add_all(rows)
    db.session.commit()
    for row in rows:
        _enqueue(row)
    return [r.id for r in rows]


def _config_destinations(cfg: dict, level: str, extra: dict) -> list[tuple[str, str, tuple]]:
    """(channel label, target, identity) per destination of a config; email targets are resolved addresses.

    The identity lets a step config and the pipeline config that both hear an event send once per place."""
    out = [(name, "", ("channel", name)) for name in (_str_list(cfg.get("channels")) or [])]
    if cfg.get("webhook_url"):
        out.append((f"{level} webhook", mask_url(cfg["webhook_url"]), ("url", cfg["webhook_url"])))
    recipients = _str_list(cfg.get("recipients")) or []
    if recipients:
        to = resolve_recipients(recipients, extra)
        out.append((f"{level} email", ", ".join(to) or "(no email address found)", ("email", tuple(to))))
    named = [label for label, _t, where in out if where[0] == "channel"]
    if named:
        targets = {ch.name: channel_destination(ch).target for ch in db.session.execute(
            select(NotificationChannel).where(NotificationChannel.name.in_(named))).scalars()}
        out = [(label, targets.get(label, "(no such channel)") if where[0] == "channel" else t, where)
               for label, t, where in out]
    return out


def resolve_recipients(entries: Iterable[str], extra: dict | None = None) -> list[str]:
    """Email addresses from addresses, usernames and the word 'approvers' (who may decide this approval)."""
    addresses, usernames = [], []
    for entry in entries:
        if "@" in entry:
            addresses.append(entry)
        elif entry == "approvers":
            usernames += list((extra or {}).get("approver_usernames") or [])
        else:
            usernames.append(entry)
    if usernames:
        found = db.session.execute(select(User.email).where(User.username.in_(usernames), User.active.is_(True))).scalars()
        addresses += [e for e in found if e]
    return list(dict.fromkeys(addresses))


def _enqueue(row: NotificationDelivery) -> None:
    from rq import Retry

    from ..queues import NOTIFICATIONS, enqueue

    intervals = retry_intervals()
    try:
        options: dict[str, Any] = {"job_timeout": 120, "failure_ttl": 7 * 24 * 3600}
        if intervals:
            options["retry"] = Retry(max=len(intervals), interval=intervals)
        enqueue(NOTIFICATIONS, "webapp.tasks.notifications.deliver", row.id, **options)
    except Exception as e:  # noqa: BLE001 - Redis down: the row says so, the execution goes on
        log.warning("notifications: could not enqueue delivery %s: %s", row.id, e)
        begin_locked()
        db.session.execute(update(NotificationDelivery).where(NotificationDelivery.id == row.id)
                           .values(error=f"Could not queue the delivery: {e}"))
        db.session.commit()


# ====================================================================== message context

def message_context(event: str, execution: WorkflowExecution | None, attempt=None, step: dict | None = None,
                    extra: dict | None = None, previous: WorkflowExecution | None = None) -> dict[str, Any]:
    extra = dict(extra or {})
    ctx: dict[str, Any] = {"event": event, "event_label": EVENT_LABELS.get(event, event), "extra": extra}
    if execution is not None:
        snap = execution.pipeline_snapshot or {}
        secret_names = set(execution.secret_variables or [])
        ctx["pipeline"] = snap.get("name") or (execution.pipeline.name if execution.pipeline else "")
        ctx["url"] = execution_url(execution.execution_id)
        ctx["execution"] = {
            "id": execution.id, "execution_id": execution.execution_id, "status": execution.status,
            "trigger_type": execution.trigger_type,
            "triggered_by": execution.triggered_by.username if execution.triggered_by else None,
            "started_at": _iso(execution.started_at), "finished_at": _iso(execution.finished_at),
            "duration": format_duration(execution.duration_seconds), "duration_seconds": execution.duration_seconds,
            "reason": execution.status_reason or "", "pipeline_version": execution.pipeline_version,
            "failed_steps": list(execution.failed_steps or []), "url": ctx["url"],
        }
        ctx["variables"] = {k: v for k, v in (execution.context_variables or {}).items() if k not in secret_names}
        ctx["trigger"] = dict(execution.trigger_data or {})
        ctx["status"] = execution.status
        ctx["duration"] = format_duration(execution.duration_seconds) if execution.started_at else ""
        ctx["error"] = execution.status_reason if execution.status in ("failed", "cancelled") else ""
    else:
        ctx.update(pipeline="", url="", execution={}, variables={}, trigger={}, status="", duration="", error="")
    if step is not None or attempt is not None:
        s: dict[str, Any] = {"id": (step or {}).get("id"), "name": (step or {}).get("name") or extra.get("step_name")}
        if attempt is not None:
            s.update({
                "name": attempt.step_name or s["name"], "status": attempt.status, "attempt": (attempt.retry_count or 0) + 1,
                "max_attempts": (attempt.max_retries or 0) + 1, "error": attempt.error_message or "",
                "exit_code": attempt.exit_code, "duration": format_duration(attempt.duration_seconds),
                "duration_seconds": attempt.duration_seconds, "skip_reason": attempt.skip_reason or "",
            })
            ctx["status"] = attempt.status
            ctx["duration"] = s["duration"]
            ctx["error"] = attempt.error_message or ""
        if event == "retrying" and extra.get("delay_seconds") is not None:
            s["next_attempt_at"] = (utcnow() + timedelta(seconds=float(extra["delay_seconds"]))).strftime("%Y-%m-%d %H:%M:%S")
        ctx["step"] = s
    else:
        ctx["step"] = {}
    approval = {k: v for k, v in extra.items()}
    if extra.get("approver_usernames") or extra.get("approvers"):
        approval["approvers"] = list(extra.get("approver_usernames") or extra.get("approvers") or [])
    approval.setdefault("decision", extra.get("status") if event == "approval_decided" else None)
    approval.setdefault("decided_by", extra.get("by") or extra.get("username"))
    ctx["approval"] = approval
    if event == "approval_decided" and approval.get("decision"):
        ctx["status"] = approval["decision"]
    ctx["previous"] = ({"execution_id": previous.execution_id, "status": previous.status,
                        "finished_at": _iso(previous.finished_at), "url": execution_url(previous.execution_id)}
                       if previous is not None else {})
    return ctx


def _iso(value) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


# ====================================================================== delivering (the RQ job's work)

@dataclass
class Outcome:
    status: str
    error: str = ""
    detail: str = ""


def deliver(delivery_id: int, final_attempt: bool = True) -> Outcome:
    """Send one delivery (an attempt). Returns 'retrying' when the job should be retried by RQ."""
    begin_locked()
    claimed = db.session.execute(
        update(NotificationDelivery)
        .where(NotificationDelivery.id == delivery_id, NotificationDelivery.status.in_(("pending", "retrying")))
        .values(status="sending", attempts=NotificationDelivery.attempts + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    row = db.session.get(NotificationDelivery, delivery_id)
    if row is None:
        return Outcome("missing")
    if not claimed:
        return Outcome(row.status)
    return _attempt(row, final_attempt)


def _attempt(row: NotificationDelivery, final_attempt: bool) -> Outcome:
    dest = None
    try:
        dest = destination_for(row)
        execution = db.session.get(WorkflowExecution, row.execution_id) if row.execution_id else None
        message = Message(subject=row.subject, text=row.body, event=row.event,
                          payload=webhook_payload(row, execution), delivery_id=row.id)
        detail = send(dest, message, allowlist(dest))
    except Refused as e:
        return _record(row, "refused", e.message, dest)
    except DeliveryFailed as e:
        if e.retryable and not final_attempt:
            return _record(row, "retrying", e.message, dest)
        return _record(row, "failed", e.message, dest)
    except Exception as e:  # noqa: BLE001 - an unexpected bug is recorded, not lost
        log.exception("notifications: delivery %s crashed", row.id)
        message = f"Internal error while sending: {type(e).__name__}: {e}"
        return _record(row, "retrying" if not final_attempt else "failed", message, dest)
    return _record(row, "delivered", "", dest, detail)


def _record(row: NotificationDelivery, status: str, error: str, dest: Destination | None, detail: str = "") -> Outcome:
    begin_locked()  # SQLite: a transaction that read cannot become a writer once others committed
    if dest is not None:
        error = scrub(error, dest.secrets)
        row.target = dest.target[:500]
    if error:
        line = f"attempt {row.attempts}: {error}"
        row.error = (f"{row.error}\n{line}" if row.error else line)[-MAX_ERROR_CHARS:]
    row.status = status
    row.updated_at = utcnow()
    if status == "delivered":
        row.delivered_at = utcnow()
    db.session.commit()
    return Outcome(status, error, detail)


def destination_for(row: NotificationDelivery) -> Destination:
    """Where a delivery row goes: its named channel, or the config it came from (frozen snapshot)."""
    if row.channel in ADHOC:
        level, kind = ADHOC[row.channel]
        if kind == "email":
            to = [a.strip() for a in (row.target or "").split(",") if "@" in a]
            if not to:
                raise DeliveryFailed("No email address to send to: the recipients have no email address on file.")
            return Destination(kind="email", label=row.channel, to=to, smtp=smtp_settings())
        execution = db.session.get(WorkflowExecution, row.execution_id) if row.execution_id else None
        snap = execution.pipeline_snapshot if execution is not None else {}
        cfg = snap.get("notification_config") if level == "pipeline" else (_step_def(snap, row.step_id) or {}).get("notification_config")
        url = (cfg or {}).get("webhook_url")
        if not url:
            raise DeliveryFailed("The webhook_url of this notification config is gone.")
        return url_destination(url, row.channel)
    if row.channel in RUNNER_LABELS:
        raise DeliveryFailed("This delivery was made by a notification step and cannot be sent again on its own.")
    channel = db.session.execute(select(NotificationChannel).filter_by(name=row.channel)).scalar_one_or_none()
    if channel is None:
        raise DeliveryFailed(f"There is no channel named '{row.channel}' (it was deleted or renamed).")
    if not channel.active:
        raise DeliveryFailed(f"The channel '{row.channel}' is inactive.")
    return channel_destination(channel)


def url_destination(url: str, label: str = "webhook", secret: str = "", kind: str | None = None) -> Destination:
    return Destination(kind=kind or kind_for_url(url), label=label, url=url.strip(), secret=secret or "")


def channel_destination(channel: NotificationChannel) -> Destination:
    cfg = channel.config or {}
    if channel.channel_type == "email":
        base = smtp_settings()
        if cfg.get("smtp_host"):  # the channel's own server; otherwise AnsFlow's SMTP_* settings
            smtp = {"host": cfg["smtp_host"], "port": int(cfg.get("smtp_port") or 25), "user": cfg.get("smtp_user") or "",
                    "password": cfg.get("smtp_password") or "", "tls": cfg.get("smtp_tls") or "none",
                    "from": cfg.get("from") or base["from"]}
        else:
            smtp = {**base, "from": cfg.get("from") or base["from"]}
        return Destination(kind="email", label=channel.name, to=list(cfg.get("to") or []), smtp=smtp)
    return Destination(kind=channel.channel_type, label=channel.name, url=cfg.get("url") or "",
                       secret=cfg.get("secret") or "", apprise_url=cfg.get("apprise_url") or "",
                       headers=dict(cfg.get("headers") or {}))


def webhook_payload(row: NotificationDelivery, execution: WorkflowExecution | None) -> dict[str, Any]:
    """The structured part of the generic webhook body (next to event, subject and text)."""
    out: dict[str, Any] = {"sent_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")}
    if execution is not None:
        snap = execution.pipeline_snapshot or {}
        out["pipeline"] = {"id": execution.pipeline_id, "name": snap.get("name"), "version": execution.pipeline_version}
        out["execution"] = {"execution_id": execution.execution_id, "status": execution.status,
                            "url": execution_url(execution.execution_id)}
        step = _step_def(snap, row.step_id)
        if step is not None:
            out["step"] = {"id": step["id"], "name": step["name"]}
    return out


def reconcile_deliveries(stale_seconds: float | None = None) -> dict[str, int]:
    """For a periodic sweep: deliveries whose job was lost (Redis flushed, worker killed mid-send) are
    queued again, or recorded as failed once they used up their attempts. Returns counts.

    Open rows count as lost when untouched for longer than any retry interval could explain."""
    intervals = retry_intervals()
    if stale_seconds is None:
        stale_seconds = max(900, 2 * max(intervals or [0]) + 300)
    cutoff = utcnow() - timedelta(seconds=stale_seconds)
    allowed = 1 + len(intervals)
    begin_locked()
    stale = db.session.execute(select(NotificationDelivery).where(
        NotificationDelivery.status.in_(OPEN_STATES), NotificationDelivery.updated_at < cutoff)).scalars().all()
    counts = {"requeued": 0, "failed": 0}
    for row in stale:
        if row.attempts >= allowed:
            row.status = "failed"
            line = f"attempt {row.attempts}: gave up: the delivery job was lost"
            row.error = f"{row.error}\n{line}" if row.error else line
            counts["failed"] += 1
        else:
            row.status = "retrying" if row.attempts else "pending"
            counts["requeued"] += 1
        row.updated_at = utcnow()
    db.session.commit()
    for row in stale:
        if row.status in ("pending", "retrying"):
            _enqueue(row)
    return counts


# ====================================================================== test sends and the step runner

def send_now(dest: Destination, event: str, subject: str, body: str, execution: WorkflowExecution | None = None,
             step_id: int | None = None) -> NotificationDelivery:
    """Send synchronously (test button, notification step) and record the attempt as a delivery row."""
    row = NotificationDelivery(execution_id=execution.id if execution else None, step_id=step_id, event=event,
                               channel=dest.label[:80], target=dest.target[:500], status="sending", attempts=1,
                               error="", subject=subject[:300], body=body)
    begin_locked()
    db.session.add(row)
    db.session.commit()
    try:
        detail = send(dest, Message(subject=subject, text=body, event=event,
                                    payload=webhook_payload(row, execution), delivery_id=row.id), allowlist(dest))
    except Refused as e:
        _record(row, "refused", e.message, dest)
    except DeliveryFailed as e:
        _record(row, "failed", e.message, dest)
    else:
        _record(row, "delivered", "", dest, detail)
    return row


def test_destination(data: dict) -> Destination:
    """The destination of a test request: {channel} | {webhook_url[, channel_type, secret]} | {recipients}."""
    name = data.get("channel")
    if name:
        channel = db.session.execute(select(NotificationChannel).filter_by(name=str(name))).scalar_one_or_none()
        if channel is None:
            raise ValidationError(f"No channel named '{name}'.", {"channel": f"No channel named '{name}'."})
        return channel_destination(channel)
    if data.get("webhook_url"):
        url = data["webhook_url"]
        problem = _static_url_error(url, "webhook_url", check_private=False)  # refusals are recorded when sending
        if problem:
            raise ValidationError(problem, {"webhook_url": problem})
        kind = data.get("channel_type") or kind_for_url(url)
        if kind not in CHANNEL_TYPES or kind == "email":
            raise ValidationError("channel_type must be webhook, slack, dingtalk, wecom or feishu for a webhook_url.",
                                  {"channel_type": "use webhook, slack, dingtalk, wecom or feishu"})
        return url_destination(url, "test webhook", str(data.get("secret") or ""), kind)
    recipients = _str_list(data.get("recipients"))
    if recipients:
        bad = [r for r in recipients if "@" in r and not EMAIL.match(r)]
        if bad:
            raise ValidationError(f"'{bad[0]}' is not a valid email address.", {"recipients": f"'{bad[0]}' is not valid"})
        to = resolve_recipients(recipients)
        if not to:
            raise ValidationError("None of those recipients has an email address.", {"recipients": "no email address found"})
        return Destination(kind="email", label="test email", to=to, smtp=smtp_settings())
    raise ValidationError("Say what to test: a channel name, a webhook_url or recipients.",
                          {"channel": "give channel, webhook_url or recipients"})


def send_test(data: dict, user: User | None = None) -> NotificationDelivery:
    dest = test_destination(data)
    template = data.get("message")
    problem = template_error(template)
    if problem:
        raise ValidationError(problem, {"message": problem})
    ctx = {"user": getattr(user, "username", ""), "channel": dest.label, "pipeline": "", "execution": {}, "step": {}}
    subject, body = render_message("test", ctx, template or None)
    return send_now(dest, "test", subject, body)


def run_step_notifications(execution_key: str, attempt_id: int, params: dict) -> list[NotificationDelivery]:
    """The `notification` step: render its message and send it now to every destination it names."""
    execution = db.session.execute(select(WorkflowExecution).filter_by(execution_id=execution_key)).scalar_one_or_none()
    attempt = db.session.get(StepExecutionHistory, attempt_id)
    snap = execution.pipeline_snapshot if execution is not None else {}
    step = _step_def(snap, attempt.step_id) if attempt is not None else None
    ctx = message_context("step", execution, attempt, step, {})
    ctx["steps"] = _step_outputs(execution.id) if execution is not None else {}
    subject, body = render_message("step", ctx, params.get("message") or None, params.get("subject") or None)
    dests: list[Destination] = []
    problems: list[NotificationDelivery] = []
    for name in _str_list(params.get("channels")) or []:
        channel = db.session.execute(select(NotificationChannel).filter_by(name=name)).scalar_one_or_none()
        if channel is None or not channel.active:
            row = NotificationDelivery(execution_id=execution.id if execution else None, step_id=step and step["id"],
                                       event="step", channel=name[:80], target="", status="failed", attempts=1,
                                       error=f"attempt 1: There is no active channel named '{name}'.",
                                       subject=subject[:300], body=body)
            begin_locked()
            db.session.add(row)
            db.session.commit()
            problems.append(row)
            continue
        dests.append(channel_destination(channel))
    if params.get("webhook_url"):
        dests.append(url_destination(params["webhook_url"], "webhook", str(params.get("secret") or "")))
    recipients = _str_list(params.get("recipients")) or []
    if recipients:
        dests.append(Destination(kind="email", label="email", to=resolve_recipients(recipients), smtp=smtp_settings()))
    rows = list(problems)
    for dest in dests:
        rows.append(send_now(dest, "step", subject, body, execution, step and step["id"]))
    return rows


def _step_outputs(execution_pk: int) -> dict[str, dict[str, Any]]:
    """Per step name: the latest attempt's status, outputs and exit code (for step message templates)."""
    out: dict[str, dict[str, Any]] = {}
    rows = db.session.execute(select(StepExecutionHistory).where(StepExecutionHistory.execution_id == execution_pk)
                              .order_by(StepExecutionHistory.retry_count, StepExecutionHistory.id)).scalars()
    for a in rows:
        out[a.step_name] = {"status": a.status, "outputs": dict(a.output_data or {}), "exit_code": a.exit_code}
    return out


# ====================================================================== step notification config (API)

def save_step_notification_config(pipeline_id: int, step_id: int, cfg: Any) -> PipelineStep:
    """Validate and save a step's notification_config; the pipeline's version goes up."""
    step = db.session.get(PipelineStep, step_id)
    if step is None or step.pipeline_id != pipeline_id:
        raise LookupError("No such step in that pipeline.")
    if cfg == {}:
        cfg = None
    errors = validate_notification_config(cfg)
    if errors:
        raise ValidationError("The notification settings were not saved: fix the fields below.", errors)
    if cfg is not None:
        cfg = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
        for key in ("channels", "recipients"):
            if key in cfg:
                cfg[key] = _str_list(cfg[key])
    from . import pipeline_access  # who may edit this pipeline (issue 13); audited in the same transaction
    pipeline_access.require_edit(step.pipeline)
    begin_locked()
    pipeline_access.audit(step.pipeline, "pipeline_edited", f"notifications of step {step.name}",
                          version=step.pipeline.version + 1)
    step.notification_config = cfg
    db.session.execute(update(Pipeline).where(Pipeline.id == pipeline_id).values(version=Pipeline.version + 1)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    return step


# ====================================================================== channels

def list_channels() -> list[NotificationChannel]:
    return list(db.session.execute(select(NotificationChannel).order_by(NotificationChannel.name)).scalars())


def get_channel(channel_id: int) -> NotificationChannel | None:
    return db.session.get(NotificationChannel, channel_id)


def masked_config(channel: NotificationChannel) -> dict[str, Any]:
    """The channel's config as shown back: secrets as '••••1a2b', URLs with their tokens masked."""
    cfg = channel.config or {}
    out: dict[str, Any] = {}
    for key in CHANNEL_FIELDS.get(channel.channel_type, ()):
        value = cfg.get(key)
        if value in (None, "", [], {}):
            continue
        if key == "url":
            out[key] = mask_url(value)
        elif key in SECRET_FIELDS:
            out[key] = mask_secret(value)
        elif key == "headers":
            out[key] = {k: mask_secret(v) for k, v in value.items()}
        else:
            out[key] = value
    return out


def channel_json(channel: NotificationChannel) -> dict[str, Any]:
    return {"id": channel.id, "name": channel.name, "channel_type": channel.channel_type, "active": channel.active,
            "target": channel_destination(channel).target, "config": masked_config(channel),
            "created_at": channel.created_at.isoformat() + "Z" if channel.created_at else None}


def _bool(value: Any, default: bool = True) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _clean_config(kind: str, raw: dict, existing: dict | None, errors: dict[str, str]) -> dict[str, Any]:
    existing = existing or {}
    cfg: dict[str, Any] = {}
    for key in CHANNEL_FIELDS[kind]:
        present = key in raw
        value = raw.get(key)
        if key in KEEP_IF_BLANK and (not present or value == ""):
            if existing.get(key):
                cfg[key] = existing[key]
            continue
        if not present and key in existing:
            cfg[key] = existing[key]
            continue
        if value is None or value == "":
            continue
        if key == "to":
            to = _str_list(value)
            if to is None:
                errors["to"] = "to must be a list of email addresses."
            else:
                bad = [a for a in to if not EMAIL.match(a)]
                if bad:
                    errors["to"] = f"'{bad[0]}' is not a valid email address."
                cfg["to"] = to
        elif key == "smtp_port":
            try:
                port = int(value)
                if not 0 < port < 65536:
                    raise ValueError
                cfg[key] = port
            except (TypeError, ValueError):
                errors[key] = "The SMTP port is a number between 1 and 65535."
        elif key == "smtp_tls":
            if value not in SMTP_TLS:
                errors[key] = f"TLS must be one of {', '.join(SMTP_TLS)}."
            cfg[key] = value
        elif key == "headers":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    errors[key] = 'Headers are a JSON object, e.g. {"Authorization": "Bearer ..."}.'
                    continue
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                errors[key] = "Headers must map header names to text values."
                continue
            cfg[key] = value
        elif not isinstance(value, str):
            errors[key] = f"{key} must be text."
        else:
            cfg[key] = value.strip()
    if kind == "email":
        if not cfg.get("to"):
            errors.setdefault("to", "Give at least one email address.")
        if cfg.get("from") and not EMAIL.match(cfg["from"]):
            errors["from"] = "The sender must be an email address."
    else:
        if cfg.get("apprise_url"):
            problem = apprise_url_error(kind, cfg["apprise_url"])
            if problem:
                errors["apprise_url"] = problem
        elif not cfg.get("url"):
            errors["url"] = ("A webhook URL is required." if kind not in APPRISE_SCHEMES
                             else "A webhook URL (or an Apprise URL) is required.")
        if cfg.get("url") and "url" not in errors:
            problem = _static_url_error(cfg["url"], "webhook URL")
            if problem:
                errors["url"] = problem
    return cfg


def save_channel(data: dict, channel: NotificationChannel | None = None) -> NotificationChannel:
    """Create (channel=None) or update a named channel. Blank secret fields keep the stored value."""
    if not isinstance(data, dict):
        raise ValidationError("Send a JSON object.", {"body": "expected an object"})
    errors: dict[str, str] = {}
    name = (data.get("name") if "name" in data else (channel.name if channel else "")) or ""
    name = name.strip() if isinstance(name, str) else ""
    if not CHANNEL_NAME.match(name):
        errors["name"] = "A channel name uses letters, digits, '.', '_' or '-' (at most 80, no spaces)."
    else:
        clash = db.session.execute(select(NotificationChannel.id).filter_by(name=name)).scalar_one_or_none()
        if clash is not None and (channel is None or clash != channel.id):
            errors["name"] = f"A channel named '{name}' already exists."
    kind = data.get("channel_type") or (channel.channel_type if channel else None)
    if channel is not None and kind != channel.channel_type:
        errors["channel_type"] = "The type of a channel cannot change; create a new channel instead."
        kind = channel.channel_type
    if kind not in CHANNEL_TYPES:
        errors["channel_type"] = f"The type must be one of {', '.join(CHANNEL_TYPES)}."
        raise ValidationError("The channel was not saved: fix the fields below.", errors)
    raw = data.get("config") if isinstance(data.get("config"), dict) else {
        k: v for k, v in data.items() if k in CHANNEL_FIELDS[kind]}
    cfg = _clean_config(kind, raw, channel.config if channel else None, errors)
    if errors:
        raise ValidationError("The channel was not saved: fix the fields below.", errors)
    begin_locked()
    if channel is None:
        channel = NotificationChannel(channel_type=kind)
        db.session.add(channel)
    old_name = channel.name
    channel.name = name
    channel.config = cfg
    channel.active = _bool(data.get("active"), channel.active if channel.active is not None else True)
    if old_name and old_name != name:
        _rename_references(old_name, name)
    db.session.commit()
    return channel


def _rename_references(old: str, new: str) -> None:
    """Keep pipelines and steps that name the channel working after a rename."""
    def fix(cfg):
        if isinstance(cfg, dict) and old in (cfg.get("channels") or []):
            return {**cfg, "channels": [new if c == old else c for c in cfg["channels"]]}
        return None

    for p in db.session.execute(select(Pipeline).where(Pipeline.notification_config.is_not(None))).scalars():
        fixed = fix(p.notification_config)
        if fixed is not None:
            p.notification_config = fixed
    for s in db.session.execute(select(PipelineStep).where(PipelineStep.notification_config.is_not(None))).scalars():
        fixed = fix(s.notification_config)
        if fixed is not None:
            s.notification_config = fixed


def channel_users(name: str) -> list[str]:
    """Pipelines (and 'pipeline: step') whose notification config names this channel."""
    used = []
    for p in db.session.execute(select(Pipeline).where(Pipeline.notification_config.is_not(None))).scalars():
        if name in (p.notification_config or {}).get("channels", []):
            used.append(p.name)
    rows = db.session.execute(select(PipelineStep, Pipeline.name).join(Pipeline)
                              .where(PipelineStep.notification_config.is_not(None))).all()
    for step, pname in rows:
        if name in (step.notification_config or {}).get("channels", []):
            used.append(f"{pname}: {step.name}")
    return used


def delete_channel(channel: NotificationChannel) -> None:
    used = channel_users(channel.name)
    if used:
        raise ValidationError(f"'{channel.name}' is still used by {', '.join(used[:5])}"
                              f"{' and more' if len(used) > 5 else ''}: remove it there first.",
                              {"name": "channel in use"})
    begin_locked()
    db.session.delete(channel)
    db.session.commit()


# ====================================================================== the delivery log

def deliveries_for_execution(execution_pk: int) -> list[NotificationDelivery]:
    return list(db.session.execute(
        select(NotificationDelivery).where(NotificationDelivery.execution_id == execution_pk)
        .order_by(NotificationDelivery.id)).scalars())


def list_deliveries(status: str | None = None, channel: str | None = None, execution: str | None = None,
                    event: str | None = None, limit: int = 50, offset: int = 0):
    """(rows, total) newest first; each row is (delivery, execution_id string or None)."""
    from sqlalchemy import func

    q = select(NotificationDelivery, WorkflowExecution.execution_id).outerjoin(
        WorkflowExecution, WorkflowExecution.id == NotificationDelivery.execution_id)
    if status:
        q = q.where(NotificationDelivery.status == status)
    if channel:
        q = q.where(NotificationDelivery.channel == channel)
    if event:
        q = q.where(NotificationDelivery.event == event)
    if execution:
        cond = WorkflowExecution.execution_id == execution
        if str(execution).isdigit():
            cond = cond | (NotificationDelivery.execution_id == int(execution))
        q = q.where(cond)
    total = db.session.execute(select(func.count()).select_from(q.subquery())).scalar_one()
    rows = db.session.execute(q.order_by(NotificationDelivery.id.desc()).limit(limit).offset(offset)).all()
    return [(r[0], r[1]) for r in rows], total


def delivery_channels() -> list[str]:
    return sorted(set(db.session.execute(select(NotificationDelivery.channel).distinct()).scalars()))


def get_delivery(delivery_id: int) -> NotificationDelivery | None:
    return db.session.get(NotificationDelivery, delivery_id)


def delivery_json(d: NotificationDelivery, execution_id: str | None = None) -> dict[str, Any]:
    if execution_id is None and d.execution_id:
        execution_id = db.session.execute(select(WorkflowExecution.execution_id).filter_by(id=d.execution_id)).scalar()
    return {"id": d.id, "execution_id": execution_id, "step_id": d.step_id, "event": d.event, "channel": d.channel,
            "target": d.target, "status": d.status, "attempts": d.attempts, "error": d.error or None,
            "subject": d.subject, "body": d.body,
            "created_at": _z(d.created_at), "updated_at": _z(d.updated_at), "delivered_at": _z(d.delivered_at)}


def _z(value) -> str | None:
    return value.isoformat() + "Z" if value else None


# ====================================================================== the demo receiver

def _demo_key() -> str:
    return f"{current_app.config.get('QUEUE_PREFIX', 'ansflow')}:demo-webhook"


DEMO_KEEP = 30
DEMO_MAX_BYTES = 64 * 1024


def record_demo_webhook(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Keep the last DEMO_KEEP posts to the demo receiver (in Redis); check signatures of webhook channels
    that point at it."""
    from ..queues import redis_conn

    text = body[:DEMO_MAX_BYTES].decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    lower = {k.lower(): v for k, v in headers.items()}
    signature = lower.get("x-ansflow-signature")
    verdict = "unsigned"
    if signature:
        verdict = "signature does not match any webhook channel pointing here"
        timestamp = lower.get("x-ansflow-timestamp", "")
        for ch in db.session.execute(select(NotificationChannel).filter_by(channel_type="webhook")).scalars():
            secret = (ch.config or {}).get("secret")
            if secret and "/demo-webhook" in ((ch.config or {}).get("url") or ""):
                if webhook_signature(secret, timestamp, body) == signature:
                    verdict = f"valid signature (channel '{ch.name}')"
                    break
    item = {
        "received_at": utcnow().strftime("%Y-%m-%d %H:%M:%S"),
        "headers": {k: v for k, v in headers.items() if k.lower().startswith(("x-ansflow", "content-type", "user-agent"))},
        "event": (parsed or {}).get("event") if isinstance(parsed, dict) else None,
        "subject": (parsed or {}).get("subject") if isinstance(parsed, dict) else None,
        "body": json.dumps(parsed, indent=2, ensure_ascii=False) if parsed is not None else text,
        "signature": verdict,
    }
    conn = redis_conn()
    pipe = conn.pipeline()
    pipe.lpush(_demo_key(), json.dumps(item))
    pipe.ltrim(_demo_key(), 0, DEMO_KEEP - 1)
    pipe.execute()
    return item


def demo_webhook_posts() -> list[dict[str, Any]]:
    from ..queues import redis_conn

    try:
        return [json.loads(x) for x in redis_conn().lrange(_demo_key(), 0, DEMO_KEEP - 1)]
    except Exception:  # noqa: BLE001 - the page still renders without Redis
        return []


def clear_demo_webhook() -> None:
    from ..queues import redis_conn

    redis_conn().delete(_demo_key())


__all__ = [
    "EVENTS", "EXECUTION_EVENTS", "STEP_EVENTS", "CHANNEL_FIELDS", "TYPE_LABELS", "DELIVERY_STATES",
    "emit", "deliver", "send_test", "send_now", "run_step_notifications", "validate_notification_config",
    "subscribed_events", "save_step_notification_config", "list_channels", "get_channel", "save_channel",
    "delete_channel", "channel_json", "masked_config", "deliveries_for_execution", "list_deliveries",
    "delivery_json", "record_demo_webhook", "demo_webhook_posts", "check_url",
]
