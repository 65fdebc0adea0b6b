"""Pipelines list and the pipeline editor: steps, parallel groups, graph, YAML, settings.

Every change goes through services.pipelines, which validates the whole definition and
saves nothing when anything is wrong; the forms here only turn fields into definition values.
"""
from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, request, url_for
from flask_login import current_user

from ..engine.conditions import RULES, normalize_conditions
from ..models.pipeline import STEP_TYPES, SYNC_POLICIES
from ..runners.params import HTTP_METHODS
from ..security import has_role, role_required
from ..services import analysis
from ..services import pipeline_access as access
from ..services import pipelines as svc
from ..services.accounts import ValidationError
from .render import is_partial_request, render

bp = Blueprint("pipelines", __name__, url_prefix="/pipelines")

BACKOFFS = ("fixed", "exponential")
MAX_YAML = 1_000_000


def _pipeline(pid: int):
    p = svc.get_pipeline(pid)
    if p is None:
        abort(404)
    return p


def _can_edit(p=None) -> bool:
    """Without a pipeline: may create one; with one: may edit it (its owner, named maintainers, admins)."""
    return has_role(current_user, "maintainer") if p is None else access.can_edit(current_user, p)


def _require_edit(p) -> None:
    if not access.can_edit(current_user, p):
        abort(403)


def _refused_status(e: ValidationError) -> int:
    return 403 if isinstance(e, access.Forbidden) else 422


def _see_other(endpoint: str, **kw) -> Response:
    return redirect(url_for(endpoint, **kw), code=303)


def _version() -> int | None:
    try:
        return int(request.form.get("version", ""))
    except ValueError:
        return None


# --------------------------------------------------------------------------- list and create


@bp.get("/")
@role_required("viewer")
def index():
    q = request.args.get("q", "").strip()
    state = request.args.get("state", "all")
    active = {"active": True, "inactive": False}.get(state)
    pipelines = svc.list_pipelines(search=q, active=active)
    latest = svc.latest_executions([p.id for p in pipelines])
    return render("pipelines/index.html", "list", pipelines=pipelines, latest=latest, q=q, state=state,
                  can_edit=_can_edit(), editable=access.editable_ids(current_user, pipelines))


@bp.post("/<int:pid>/active")
@role_required("maintainer")
def set_active(pid: int):
    """The list's Activate / Deactivate button; answers with the list as filtered before."""
    p = _pipeline(pid)
    _require_edit(p)
    active = request.form.get("active") == "1"
    svc.update_settings(p, {"active": active})
    message = f"Pipeline '{p.name}' {'activated' if active else 'deactivated'}."
    q, state = request.form.get("q", ""), request.form.get("state", "all")
    if is_partial_request():
        pipelines = svc.list_pipelines(search=q, active={"active": True, "inactive": False}.get(state))
        return render("pipelines/index.html", "list", pipelines=pipelines, q=q, state=state, can_edit=True,
                      editable=access.editable_ids(current_user, pipelines),
                      latest=svc.latest_executions([x.id for x in pipelines]), notice=message)
    flash(message, "success")
    return _see_other("pipelines.index", **({"q": q} if q else {}), **({"state": state} if state != "all" else {}))


@bp.route("/new", methods=["GET", "POST"])
@role_required("maintainer")
def new():
    errors: dict[str, str] = {}
    values = {"name": "", "description": ""}
    if request.method == "POST":
        values = {"name": request.form.get("name", "").strip(), "description": request.form.get("description", "").strip()}
        try:
            p = svc.create_pipeline(values["name"], values["description"], owner=current_user)
        except ValidationError as e:
            errors = e.fields
        else:
            flash(f"Pipeline '{p.name}' created. Add its first step.", "success")
            return _see_other("pipelines.detail", pid=p.id)
    return render("pipelines/new.html", values=values, errors=errors, yaml_errors={}, yaml_text="",
                  status=422 if errors else 200)


