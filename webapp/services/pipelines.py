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

import re
import secrets
from typing import Any

import yaml
from sqlalchemy import select

from ..engine import graph
from ..engine.conditions import validate_conditions
from ..engine.retry import validate_policy
from ..engine.types import GroupDef, PipelineDef, StepDef
from ..extensions import db
from ..models import ParallelGroup, Pipeline, PipelineStep, User
from ..models.pipeline import STEP_TYPES, SYNC_POLICIES
from ..runners.params import validate_parameters
from .accounts import ValidationError

STEP_FIELDS = {
    "name", "type", "step_type", "order", "parameters", "depends_on", "parallel_group", "conditions",
    "approval", "retry_policy", "notification_config", "timeout_seconds", "continue_on_failure",
    "estimated_duration", "description",
}
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
    elif isinstance(users, list) and users and not any(u.startswith("role:") for u in users) and n > len(users):
        errors[f"{prefix}.required_approvals"] = f"required_approvals ({n}) is more than the {len(users)} listed approvers."
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
    group_ids = set()
    for i, g in enumerate(groups):
        p = f"groups[{i}]"
        if not isinstance(g, dict) or not isinstance(g.get("id"), str) or not re.match(r"^[A-Za-z0-9_\-]{1,64}$", g.get("id", "")):
            errors[p] = "A parallel group needs an id (letters, digits, _ or -)."
            continue
        if g["id"] in group_ids:
            errors[f"{p}.id"] = f"Duplicate group id '{g['id']}'."
        group_ids.add(g["id"])
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
        _int_or_none(s.get("timeout_seconds"), f"{p}.timeout_seconds", errors, 1, 7 * 24 * 3600)
        if s.get("notification_config") is not None and not isinstance(s.get("notification_config"), dict):
            errors[f"{p}.notification_config"] = "notification_config must be a mapping."
        est = s.get("estimated_duration")
        if est is not None and (isinstance(est, bool) or not isinstance(est, (int, float)) or est < 0):
            errors[f"{p}.estimated_duration"] = "estimated_duration must be a number of seconds >= 0."
    if not errors:
        for problem in graph.validate(to_pipeline_def_from_data(data)):
            where = f"steps[{names.index(problem.step_name)}]" if problem.step_name in names else "steps"
            if problem.group_id:
                where = "groups"
            errors.setdefault(where, problem.message)
    return errors


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


def save_definition(data: dict, owner: User | None = None, pipeline: Pipeline | None = None) -> Pipeline:
    """Create or replace a pipeline's definition in one transaction. Steps keep their ids by name."""
    errors = validate_definition(data, existing=pipeline)
    if errors:
        raise ValidationError("The pipeline was not saved: fix the fields below.", errors)
    is_new = pipeline is None
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

    existing_groups = {g.name: g for g in pipeline.groups} if not is_new else {}
    groups_by_key: dict[str, ParallelGroup] = {}
    keep_groups = []
    for g in data.get("groups") or []:
        group = existing_groups.get(g.get("name", g["id"])) or next(
            (x for x in pipeline.groups if x.id.endswith(f"-{g['id']}") or x.id == g["id"]), None)
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
    new_steps: list[PipelineStep] = []
    for i, s in enumerate(data.get("steps") or []):
        step = by_name.pop(s["name"], None) or PipelineStep()
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
        cond = s.get("conditions")
        if cond:
            cond = dict(cond)
            if cond.get("depends_on"):
                cond["depends_on"] = [index[n].id for n in cond["depends_on"]]
        step.conditions = cond
    db.session.commit()
    return pipeline


def _group_key(local_id: str) -> str:
    # ParallelGroup ids are global keys (the AnsFlow API addresses groups by id alone).
    return f"{local_id}-{secrets.token_hex(3)}"


def export_definition(pipeline: Pipeline) -> dict:
    """The definition as names (the inverse of save_definition)."""
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
            cond = dict(s.conditions)
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


def freeze(pipeline: Pipeline) -> dict:
    """The definition frozen into an execution: ids, not names, so history matches steps."""
    return {
        "pipeline_id": pipeline.id,
        "name": pipeline.name,
        "version": pipeline.version,
        "allow_self_approval": pipeline.allow_self_approval,
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


def list_pipelines() -> list[Pipeline]:
    return list(db.session.execute(select(Pipeline).order_by(Pipeline.name)).scalars())


def delete_pipeline(pipeline: Pipeline) -> None:
    db.session.delete(pipeline)
    db.session.commit()
