"""Duties per pipeline (issue 13): who may edit a pipeline, and who may change its approval rules.

- Admins may do everything.
- A pipeline's owner and its named maintainers may edit it, as long as their global role is
  maintainer (or admin): a named maintainer demoted to viewer edits nothing.
- Only admins and the owner may change its approval rules (see `approval_rules`), its named
  maintainers and its owner, or delete it.
- A pipeline without an owner is edited by admins only, until one assigns an owner.

Every change through services.pipelines is checked against whoever is signed in on the current
request, so no view (nor one added later) can forget to pass the actor; outside a request (the
CLI, seed-demo, workers) the actor is the system, which may do anything and is audited as such.
"""
from __future__ import annotations

from typing import Any

from flask import has_request_context
from flask_login import current_user

from ..extensions import db
from ..models import Pipeline, PipelineAuditEntry, User
from .accounts import ValidationError

SYSTEM = "system"
RULES_MESSAGE = ("Only the pipeline's owner or an admin may change its approval rules (self-approval, "
                 "approvers, required approvals, timeouts that auto-approve, gates added or removed).")


class Forbidden(ValidationError):
    """The signed-in user may not make this change. HTTP 403; nothing was saved."""
    status = 403


def acting_user() -> Any:
    """The user the current request acts for; None outside a request (the system)."""
    if not has_request_context():
        return None
    return current_user  # an anonymous user here may do nothing


def _signed_in(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False) and user.active)


def is_admin(user: Any) -> bool:
    return _signed_in(user) and user.role == "admin"


def is_owner(user: Any, pipeline: Pipeline) -> bool:
    return _signed_in(user) and pipeline.owner_id is not None and pipeline.owner_id == user.id


def is_named_maintainer(user: Any, pipeline: Pipeline) -> bool:
    return _signed_in(user) and any(m.id == user.id for m in pipeline.maintainers)


def can_create(user: Any) -> bool:
    return _signed_in(user) and user.has_role("maintainer")


def can_edit(user: Any, pipeline: Pipeline) -> bool:
    if is_admin(user):
        return True
    return can_create(user) and (is_owner(user, pipeline) or is_named_maintainer(user, pipeline))


def can_govern(user: Any, pipeline: Pipeline) -> bool:
    """Approval rules, maintainers, owner, deletion."""
    return is_admin(user) or (can_create(user) and is_owner(user, pipeline))


def editable_ids(user: Any, pipelines: list[Pipeline]) -> set[int]:
    return {p.id for p in pipelines if can_edit(user, p)}


def _refuse_edit(pipeline: Pipeline) -> Forbidden:
    if pipeline.owner_id is None:
        return Forbidden(f"Pipeline '{pipeline.name}' has no owner: only an admin may change it until one is assigned.")
    return Forbidden(f"You may not edit pipeline '{pipeline.name}': only its owner, its named maintainers "
                     "and admins may.")


def require_create(user: Any = None) -> None:
    user = acting_user() if user is None else user
    if user is not None and not can_create(user):
        raise Forbidden("Creating pipelines needs the maintainer role.")


def require_edit(pipeline: Pipeline, user: Any = None) -> None:
    user = acting_user() if user is None else user
    if user is not None and not can_edit(user, pipeline):
        raise _refuse_edit(pipeline)


def require_govern(pipeline: Pipeline, what: str, user: Any = None) -> None:
    user = acting_user() if user is None else user
    if user is not None and not can_govern(user, pipeline):
        raise Forbidden(f"Only the pipeline's owner or an admin may {what}.")


# --------------------------------------------------------------------------- approval rules


def _gate(step: dict) -> dict | None:
    approval = step.get("approval")
    step_type = step.get("type") or step.get("step_type") or "shell"
    if approval in (None, False) and step_type != "approval":
        return None
    cfg = approval if isinstance(approval, dict) else {}
    return {"users": sorted(cfg.get("users") or []), "required_approvals": cfg.get("required_approvals", 1),
            "timeout_hours": cfg.get("timeout_hours"),
            "auto_approve_on_timeout": bool(cfg.get("auto_approve_on_timeout", False))}


def approval_rules(definition: dict) -> dict:
    """The approval rules of a definition (names, not ids): what only admins and owners change.

    A message or a reminder is not a rule; removing a gated step, or its gate, is."""
    gates = {}
    for s in definition.get("steps") or []:
        gate = _gate(s) if isinstance(s, dict) else None
        if gate is not None:
            gates[s["name"]] = gate
    return {"allow_self_approval": bool(definition.get("allow_self_approval", False)), "gates": gates}


def renamed(rules: dict, renames: dict[str, str] | None) -> dict:
    """Rules keyed by the steps' new names (`renames` maps a new name to the old one)."""
    if not renames:
        return rules
    new_of = {old: new for new, old in renames.items()}
    return {**rules, "gates": {new_of.get(name, name): g for name, g in rules["gates"].items()}}


def rule_fields(before: dict, after: dict, definition: dict) -> dict[str, str]:
    """Where two rule sets differ, as definition fields (for the form or the JSON error)."""
    fields: dict[str, str] = {}
    if before["allow_self_approval"] != after["allow_self_approval"]:
        fields["allow_self_approval"] = RULES_MESSAGE
    index = {s.get("name"): i for i, s in enumerate(definition.get("steps") or []) if isinstance(s, dict)}
    for name in sorted(set(before["gates"]) | set(after["gates"])):
        if before["gates"].get(name) != after["gates"].get(name):
            key = f"steps[{index[name]}].approval" if name in index else "steps"
            fields.setdefault(key, RULES_MESSAGE)
    return fields


