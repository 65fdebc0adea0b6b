"""Approval requests and decisions (DESIGN §3 Approvals).

Rules
- A gated step that becomes runnable gets one ApprovalRequest per attempt (open_request, called by the
  execution runtime inside its advance transaction; on_opened schedules the expiry and reminders and
  notifies the approvers after that commit).
- Listed approvers (usernames or ``role:NAME``) decide; admins always may and are recorded as such.
  The requester (who triggered the execution) cannot approve unless the pipeline allows self-approval,
  and never when they set the pipeline's approval rules themselves (the rules frozen into the run
  name who last changed them): self-approval is a permission one person gives others, not oneself.
- One decision per user. ``required_approvals`` distinct approvals approve; one rejection rejects.
- Every outcome is ONE conditional update ``... WHERE status = 'pending'``: whoever changes the row wins,
  everyone else gets a Conflict (HTTP 409) and nothing changes. Decisions lock the request row first
  (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE) so the quorum count is never stale.
- At ``expires_at``: approved when ``auto_approve_on_timeout``, else ``timed_out`` and the step fails.
- Approving while a step of the run failed needs the approver's acknowledgement (``confirm_failures``;
  refused otherwise with NeedsConfirmation, HTTP 422): the gate may still be meant to open (its rule
  is ``always``, or the failure is in a branch it does not depend on), but nobody approves it blind.
- A pending request whose execution ends failed or cancelled, or whose attempt is cancelled (cancel,
  fail_fast, a group timeout), is ``cancelled`` with the reason in ``outcome_reason``, and its
  approvers get ``approval_cancelled`` (routed where ``approval_required`` goes).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from ..database import begin_locked
from ..extensions import db
from ..models import (
    ApprovalDecision, ApprovalRequest, Pipeline, PipelineStep, StepExecutionHistory, User, WorkflowExecution,
    utcnow,
)
from . import errors, pipeline_access
from .accounts import ValidationError
from .approval_context import approval_context, failed_steps

log = logging.getLogger(__name__)

PENDING = "pending"
STATUSES = ("pending", "approved", "rejected", "timed_out", "cancelled")
ACTIONS = ("approve", "reject")
# Who may decide when a gate lists nobody.
DEFAULT_APPROVERS = ["role:approver", "role:maintainer"]
FINISHED_EXECUTION = ("success", "failed", "cancelled")
# A scheduled job may fire up to a second early (RQ scores are whole seconds).
_EARLY_MARGIN = timedelta(seconds=1)


class Conflict(errors.Conflict):
    """The request cannot take this decision any more (already decided, replayed, execution over)."""


class Forbidden(errors.Forbidden):
    """This user may not decide this request."""


class NeedsConfirmation(ValidationError):
    """An approval while steps of the run failed, without the approver saying they saw it. HTTP 422."""

    def __init__(self, failed: list[str], seen: int | None = None):
        n = len(failed)
        what = f"{n} step{'s' if n != 1 else ''} failed in this run ({', '.join(failed)})"
        if seen:
            message = f"Since you looked, more steps failed: {what}. Look again and confirm to approve."
        else:
            message = f"{what}. Confirm that you have seen it to approve."
        super().__init__(message, {"confirm_failures": message})
        self.failed = failed


class NotFound(errors.NotFound, LookupError):
    pass


# ---------------------------------------------------------------- who may decide



def _locked_request(request_id: int) -> ApprovalRequest | None:
    """The request, fresh and row-locked (PostgreSQL) inside the transaction begin_locked() opened."""
    return db.session.execute(
        select(ApprovalRequest).where(ApprovalRequest.id == request_id)
        .with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()

def _matches(entry: str, user: User) -> bool:
    return entry == user.username or (entry.startswith("role:") and entry[5:] == user.role)


def is_listed(request: ApprovalRequest, user: User) -> bool:
    return any(_matches(e, user) for e in request.approvers or [])


def can_decide(request: ApprovalRequest, user: User) -> bool:
    """Listed approvers (by username or role:NAME) may decide; admins always may.

    Viewers are read-only: listing a viewer does not let them decide.
    """
    if not getattr(user, "is_authenticated", False) or not user.active or not user.has_role("approver"):
        return False
    return user.role == "admin" or is_listed(request, user)


def _self_approval_rule(request: ApprovalRequest) -> tuple[bool, str | None]:
    """(allow_self_approval, who set the approval rules) as frozen into the run; older snapshots
    that do not say fall back to the pipeline as it is now."""
    snapshot = (request.execution.pipeline_snapshot or {}) if request.execution is not None else {}
    pipeline = request.pipeline
    allowed = snapshot["allow_self_approval"] if "allow_self_approval" in snapshot \
        else bool(pipeline and pipeline.allow_self_approval)
    rules_by = snapshot["approval_rules_by"] if "approval_rules_by" in snapshot \
        else (pipeline.approval_rules_by if pipeline else None)
    return bool(allowed), rules_by


def self_approval_allowed(request: ApprovalRequest) -> bool:
    allowed, rules_by = _self_approval_rule(request)
    return allowed and rules_by != request.requester_username


def _self_approval_refusal(request: ApprovalRequest) -> str:
    allowed, _ = _self_approval_rule(request)
    if allowed:
        return ("You started this execution and you set this pipeline's approval rules yourself, so you "
                "cannot approve your own request: another approver must.")
    return "You started this execution, so you cannot approve your own request (the pipeline does not allow self-approval)."


def check_decision(request: ApprovalRequest, user: User, action: str = "approve") -> None:
    """Raise Forbidden or Conflict when `user` may not take `action` on `request` now."""
    if not can_decide(request, user):
        raise Forbidden("You are not one of the approvers of this request.")
    if request.status != PENDING:
        raise Conflict(f"This request is already {_status_words(request.status)}.")
    if action == "approve" and user.username == request.requester_username and not self_approval_allowed(request):
        raise Forbidden(_self_approval_refusal(request))
    if any(d.username == user.username for d in request.decisions):
        raise Conflict("You already decided on this request.")
    execution = request.execution
    if execution is not None:
        if execution.status in FINISHED_EXECUTION:
            raise Conflict(f"The execution is {execution.status}; its approvals are closed.")
        if execution.cancel_requested:
            raise Conflict("The execution is being cancelled; its approvals are closed.")


def refusal(request: ApprovalRequest, user: User, action: str = "approve") -> str | None:
    """Why `user` may not take `action` on `request` now (None when they may)."""
    try:
        check_decision(request, user, action)
    except (Forbidden, Conflict) as e:
        return e.message
    return None


def _status_words(status: str) -> str:
    return {"timed_out": "timed out"}.get(status, status)


def inbox_count(user: User) -> int:
    """Pending requests this user may still decide (for the navigation badge)."""
    return len(waiting_for(user))


def waiting_for(user: User, pipeline_id: int | None = None) -> list[ApprovalRequest]:
    """Pending requests `user` can approve or reject and has not decided yet, oldest first."""
    if not getattr(user, "is_authenticated", False):
        return []
    q = (select(ApprovalRequest).where(ApprovalRequest.status == PENDING)
         .options(selectinload(ApprovalRequest.execution))
         .order_by(ApprovalRequest.created_at, ApprovalRequest.id))
    if pipeline_id:
        q = q.where(ApprovalRequest.pipeline_id == pipeline_id)
    pending = db.session.execute(q).scalars().all()
    if not pending:
        return []
    decided = set(db.session.execute(
        select(ApprovalDecision.request_id).where(
            ApprovalDecision.username == user.username,
            ApprovalDecision.request_id.in_([r.id for r in pending]),
        )
    ).scalars())
    out = []
    for r in pending:
        if r.id in decided or not can_decide(r, user):
            continue
        if r.requester_username == user.username and not self_approval_allowed(r):
            continue
        ex = r.execution
        if ex is not None and (ex.status in FINISHED_EXECUTION or ex.cancel_requested):
            continue
        out.append(r)
    return out


# ---------------------------------------------------------------- opening a request (called by the runtime)


def _approval_config(step: dict) -> dict:
    return dict(step.get("approval_config") or {})


def open_request(execution: WorkflowExecution, attempt: StepExecutionHistory, step: dict) -> ApprovalRequest:
    """Create the request for this attempt of a gated step (no commit; the caller's transaction).

    Idempotent per attempt: a second call returns the request already there.
    """
    if attempt.id is None:
        db.session.flush()
    existing = db.session.execute(
        select(ApprovalRequest).where(ApprovalRequest.attempt_id == attempt.id)
    ).scalars().first()
    if existing is not None:
        return existing
    cfg = _approval_config(step)
    approvers = [str(a).strip() for a in (step.get("approval_users") or []) if str(a).strip()] or list(DEFAULT_APPROVERS)
    timeout = cfg.get("timeout_hours")
    timeout = float(timeout) if timeout not in (None, "", 0) else None
    reminder = cfg.get("reminder_hours")
    reminder = float(reminder) if reminder not in (None, "", 0) else None
    now = utcnow()
    requester = execution.triggered_by.username if execution.triggered_by is not None else "system"
    req = ApprovalRequest(
        pipeline_id=execution.pipeline_id,
        step_id=step["id"],
        step_name=step.get("name", ""),
        execution_id=execution.id,
        attempt_id=attempt.id,
        requester_username=requester,
        approvers=approvers,
        required_approvals=max(1, int(cfg.get("required_approvals") or 1)),
        status=PENDING,
        approval_message=str(cfg.get("message") or ""),
        timeout_hours=timeout,
        auto_approve_on_timeout=bool(cfg.get("auto_approve_on_timeout", False)),
        reminder_hours=reminder,
        expires_at=now + timedelta(hours=timeout) if timeout else None,
        created_at=now,
    )
    db.session.add(req)
    _mirror_step(step["id"], PENDING, None, None)
    db.session.flush()
    return req


def on_opened(request_id: int) -> None:
    """After the opening transaction committed: schedule expiry and reminders, notify the approvers."""
    from ..queues import CONTROL, enqueue

    req = db.session.get(ApprovalRequest, request_id)
    if req is None or req.status != PENDING:
        return
    if req.expires_at is not None:
        enqueue(CONTROL, "webapp.tasks.approvals.expire", req.id, at=req.expires_at)
    _schedule_reminder(req, utcnow())
    _notify(req, "approval_required")


def _schedule_reminder(req: ApprovalRequest, now: datetime) -> None:
    from ..queues import CONTROL, enqueue

    if not req.reminder_hours:
        return
    at = now + timedelta(hours=req.reminder_hours)
    if req.expires_at is not None and at >= req.expires_at:
        return
    enqueue(CONTROL, "webapp.tasks.approvals.remind", req.id, at=at)


def _notify(req: ApprovalRequest, event: str, **more: Any) -> None:
    """Tell the approvers through the notification service. A failed delivery never blocks an approval."""
    from . import notifications

    try:
        _emit(notifications, req, event, more)
    except Exception:
        log.exception("approval %s: %s notification failed", req.id, event)


def _emit(notifications, req: ApprovalRequest, event: str, more: dict) -> None:
    execution = req.execution
    attempt = db.session.get(StepExecutionHistory, req.attempt_id) if req.attempt_id else None
    if execution is None:
        return
    notifications.emit(event, execution, attempt, extra={
        "approval_request_id": req.id,
        "step_name": req.step_name,
        "approvers": list(req.approvers or []),
        "approver_usernames": [u.username for u in resolve_approvers(req)],
        "waiting_on": [u.username for u in undecided_approvers(req)],
        "required_approvals": req.required_approvals,
        "approvals": approvals_count(req),
        "requester": req.requester_username,
        "message": req.approval_message,
        "expires_at": req.expires_at.isoformat() + "Z" if req.expires_at else None,
        "auto_approve_on_timeout": req.auto_approve_on_timeout,
        **({"context": approval_context(req)} if event in ("approval_required", "approval_reminder") else {}),
        **more,
    })


def cancel_for_execution(execution: WorkflowExecution | int, reason: str = "execution cancelled",
                         after: list | None = None, attempt_id: int | None = None) -> int:
    """Cancel the pending requests of an execution (or of one of its attempts) with `reason`, inside
    the caller's transaction. With `after` (the runtime's after-commit list) their approvers are
    told (approval_cancelled) once it committed. Returns how many requests this call cancelled."""
    execution_pk = execution if isinstance(execution, int) else execution.id
    asked = "" if isinstance(execution, int) else (execution.status_reason or "")
    if reason == "execution cancelled" and asked.startswith("cancel requested by"):  # say who asked
        reason = f"{reason} ({asked})"
    now = utcnow()
    q = select(ApprovalRequest.id, ApprovalRequest.step_id).where(
        ApprovalRequest.execution_id == execution_pk, ApprovalRequest.status == PENDING)
    if attempt_id is not None:
        q = q.where(ApprovalRequest.attempt_id == attempt_id)
    cancelled = []
    for rid, step_id in db.session.execute(q).all():
        res = db.session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == rid, ApprovalRequest.status == PENDING)
            .values(status="cancelled", decided_at=now, outcome_reason=reason)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount:
            cancelled.append(rid)
            _mirror_step(step_id, "cancelled", None, now)
    if cancelled and after is not None:
        after.append(lambda: on_cancelled(cancelled))
    return len(cancelled)


def on_cancelled(request_ids: list[int]) -> None:
    """After the cancelling commit: tell each request's approvers why it closed."""
    for rid in request_ids:
        req = db.session.get(ApprovalRequest, rid)
        if req is not None:
            db.session.refresh(req)
            _notify(req, "approval_cancelled", status="cancelled", reason=req.outcome_reason)


