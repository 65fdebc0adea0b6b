"""Approvals pages: the inbox (waiting for me / requested by me / history), a request's audit page,
the decide action (HTMX: the row or gate replaces itself) and the navigation badge."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from jinja2_fragments.flask import render_block
from werkzeug.routing import BuildError

from ..security import has_role, role_required
from ..services import approvals as svc
from ..services.approval_context import approval_context
from ..services.accounts import ValidationError
from .render import is_partial_request, render

bp = Blueprint("approvals", __name__, url_prefix="/approvals")

TABS = {"mine": "Waiting for me", "requested": "Requested by me", "history": "History"}
CHANGED = "approvalsChanged, executionUpdated"  # the badge, the inbox and the execution page listen


@bp.get("/")
@role_required("viewer")
def index():
    tab = request.args.get("tab") if request.args.get("tab") in TABS else "mine"
    pipeline = request.args.get("pipeline", type=int)
    status = request.args.get("status") if request.args.get("status") in svc.STATUSES else None
    if tab == "mine":
        items = svc.waiting_for(current_user, pipeline)
    elif tab == "requested":
        items = svc.list_requests(requested_by=current_user.username, status=status, pipeline=pipeline)
    else:
        items = svc.history(status=status, pipeline=pipeline)
    return render("approvals/index.html", "list", tab=tab, tabs=TABS, items=items,
                  pipelines=svc.pipelines_with_requests(), filters={"pipeline": pipeline, "status": status},
                  statuses=svc.STATUSES)


@bp.get("/badge")
@role_required("viewer")
def badge():
    resp = make_response(render_block("base.html", "nav_badge"))
    resp.headers["Vary"] = "HX-Request"
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/<int:request_id>")
@role_required("viewer")
def detail(request_id: int):
    try:
        req = svc.get_request(request_id)
    except svc.NotFound:
        abort(404)
    return render("approvals/detail.html", req=req)


@bp.post("/<int:request_id>/decide")
@role_required("approver")
def decide(request_id: int):
    action = request.form.get("action", "")
    comment = request.form.get("comment", "")
    # the checkbox's value is how many failed steps the approver saw (the service compares it to now)
    seen = request.form.get("confirm_failures", "")
    confirm = int(seen) if seen.isdigit() else None
    view = request.form.get("view", "row")
    message = error = error_field = None
    if action == "reject" and not comment.strip():
        error = "Say why you reject: your comment becomes the step's error message."
    else:
        try:
            outcome = svc.decide(request_id, current_user, action, comment, confirm)
            message = _done_message(outcome)
        except svc.NotFound:
            abort(404)
        except (svc.Conflict, svc.Forbidden, ValidationError) as e:
            error = e.message
            error_field = "confirm_failures" if isinstance(e, svc.NeedsConfirmation) else None
    if not is_partial_request():
        flash(error or message, "error" if error else "success")
        return redirect(_safe_next(request.form.get("next"), request_id), code=303)
    req = svc.get_request(request_id)
    ctx = {"row_message": message, "row_error": error, "row_comment": comment if error else "",
           "row_error_field": error_field}
    if view == "gate":
        resp = make_response(render_template("approvals/_gate.html", request=req, **ctx))
        resp.headers["Vary"] = "HX-Request"
    else:
        resp = render("approvals/index.html", "row", r=req, **ctx)
    resp.headers["HX-Trigger"] = CHANGED
    return resp


def _done_message(outcome: svc.Outcome) -> str:
    req = outcome.request
    verb = "approved" if outcome.decision.decision == "approve" else "rejected"
    if req.status == "approved":
        return f"You approved: {req.step_name} continues."
    if req.status == "rejected":
        return f"You rejected: {req.step_name} fails with your comment."
    return f"You {verb}. {svc.approvals_count(req)} of {req.required_approvals} approvals so far."


def _safe_next(target: str | None, request_id: int) -> str:
    if target and urlsplit(target).netloc == "" and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("approvals.detail", request_id=request_id)


# ---------------------------------------------------------------- template helpers


@bp.app_template_global()
def approval_view(req, user) -> dict:
    """What a row or gate shows about one request for one user (computed once per render)."""
    approvals = svc.approvals_count(req)
    approve_refusal = svc.refusal(req, user, "approve") if user.is_authenticated else "Sign in to decide."
    reject_refusal = svc.refusal(req, user, "reject") if user.is_authenticated else "Sign in to decide."
    mine = next((d for d in req.decisions if user.is_authenticated and d.username == user.username), None)
    return {
        "context": approval_context(req),
        "approvals": approvals,
        "required": req.required_approvals,
        "rejections": sum(1 for d in req.decisions if d.decision == "reject"),
        "can_approve": approve_refusal is None and has_role(user, "approver"),
        "can_reject": reject_refusal is None and has_role(user, "approver"),
        # Why this user sees no buttons (only when they would expect some)
        "why_not": _why_not(req, user, approve_refusal, reject_refusal),
        "mine": mine,
        "left": svc.time_left(req),
        "asked": svc.resolve_approvers(req),
        "waiting_on": svc.undecided_approvers(req) if req.status == "pending" else [],
        "execution_url": execution_url(req),
        "self_approval": svc.self_approval_allowed(req),
    }


def _why_not(req, user, approve_refusal, reject_refusal) -> str | None:
    if req.status != "pending" or not user.is_authenticated:
        return None
    if approve_refusal and not reject_refusal:
        return approve_refusal  # e.g. the requester: may reject, may not approve
    if approve_refusal and svc.can_decide(req, user):
        return approve_refusal
    return None


def execution_url(req) -> str | None:
    ex = req.execution
    if ex is None:
        return None
    for endpoint in ("executions.detail", "executions.show", "executions.view"):
        try:
            return url_for(endpoint, execution_id=ex.execution_id)
        except BuildError:
            continue
    return None


@bp.app_template_filter("time_left")
def time_left_filter(left: timedelta | None) -> str:
    if left is None:
        return "no time limit"
    seconds = int(left.total_seconds())
    if seconds <= 0:
        return "time is up"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h left"
    if hours:
        return f"{hours}h {minutes}m left"
    if minutes:
        return f"{minutes}m left"
    return f"{secs}s left"


@bp.app_template_filter("hours")
def hours_filter(hours: float | None) -> str:
    return svc.format_hours(hours)


@bp.app_template_filter("utc")
def utc_filter(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "—"