def require_rules_unchanged(pipeline: Pipeline, before: dict, after: dict, definition: dict,
                            user: Any = None) -> None:
    user = acting_user() if user is None else user
    if before == after or user is None or can_govern(user, pipeline):
        return
    raise Forbidden("Nothing was saved: " + RULES_MESSAGE, rule_fields(before, after, definition))


# --------------------------------------------------------------------------- audit


def actor_name(user: Any = None) -> str | None:
    """The username recorded for a change by `user` (default: the acting user); None: the system."""
    user = acting_user() if user is None else user
    return user.username if _signed_in(user) else None


def audit(pipeline: Pipeline, action: str, summary: str = "", before: dict | None = None,
          after: dict | None = None, user: Any = None, version: int | None = None) -> PipelineAuditEntry:
    """Add an entry to the session: the caller's commit writes it with the change, or neither."""
    user = acting_user() if user is None else user
    entry = PipelineAuditEntry(
        pipeline_id=pipeline.id, pipeline_name=pipeline.name, action=action,
        version=pipeline.version if version is None else version,
        actor_id=user.id if _signed_in(user) else None, actor=actor_name(user) or SYSTEM,
        summary=summary, before=before, after=after)
    db.session.add(entry)
    return entry


def audit_log(pipeline: Pipeline, limit: int | None = None) -> list[PipelineAuditEntry]:
    q = (db.select(PipelineAuditEntry).where(PipelineAuditEntry.pipeline_id == pipeline.id)
         .order_by(PipelineAuditEntry.id.desc()))
    if limit:
        q = q.limit(limit)
    return list(db.session.execute(q).scalars())


def audit_json(entry: PipelineAuditEntry) -> dict:
    return {"id": entry.id, "pipeline": entry.pipeline_id, "pipeline_name": entry.pipeline_name,
            "actor": entry.actor, "action": entry.action, "version": entry.version, "summary": entry.summary,
            "before": entry.before, "after": entry.after, "at": entry.created_at.isoformat() + "Z"}


# --------------------------------------------------------------------------- owner and maintainers


def _maintainer_candidate(username: Any, field: str) -> User:
    name = username.strip() if isinstance(username, str) else ""
    if not name:
        raise ValidationError("Nothing was saved: fix the fields below.", {field: "Enter a username."})
    user = db.session.execute(db.select(User).filter_by(username=name)).scalar_one_or_none()
    if user is None:
        raise ValidationError("Nothing was saved: fix the fields below.", {field: f"There is no user named '{name}'."})
    if not user.active:
        raise ValidationError("Nothing was saved: fix the fields below.", {field: f"'{name}' is deactivated."})
    if not user.has_role("maintainer"):
        raise ValidationError("Nothing was saved: fix the fields below.", {
            field: f"'{name}' is {'an' if user.role[0] in 'aeiou' else 'a'} {user.role}: only users with the "
                   "maintainer or admin role can maintain a pipeline."})
    return user


def _names(users: list[User]) -> list[str]:
    return sorted(u.username for u in users)


def add_maintainer(pipeline: Pipeline, username: Any) -> User:
    require_govern(pipeline, "change its maintainers")
    user = _maintainer_candidate(username, "username")
    if user.id == pipeline.owner_id:
        raise ValidationError("Nothing was saved: fix the fields below.",
                              {"username": f"'{user.username}' owns this pipeline already."})
    if any(m.id == user.id for m in pipeline.maintainers):
        raise ValidationError("Nothing was saved: fix the fields below.",
                              {"username": f"'{user.username}' is a maintainer of this pipeline already."})
    before = _names(pipeline.maintainers)
    pipeline.maintainers.append(user)
    audit(pipeline, "maintainers_changed", f"added {user.username}", {"maintainers": before},
          {"maintainers": _names(pipeline.maintainers)})
    db.session.commit()
    return user


def remove_maintainer(pipeline: Pipeline, username: str) -> None:
    require_govern(pipeline, "change its maintainers")
    user = next((m for m in pipeline.maintainers if m.username == username), None)
    if user is None:
        raise LookupError(f"'{username}' is not a maintainer of pipeline {pipeline.id}")
    before = _names(pipeline.maintainers)
    pipeline.maintainers.remove(user)
    audit(pipeline, "maintainers_changed", f"removed {user.username}", {"maintainers": before},
          {"maintainers": _names(pipeline.maintainers)})
    db.session.commit()


def set_owner(pipeline: Pipeline, username: Any) -> User:
    """Hand the pipeline to another maintainer (admins, or the owner: then they stop owning it)."""
    require_govern(pipeline, "change its owner")
    user = _maintainer_candidate(username, "owner")
    before = pipeline.owner.username if pipeline.owner else None
    if user.id == pipeline.owner_id:
        return user
    pipeline.owner = user
    if user in pipeline.maintainers:
        pipeline.maintainers.remove(user)  # the owner is more than a named maintainer
    audit(pipeline, "owner_changed", f"owner {before or 'none'} → {user.username}", {"owner": before},
          {"owner": user.username})
    db.session.commit()
    return user
