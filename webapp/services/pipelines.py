"""Pipeline definitions: validate and save as a whole, export, freeze for an execution.

The definition format (also the YAML import/export format) names steps, never ids:

    name: deploy
    groups: [{id: tests, name: Tests, sync_policy: wait_all, timeout_seconds: 600}]
    steps:
      - {name: build, type: shell, parameters: {command: make}}
      - {name: unit, type: shell, parallel_group: tests, depends_on: [build], ...}

Saving validates everything first (graph, conditions, retry policies, parameters) and writes
nothing when anything is wrong.
"""
from __future__ import annotations

import copy
import json
from collections import OrderedDict
import re
import secrets
from typing import Any

import yaml
from sqlalchemy import func, or_, select
from sqlalchemy.orm import selectinload

from ..engine import graph
from ..engine.conditions import normalize_conditions, validate_conditions
from ..engine.retry import validate_policy
from ..engine.types import GroupDef, PipelineDef, StepDef
from ..extensions import db
from ..models import ParallelGroup, Pipeline, PipelineStep, PipelineToolMapping, User, WorkflowExecution
from ..models.pipeline import STEP_TYPES, SYNC_POLICIES
from ..runners.params import validate_parameters
from . import pipeline_access as access
from .accounts import ValidationError
from .approver_check import step_errors as approver_errors

STEP_FIELDS = {
    "name", "type", "step_type", "order", "parameters", "depends_on", "parallel_group", "conditions",
    "approval", "retry_policy", "notification_config", "timeout_seconds", "continue_on_failure",
    "estimated_duration", "description",
}
# Graph problems that do not block a save: an empty parallel group is harmless (nothing waits for
# it) and the editor creates a group before its members are moved in. Analysis still lists it.
WARNING_CODES = frozenset({"empty_group"})
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,119}$")


def _step_type(raw: dict) -> str:
    return raw.get("type") or raw.get("step_type") or "shell"