@bp.route("/import", methods=["GET", "POST"])
@role_required("maintainer")
def import_new():
    if request.method == "GET":
        return render("pipelines/new.html", values={"name": "", "description": ""}, errors={}, yaml_errors={},
                      yaml_text="", focus="yaml")
    text = request.form.get("yaml", "")
    try:
        text = _yaml_text()
        p = svc.import_yaml(text, owner=current_user)
    except ValidationError as e:
        return render("pipelines/new.html", values={"name": "", "description": ""}, errors={},
                      yaml_errors=e.fields or {"yaml": e.message}, yaml_message=e.message, yaml_text=text,
                      focus="yaml", status=422)
    flash(f"Pipeline '{p.name}' imported with {len(p.steps)} step(s).", "success")
    return _see_other("pipelines.detail", pid=p.id)


def _yaml_text() -> str:
    upload = request.files.get("yaml_file")
    if upload is not None and upload.filename:
        raw = upload.read(MAX_YAML + 1)
        if len(raw) > MAX_YAML:
            raise ValidationError("The file is too large.", {"yaml_file": "A pipeline file is at most 1 MB."})
        return raw.decode("utf-8", errors="replace")
    return request.form.get("yaml", "")


# --------------------------------------------------------------------------- tabs


def _steps_context(p, notice: str | None = None) -> dict[str, Any]:
    deps = analysis.dependency_view(p)
    groups = {g.id: g for g in p.groups}
    return {"p": p, "deps": deps, "groups": groups, "notice": notice, "can_edit": _can_edit(p),
            "members": {g.id: [s for s in p.steps if s.parallel_group == g.id] for g in p.groups},
            "partial": is_partial_request(), "tab": "steps"}


@bp.get("/<int:pid>/")
@role_required("viewer")
def detail(pid: int):
    return render("pipelines/steps.html", "steps_panel", **_steps_context(_pipeline(pid)))


@bp.get("/<int:pid>/graph")
@role_required("viewer")
def graph(pid: int):
    p = _pipeline(pid)
    layout, result = analysis.graph_view(p)
    return render("pipelines/graph.html", "graph_panel", p=p, layout=layout, analysis=result, tab="graph",
                  can_edit=_can_edit(p), links={s.id: url_for("pipelines.edit_step", pid=p.id, sid=s.id) for s in p.steps}
                  if _can_edit(p) else None)


@bp.route("/<int:pid>/yaml", methods=["GET", "POST"])
@role_required("viewer")
def yaml_tab(pid: int):
    p = _pipeline(pid)
    errors: dict[str, str] = {}
    message = None
    text = ""
    status = 200
    if request.method == "POST":
        _require_edit(p)
        text = request.form.get("yaml", "")
        try:
            text = _yaml_text()
            svc.import_yaml(text, pipeline=p, expected_version=_version())
        except ValidationError as e:
            errors, message, status = (e.fields or {"yaml": e.message}), e.message, _refused_status(e)
        else:
            flash(f"Definition replaced from YAML: now v{p.version} with {len(p.steps)} step(s).", "success")
            return _see_other("pipelines.yaml_tab", pid=p.id)
    return render("pipelines/yaml.html", p=p, yaml=svc.to_yaml(p), errors=errors, message=message, text=text,
                  tab="yaml", can_edit=_can_edit(p), status=status)


@bp.get("/<int:pid>/export.yaml")
@role_required("viewer")
def export_yaml(pid: int):
    p = _pipeline(pid)
    filename = "".join(c if c.isalnum() or c in "-_." else "-" for c in p.name) or "pipeline"
    return Response(svc.to_yaml(p), mimetype="text/yaml",
                    headers={"Content-Disposition": f'attachment; filename="{filename}.yaml"'})


@bp.route("/<int:pid>/settings", methods=["GET", "POST"])
@role_required("viewer")
def settings(pid: int):
    p = _pipeline(pid)
    errors: dict[str, str] = {}
    values = _settings_values(p)
    status = 200
    if request.method == "POST":
        _require_edit(p)
        values = {k: request.form.get(k, "") for k in ("name", "description", "notification_config")}
        values.update(active=bool(request.form.get("active")), allow_self_approval=bool(request.form.get("allow_self_approval")))
        data: dict[str, Any] = {"name": values["name"].strip(), "description": values["description"].strip(),
                                "active": values["active"], "allow_self_approval": values["allow_self_approval"]}
        raw = values["notification_config"].strip()
        try:
            data["notification_config"] = json.loads(raw) if raw else None
        except json.JSONDecodeError as e:
            errors["notification_config"] = f"This is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        if not errors:
            try:
                svc.update_settings(p, data, expected_version=_version())
            except ValidationError as e:
                errors, status = e.fields or {"form": e.message}, _refused_status(e)
            else:
                flash("Settings saved.", "success")
                return _see_other("pipelines.settings", pid=p.id)
        status = status if status != 200 else 422
    return _settings_page(p, values=values, errors=errors, status=status)


