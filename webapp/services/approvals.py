"""Approval requests and decisions (DESIGN §3 Approvals)."""
from __future__ import annotations

from sqlalchemy import func, select

from ..extensions import db
from ..models import ApprovalDecision, ApprovalRequest, User


def can_decide(request: ApprovalRequest, user: User) -> bool:
    """Listed approvers (by username or role:NAME) may decide; admins always may."""
    if not user.is_authenticated or not user.active:
        return False
    if user.role == "admin":
        return True
    for entry in request.approvers or []:
        if entry == user.username or (entry.startswith("role:") and entry[5:] == user.role):
            return True
    return False


def inbox_count(user: User) -> int:
    """Pending requests this user may still decide (for the navigation badge)."""
    pending = db.session.execute(select(ApprovalRequest).where(ApprovalRequest.status == "pending")).scalars().all()
    if not pending:
        return 0
    decided = set(db.session.execute(
        select(ApprovalDecision.request_id).where(ApprovalDecision.username == user.username)
    ).scalars())
    return sum(1 for r in pending if r.id not in decided and can_decide(r, user) and r.requester_username != user.username)
