"""Approver lists checked when a gate is saved, and what a user's departure would leave behind.

A gate's approvers are usernames or ``role:NAME`` entries; an empty list means
``approvals.DEFAULT_APPROVERS``. The people who can approve are the *active* users listed by name
and the active users holding a listed role, counted once each, and only those ranked approver or
higher (viewers are read-only even when listed). Admins may decide any request, but as an
override: they count towards a quorum only when listed (by name or ``role:admin``), so a gate
never relies on someone nobody asked.

Used by ``pipelines.validate_definition`` (UI step form, advanced-config API, YAML import: one
checker, the same field errors), by ``approvals.create_request`` and by ``accounts.deactivate_user``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import or_, select

from ..extensions import db
from ..models import ROLES, ApprovalRequest, Pipeline, PipelineStep, User
from ..models.user import ROLE_RANK

_DECIDER_RANK = ROLE_RANK["approver"]


def default_approvers() -> list[str]:
    from .approvals import DEFAULT_APPROVERS

    return list(DEFAULT_APPROVERS)


@dataclass
class Approvers:
    """What an approver list means today."""
    entries: list[str]
    unknown_users: list[str]
    unknown_roles: list[str]
    possible: list[str]            # usernames who can approve, sorted
    not_counted: dict[str, str]    # listed username -> why it cannot approve


def resolve(entries: Iterable[str] | None) -> Approvers:
    """Look an approver list up (one query). An empty list stands for the default approvers."""
    listed = [e.strip() for e in (entries or []) if isinstance(e, str) and e.strip()] or default_approvers()
    names = {e for e in listed if not e.startswith("role:")}
    roles = {e[5:] for e in listed if e.startswith("role:")}
    unknown_roles = sorted(f"role:{r}" for r in roles if r not in ROLES)
    rows = db.session.execute(
        select(User.username, User.role, User.active)
        .where(or_(User.username.in_(names or [""]), User.role.in_((roles & set(ROLES)) or [""])))
    ).all() if names or roles else []
    found = {r.username for r in rows}
    possible, not_counted = set(), {}
    for r in rows:
        if not (r.username in names or r.role in roles):
            continue
        if not r.active:
            if r.username in names:
                not_counted[r.username] = "deactivated"
        elif ROLE_RANK.get(r.role, -1) < _DECIDER_RANK:
            if r.username in names:
                not_counted[r.username] = f"a {r.role}: cannot approve"
        else:
            possible.add(r.username)
    return Approvers(listed, sorted(names - found), unknown_roles, sorted(possible), not_counted)


def _quorum_message(n: int, a: Approvers) -> str:
    who = ", ".join(a.possible) if a.possible else "nobody"
    text = (f"required_approvals ({n}) is more than the {len(a.possible)} "
            f"{'person' if len(a.possible) == 1 else 'people'} who can approve ({who}).")
    if a.not_counted:
        text += " Not counted: " + ", ".join(f"{u} ({why})" for u, why in sorted(a.not_counted.items())) + "."
    roles = [e for e in a.entries if e.startswith("role:") and e not in a.unknown_roles]
    if roles and not a.possible:
        text += f" No active user holds {' or '.join(roles)}."
    return text


def list_errors(users: Any, required: Any, users_key: str, required_key: str) -> dict[str, str]:
    """Field errors of an approver list and its quorum ({} when both are fine, or when the values
    are malformed: the shape checks of the caller report those)."""
    if users is None:
        users = []
    if not isinstance(users, list) or not all(isinstance(u, str) and u.strip() for u in users):
        return {}
    if isinstance(required, bool) or not isinstance(required, int) or required < 1:
        return {}
    a = resolve(users)
    errors: dict[str, str] = {}
    problems = []
    if a.unknown_users:
        problems.append(f"no user named {', '.join(repr(u) for u in a.unknown_users)}")
    if a.unknown_roles:
        problems.append(f"unknown role {', '.join(a.unknown_roles)} (roles: {', '.join(ROLES)})")
    if problems:
        errors[users_key] = "Unknown approver: " + "; ".join(problems) + "."
    if required > len(a.possible):
        errors[required_key] = _quorum_message(required, a)
    return errors


def step_errors(step: dict, prefix: str) -> dict[str, str]:
    """The approver errors of one step of a definition (its ``approval`` mapping or ``True``;
    a step of type ``approval`` is gated even without one)."""
    approval = step.get("approval")
    gated = approval not in (None, False) or (step.get("type") or step.get("step_type")) == "approval"
    if not gated:
        return {}
    cfg = approval if isinstance(approval, dict) else {}
    if approval not in (None, True, False) and not isinstance(approval, dict):
        return {}
    return list_errors(cfg.get("users", []), cfg.get("required_approvals", 1),
                       f"{prefix}.users", f"{prefix}.required_approvals")


# ---------------------------------------------------------------- a user leaving


def _without(a: Approvers, username: str) -> int:
    return len([u for u in a.possible if u != username])


def gates_relying_on(username: str) -> list[str]:
    """Gates that could no longer reach their quorum without `username` (saved definitions and
    pending requests), each as a sentence naming the pipeline and the step."""
    out: list[str] = []
    gated = db.session.execute(
        select(Pipeline.name, PipelineStep.name, PipelineStep.approval_users, PipelineStep.approval_config)
        .join(Pipeline, Pipeline.id == PipelineStep.pipeline_id)
        .where(or_(PipelineStep.approval_required.is_(True), PipelineStep.step_type == "approval"))
        .order_by(Pipeline.name, PipelineStep.order, PipelineStep.id)
    ).all()
    for pipeline, step, users, cfg in gated:
        need = int((cfg or {}).get("required_approvals") or 1)
        a = resolve(users)
        if username in a.possible and _without(a, username) < need:
            left = _without(a, username)
            out.append(f"pipeline '{pipeline}', step '{step}': needs {need} approval{'s' if need > 1 else ''}, "
                       f"{left} other approver{'' if left == 1 else 's'} left")
    pending = db.session.execute(
        select(ApprovalRequest).where(ApprovalRequest.status == "pending").order_by(ApprovalRequest.id)
    ).scalars().all()
    for req in pending:
        decided = {d.username for d in req.decisions}
        if username in decided:
            continue
        need = req.required_approvals - sum(1 for d in req.decisions if d.decision == "approve")
        a = resolve(req.approvers)
        from .approvals import self_approval_allowed

        others = [u for u in a.possible if u not in decided and u != username
                  and (u != req.requester_username or self_approval_allowed(req))]
        if username in a.possible and len(others) < need:
            name = req.pipeline.name if req.pipeline else f"pipeline #{req.pipeline_id}"
            out.append(f"pending approval #{req.id} (pipeline '{name}', step '{req.step_name}'): "
                       f"{need} more approval{'s' if need > 1 else ''} needed, {len(others)} other approver"
                       f"{'' if len(others) == 1 else 's'} left")
    return out