SETTINGS_SHOWN = ("name", "description", "notification_config", "active", "allow_self_approval")
AUDIT_SHOWN = 10


def _settings_page(p, values=None, errors=None, status=200, **extra):
    """The settings tab: its form, owner and maintainers, the latest audit entries, deletion."""
    errors = errors or {}
    context = {"delete_error": None, "duty_errors": {}, "duty_values": {}, **extra}
    return render("pipelines/settings.html", p=p, values=values or _settings_values(p), errors=errors,
                  tab="settings", unplaced={k: m for k, m in errors.items() if k not in SETTINGS_SHOWN},
                  can_edit=_can_edit(p), can_govern=access.can_govern(current_user, p),
                  audit=access.audit_log(p, limit=AUDIT_SHOWN), status=status, **context)


def _settings_values(p) -> dict[str, Any]:
    return {"name": p.name, "description": p.description or "", "active": p.active,
            "allow_self_approval": p.allow_self_approval,
            "notification_config": json.dumps(p.notification_config, indent=2) if p.notification_config else ""}


@bp.post("/<int:pid>/delete")
@role_required("maintainer")
def delete(pid: int):
    p = _pipeline(pid)
    if not access.can_govern(current_user, p):
        abort(403)
    if request.form.get("confirm_name", "").strip() != p.name:
        return _settings_page(p, delete_error=f"Type the pipeline's name, {p.name}, to delete it.", status=422)
    name = p.name
    svc.delete_pipeline(p)
    flash(f"Pipeline '{name}' deleted.", "success")
    return _see_other("pipelines.index")


@bp.post("/<int:pid>/maintainers")
@role_required("maintainer")
def add_maintainer(pid: int):
    p = _pipeline(pid)
    if not access.can_govern(current_user, p):
        abort(403)
    username = request.form.get("username", "")
    try:
        user = access.add_maintainer(p, username)
    except ValidationError as e:
        return _settings_page(p, duty_errors=e.fields, duty_values={"username": username},
                              status=_refused_status(e))
    flash(f"{user.username} may now edit this pipeline.", "success")
    return _see_other("pipelines.settings", pid=p.id, _anchor="duties-h")


@bp.post("/<int:pid>/maintainers/<username>/remove")
@role_required("maintainer")
def remove_maintainer(pid: int, username: str):
    p = _pipeline(pid)
    if not access.can_govern(current_user, p):
        abort(403)
    try:
        access.remove_maintainer(p, username)
    except LookupError:
        abort(404)
    flash(f"{username} no longer maintains this pipeline.", "success")
    return _see_other("pipelines.settings", pid=p.id, _anchor="duties-h")


@bp.post("/<int:pid>/owner")
@role_required("maintainer")
def set_owner(pid: int):
    p = _pipeline(pid)
    if not access.can_govern(current_user, p):
        abort(403)
    username = request.form.get("owner", "")
    try:
        user = access.set_owner(p, username)
    except ValidationError as e:
        return _settings_page(p, duty_errors=e.fields, duty_values={"owner": username}, status=_refused_status(e))
    flash(f"{user.username} now owns this pipeline.", "success")
    return _see_other("pipelines.settings", pid=p.id, _anchor="duties-h")


# --------------------------------------------------------------------------- steps