def _int_or_none(value, field, errors, lo=0, hi=None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        errors[field] = f"{field.split('.')[-1]} must be a whole number" + (f" between {lo} and {hi}." if hi else f" >= {lo}.")
        return None
    return value


def _approval_errors(approval: Any, prefix: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    if approval in (None, False):
        return errors
    if approval is True:
        return errors
    if not isinstance(approval, dict):
        return {prefix: "approval must be a mapping (required, users, required_approvals, timeout_hours, ...)."}
    users = approval.get("users", [])
    if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
        errors[f"{prefix}.users"] = "users must be a list of usernames or role:NAME entries."
    n = approval.get("required_approvals", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        errors[f"{prefix}.required_approvals"] = "required_approvals must be at least 1."
    for key in ("timeout_hours", "reminder_hours"):
        v = approval.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            errors[f"{prefix}.{key}"] = f"{key} must be a positive number of hours."
    return errors


def validate_definition(data: Any, *, existing: Pipeline | None = None, cap: int = 10) -> dict[str, str]:
    """All problems of a definition, as field -> message. {} when it can be saved."""
    if not isinstance(data, dict):
        return {"definition": "A pipeline definition is a mapping with name, steps and groups."}
    errors: dict[str, str] = {}
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name.strip()):
        errors["name"] = "A pipeline needs a name (letters, digits, spaces, . _ -; at most 120)."
    else:
        clash = db.session.execute(select(Pipeline.id).filter_by(name=name.strip())).scalar_one_or_none()
        if clash is not None and (existing is None or clash != existing.id):
            errors["name"] = f"A pipeline named '{name.strip()}' already exists."
    groups = data.get("groups") or []
    steps = data.get("steps") or []
    if not isinstance(groups, list):
        errors["groups"] = "groups must be a list."
        groups = []
    if not isinstance(steps, list):
        errors["steps"] = "steps must be a list."
        steps = []
    group_ids: set[str] = set()
    group_names: set[str] = set()
    errors.update(_notification_errors(data.get("notification_config"), "notification_config"))
    for i, g in enumerate(groups):
        p = f"groups[{i}]"
        if not isinstance(g, dict) or not isinstance(g.get("id"), str) or not re.match(r"^[A-Za-z0-9_\-]{1,64}$", g.get("id", "")):
            errors[p] = "A parallel group needs an id (letters, digits, _ or -)."
            continue
        if g["id"] in group_ids:
            errors[f"{p}.id"] = f"Duplicate group id '{g['id']}'."
        group_ids.add(g["id"])
        gname = g.get("name", g["id"])
        if not isinstance(gname, str) or not gname.strip() or len(gname) > 120:
            errors[f"{p}.name"] = "A parallel group needs a name (at most 120 characters)."
        elif gname.strip() in group_names:
            errors[f"{p}.name"] = f"Another parallel group is already named '{gname.strip()}'."
        else:
            group_names.add(gname.strip())
        if g.get("sync_policy", "wait_all") not in SYNC_POLICIES:
            errors[f"{p}.sync_policy"] = f"sync_policy must be one of {', '.join(SYNC_POLICIES)}."
        _int_or_none(g.get("timeout_seconds"), f"{p}.timeout_seconds", errors, 1)
    names = [s.get("name") if isinstance(s, dict) else None for s in steps]
    for i, s in enumerate(steps):
        p = f"steps[{i}]"
        if not isinstance(s, dict):
            errors[p] = "A step is a mapping."
            continue
        label = f"step '{s.get('name')}'" if s.get("name") else p
        unknown = set(s) - STEP_FIELDS
        if unknown:
            errors[f"{p}"] = f"Unknown field(s) on {label}: {', '.join(sorted(unknown))}."
        if not isinstance(s.get("name"), str) or not NAME_RE.match(s.get("name", "")):
            errors[f"{p}.name"] = "A step needs a name (letters, digits, spaces, . _ -)."
        st = _step_type(s)
        if st not in STEP_TYPES:
            errors[f"{p}.type"] = f"Unknown step type '{st}' on {label}: use {', '.join(STEP_TYPES)}."
        else:
            for k, msg in validate_parameters(st, s.get("parameters")).items():
                errors[f"{p}.parameters.{k}"] = msg
        deps = s.get("depends_on")
        if deps is not None and (not isinstance(deps, list) or not all(isinstance(d, str) for d in deps)):
            errors[f"{p}.depends_on"] = "depends_on must be a list of step names."
        elif deps:
            for d in deps:
                if d not in names:
                    errors[f"{p}.depends_on"] = f"{label} depends on '{d}', which is not a step of this pipeline."
        pg = s.get("parallel_group")
        if pg is not None and pg not in group_ids:
            errors[f"{p}.parallel_group"] = f"{label} names parallel group '{pg}', which is not defined."
        cond = s.get("conditions")
        if cond is not None:
            cond_for_check = dict(cond) if isinstance(cond, dict) else cond
            if isinstance(cond_for_check, dict) and cond_for_check.get("depends_on") is not None:
                cd = cond_for_check["depends_on"]
                if not isinstance(cd, list) or any(n not in names for n in cd):
                    errors[f"{p}.conditions.depends_on"] = "conditions.depends_on must list step names of this pipeline."
                cond_for_check["depends_on"] = None
            for k, msg in validate_conditions(cond_for_check).items():
                errors[f"{p}.conditions.{k}"] = msg
        for k, msg in validate_policy(s.get("retry_policy"), cap=cap).items():
            errors[f"{p}.retry_policy.{k}"] = msg
        errors.update(_approval_errors(s.get("approval"), f"{p}.approval"))
        for k, msg in approver_errors(s, f"{p}.approval").items():  # who exists, and enough of them
            errors.setdefault(k, msg)
        _int_or_none(s.get("timeout_seconds"), f"{p}.timeout_seconds", errors, 1, 7 * 24 * 3600)
        errors.update(_notification_errors(s.get("notification_config"), f"{p}.notification_config"))
        est = s.get("estimated_duration")
        if est is not None and (isinstance(est, bool) or not isinstance(est, (int, float)) or est < 0):
            errors[f"{p}.estimated_duration"] = "estimated_duration must be a number of seconds >= 0."
    if not errors:
        for problem in graph.validate(to_pipeline_def_from_data(data)):
            if problem.code in WARNING_CODES:
                continue
            where = f"steps[{names.index(problem.step_name)}]" if problem.step_name in names else "steps"
            if problem.group_id and problem.step_name is None:
                where = "groups"
            errors.setdefault(where, problem.message)
    return errors


def _notification_errors(cfg: Any, prefix: str) -> dict[str, str]:
    from .notifications import validate_notification_config

    out = {}
    for key, message in validate_notification_config(cfg).items():
        key = key.removeprefix("notification_config").lstrip(".")
        out[f"{prefix}.{key}" if key else prefix] = message
    return out


def to_pipeline_def_from_data(data: dict) -> PipelineDef:
    """A definition dict as engine values, with list positions as provisional ids."""
    steps = data.get("steps") or []
    index = {s["name"]: i + 1 for i, s in enumerate(steps)}
    defs = []
    for i, s in enumerate(steps):
        deps = s.get("depends_on")
        cond = _cond_with_ids(s.get("conditions"), index)
        defs.append(StepDef(
            id=i + 1, name=s["name"], order=s.get("order", i + 1), step_type=_step_type(s),
            dependencies=None if deps is None else tuple(sorted(index[d] for d in deps)),
            parallel_group=s.get("parallel_group"), conditions=cond,
            approval_required=bool(s.get("approval")) or _step_type(s) == "approval",
            retry_policy=s.get("retry_policy"), timeout_seconds=s.get("timeout_seconds"),
            continue_on_failure=bool(s.get("continue_on_failure")),
            estimated_duration=float(s.get("estimated_duration", 60.0)),
        ))
    groups = tuple(
        GroupDef(id=g["id"], name=g.get("name", g["id"]), sync_policy=g.get("sync_policy", "wait_all"),
                 timeout_seconds=g.get("timeout_seconds"))
        for g in data.get("groups") or []
    )
    return PipelineDef(steps=tuple(defs), groups=groups)


def _cond_with_ids(cond: dict | None, index: dict[str, int]) -> dict | None:
    if not cond:
        return cond
    out = dict(cond)
    if out.get("depends_on"):
        out["depends_on"] = [index[n] for n in out["depends_on"] if n in index]
    return out


def _approval_fields(approval: Any, step_type: str) -> dict:
    if approval in (None, False) and step_type != "approval":
        return {"approval_required": False, "approval_users": None, "approval_config": None}
    cfg = approval if isinstance(approval, dict) else {}
    return {
        "approval_required": True,
        "approval_users": list(cfg.get("users") or []),
        "approval_config": {
            "required_approvals": int(cfg.get("required_approvals", 1)),
            "timeout_hours": cfg.get("timeout_hours"),
            "auto_approve_on_timeout": bool(cfg.get("auto_approve_on_timeout", False)),
            "reminder_hours": cfg.get("reminder_hours"),
            "message": cfg.get("message", ""),
        },
    }


def save_definition(data: dict, owner: User | None = None, pipeline: Pipeline | None = None,
                    renames: dict[str, str] | None = None) -> Pipeline:
    """Create or replace a pipeline's definition in one transaction. Steps keep their ids by name
    (`renames` maps a new step name to the old one, so a renamed step keeps its id too); groups
    keep theirs by local id, then by name.

    Checked against the acting user (services/pipeline_access.py): creating needs the maintainer
    role, changing needs the pipeline's edit right, and changing its approval rules its owner or an
    admin; the change and its audit entry are one transaction."""
    is_new = pipeline is None
    if is_new:
        access.require_create()
    else:
        access.require_edit(pipeline)
    errors = validate_definition(data, existing=pipeline)
    if errors:
        raise ValidationError("The pipeline was not saved: fix the fields below.", errors)
    before = None if is_new else export_definition(pipeline)
    rules_before = None if is_new else access.renamed(access.approval_rules(before), renames)
    rules_after = access.approval_rules(data)
    if not is_new:
        access.require_rules_unchanged(pipeline, rules_before, rules_after, data)
    if is_new:
        pipeline = Pipeline(owner=owner, version=1)
        db.session.add(pipeline)
    else:
        pipeline.version = (pipeline.version or 1) + 1
    pipeline.name = data["name"].strip()
    pipeline.description = data.get("description", "") or ""
    pipeline.active = bool(data.get("active", True))
    pipeline.notification_config = data.get("notification_config")
    pipeline.allow_self_approval = bool(data.get("allow_self_approval", False))

    by_local = {_local_group_id(g): g for g in pipeline.groups} if not is_new else {}
    wanted_local = {g["id"] for g in data.get("groups") or []}
    by_gname = {g.name: g for g in pipeline.groups if _local_group_id(g) not in wanted_local} if not is_new else {}
    groups_by_key: dict[str, ParallelGroup] = {}
    keep_groups: list[ParallelGroup] = []
    for g in data.get("groups") or []:
        group = by_local.get(g["id"]) or by_gname.pop(g.get("name", g["id"]), None)
        if group is not None and group in keep_groups:
            group = None
        if group is None:
            group = ParallelGroup(id=_group_key(g["id"]))
            pipeline.groups.append(group)
        group.name = g.get("name", g["id"])
        group.description = g.get("description", "")
        group.sync_policy = g.get("sync_policy", "wait_all")
        group.timeout_seconds = g.get("timeout_seconds")
        groups_by_key[g["id"]] = group
        keep_groups.append(group)
    for group in list(pipeline.groups):
        if group not in keep_groups:
            pipeline.groups.remove(group)

    by_name = {s.name: s for s in pipeline.steps} if not is_new else {}
    renames = renames or {}
    new_steps: list[PipelineStep] = []
    for i, s in enumerate(data.get("steps") or []):
        step = by_name.pop(renames.get(s["name"], s["name"]), None) or by_name.pop(s["name"], None) or PipelineStep()
        if step.id is None:
            pipeline.steps.append(step)
        st = _step_type(s)
        step.name = s["name"]
        step.order = s.get("order", i + 1)
        step.step_type = st
        step.parameters = s.get("parameters") or {}
        step.parallel_group = None
        step.retry_policy = s.get("retry_policy")
        step.notification_config = s.get("notification_config")
        step.timeout_seconds = s.get("timeout_seconds")
        step.continue_on_failure = bool(s.get("continue_on_failure", False))
        step.estimated_duration = float(s.get("estimated_duration", 60.0))
        for k, v in _approval_fields(s.get("approval"), st).items():
            setattr(step, k, v)
        new_steps.append(step)
    for gone in by_name.values():
        pipeline.steps.remove(gone)
    db.session.flush()  # ids for new steps and groups
    index = {st.name: st for st in new_steps}
    for s, step in zip(data.get("steps") or [], new_steps):
        group = groups_by_key.get(s.get("parallel_group"))
        step.parallel_group = group.id if group is not None else None
        deps = s.get("depends_on")
        step.explicit_dependencies = deps is not None
        step.depends_on = [index[d] for d in (deps or [])]
        cond = normalize_conditions(s.get("conditions"))  # the rule and the expression apart
        if cond:
            cond = dict(cond)
            if cond.get("depends_on"):
                cond["depends_on"] = [index[n].id for n in cond["depends_on"]]
        step.conditions = cond or None
    _audit_save(pipeline, before, rules_before, rules_after)
    db.session.commit()
    return pipeline


def _audit_save(pipeline: Pipeline, before: dict | None, rules_before: dict | None, rules_after: dict) -> None:
    after = _export(pipeline)
    if before is None:
        pipeline.approval_rules_by = access.actor_name()
        access.audit(pipeline, "pipeline_created", f"created with {len(after['steps'])} step(s)",
                     None, {"approval_rules": rules_after})
        return
    summary = f"v{pipeline.version - 1} → v{pipeline.version}: {_changes(before, after)}"
    if rules_before != rules_after:
        pipeline.approval_rules_by = access.actor_name()
        access.audit(pipeline, "approval_rules_changed", summary, {"approval_rules": rules_before},
                     {"approval_rules": rules_after})
    else:
        access.audit(pipeline, "pipeline_edited", summary)


def _changes(before: dict, after: dict) -> str:
    """What a save changed, in a few words: settings by name, steps and groups by name."""
    parts = []
    settings = [k for k in ("name", "description", "active", "notification_config", "allow_self_approval")
                if before.get(k) != after.get(k)]
    if settings:
        parts.append("settings " + ", ".join(settings))
    for what in ("steps", "groups"):
        key = "name" if what == "steps" else "id"
        old = {x[key]: x for x in before.get(what) or []}
        new = {x[key]: x for x in after.get(what) or []}
        for label, names in (("added", [n for n in new if n not in old]),
                             ("removed", [n for n in old if n not in new]),
                             ("changed", [n for n in new if n in old and new[n] != old[n]])):
            if names:
                parts.append(f"{what} {label}: {', '.join(names)}")
    return "; ".join(parts) or "no change"


def _group_key(local_id: str) -> str:
    # ParallelGroup ids are global keys (the AnsFlow API addresses groups by id alone).
    return f"{local_id}-{secrets.token_hex(3)}"


def export_definition(pipeline: Pipeline) -> dict:
    """The definition as names (the inverse of save_definition).

    A deep copy: the JSON values of ORM rows must never be shared with a caller, since an
    in-place edit of a shared dict is invisible to change tracking and would be lost.
    """
    return copy.deepcopy(_export(pipeline))


def _export(pipeline: Pipeline) -> dict:
    names = {s.id: s.name for s in pipeline.steps}
    group_local = {g.id: _local_group_id(g) for g in pipeline.groups}
    steps = []
    for s in pipeline.steps:
        item: dict[str, Any] = {"name": s.name, "type": s.step_type, "order": s.order}
        if s.parameters:
            item["parameters"] = s.parameters
        if s.explicit_dependencies:
            item["depends_on"] = [names[d.id] for d in s.depends_on]
        if s.parallel_group:
            item["parallel_group"] = group_local[s.parallel_group]
        if s.conditions:
            cond = normalize_conditions(s.conditions)  # read-time upgrade of the legacy shape
            if cond.get("depends_on"):
                cond["depends_on"] = [names[i] for i in cond["depends_on"] if i in names]
            item["conditions"] = cond
        if s.approval_required and (s.step_type != "approval" or s.approval_users or s.approval_config):
            item["approval"] = {"users": s.approval_users or [], **(s.approval_config or {})}
        for key in ("retry_policy", "notification_config", "timeout_seconds"):
            if getattr(s, key):
                item[key] = getattr(s, key)
        if s.continue_on_failure:
            item["continue_on_failure"] = True
        if s.estimated_duration != 60.0:
            item["estimated_duration"] = s.estimated_duration
        steps.append(item)
    out: dict[str, Any] = {"name": pipeline.name, "description": pipeline.description or ""}
    if not pipeline.active:
        out["active"] = False
    if pipeline.notification_config:
        out["notification_config"] = pipeline.notification_config
    if pipeline.allow_self_approval:
        out["allow_self_approval"] = True
    if pipeline.groups:
        out["groups"] = [
            {"id": group_local[g.id], "name": g.name, "sync_policy": g.sync_policy,
             **({"timeout_seconds": g.timeout_seconds} if g.timeout_seconds else {}),
             **({"description": g.description} if g.description else {})}
            for g in pipeline.groups
        ]
    out["steps"] = steps
    return out


def _local_group_id(group: ParallelGroup) -> str:
    head, _, tail = group.id.rpartition("-")
    return head if head and re.fullmatch(r"[0-9a-f]{6}", tail) else group.id


def to_yaml(pipeline: Pipeline) -> str:
    return yaml.safe_dump(export_definition(pipeline), sort_keys=False, allow_unicode=True)


def from_yaml(text: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValidationError(f"The YAML could not be read{where}.", {"yaml": str(getattr(e, 'problem', e))})
    if not isinstance(data, dict):
        raise ValidationError("The YAML must be a mapping with name and steps.", {"yaml": "not a mapping"})
    return data


_FROZEN_BY_VERSION: "OrderedDict[tuple[str, int, str, int], str]" = OrderedDict()


def freeze(pipeline: Pipeline) -> dict:
    """The definition frozen into an execution: ids, not names, so history matches steps.

    Every change of a definition goes through save_definition, which bumps the version, so a
    (pipeline, version) freezes the same way every time: the process keeps it (as JSON text, so
    each caller gets its own copy) and starting a 500-step pipeline skips reading 500 step rows.
    """
    # created_at tells a new pipeline from a deleted one whose id SQLite reused
    key = (str(db.engine.url), pipeline.id, str(pipeline.created_at), pipeline.version)
    text = _FROZEN_BY_VERSION.get(key)
    if text is None:
        text = json.dumps(_freeze(pipeline))
        _FROZEN_BY_VERSION[key] = text
        if len(_FROZEN_BY_VERSION) > 64:
            _FROZEN_BY_VERSION.popitem(last=False)
    else:
        _FROZEN_BY_VERSION.move_to_end(key)
    return json.loads(text)


def _freeze(pipeline: Pipeline) -> dict:
    # one query for every step's dependencies, not one per step
    db.session.execute(select(PipelineStep).where(PipelineStep.pipeline_id == pipeline.id)
                       .options(selectinload(PipelineStep.depends_on))).scalars().all()
    return {
        "pipeline_id": pipeline.id,
        "name": pipeline.name,
        "version": pipeline.version,
        "allow_self_approval": pipeline.allow_self_approval,
        "approval_rules_by": pipeline.approval_rules_by,
        "notification_config": pipeline.notification_config,
        "groups": [
            {"id": g.id, "name": g.name, "sync_policy": g.sync_policy, "timeout_seconds": g.timeout_seconds}
            for g in pipeline.groups
        ],
        "steps": [
            {
                "id": s.id, "name": s.name, "order": s.order, "step_type": s.step_type,
                "parameters": s.parameters or {}, "dependencies": s.dependencies,
                "parallel_group": s.parallel_group, "conditions": s.conditions,
                "approval_required": s.approval_required or s.step_type == "approval",
                "approval_users": s.approval_users or [], "approval_config": s.approval_config or {},
                "retry_policy": s.retry_policy, "notification_config": s.notification_config,
                "timeout_seconds": s.timeout_seconds, "continue_on_failure": s.continue_on_failure,
                "estimated_duration": s.estimated_duration,
            }
            for s in pipeline.steps
        ],
    }


def get_pipeline(pipeline_id: int) -> Pipeline | None:
    return db.session.get(Pipeline, pipeline_id)


def list_pipelines(search: str | None = None, active: bool | None = None) -> list[Pipeline]:
    """Pipelines by name; `search` matches name or description (case-insensitive), `active` filters."""
    q = select(Pipeline).options(selectinload(Pipeline.steps), selectinload(Pipeline.owner)).order_by(Pipeline.name)
    if search and search.strip():
        like = f"%{_escape_like(search.strip().lower())}%"
        q = q.where(or_(func.lower(Pipeline.name).like(like, escape="\\"),
                        func.lower(Pipeline.description).like(like, escape="\\")))
    if active is not None:
        q = q.where(Pipeline.active.is_(active))
    return list(db.session.execute(q).scalars())


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def latest_executions(pipeline_ids: list[int]) -> dict[int, dict[str, Any]]:
    """pipeline id -> {status, execution_id, created_at, bypassed} of its latest execution, in one query."""
    from .run_summary import bypassed_count_of  # the badge says "success · 1 bypassed"

    if not pipeline_ids:
        return {}
    latest = (select(func.max(WorkflowExecution.id))
              .where(WorkflowExecution.pipeline_id.in_(pipeline_ids))
              .group_by(WorkflowExecution.pipeline_id))
    rows = db.session.execute(
        select(WorkflowExecution.pipeline_id, WorkflowExecution.status, WorkflowExecution.execution_id,
               WorkflowExecution.created_at, bypassed_count_of(WorkflowExecution.id))
        .where(WorkflowExecution.id.in_(latest))
    )
    return {pid: {"status": st, "execution_id": eid, "created_at": at, "bypassed": n}
            for pid, st, eid, at, n in rows}


def delete_pipeline(pipeline: Pipeline) -> None:
    access.require_govern(pipeline, "delete it")
    access.audit(pipeline, "pipeline_deleted", f"deleted at v{pipeline.version}")
    db.session.flush()  # the entry first: deleting the pipeline then sets its pipeline_id NULL
    db.session.delete(pipeline)
    db.session.commit()


# --------------------------------------------------------------------------- editing, piece by piece
#
# Every edit below changes one part of the exported definition and saves the WHOLE definition
# through save_definition, so one validation covers the graph, conditions, retry policies and
# parameters of every step, and a refused edit writes nothing.

REFUSED = "Nothing was saved: fix the fields below."


class StaleVersion(ValidationError):
    """The pipeline changed since the form was opened (HTTP 409: the client must re-read)."""
    status = 409


def _check_version(pipeline: Pipeline, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != pipeline.version:
        message = (f"Someone saved this pipeline while you were editing (it is now v{pipeline.version}, "
                   f"you started from v{expected_version}). Review the current definition and save again.")
        raise StaleVersion(message, {"version": message})


def _definition(pipeline: Pipeline) -> dict:
    # a deep copy: the exported dict shares JSON values with the ORM rows
    return copy.deepcopy(export_definition(pipeline))


def _join(out: dict[str, str], key: str, message: str) -> None:
    out[key] = f"{out[key]} {message}" if key in out and message not in out[key] else message


_WHOLE_STEP = re.compile(r"^steps\[(\d+)\]$")


def _errors_for_step(errors: dict[str, str], idx: int) -> dict[str, str]:
    """Definition-wide errors as the fields of one step's form ("steps[3].retry_policy.jitter" ->
    "retry_policy.jitter"). Graph problems (a cycle, a dependency on a sibling) go on depends_on,
    group problems on parallel_group, anything else on "form"."""
    prefix = f"steps[{idx}]"
    out: dict[str, str] = {}
    for key, message in errors.items():
        if key.startswith(prefix + "."):
            _join(out, key[len(prefix) + 1:], message)
        elif key == prefix or _WHOLE_STEP.match(key) or key == "steps":
            _join(out, "depends_on", message)
        elif key.startswith("groups"):
            _join(out, "parallel_group", message)
        else:
            _join(out, "form", message)
    return out


def _errors_for_group(errors: dict[str, str], idx: int) -> dict[str, str]:
    prefix = f"groups[{idx}]"
    out: dict[str, str] = {}
    for key, message in errors.items():
        if key.startswith(prefix + "."):
            _join(out, key[len(prefix) + 1:], message)
        elif key == prefix:
            _join(out, "id", message)
        elif key.startswith("steps") or key == "groups":
            _join(out, "members", message)
        else:
            _join(out, "form", message)
    return out


def _save(pipeline: Pipeline, defn: dict, errors_as, renames: dict[str, str] | None = None) -> Pipeline:
    errors = validate_definition(defn, existing=pipeline)
    if errors:
        raise ValidationError(REFUSED, errors_as(errors))
    try:
        return save_definition(defn, pipeline=pipeline, renames=renames)
    except access.Forbidden as e:
        raise access.Forbidden(e.message, errors_as(e.fields) if e.fields else {}) from None


def step_by_id(pipeline: Pipeline, step_id: int) -> PipelineStep | None:
    return next((s for s in pipeline.steps if s.id == step_id), None)


def group_by_id(pipeline: Pipeline, group_id: str) -> ParallelGroup | None:
    return next((g for g in pipeline.groups if g.id == group_id), None)


def local_group_id(group: ParallelGroup) -> str:
    """The group's id inside its definition (the YAML `groups[].id`)."""
    return _local_group_id(group)


def _rename_refs(defn: dict, old: str, new: str | None) -> list[str]:
    """Point depends_on / conditions.depends_on from `old` to `new` (None: drop). Names touched."""
    touched = []
    for s in defn["steps"]:
        deps = s.get("depends_on")
        if deps and old in deps:
            s["depends_on"] = [new if d == old else d for d in deps if new is not None or d != old]
            touched.append(s["name"])
        cond = s.get("conditions")
        if isinstance(cond, dict) and cond.get("depends_on") and old in cond["depends_on"]:
            kept = [new if d == old else d for d in cond["depends_on"] if new is not None or d != old]
            if kept:
                cond["depends_on"] = kept
            else:
                cond.pop("depends_on")
            if s["name"] not in touched:
                touched.append(s["name"])
    return touched


def save_step(pipeline: Pipeline, changes: dict[str, Any], step_id: int | None = None,
              expected_version: int | None = None) -> PipelineStep:
    """Add a step (step_id None, placed last) or change one, as definition fields (names, not ids).

    Keys of `changes` replace the step's; a None value clears that field (depends_on None: the
    stage rule). When the type stays the same, `parameters` are merged into the old ones (so a
    form that shows some parameters keeps the others); `conditions` without a depends_on key keep
    the old one. Raises ValidationError with the step's form fields, and saves nothing, when the
    resulting definition is invalid in any way."""
    _check_version(pipeline, expected_version)
    defn = _definition(pipeline)
    steps = defn["steps"]
    renames: dict[str, str] = {}
    if step_id is None:
        old: dict[str, Any] = {"order": max((s.get("order", 0) for s in steps), default=0) + 1}
        idx = len(steps)
        steps.append(old)
    else:
        step = step_by_id(pipeline, step_id)
        if step is None:
            raise LookupError(f"step {step_id} is not a step of pipeline {pipeline.id}")
        idx = next(i for i, s in enumerate(steps) if s["name"] == step.name)
        old = steps[idx]
    new = {**old, **changes}
    old_type = old.get("type")
    if old_type is not None and new.get("type") == old_type and "parameters" in changes:
        new["parameters"] = {**(old.get("parameters") or {}), **(changes["parameters"] or {})}
    if isinstance(new.get("parameters"), dict):
        new["parameters"] = {k: v for k, v in new["parameters"].items() if v is not None}
    cond = changes.get("conditions")
    if isinstance(cond, dict) and "depends_on" not in cond and isinstance(old.get("conditions"), dict) \
            and old["conditions"].get("depends_on"):
        new["conditions"] = {**cond, "depends_on": old["conditions"]["depends_on"]}
    new = {k: v for k, v in new.items() if v is not None}
    steps[idx] = new
    if step_id is not None and isinstance(new.get("name"), str) and new["name"] != old["name"]:
        renames[new["name"]] = old["name"]
        _rename_refs(defn, old["name"], new["name"])
    saved = _save(pipeline, defn, lambda e: _errors_for_step(e, idx), renames)
    return next(s for s in saved.steps if s.name == new["name"])


def delete_step(pipeline: Pipeline, step_id: int, expected_version: int | None = None) -> list[str]:
    """Remove a step; steps that named it as a dependency lose that dependency. Returns their names."""
    _check_version(pipeline, expected_version)
    step = step_by_id(pipeline, step_id)
    if step is None:
        raise LookupError(f"step {step_id} is not a step of pipeline {pipeline.id}")
    defn = _definition(pipeline)
    defn["steps"] = [s for s in defn["steps"] if s["name"] != step.name]
    touched = _rename_refs(defn, step.name, None)

    def as_form(errors):
        return {"form": " ".join(errors.values())}
    _save(pipeline, defn, as_form)
    return touched


def move_step(pipeline: Pipeline, step_id: int, offset: int, expected_version: int | None = None) -> None:
    """Move a step up (-1) or down (+1) in the order; orders are renumbered 1..n."""
    _check_version(pipeline, expected_version)
    step = step_by_id(pipeline, step_id)
    if step is None:
        raise LookupError(f"step {step_id} is not a step of pipeline {pipeline.id}")
    defn = _definition(pipeline)
    steps = defn["steps"]
    i = next(k for k, s in enumerate(steps) if s["name"] == step.name)
    j = max(0, min(len(steps) - 1, i + offset))
    if i == j:
        return
    steps.insert(j, steps.pop(i))
    for k, s in enumerate(steps):
        s["order"] = k + 1
    _save(pipeline, defn, lambda e: {"form": " ".join(e.values())})


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_\-]+", "-", text.strip()).strip("-").lower()[:40]
    return slug or "group"


def save_group(pipeline: Pipeline, data: dict[str, Any], group_id: str | None = None,
               members: list[int] | None = None, expected_version: int | None = None) -> ParallelGroup:
    """Create (group_id None) or change a parallel group: name, description, sync_policy,
    timeout_seconds; `members` (step ids), when given, become exactly the group's steps.
    data["id"] sets the local id of a new group (default: from the name)."""
    _check_version(pipeline, expected_version)
    defn = _definition(pipeline)
    groups = defn.setdefault("groups", [])
    if group_id is None:
        taken = {g["id"] for g in groups}
        local = data.get("id") or _slug(str(data.get("name") or ""))
        if not data.get("id"):
            base, n = local, 2
            while local in taken:
                local, n = f"{base}-{n}", n + 1
        entry: dict[str, Any] = {"id": local}
        idx = len(groups)
        groups.append(entry)
    else:
        group = group_by_id(pipeline, group_id)
        if group is None:
            raise LookupError(f"parallel group {group_id} is not in pipeline {pipeline.id}")
        local = _local_group_id(group)
        idx = next(i for i, g in enumerate(groups) if g["id"] == local)
        entry = groups[idx]
    for key in ("name", "description", "sync_policy", "timeout_seconds"):
        if key in data:
            if data[key] is None or (key == "description" and data[key] == ""):
                entry.pop(key, None)
            else:
                entry[key] = data[key]
    entry.setdefault("name", local)
    if members is not None:
        by_id = {s.id: s.name for s in pipeline.steps}
        unknown = [m for m in members if m not in by_id]
        if unknown:
            raise ValidationError(REFUSED, {"members": f"Step id(s) {', '.join(map(str, unknown))} are not steps of this pipeline."})
        names = {by_id[m] for m in members}
        for s in defn["steps"]:
            if s["name"] in names:
                s["parallel_group"] = local
            elif s.get("parallel_group") == local:
                s.pop("parallel_group")
    saved = _save(pipeline, defn, lambda e: _errors_for_group(e, idx))
    return next(g for g in saved.groups if _local_group_id(g) == local)


def get_group(group_id: str) -> ParallelGroup | None:
    return db.session.get(ParallelGroup, group_id)


def list_groups(pipeline_id: int | None = None) -> list[ParallelGroup]:
    q = select(ParallelGroup).order_by(ParallelGroup.pipeline_id, ParallelGroup.id)
    if pipeline_id is not None:
        q = q.where(ParallelGroup.pipeline_id == pipeline_id)
    return list(db.session.execute(q).scalars())


def group_member_ids(group: ParallelGroup) -> list[int]:
    return [s.id for s in group.pipeline.steps if s.parallel_group == group.id]


def delete_group(pipeline: Pipeline, group_id: str, expected_version: int | None = None) -> list[str]:
    """Remove a parallel group; its members stay, outside any group. Returns their names."""
    _check_version(pipeline, expected_version)
    group = group_by_id(pipeline, group_id)
    if group is None:
        raise LookupError(f"parallel group {group_id} is not in pipeline {pipeline.id}")
    local = _local_group_id(group)
    defn = _definition(pipeline)
    defn["groups"] = [g for g in defn.get("groups") or [] if g["id"] != local]
    freed = []
    for s in defn["steps"]:
        if s.get("parallel_group") == local:
            s.pop("parallel_group")
            freed.append(s["name"])
    _save(pipeline, defn, lambda e: {"form": " ".join(e.values())})
    return freed


SETTINGS_FIELDS = ("name", "description", "active", "allow_self_approval", "notification_config")


def update_settings(pipeline: Pipeline, data: dict[str, Any], expected_version: int | None = None) -> Pipeline:
    """Change the pipeline-level fields (SETTINGS_FIELDS) keeping its steps and groups."""
    _check_version(pipeline, expected_version)
    defn = _definition(pipeline)
    for key in SETTINGS_FIELDS:
        if key in data:
            defn[key] = data[key]
    def as_form(errors: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, message in errors.items():
            top = key.split(".")[0]  # "notification_config.channels" is shown on its textarea
            _join(out, top if top in SETTINGS_FIELDS else "form", message)
        return out
    return _save(pipeline, defn, as_form)


def create_pipeline(name: str, description: str = "", owner: User | None = None) -> Pipeline:
    return save_definition({"name": name, "description": description, "steps": []}, owner=owner)


def import_yaml(text: str, pipeline: Pipeline | None = None, owner: User | None = None,
                expected_version: int | None = None) -> Pipeline:
    """A new pipeline from YAML, or (pipeline given) its definition replaced by the YAML."""
    if pipeline is not None:
        _check_version(pipeline, expected_version)
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("Paste a pipeline definition or choose a YAML file.", {"yaml": "empty"})
    data = from_yaml(text)
    return save_definition(data, owner=owner, pipeline=pipeline)


# --------------------------------------------------------------------------- AnsFlow advanced config

ADVANCED_FIELDS = ("conditions", "approval_required", "approval_users", "approval_config", "retry_policy",
                   "timeout_seconds", "continue_on_failure", "parallel_group", "dependencies")
_API_FIELD = {"depends_on": "dependencies", "approval": "approval_config", "approval.users": "approval_users"}


def _api_field(key: str) -> str:
    if key in _API_FIELD:
        return _API_FIELD[key]
    if key.startswith("approval."):
        return "approval_config." + key[len("approval."):]
    return key


def update_advanced_config(pipeline: Pipeline, step: PipelineStep, body: dict[str, Any]) -> PipelineStep:
    """AnsFlow's PUT .../steps/{step_id}/advanced-config/: ids instead of names, keys as in AnsFlow.
    Only the keys present change. Errors come back under the body's keys."""
    names = {s.id: s.name for s in pipeline.steps}
    errors: dict[str, str] = {k: f"unknown field: use {', '.join(ADVANCED_FIELDS)}"
                              for k in sorted(set(body) - set(ADVANCED_FIELDS))}
    changes: dict[str, Any] = {}

    def ids_to_names(value, field):
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            errors[field] = "must be a list of step ids (integers) or null"
            return None
        bad = [v for v in value if v not in names]
        if bad:
            errors[field] = f"step id(s) {', '.join(map(str, bad))} are not steps of this pipeline"
            return None
        return [names[v] for v in value]

    if "dependencies" in body:
        changes["depends_on"] = ids_to_names(body["dependencies"], "dependencies")
    if "parallel_group" in body:
        pg = body["parallel_group"]
        if pg in (None, ""):
            changes["parallel_group"] = None
        else:
            group = next((g for g in pipeline.groups if pg in (g.id, _local_group_id(g))), None)
            if group is None:
                errors["parallel_group"] = f"'{pg}' is not a parallel group of this pipeline"
            else:
                changes["parallel_group"] = _local_group_id(group)
    if "conditions" in body:
        cond = body["conditions"]
        if cond is None or cond == {}:
            changes["conditions"] = None
        elif not isinstance(cond, dict):
            errors["conditions"] = "conditions must be an object with type, expression and depends_on"
        else:
            cond = dict(cond)
            if cond.get("depends_on") is not None:
                mapped = ids_to_names(cond["depends_on"], "conditions.depends_on")
                if mapped:
                    cond["depends_on"] = mapped
                else:
                    cond.pop("depends_on")
            changes["conditions"] = {k: v for k, v in cond.items() if v is not None}
    if any(k in body for k in ("approval_required", "approval_users", "approval_config")):
        required = body.get("approval_required", step.approval_required)
        cfg = body.get("approval_config", step.approval_config) or {}
        users = body.get("approval_users", step.approval_users) or []
        if not isinstance(cfg, dict):
            errors["approval_config"] = "approval_config must be an object"
        elif required or step.step_type == "approval":
            changes["approval"] = {"users": users, **{k: v for k, v in cfg.items() if v is not None and k != "users"}}
        else:
            changes["approval"] = None
    for key in ("retry_policy", "timeout_seconds"):
        if key in body:
            changes[key] = body[key] if body[key] not in ({}, "") else None
    if "continue_on_failure" in body:
        if not isinstance(body["continue_on_failure"], bool):
            errors["continue_on_failure"] = "continue_on_failure must be true or false"
        else:
            changes["continue_on_failure"] = body["continue_on_failure"] or None
    if errors:
        raise ValidationError(REFUSED, errors)
    try:
        return save_step(pipeline, changes, step.id)
    except ValidationError as e:
        raise type(e)(e.message, {_api_field(k): v for k, v in e.fields.items()}) from None  # a 403 stays one


# --------------------------------------------------------------------------- tool mappings

MAPPING_FIELDS = ("pipeline", "tool_name", "tool_type", "tool_url", "external_job_name", "active")


def list_mappings(pipeline_id: int | None = None) -> list[PipelineToolMapping]:
    q = select(PipelineToolMapping).order_by(PipelineToolMapping.id)
    if pipeline_id is not None:
        q = q.where(PipelineToolMapping.pipeline_id == pipeline_id)
    return list(db.session.execute(q).scalars())


def get_mapping(mapping_id: int) -> PipelineToolMapping | None:
    return db.session.get(PipelineToolMapping, mapping_id)


def save_mapping(data: dict[str, Any], mapping: PipelineToolMapping | None = None) -> PipelineToolMapping:
    """Create or (partially) update a PipelineToolMapping after validating every field."""
    errors: dict[str, str] = {}
    for key in sorted(set(data) - set(MAPPING_FIELDS)):
        errors[key] = f"unknown field: use {', '.join(MAPPING_FIELDS)}"
    values = {k: getattr(mapping, k) for k in MAPPING_FIELDS[1:]} if mapping else {
        "tool_name": None, "tool_type": "jenkins", "tool_url": "", "external_job_name": "", "active": True}
    values.update({k: v for k, v in data.items() if k in MAPPING_FIELDS[1:]})
    pipeline_id = data.get("pipeline", mapping.pipeline_id if mapping else None)
    if isinstance(pipeline_id, bool) or not isinstance(pipeline_id, int) or get_pipeline(pipeline_id) is None:
        errors["pipeline"] = "pipeline must be the id of an existing pipeline"
    name = values["tool_name"]
    if not isinstance(name, str) or not name.strip() or len(name) > 120:
        errors["tool_name"] = "tool_name is required (at most 120 characters)"
    if not isinstance(values["tool_type"], str) or not re.fullmatch(r"[a-z0-9_\-]{1,40}", values["tool_type"] or ""):
        errors["tool_type"] = "tool_type is a short lower-case name such as jenkins or gitlab_ci"
    url = values["tool_url"]
    if url is None:
        values["tool_url"] = url = ""
    if not isinstance(url, str) or len(url) > 500 or (url and not re.match(r"^https?://[^\s/]+", url)):
        errors["tool_url"] = "tool_url must be an http:// or https:// URL (or empty)"
    job = values["external_job_name"]
    if job is None:
        values["external_job_name"] = job = ""
    if not isinstance(job, str) or len(job) > 200:
        errors["external_job_name"] = "external_job_name must be text of at most 200 characters"
    if not isinstance(values["active"], bool):
        errors["active"] = "active must be true or false"
    if errors:
        raise ValidationError("The mapping was not saved: fix the fields below.", errors)
    target = get_pipeline(pipeline_id)
    access.require_edit(target)
    if mapping is not None and mapping.pipeline_id != pipeline_id:
        access.require_edit(mapping.pipeline)
        access.audit(mapping.pipeline, "pipeline_edited", f"tool mapping '{mapping.tool_name}' moved to {target.name}")
    access.audit(target, "pipeline_edited", f"tool mapping '{values['tool_name'].strip()}' "
                 f"{'added' if mapping is None else 'changed'}")
    if mapping is None:
        mapping = PipelineToolMapping()
        db.session.add(mapping)
    mapping.pipeline_id = pipeline_id
    for key in MAPPING_FIELDS[1:]:
        setattr(mapping, key, values[key].strip() if key == "tool_name" else values[key])
    db.session.commit()
    return mapping


def delete_mapping(mapping: PipelineToolMapping) -> None:
    access.require_edit(mapping.pipeline)
    access.audit(mapping.pipeline, "pipeline_edited", f"tool mapping '{mapping.tool_name}' deleted")
    db.session.delete(mapping)
    db.session.commit()