# ---------------------------------------------------------------- decisions


@dataclass
class Outcome:
    request: ApprovalRequest
    decision: ApprovalDecision
    changed: bool  # True when this decision settled the request


def _confirmed(confirm: bool | int | None, failed: int) -> bool:
    """True: the approver confirmed whatever failed; a number: they saw that many failures."""
    if confirm is True:
        return True
    return isinstance(confirm, int) and not isinstance(confirm, bool) and confirm >= failed


def decide(request_id: int, user: User, action: str, comment: str = "",
           confirm_failures: bool | int | None = None) -> Outcome:
    """Record `user`'s decision; settle the request when it reaches quorum or is a rejection.

    Raises NotFound, ValidationError (bad action), NeedsConfirmation (an approval while steps of
    the run failed, not confirmed), Forbidden (not an approver / own request), Conflict (not
    pending, execution over, second decision, lost a race).
    """
    action = (action or "").strip().lower()
    if action not in ACTIONS:
        raise ValidationError("Choose approve or reject.", {"action": "action must be 'approve' or 'reject'."})
    comment = (comment or "").strip()
    if len(comment) > 4000:
        raise ValidationError("The comment is too long.", {"comment": "Keep the comment under 4000 characters."})
    if not getattr(user, "is_authenticated", False) or not user.active:
        raise Forbidden("Sign in to decide.")
    username = user.username

    begin_locked()
    try:
        req = _locked_request(request_id)
        if req is None:
            raise NotFound(f"There is no approval request #{request_id}.")
        if req.execution is not None:
            db.session.refresh(req.execution)
        check_decision(req, user, action)
        if action == "approve" and req.execution_id is not None:
            failed = failed_steps(req.execution_id, req.step_id)
            if failed and not _confirmed(confirm_failures, len(failed)):
                raise NeedsConfirmation(failed, confirm_failures if isinstance(confirm_failures, int) else None)
        now = utcnow()
        decision = ApprovalDecision(
            request_id=req.id, username=username, decision=action, comment=comment,
            as_admin=user.role == "admin" and not is_listed(req, user), at=now,
        )
        db.session.add(decision)
        try:
            db.session.flush()
        except IntegrityError:
            raise Conflict("You already decided on this request.") from None

        changed = False
        if action == "reject":
            who = _who(decision)
            reason_text = f"rejected by {who}" + (f": {comment}" if comment else "")
            changed = _settle(req, "rejected", now, reason_text)
            if not changed:
                raise Conflict("This request was decided a moment ago; your rejection was not recorded.")
            _fail_attempt(req, "rejected", comment or f"Rejected by {who}.", now)
            _mirror_step(req.step_id, "rejected", username, now)
        else:
            approvers = list(db.session.execute(
                select(ApprovalDecision).where(ApprovalDecision.request_id == req.id,
                                               ApprovalDecision.decision == "approve")
                .order_by(ApprovalDecision.at, ApprovalDecision.id)
            ).scalars())
            if len(approvers) >= req.required_approvals:
                names = ", ".join(_who(d) for d in approvers)
                reason_text = f"quorum reached: {len(approvers)} of {req.required_approvals} approvals ({names})"
                changed = _settle(req, "approved", now, reason_text)
                if not changed:
                    raise Conflict("This request was decided a moment ago; your approval was not recorded.")
                _mirror_step(req.step_id, "approved", username, now)
            else:
                # Still pending: make sure it is at commit time (the row is locked, this is the guard).
                still = db.session.execute(
                    update(ApprovalRequest).where(ApprovalRequest.id == req.id, ApprovalRequest.status == PENDING)
                    .values(status=PENDING).execution_options(synchronize_session=False)
                ).rowcount
                if not still:
                    raise Conflict("This request was decided a moment ago; your approval was not recorded.")
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    db.session.refresh(req)
    if changed:
        _after_settled(req, username)
    return Outcome(request=req, decision=decision, changed=changed)


