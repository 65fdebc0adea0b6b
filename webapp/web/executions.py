"""Executions pages: the run form, the list, and an execution's live timeline with its actions.

The execution page's `live` block (status, actions, Gantt chart, graph, steps and logs) polls
every second while the execution is not terminal; the response that shows it terminal is a 286,
which stops htmx polling (DESIGN §4). Approval gates and notification deliveries live in their
own blocks outside the polling one (a gate has a comment box that must not be replaced while
someone types); the live block tells them to refresh with an HX-Trigger event when what they
show changed (the page sends the signature it last saw in hx-vals).
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, abort, flash, make_response, redirect, request, url_for
from flask_login import current_user

from ..models import utcnow
from ..models.execution import EXECUTION_STATES
from ..security import has_role, role_required
from ..services import analysis
from ..services import executions as svc
from ..services import pipelines as pipelines_svc
from ..services import run_summary
from ..services.accounts import ValidationError
from .render import is_partial_request, render

try:  # partials of the approvals and notifications areas (optional)
    from ..services import approvals as approvals_svc
except ImportError:  # pragma: no cover
    approvals_svc = None
try:
    from ..services import notifications as notifications_svc
except ImportError:  # pragma: no cover
    notifications_svc = None

bp = Blueprint("executions", __name__, url_prefix="/executions")

PAGE_SIZE = 50
LOG_TAIL = 32 * 1024          # characters of a log shown in the page (the full log has its own URL)
TERMINAL = svc.TERMINAL_EXECUTION
STEP_TERMINAL = ("success", "failed", "skipped", "cancelled", "timed_out")
MASK = "••••••"


def _execution(execution_id: str):
    e = svc.get_execution(execution_id)
    if e is None:
        abort(404)
    return e


def _see_other(e) -> Response:
    return redirect(url_for("executions.detail", execution_id=e.execution_id), code=303)


# --------------------------------------------------------------------------- list


@bp.get("/")
@role_required("viewer")
def index():
    pipeline_id = request.args.get("pipeline", type=int)
    status = request.args.get("status") if request.args.get("status") in EXECUTION_STATES else None
    page = max(request.args.get("page", 1, type=int) or 1, 1)
    rows = svc.list_executions(pipeline_id, status, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE)
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    live = any(e.status not in TERMINAL for e in rows)
    resp = render("executions/index.html", "list", executions=rows, live=live, page=page, more=more,
                  bypassed=run_summary.bypassed_counts(e.id for e in rows),
                  filters={"pipeline": pipeline_id, "status": status}, statuses=EXECUTION_STATES,
                  pipelines=pipelines_svc.list_pipelines(), can_run=has_role(current_user, "maintainer"),
                  now=utcnow())
    if is_partial_request() and not live:
        resp.status_code = 286  # nothing left to watch: htmx stops polling
    return resp


# --------------------------------------------------------------------------- run form


def parse_variables(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    """KEY=value lines (a `secret:` prefix marks a secret; blank and # lines are ignored).

    Returns (variables, secret names, errors naming the line)."""
    variables: dict[str, str] = {}
    secrets: list[str] = []
    errors: list[str] = []
    for n, raw in enumerate((text or "").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        secret = line.lower().startswith("secret:")
        if secret:
            line = line[len("secret:"):].strip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq:
            errors.append(f"Line {n}: write KEY=value.")
        elif not svc.VAR_NAME.match(key):
            errors.append(f"Line {n}: {key!r} is not a valid name (letters, digits and _, not starting with a digit).")
        elif key in variables:
            errors.append(f"Line {n}: {key} is given twice.")
        else:
            variables[key] = value.strip()
            if secret:
                secrets.append(key)
    return variables, secrets, errors


def _prefill(pipeline, source_id: str | None) -> tuple[str, list[str]]:
    """Variables of an earlier execution of this pipeline (secret values are not copied)."""
    src = svc.get_execution(source_id) if source_id else None
    if src is None or src.pipeline_id != pipeline.id:
        return "", []
    hidden = set(src.secret_variables or [])
    lines = [f"{k}={v}" for k, v in (src.context_variables or {}).items() if k not in hidden]
    return "\n".join(lines), sorted(hidden & set(src.context_variables or {}))


def _run_form(pipeline, values: dict, errors: dict, status: int = 200, secret_names: list[str] | None = None):
    return render("executions/new.html", p=pipeline, values=values, errors=errors, secret_names=secret_names or [],
                  pipelines=pipelines_svc.list_pipelines(active=True) if pipeline is None else [], status=status)


@bp.get("/new")
@role_required("maintainer")
def new():
    pid = request.args.get("pipeline", type=int)
    pipeline = pipelines_svc.get_pipeline(pid) if pid else None
    if pid and pipeline is None:
        abort(404)
    values = {"variables": "", "note": ""}
    secret_names: list[str] = []
    errors: dict[str, str] = {}
    if pipeline is not None:
        values["variables"], secret_names = _prefill(pipeline, request.args.get("from"))
        errors = _pipeline_problems(pipeline)
    return _run_form(pipeline, values, errors, secret_names=secret_names)


def _pipeline_problems(pipeline) -> dict[str, str]:
    """What stops this pipeline from running, said before anyone presses Run."""
    if not pipeline.active:
        return {"pipeline": f"Pipeline '{pipeline.name}' is inactive: activate it in its settings to run it."}
    if not pipeline.steps:
        return {"pipeline": "This pipeline has no steps yet: add a step first."}
    return {}


@bp.post("/")
@role_required("maintainer")
def start():
    pipeline = pipelines_svc.get_pipeline(request.form.get("pipeline", type=int) or 0)
    values = {"variables": request.form.get("variables", ""), "note": request.form.get("note", "").strip()}
    if pipeline is None:
        return _run_form(None, values, {"pipeline": "Choose a pipeline to run."}, 422)
    variables, secrets, problems = parse_variables(values["variables"])
    errors = {"variables": " ".join(problems)} if problems else {}
    if len(values["note"]) > 500:
        errors["note"] = "Keep the note under 500 characters."
    if errors:
        return _run_form(pipeline, values, errors, 422)
    trigger = {"note": values["note"]} if values["note"] else {}
    try:
        e = svc.start(pipeline, trigger_data=trigger, variables=variables, user=current_user,
                      trigger_type="manual", secret_variables=secrets)
    except ValidationError as exc:
        _rollback()
        fields = dict(exc.fields or {})
        if "steps" in fields or "definition" in fields:
            fields["pipeline"] = exc.message + " " + (fields.pop("steps", "") or fields.pop("definition", ""))
        return _run_form(pipeline, values, fields or {"pipeline": exc.message}, 422)
    except svc.Conflict as exc:
        _rollback()
        return _run_form(pipeline, values, {"pipeline": exc.message}, 409)
    flash(f"Execution {e.execution_id} of '{pipeline.name}' started.", "success")
    return _see_other(e)


def _rollback() -> None:
    from ..extensions import db
    db.session.rollback()  # a refused start leaves its write transaction open


# --------------------------------------------------------------------------- one execution


@bp.get("/<execution_id>")
@role_required("viewer")
def detail(execution_id: str):
    e = _execution(execution_id)
    block = request.args.get("part") if request.args.get("part") in ("approvals", "deliveries") else "live"
    return _respond(e, block)


def _respond(e, block: str = "live", message: str | None = None, error: str | None = None,
             step_errors: dict[int, str] | None = None) -> Response:
    ctx = detail_context(e, message=message, error=error, step_errors=step_errors or {})
    resp = render("executions/detail.html", block, **ctx)
    resp.headers["Cache-Control"] = "no-store"
    if is_partial_request() and block == "live":
        events = [name for key, name in (("approvals", "executionApprovals"), ("deliveries", "executionDeliveries"))
                  if request.values.get(f"seen_{key}") not in (None, ctx["sigs"][key])]
        if events:
            resp.headers["HX-Trigger"] = ", ".join(events)
        if ctx["terminal"] and request.method == "GET":
            resp.status_code = 286  # the execution is over: stop polling
    return resp


def _act(e, action, success: str):
    """Run an action; no JS: flash and 303 back to the page; htmx: the live block with the outcome."""
    message = error = None
    step_errors: dict[int, str] = {}
    try:
        e = action() or e
        message = success
    except svc.Conflict as exc:
        _rollback()
        error = exc.message
    except ValidationError as exc:
        _rollback()
        error = exc.message
        if request.form.get("step"):
            step_errors[request.form.get("step", type=int) or 0] = next(iter(exc.fields.values()), exc.message)
    if not is_partial_request():
        flash(error or message, "error" if error else "success")
        return _see_other(e)
    return _respond(svc.get_execution(e.execution_id), message=message, error=error, step_errors=step_errors)


@bp.get("/<execution_id>/cancel")
@role_required("maintainer")
def confirm_cancel(execution_id: str):
    """Without JS the Cancel button lands here: a page that asks, with the form that cancels."""
    e = _execution(execution_id)
    if e.status in TERMINAL:
        flash(f"Execution {e.execution_id} is already {e.status}: nothing to cancel.", "error")
        return _see_other(e)
    steps = step_rows(e, svc.attempts_of(e.id))
    return render("executions/cancel.html", e=e, pname=e.pipeline_snapshot.get("name") or f"pipeline #{e.pipeline_id}",
                  active=[s for s in steps if s["status"] not in STEP_TERMINAL])


@bp.post("/<execution_id>/cancel")
@role_required("maintainer")
def cancel(execution_id: str):
    e = _execution(execution_id)
    return _act(e, lambda: svc.cancel(e, current_user), "Cancelled: running steps were stopped.")


@bp.post("/<execution_id>/steps/<int:step_id>/retry")
@role_required("maintainer")
def retry_step(execution_id: str, step_id: int):
    e = _execution(execution_id)
    name, version = _step_name(e, step_id), e.pipeline_version
    if request.form.get("definition") == "current" and svc.current_version(e) is not None:
        return _retry_with_current(e, step_id, name)
    return _act(e, lambda: svc.retry_step(e, step_id, current_user, definition="original"),
                f"Retrying step '{name}' as it ran (v{version}), and what depends on it.")


def _retry_with_current(e, step_id: int, name: str) -> Response:
    """A new execution runs the step with the current definition: the browser goes there."""
    try:
        child = svc.retry_step(e, step_id, current_user, definition="current")
    except (svc.Conflict, ValidationError) as exc:
        _rollback()
        if is_partial_request():
            return _respond(svc.get_execution(e.execution_id), error=exc.message)
        flash(exc.message, "error")
        return _see_other(e)
    flash(f"Retrying step '{name}' with the current definition (v{child.pipeline_version}) in execution "
          f"{child.execution_id}: the steps that succeeded keep their results.", "success")
    if is_partial_request():
        resp = make_response("", 200)
        resp.headers["HX-Redirect"] = url_for("executions.detail", execution_id=child.execution_id)
        return resp
    return _see_other(child)


@bp.post("/<execution_id>/steps/<int:step_id>/bypass")
@role_required("maintainer")
def bypass_step(execution_id: str, step_id: int):
    e = _execution(execution_id)
    reason = request.form.get("reason", "")
    return _act(e, lambda: svc.bypass_step(e, step_id, reason, current_user),
                f"Step '{_step_name(e, step_id)}' bypassed: what depends on it goes on.")


@bp.post("/<execution_id>/resume")
@role_required("maintainer")
def resume(execution_id: str):
    e = _execution(execution_id)
    # "frozen" is what this form sent before it said "original"
    use_current = request.form.get("definition", "current") not in ("frozen", "original")
    try:
        child = svc.resume(e, from_step=request.form.get("from_step") or None, user=current_user,
                           use_current_definition=use_current)
    except (svc.Conflict, ValidationError) as exc:
        _rollback()
        flash(exc.message, "error")
        return _see_other(e)
    flash(f"Resumed as execution {child.execution_id} with the {'current' if use_current else 'original'} definition "
          f"(v{child.pipeline_version}): succeeded steps keep their results.", "success")
    return _see_other(child)


@bp.get("/<execution_id>/attempts/<int:attempt_id>/log")
@role_required("viewer")
def full_log(execution_id: str, attempt_id: int):
    e = _execution(execution_id)
    attempt = next((a for a in svc.attempts_of(e.id) if a.id == attempt_id), None)
    if attempt is None:
        abort(404)
    resp = make_response(attempt.logs or "")
    resp.headers["Content-Type"] = "text/plain; charset=utf-8"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Disposition"] = f'inline; filename="{e.execution_id}-{attempt.step_name}-{attempt.retry_count + 1}.log"'
    return resp


def _step_name(e, step_id: int) -> str:
    return next((s["name"] for s in e.pipeline_snapshot.get("steps", []) if s["id"] == step_id), str(step_id))


# --------------------------------------------------------------------------- what the page shows


def _sig(parts: list[str]) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def detail_context(e, message: str | None = None, error: str | None = None,
                   step_errors: dict[int, str] | None = None) -> dict[str, Any]:
    now = utcnow()
    attempts = svc.attempts_of(e.id)
    requests = approvals_svc.requests_for_execution(e.id) if approvals_svc else []
    deliveries = notifications_svc.deliveries_for_execution(e.id) if notifications_svc else []
    steps = step_rows(e, attempts)
    terminal = e.status in TERMINAL
    done = sum(1 for s in steps if s["status"] in STEP_TERMINAL and s["shown"] != "not_run")
    counts: dict[str, int] = {}
    for s in steps:
        counts[s["shown"]] = counts.get(s["shown"], 0) + 1
    secret = set(e.secret_variables or [])
    bypassed = sum(1 for s in steps if s["latest"] is not None and s["latest"].bypassed)
    return {
        "e": e, "terminal": terminal, "steps": steps, "now": now, "bypassed": bypassed,
        "groups": group_rows(e),
        "pname": e.pipeline_snapshot.get("name") or f"pipeline #{e.pipeline_id}",
        "step_links": {s["id"]: f"#step-{s['id']}" for s in steps},
        "gantt": gantt(e, steps, requests, now),
        "progress": {"done": done, "total": len(steps), "counts": counts, "not_run": counts.get("not_run", 0),
                     "percent": round(100 * done / len(steps)) if steps else 100},
        "layout": _layout(e) if steps else None,
        "statuses": {s["id"]: s["status"] for s in steps},
        "variables": [(k, MASK if k in secret else v, k in secret) for k, v in (e.context_variables or {}).items()],
        "trigger": e.trigger_data or {},
        "children": svc.children_of(e.id),
        "can_act": has_role(current_user, "maintainer"),
        "approval_requests": requests, "approvals_enabled": approvals_svc is not None,
        "deliveries": deliveries, "deliveries_enabled": notifications_svc is not None,
        "sigs": {"approvals": _sig([f"{r.id}:{r.status}:{len(r.decisions)}" for r in requests]),
                 "deliveries": _sig([f"{d.id}:{d.status}:{d.attempts}" for d in deliveries])},
        "message": message, "error": error, "step_errors": step_errors or {},
        "log_tail": LOG_TAIL,
        "retryable": terminal and any(s["shown"] in ("failed", "timed_out", "cancelled") for s in steps),
        "pipeline_version_now": e.pipeline.version if e.pipeline is not None else None,
    }


_LAYOUTS: dict[tuple[str, int], dict] = {}


def _layout(e) -> dict:
    """The graph layout of the frozen definition: it never changes, so it is computed once per process."""
    key = (e.execution_id, e.pipeline_version)
    found = _LAYOUTS.get(key)
    if found is None:
        if len(_LAYOUTS) > 128:
            _LAYOUTS.clear()
        found = _LAYOUTS[key] = analysis.snapshot_layout(e.pipeline_snapshot)
    return found


def step_rows(e, attempts) -> list[dict[str, Any]]:
    """One row per step of the frozen definition, with its attempts (oldest first)."""
    by_step: dict[int, list] = {}
    for a in sorted(attempts, key=lambda a: (a.retry_count, a.id)):
        by_step.setdefault(a.step_id, []).append(a)
    rows = []
    for s in e.pipeline_snapshot.get("steps", []):
        tries = by_step.get(s["id"], [])
        latest = tries[-1] if tries else None
        status = latest.status if latest else "pending"
        rows.append({
            "id": s["id"], "name": s["name"], "type": s.get("step_type", "shell"), "group": s.get("parallel_group"),
            "attempts": tries, "latest": latest, "status": status, "shown": run_summary.step_status(status, tries),
            "approval": bool(s.get("approval_required")), "max_retries": svc.max_retries_of(s),
        })
    return rows


def group_rows(e) -> list[dict[str, Any]]:
    """The parallel groups that reached an outcome, as recorded (run_summary.group_verdict)."""
    recorded = (e.recovery_point or {}).get("groups", {})
    return [{"name": g.get("name") or g["id"], "status": recorded[g["id"]]["status"], "reason": recorded[g["id"]].get("reason", "")}
            for g in e.pipeline_snapshot.get("groups", []) if g["id"] in recorded]


def _seconds(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()


def gantt(e, steps: list[dict], requests: list, now: datetime) -> dict[str, Any]:
    """Bars per attempt placed by time relative to the execution's start (percent of the span)."""
    t0 = e.started_at or e.created_at or now
    waits = {r.attempt_id: r for r in requests if getattr(r, "attempt_id", None)}
    moments = [e.finished_at or now]
    for s in steps:
        for a in s["attempts"]:
            moments += [t for t in (a.started_at, a.finished_at, a.scheduled_for, a.queued_at) if t]
    end = max(moments)
    span = max(_seconds(end, t0), 1.0)

    def pos(t: datetime) -> float:
        return round(min(max(_seconds(t, t0) / span, 0.0), 1.0) * 100, 3)

    def bar(kind: str, status: str, start: datetime, stop: datetime, label: str, attempt=None) -> dict:
        left = min(pos(start), 99.4)
        width = min(max(pos(stop) - left, 0.6), 100 - left)
        return {"kind": kind, "status": status, "left": left, "width": round(width, 3),
                "label": label, "attempt": attempt, "open": stop is now}

    rows = []
    for s in steps:
        bars, markers = [], []
        for a in s["attempts"]:
            n = a.retry_count + 1
            req = waits.get(a.id)
            if req is not None and req.created_at:
                stop = req.decided_at or (now if a.status == "waiting_approval" else (a.started_at or a.finished_at or now))
                bars.append(bar("wait", "waiting_approval", req.created_at, stop,
                                f"attempt {n}: waiting for approval ({req.status})", a))
            if a.status == "retry_scheduled" and a.scheduled_for:
                markers.append({"left": pos(a.scheduled_for), "label": f"retry {n} scheduled for "
                                f"{a.scheduled_for.strftime('%H:%M:%S')} UTC", "attempt": a})
            if a.started_at:
                stop = a.finished_at or now
                bars.append(bar("run", a.status, a.started_at, stop,
                                f"attempt {n}: {a.status.replace('_', ' ')}, {_human(_seconds(stop, a.started_at))}", a))
            elif a.status == "queued" and a.queued_at:
                bars.append(bar("queue", "queued", a.queued_at, now, f"attempt {n}: queued, waiting for a worker", a))
        rows.append({"step": s, "bars": bars, "markers": markers})
    ticks = [{"left": p, "label": _human(span * p / 100)} for p in (0, 25, 50, 75, 100)]
    return {"rows": rows, "ticks": ticks, "span": span, "start": t0, "end": end}


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m}m {sec:02d}s"
    h, rest = divmod(int(round(s)), 3600)
    return f"{h}h {rest // 60:02d}m"


@bp.app_template_filter("duration_text")
def duration_text(seconds: float | None) -> str:
    """12.3s, 4m 05s, 1h 02m; an em dash when unknown."""
    return _human(seconds)


@bp.app_template_filter("when")
def when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "—"