def _lines_to_map(text: str, sep: str, field: str, errors: dict[str, str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, found, value = line.partition(sep)
        if not found or not key.strip():
            errors[field] = f"Line {n} should look like NAME{sep}{' ' if sep == ':' else ''}value."
            return None
        out[key.strip()] = value.strip()
    return out or None


def _number(form, key: str, field: str, errors: dict[str, str], *, integer: bool = False, label: str = "a number"):
    raw = form.get(key, "").strip()
    if raw == "":
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        errors[field] = f"Enter {label}."
        return None
    if not integer and value.is_integer():
        value = int(value)
    return value


def _split(text: str) -> list[str]:
    return [x for x in (t.strip() for t in text.replace("\n", ",").split(",")) if x]


def _form_values(form) -> dict[str, Any]:
    values = {k: form.get(k) for k in form}
    values["depends_on"] = form.getlist("depends_on")
    values["members"] = form.getlist("members")
    return values


def _form_conditions(form) -> dict[str, Any]:
    """The step form's rule and expression as a condition (on_success stays implicit). The old
    form value "expression" is passed on as it is, so validation can ask for the expression."""
    rule = form.get("cond_type") or "on_success"
    expression = form.get("cond_expression", "").strip()
    if not expression:
        return {} if rule == "on_success" else {"type": rule}
    return {"type": rule, "expression": expression}


def _step_changes(form, p) -> tuple[dict[str, Any], dict[str, str]]:
    """The step form as definition fields (names, not ids) and the fields it could not read."""
    errors: dict[str, str] = {}
    st = form.get("type", "shell")
    params: dict[str, Any]
    if st == "shell":
        params = {"command": form.get("command", ""), "env": _lines_to_map(form.get("env", ""), "=", "parameters.env", errors)}
    elif st == "http":
        codes = []
        for c in _split(form.get("expected_status", "")):
            try:
                codes.append(int(c))
            except ValueError:
                errors["parameters.expected_status"] = "List HTTP status codes such as 200, 204."
        params = {"url": form.get("url", "").strip(), "method": form.get("method", "GET"),
                  "expected_status": codes or None,
                  "headers": _lines_to_map(form.get("headers", ""), ":", "parameters.headers", errors)}
    elif st == "wait":
        seconds = _number(form, "seconds", "parameters.seconds", errors, label="a number of seconds")
        params = {"seconds": seconds}
        if seconds is None and "parameters.seconds" not in errors:
            errors["parameters.seconds"] = "A wait step needs a number of seconds."
    elif st == "notification":
        params = {"channels": _split(form.get("channels", "")) or None,
                  "recipients": _split(form.get("recipients", "")) or None,
                  "webhook_url": form.get("webhook_url", "").strip() or None,
                  "message": form.get("notify_message", "").strip() or None}
    else:
        params = {}
    changes: dict[str, Any] = {"name": form.get("name", "").strip(), "type": st, "parameters": params}

    if form.get("deps_mode", "stage") == "explicit":
        changes["depends_on"] = [n for n in form.getlist("depends_on") if n]
    else:
        changes["depends_on"] = None
    changes["parallel_group"] = form.get("parallel_group") or None

    changes["conditions"] = _form_conditions(form) or None

    if form.get("approval_required") or st == "approval":
        approval = {
            "users": _split(form.get("approval_users", "")),
            "required_approvals": _number(form, "approval_required_approvals", "approval.required_approvals", errors,
                                          integer=True, label="a whole number of approvals") or 1,
            "timeout_hours": _number(form, "approval_timeout_hours", "approval.timeout_hours", errors, label="a number of hours"),
            "auto_approve_on_timeout": bool(form.get("approval_auto_approve")),
            "reminder_hours": _number(form, "approval_reminder_hours", "approval.reminder_hours", errors, label="a number of hours"),
            "message": form.get("approval_message", "").strip(),
        }
        changes["approval"] = {k: v for k, v in approval.items() if v not in (None, "")}
    else:
        changes["approval"] = None

    retry = {
        "max_retries": _number(form, "retry_max_retries", "retry_policy.max_retries", errors, integer=True,
                               label="a whole number of retries"),
        "delay_seconds": _number(form, "retry_delay_seconds", "retry_policy.delay_seconds", errors, label="a number of seconds"),
        "backoff": form.get("retry_backoff") or None,
        "max_delay_seconds": _number(form, "retry_max_delay_seconds", "retry_policy.max_delay_seconds", errors,
                                     label="a number of seconds"),
        "jitter": _number(form, "retry_jitter", "retry_policy.jitter", errors, label="a fraction between 0 and 1"),
        "retry_on": [int(x) if x.isdigit() else x for x in _split(form.get("retry_on", ""))] or None,
    }
    if retry["max_retries"]:
        changes["retry_policy"] = {k: v for k, v in retry.items() if v is not None}
    else:
        changes["retry_policy"] = None
    changes["timeout_seconds"] = _number(form, "timeout_seconds", "timeout_seconds", errors, integer=True,
                                         label="a whole number of seconds")
    changes["continue_on_failure"] = bool(form.get("continue_on_failure")) or None
    changes["estimated_duration"] = _number(form, "estimated_duration", "estimated_duration", errors,
                                            label="a number of seconds")
    return changes, errors


def _values_from_step(d: dict[str, Any] | None) -> dict[str, Any]:
    """A definition step (export format) as the step form's field values."""
    d = d or {}
    params = d.get("parameters") or {}
    cond = d.get("conditions") or {}
    approval = d.get("approval") or {}
    retry = d.get("retry_policy") or {}

    def s(v):
        return "" if v is None else str(v)
    expected = params.get("expected_status")
    return {
        "name": d.get("name", ""), "type": d.get("type", "shell"),
        "command": params.get("command", ""),
        "env": "\n".join(f"{k}={v}" for k, v in (params.get("env") or {}).items()),
        "url": params.get("url", ""), "method": params.get("method", "GET"),
        "expected_status": ", ".join(map(str, expected if isinstance(expected, list) else [expected])) if expected else "",
        "headers": "\n".join(f"{k}: {v}" for k, v in (params.get("headers") or {}).items()),
        "seconds": s(params.get("seconds")),
        "channels": ", ".join(params.get("channels") or []), "recipients": ", ".join(params.get("recipients") or []),
        "webhook_url": params.get("webhook_url", ""), "notify_message": params.get("message", ""),
        "deps_mode": "explicit" if "depends_on" in d else "stage", "depends_on": list(d.get("depends_on") or []),
        "parallel_group": d.get("parallel_group") or "",
        "cond_type": normalize_conditions(cond).get("type") or "on_success",
        "cond_expression": cond.get("expression") or "",
        "approval_required": "1" if approval or d.get("type") == "approval" else "",
        "approval_users": ", ".join(approval.get("users") or []),
        "approval_required_approvals": s(approval.get("required_approvals", 1)),
        "approval_timeout_hours": s(approval.get("timeout_hours")),
        "approval_auto_approve": "1" if approval.get("auto_approve_on_timeout") else "",
        "approval_message": approval.get("message") or "",
        "approval_reminder_hours": s(approval.get("reminder_hours")),
        "retry_max_retries": s(retry.get("max_retries")), "retry_delay_seconds": s(retry.get("delay_seconds")),
        "retry_backoff": retry.get("backoff") or "fixed", "retry_max_delay_seconds": s(retry.get("max_delay_seconds")),
        "retry_jitter": s(retry.get("jitter")), "retry_on": ", ".join(map(str, retry.get("retry_on") or [])),
        "timeout_seconds": s(d.get("timeout_seconds")),
        "continue_on_failure": "1" if d.get("continue_on_failure") else "",
        "estimated_duration": s(d.get("estimated_duration", 60)),
    }


def _step_def(p, step) -> dict[str, Any] | None:
    if step is None:
        return None
    return next(s for s in svc.export_definition(p)["steps"] if s["name"] == step.name)


_VARIABLE_REF = re.compile(r"\$?variables\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*[\"']([^\"']+)[\"']\s*\])")


def _context_text(p, step, depends_on=analysis._UNSET) -> str:
    """The sample context shown in the form: the variables the expression reads (to fill in),
    the trigger, and the dependency outcomes the rule sees."""
    sample = analysis.sample_context(p, step, depends_on=depends_on)
    expression = ((step.conditions or {}).get("expression") if step is not None else None) or ""
    variables = {a or b: "" for a, b in _VARIABLE_REF.findall(expression)}
    shown = {"variables": variables, "trigger": sample["trigger"],
             "dependency_outcomes": sample["dependency_outcomes"]}
    return json.dumps(shown, indent=2)


# error keys the step form shows next to a field; any other goes in the summary at the top
STEP_FORM_KEYS = frozenset({
    "name", "type", "parameters.command", "parameters.env", "parameters.url", "parameters.method",
    "parameters.expected_status", "parameters.headers", "parameters.seconds", "parameters.channels",
    "parameters.webhook_url", "parameters.recipients", "parameters.message", "depends_on", "parallel_group",
    "conditions.type", "conditions.expression", "approval", "approval.users", "approval.required_approvals",
    "approval.timeout_hours", "approval.reminder_hours", "approval.message", "retry_policy.max_retries",
    "retry_policy.delay_seconds", "retry_policy.backoff", "retry_policy.max_delay_seconds", "retry_policy.jitter",
    "retry_policy.retry_on", "timeout_seconds", "estimated_duration", "continue_on_failure",
})


def _step_form(p, step, values, errors, status=200, result=None):
    return render("pipelines/step_form.html", "condition_result" if result is not None else None,
                  p=p, step=step, v=values, errors=errors, result=result, status=status, tab="steps",
                  unplaced={k: m for k, m in errors.items() if k not in STEP_FORM_KEYS},
                  err_sections={k.split(".")[0] for k in errors},
                  local_ids={g.id: svc.local_group_id(g) for g in p.groups},
                  others=[s for s in p.steps if step is None or s.id != step.id],
                  step_types=STEP_TYPES, rules=RULES, http_methods=HTTP_METHODS, backoffs=BACKOFFS)


@bp.route("/<int:pid>/steps/new", methods=["GET", "POST"])
@role_required("maintainer")
def new_step(pid: int):
    p = _pipeline(pid)
    _require_edit(p)
    return _edit_step(p, None)


@bp.route("/<int:pid>/steps/<int:sid>/edit", methods=["GET", "POST"])
@role_required("maintainer")
def edit_step(pid: int, sid: int):
    p = _pipeline(pid)
    _require_edit(p)
    step = svc.step_by_id(p, sid)
    if step is None:
        abort(404)
    return _edit_step(p, step)


def _edit_step(p, step):
    if request.method == "GET":
        values = _values_from_step(_step_def(p, step))
        values["cond_context"] = _context_text(p, step)
        values["version"] = p.version
        return _step_form(p, step, values, {})
    values = _form_values(request.form)
    changes, errors = _step_changes(request.form, p)
    if not errors:
        try:
            saved = svc.save_step(p, changes, step.id if step else None, expected_version=_version())
        except ValidationError as e:
            errors = e.fields or {"form": e.message}
            return _step_form(p, step, values, errors, status=_refused_status(e))
        else:
            flash(f"Step '{saved.name}' {'saved' if step else 'added'}.", "success")
            return _see_other("pipelines.detail", pid=p.id, _anchor=f"step-{saved.id}")
    return _step_form(p, step, values, errors, status=422)


@bp.post("/<int:pid>/conditions/test")
@role_required("maintainer")
def test_condition(pid: int):
    """Try the condition in the step form against the sample context (nothing is saved)."""
    p = _pipeline(pid)
    raw_id = request.form.get("step_id", "")
    step = svc.step_by_id(p, int(raw_id)) if raw_id.isdigit() else None
    form = request.form
    conditions: dict[str, Any] = {"type": "on_success", **_form_conditions(form)}
    if step is not None and (step.conditions or {}).get("depends_on"):
        conditions["depends_on"] = step.conditions["depends_on"]
    names = {s.name: s.id for s in p.steps}
    depends_on = [names[n] for n in form.getlist("depends_on") if n in names] \
        if form.get("deps_mode") == "explicit" else None
    raw = form.get("cond_context", "").strip()
    try:
        context = json.loads(raw) if raw else {}
        result = analysis.evaluate_condition(p, step, conditions, context, depends_on=depends_on)
    except json.JSONDecodeError as e:
        result = {"result": None, "error": f"The sample context is not valid JSON: {e.msg} (line {e.lineno}).",
                  "explanation": ""}
    except ValidationError as e:
        result = {"result": None, "error": e.message, "explanation": ""}
    values = _form_values(form)
    return _step_form(p, step, values, {}, result=result)


@bp.post("/<int:pid>/steps/<int:sid>/delete")
@role_required("maintainer")
def delete_step(pid: int, sid: int):
    p = _pipeline(pid)
    _require_edit(p)
    step = svc.step_by_id(p, sid)
    if step is None:
        abort(404)
    name = step.name
    try:
        touched = svc.delete_step(p, sid)
    except ValidationError as e:
        notice = ("error", f"Step '{name}' was not deleted: {' '.join(e.fields.values()) or e.message}")
    else:
        extra = f" {', '.join(touched)} no longer depend{'s' if len(touched) == 1 else ''} on it." if touched else ""
        notice = ("success", f"Step '{name}' deleted.{extra}")
    return _after_steps_change(p, notice)


@bp.post("/<int:pid>/steps/<int:sid>/move")
@role_required("maintainer")
def move_step(pid: int, sid: int):
    p = _pipeline(pid)
    _require_edit(p)
    if svc.step_by_id(p, sid) is None:
        abort(404)
    offset = -1 if request.form.get("direction") == "up" else 1
    try:
        svc.move_step(p, sid, offset)
    except ValidationError as e:
        notice = ("error", f"The step was not moved: {' '.join(e.fields.values()) or e.message}")
    else:
        notice = ("success", "Step order saved.")
    return _after_steps_change(p, notice, anchor=f"step-{sid}")


def _after_steps_change(p, notice: tuple[str, str], anchor: str | None = None):
    if is_partial_request():
        return render("pipelines/steps.html", "steps_panel", **_steps_context(p, notice=notice))
    flash(notice[1], notice[0])
    return _see_other("pipelines.detail", pid=p.id, **({"_anchor": anchor} if anchor else {}))


# --------------------------------------------------------------------------- parallel groups


def _group_form(p, group, values, errors, status=200):
    shown = {"name", "timeout_seconds", "description", "sync_policy", "members"}
    return render("pipelines/group_form.html", p=p, group=group, v=values, errors=errors, status=status,
                  tab="steps", policies=SYNC_POLICIES, unplaced={k: m for k, m in errors.items() if k not in shown})


@bp.route("/<int:pid>/groups/new", methods=["GET", "POST"])
@role_required("maintainer")
def new_group(pid: int):
    p = _pipeline(pid)
    _require_edit(p)
    return _edit_group(p, None)


@bp.route("/<int:pid>/groups/<gid>/edit", methods=["GET", "POST"])
@role_required("maintainer")
def edit_group(pid: int, gid: str):
    p = _pipeline(pid)
    _require_edit(p)
    group = svc.group_by_id(p, gid)
    if group is None:
        abort(404)
    return _edit_group(p, group)


def _edit_group(p, group):
    if request.method == "GET":
        values = {"name": group.name if group else "", "description": group.description if group else "",
                  "sync_policy": group.sync_policy if group else "wait_all",
                  "timeout_seconds": str(group.timeout_seconds or "") if group else "",
                  "members": [str(s.id) for s in p.steps if group and s.parallel_group == group.id],
                  "version": p.version}
        return _group_form(p, group, values, {})
    form = request.form
    values = _form_values(form)
    errors: dict[str, str] = {}
    data = {"name": form.get("name", "").strip(), "description": form.get("description", "").strip(),
            "sync_policy": form.get("sync_policy", "wait_all"),
            "timeout_seconds": _number(form, "timeout_seconds", "timeout_seconds", errors, integer=True,
                                       label="a whole number of seconds")}
    if not data["name"]:
        errors["name"] = "A parallel group needs a name."
    members = [int(m) for m in form.getlist("members") if m.isdigit()]
    if not errors:
        try:
            saved = svc.save_group(p, data, group.id if group else None, members=members, expected_version=_version())
        except ValidationError as e:
            errors = e.fields or {"form": e.message}
        else:
            flash(f"Parallel group '{saved.name}' saved.", "success")
            return _see_other("pipelines.detail", pid=p.id, _anchor="groups")
    return _group_form(p, group, values, errors, status=422)


@bp.post("/<int:pid>/groups/<gid>/delete")
@role_required("maintainer")
def delete_group(pid: int, gid: str):
    p = _pipeline(pid)
    _require_edit(p)
    group = svc.group_by_id(p, gid)
    if group is None:
        abort(404)
    name = group.name
    try:
        freed = svc.delete_group(p, gid)
    except ValidationError as e:
        notice = ("error", f"Group '{name}' was not deleted: {' '.join(e.fields.values()) or e.message}")
    else:
        notice = ("success", f"Parallel group '{name}' deleted." + (f" Its steps ({', '.join(freed)}) now run outside any group." if freed else ""))
    return _after_steps_change(p, notice, anchor="groups")


@bp.app_template_filter("conditions_shape")
def conditions_shape(conditions: Any) -> Any:
    """A stored condition as the rule and the expression apart (the legacy shape upgraded)."""
    return normalize_conditions(conditions)