def _who(decision: ApprovalDecision) -> str:
    return decision.username + (" (as admin)" if decision.as_admin else "")


def _settle(req: ApprovalRequest, status: str, now: datetime, reason: str) -> bool:
    """The one conditional update that settles a request. True when this call won."""
    res = db.session.execute(
        update(ApprovalRequest)
        .where(ApprovalRequest.id == req.id, ApprovalRequest.status == PENDING)
        .values(status=status, decided_at=now, outcome_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def _fail_attempt(req: ApprovalRequest, kind: str, message: str, now: datetime) -> None:
    if req.attempt_id is None:
        return
    db.session.execute(
        update(StepExecutionHistory)
        .where(StepExecutionHistory.id == req.attempt_id, StepExecutionHistory.status == "waiting_approval")
        .values(status="failed", failure_kind=kind, error_message=message, finished_at=now)
        .execution_options(synchronize_session=False)
    )


def _mirror_step(step_id: int, status: str, by: str | None, at: datetime | None) -> None:
    """PipelineStep.approval_status/approved_by/approved_at mirror the latest approval (compatibility)."""
    db.session.execute(
        update(PipelineStep).where(PipelineStep.id == step_id)
        .values(approval_status=status, approved_by=by, approved_at=at)
        .execution_options(synchronize_session=False)
    )


def _after_settled(req: ApprovalRequest, by: str | None) -> None:
    """After the settling commit: continue the execution at once, then tell who listens."""
    from . import executions

    if req.execution_id is not None:
        executions.request_advance(req.execution_id)
    _notify(req, "approval_decided", status=req.status, by=by, reason=req.outcome_reason)


def respond(request_id: int, user: User, action: str, comment: str = "",
            confirm_failures: bool | int | None = None) -> Outcome:
    """The API's respond endpoint and the inbox buttons."""
    return decide(request_id, user, action, comment, confirm_failures)


def request_for_step(execution_key: str, step_id: int) -> ApprovalRequest:
    """The approval request of the latest attempt of a step (execution by its public id or pk)."""
    execution = _find_execution(execution_key)
    req = db.session.execute(
        select(ApprovalRequest).where(ApprovalRequest.execution_id == execution.id, ApprovalRequest.step_id == step_id)
        .order_by(ApprovalRequest.id.desc())
    ).scalars().first()
    if req is None:
        raise NotFound(f"Step {step_id} of execution {execution.execution_id} has no approval request.")
    return req


def approve_step(execution_key: str, step_id: int, user: User, approved: bool, comment: str = "",
                 confirm_failures: bool | int | None = None) -> Outcome:
    """POST /pipelines/executions/{execution_id}/steps/{step_id}/approve/ with {approved, comment}."""
    req = request_for_step(execution_key, step_id)
    return decide(req.id, user, "approve" if approved else "reject", comment, confirm_failures)


def _find_execution(key: Any) -> WorkflowExecution:
    execution = db.session.execute(
        select(WorkflowExecution).where(WorkflowExecution.execution_id == str(key))
    ).scalar_one_or_none()
    if execution is None and str(key).isdigit():
        execution = db.session.get(WorkflowExecution, int(key))
    if execution is None:
        raise NotFound(f"There is no execution {key}.")
    return execution


RULE_OVERRIDES = ("required_approvals", "timeout_hours", "auto_approve_on_timeout")


def create_request(data: Any, user: User) -> ApprovalRequest:
    """POST /pipelines/approval-requests/: open a request for a step that waits without one.

    Body: {execution_id, step_id, approvers?, required_approvals?, message?, timeout_hours?,
    auto_approve_on_timeout?, reminder_hours?}; missing settings come from the frozen step.
    A step whose latest attempt already has a pending request, or that is not waiting for
    approval, is a Conflict.
    """
    if not isinstance(data, dict):
        raise ValidationError("Send a JSON object.", {"body": "expected an object"})
    errors: dict[str, str] = {}
    if not data.get("execution_id"):
        errors["execution_id"] = "execution_id is required."
    step_id = data.get("step_id")
    if isinstance(step_id, bool) or not isinstance(step_id, int):
        errors["step_id"] = "step_id must be the integer id of a step."
    approvers = data.get("approvers")
    if approvers is not None and (not isinstance(approvers, list) or not all(isinstance(a, str) and a.strip() for a in approvers)):
        errors["approvers"] = "approvers must be a list of usernames or role:NAME entries."
    n = data.get("required_approvals")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        errors["required_approvals"] = "required_approvals must be a whole number >= 1."
    for key in ("timeout_hours", "reminder_hours"):
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            errors[key] = f"{key} must be a positive number of hours."
    if data.get("message") is not None and not isinstance(data.get("message"), str):
        errors["message"] = "message must be text."
    if errors:
        raise ValidationError("The approval request was not created.", errors)
    execution = _find_execution(data["execution_id"])
    # opening a gate is editing its pipeline; choosing its approvers, quorum or timeout is changing
    # its approval rules, which only the pipeline's owner or an admin may (issue 13)
    pipeline_access.require_edit(execution.pipeline, user=user)
    if approvers or any(data.get(k) is not None for k in RULE_OVERRIDES):
        pipeline_access.require_govern(execution.pipeline, "choose a gate's approvers, quorum or timeout", user=user)
    step = next((s for s in (execution.pipeline_snapshot or {}).get("steps", []) if s.get("id") == step_id), None)
    if step is None:
        raise NotFound(f"Execution {execution.execution_id} has no step {step_id}.")
    from .approver_check import list_errors

    problems = list_errors(approvers or step.get("approval_users") or [],
                           data.get("required_approvals") or _approval_config(step).get("required_approvals") or 1,
                           "approvers", "required_approvals")
    if problems:
        raise ValidationError("The approval request was not created.", problems)
    begin_locked(execution.id)  # serialised with advance: the attempt cannot move under us
    attempt = db.session.execute(
        select(StepExecutionHistory).where(StepExecutionHistory.execution_id == execution.id,
                                           StepExecutionHistory.step_id == step_id)
        .order_by(StepExecutionHistory.retry_count.desc(), StepExecutionHistory.id.desc())
    ).scalars().first()
    if attempt is None or attempt.status != "waiting_approval":
        state = attempt.status if attempt else "not started"
        db.session.rollback()
        raise Conflict(f"Step '{step['name']}' is {state}, not waiting for approval.")
    existing = db.session.execute(
        select(ApprovalRequest).where(ApprovalRequest.attempt_id == attempt.id)
    ).scalars().first()
    if existing is not None:
        db.session.rollback()
        raise Conflict(f"Step '{step['name']}' already has an approval request (#{existing.id}, {existing.status}).")
    cfg = _approval_config(step)
    for key in ("required_approvals", "timeout_hours", "auto_approve_on_timeout", "reminder_hours", "message"):
        if data.get(key) is not None:
            cfg[key] = data[key]
    frozen = {**step, "approval_config": cfg}
    if approvers:
        frozen["approval_users"] = approvers
    try:
        req = open_request(execution, attempt, frozen)
        req.requester_username = user.username
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    on_opened(req.id)
    return req


# ---------------------------------------------------------------- timeouts, reminders, sweep


def expire(request_id: int, now: datetime | None = None) -> str | None:
    """Settle a request whose time is up. Returns the new status, or None when nothing changed."""
    now = now or utcnow()
    begin_locked()
    try:
        req = _locked_request(request_id)
        if req is None or req.status != PENDING or req.expires_at is None:
            db.session.commit()
            return None
        if req.expires_at > now:
            at = req.expires_at + _EARLY_MARGIN
            db.session.commit()
            from ..queues import CONTROL, enqueue
            enqueue(CONTROL, "webapp.tasks.approvals.expire", request_id, at=at)
            return None
        hours = format_hours(req.timeout_hours)
        got = approvals_count(req)
        if req.auto_approve_on_timeout:
            status = "approved"
            reason = f"auto-approved on timeout after {hours} ({got} of {req.required_approvals} approvals given)"
        else:
            status = "timed_out"
            reason = f"timed out after {hours} with {got} of {req.required_approvals} approvals"
        if not _settle(req, status, now, reason):
            db.session.rollback()
            return None
        if status == "approved":
            _mirror_step(req.step_id, "approved", "system", now)
        else:
            _fail_attempt(req, "approval_timeout", f"Approval {reason}.", now)
            _mirror_step(req.step_id, "timed_out", None, now)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    db.session.refresh(req)
    _after_settled(req, "system")
    return status


def format_hours(h: float | None) -> str:
    """24 -> '24h', 1.5 -> '1h 30m', 0.001 -> '4s'."""
    if not h:
        return "no timeout"
    if h >= 1 and float(h).is_integer():
        return f"{int(h)}h"
    seconds = round(h * 3600)
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m" if seconds >= 3600 else f"{seconds // 60}m"


def remind(request_id: int, now: datetime | None = None) -> bool:
    """Remind the approvers who have not decided (at most once per reminder period). True when sent."""
    now = now or utcnow()
    req = db.session.get(ApprovalRequest, request_id)
    if req is None or req.status != PENDING or not req.reminder_hours:
        return False
    period = timedelta(hours=req.reminder_hours)
    last = req.last_reminded_at
    if (last or req.created_at) + period > now + _EARLY_MARGIN:
        return False
    guard = ApprovalRequest.last_reminded_at.is_(None) if last is None else ApprovalRequest.last_reminded_at == last
    res = db.session.execute(
        update(ApprovalRequest).where(ApprovalRequest.id == req.id, ApprovalRequest.status == PENDING, guard)
        .values(last_reminded_at=now).execution_options(synchronize_session=False)
    )
    db.session.commit()
    if res.rowcount != 1:
        return False
    db.session.refresh(req)
    _notify(req, "approval_reminder", reminder=True)
    _schedule_reminder(req, now)
    return True


def sweep(now: datetime | None = None) -> dict[str, int]:
    """Catch what the scheduler missed (downtime): expire overdue requests, send overdue reminders."""
    now = now or utcnow()
    overdue = db.session.execute(
        select(ApprovalRequest.id).where(ApprovalRequest.status == PENDING, ApprovalRequest.expires_at.is_not(None),
                                         ApprovalRequest.expires_at <= now)
    ).scalars().all()
    db.session.commit()
    expired = sum(1 for rid in overdue if expire(rid, now) is not None)
    due = db.session.execute(
        select(ApprovalRequest).where(ApprovalRequest.status == PENDING, ApprovalRequest.reminder_hours.is_not(None))
    ).scalars().all()
    due_ids = [r.id for r in due
               if (r.last_reminded_at or r.created_at) + timedelta(hours=r.reminder_hours) <= now]
    db.session.commit()
    reminded = sum(1 for rid in due_ids if remind(rid, now))
    return {"expired": expired, "reminded": reminded}


# ---------------------------------------------------------------- reading


def get_request(request_id: int) -> ApprovalRequest:
    req = db.session.get(ApprovalRequest, request_id)
    if req is None:
        raise NotFound(f"There is no approval request #{request_id}.")
    return req


def requests_for_execution(execution_pk: int) -> list[ApprovalRequest]:
    return list(db.session.execute(
        select(ApprovalRequest).where(ApprovalRequest.execution_id == execution_pk).order_by(ApprovalRequest.id)
    ).scalars())


def approvals_count(req: ApprovalRequest) -> int:
    return sum(1 for d in req.decisions if d.decision == "approve")


def resolve_approvers(req: ApprovalRequest) -> list[User]:
    """The active users the request asks (listed usernames and members of listed roles)."""
    names = [a for a in req.approvers or [] if not a.startswith("role:")]
    roles = [a[5:] for a in req.approvers or [] if a.startswith("role:")]
    if not names and not roles:
        return []
    q = select(User).where(User.active.is_(True), or_(User.username.in_(names or [""]), User.role.in_(roles or [""])))
    return list(db.session.execute(q.order_by(User.username)).scalars())


def undecided_approvers(req: ApprovalRequest) -> list[User]:
    decided = {d.username for d in req.decisions}
    return [u for u in resolve_approvers(req)
            if u.username not in decided and (u.username != req.requester_username or self_approval_allowed(req))]


def time_left(req: ApprovalRequest, now: datetime | None = None) -> timedelta | None:
    if req.expires_at is None or req.status != PENDING:
        return None
    return max(req.expires_at - (now or utcnow()), timedelta(0))


def list_requests(*, user: User | None = None, status: str | None = None, pipeline: Any = None,
                  execution: Any = None, step_id: int | None = None, mine: bool = False,
                  requested_by: str | None = None, limit: int = 100, offset: int = 0) -> list[ApprovalRequest]:
    """Requests filtered by status, pipeline (id or name), execution (public id), step; newest first.

    mine=True: the pending requests `user` can decide now (the "Waiting for me" list).
    """
    if status is not None and status not in STATUSES:
        raise ValidationError("Unknown status filter.", {"status": f"status must be one of: {', '.join(STATUSES)}."})
    pipeline_id = resolve_pipeline_filter(pipeline)
    if mine:
        found = waiting_for(user, pipeline_id) if user is not None else []
        if status and status != PENDING:
            found = []
        if execution is not None:
            found = [r for r in found if r.execution is not None and r.execution.execution_id == str(execution)]
        if step_id is not None:
            found = [r for r in found if r.step_id == step_id]
        return found[offset:offset + limit]
    q = select(ApprovalRequest)
    if status:
        q = q.where(ApprovalRequest.status == status)
    if pipeline_id:
        q = q.where(ApprovalRequest.pipeline_id == pipeline_id)
    if execution is not None:
        q = q.join(WorkflowExecution, WorkflowExecution.id == ApprovalRequest.execution_id).where(
            WorkflowExecution.execution_id == str(execution))
    if step_id is not None:
        q = q.where(ApprovalRequest.step_id == step_id)
    if requested_by:
        q = q.where(ApprovalRequest.requester_username == requested_by)
    q = q.order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.id.desc()).limit(limit).offset(offset)
    return list(db.session.execute(q).scalars())


def history(*, status: str | None = None, pipeline: Any = None, limit: int = 100) -> list[ApprovalRequest]:
    """Settled requests, most recently decided first."""
    if status is not None and status not in STATUSES:
        raise ValidationError("Unknown status filter.", {"status": f"status must be one of: {', '.join(STATUSES)}."})
    q = select(ApprovalRequest).where(ApprovalRequest.status != PENDING)
    if status:
        q = q.where(ApprovalRequest.status == status)
    pipeline_id = resolve_pipeline_filter(pipeline)
    if pipeline_id:
        q = q.where(ApprovalRequest.pipeline_id == pipeline_id)
    q = q.order_by(func.coalesce(ApprovalRequest.decided_at, ApprovalRequest.created_at).desc(), ApprovalRequest.id.desc())
    return list(db.session.execute(q.limit(limit)).scalars())


def resolve_pipeline_filter(pipeline: Any) -> int | None:
    if pipeline in (None, ""):
        return None
    if isinstance(pipeline, int) or str(pipeline).isdigit():
        return int(pipeline)
    found = db.session.execute(select(Pipeline.id).where(Pipeline.name == str(pipeline))).scalar_one_or_none()
    return found if found is not None else -1


def pipelines_with_requests() -> list[Pipeline]:
    ids = select(ApprovalRequest.pipeline_id).distinct()
    return list(db.session.execute(select(Pipeline).where(Pipeline.id.in_(ids)).order_by(Pipeline.name)).scalars())


def to_dict(req: ApprovalRequest, user: User | None = None) -> dict[str, Any]:
    """The API shape of a request, with its whole audit."""
    ex = req.execution
    left = time_left(req)
    out: dict[str, Any] = {
        "id": req.id,
        "pipeline": {"id": req.pipeline_id, "name": req.pipeline.name if req.pipeline else None},
        "step": {"id": req.step_id, "name": req.step_name},
        "execution_id": ex.execution_id if ex is not None else None,
        "attempt_id": req.attempt_id,
        "requester": req.requester_username,
        "approvers": list(req.approvers or []),
        "asked": [u.username for u in resolve_approvers(req)],
        "required_approvals": req.required_approvals,
        "approvals": approvals_count(req),
        "status": req.status,
        "message": req.approval_message,
        "timeout_hours": req.timeout_hours,
        "auto_approve_on_timeout": req.auto_approve_on_timeout,
        "reminder_hours": req.reminder_hours,
        "last_reminded_at": _iso(req.last_reminded_at),
        "created_at": _iso(req.created_at),
        "expires_at": _iso(req.expires_at),
        "seconds_left": int(left.total_seconds()) if left is not None else None,
        "decided_at": _iso(req.decided_at),
        "outcome_reason": req.outcome_reason,
        "context": approval_context(req),
        "decisions": [
            {"username": d.username, "decision": d.decision, "comment": d.comment, "as_admin": d.as_admin, "at": _iso(d.at)}
            for d in req.decisions
        ],
    }
    if user is not None:
        out["can_approve"] = refusal(req, user, "approve") is None
        out["can_reject"] = refusal(req, user, "reject") is None
    return out


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() + "Z" if dt else None
