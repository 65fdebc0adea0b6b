from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import enum_check, utcnow

APPROVAL_STATES = ("pending", "approved", "rejected", "timed_out", "cancelled")
DECISIONS = ("approve", "reject")


class ApprovalRequest(db.Model):
    __tablename__ = "approval_requests"
    __table_args__ = (enum_check("status", APPROVAL_STATES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[int] = mapped_column(Integer)
    step_name: Mapped[str] = mapped_column(String(120), default="")
    execution_id: Mapped[int | None] = mapped_column(
        ForeignKey("workflow_executions.id", ondelete="CASCADE"), nullable=True, index=True
    )
    attempt_id: Mapped[int | None] = mapped_column(
        ForeignKey("step_execution_history.id", ondelete="SET NULL"), nullable=True
    )
    requester_username: Mapped[str] = mapped_column(String(64), default="")
    approvers: Mapped[list[str]] = mapped_column(JSON, default=list)  # usernames or "role:NAME"
    required_approvals: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    approval_message: Mapped[str] = mapped_column(Text, default="")
    timeout_hours: Mapped[float | None] = mapped_column(nullable=True)
    auto_approve_on_timeout: Mapped[bool] = mapped_column(Boolean, default=False)
    reminder_hours: Mapped[float | None] = mapped_column(nullable=True)
    last_reminded_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    outcome_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    pipeline = relationship("Pipeline")
    execution = relationship("WorkflowExecution")
    decisions: Mapped[list["ApprovalDecision"]] = relationship(
        back_populates="request", cascade="all, delete-orphan", order_by="ApprovalDecision.at"
    )


class ApprovalDecision(db.Model):
    __tablename__ = "approval_decisions"
    __table_args__ = (UniqueConstraint("request_id", "username"), enum_check("decision", DECISIONS))

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("approval_requests.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str] = mapped_column(Text, default="")
    as_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    request: Mapped[ApprovalRequest] = relationship(back_populates="decisions")
