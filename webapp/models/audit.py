"""The audit log of pipeline definitions and duties (issue 13): who changed what, when."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import enum_check, utcnow

AUDIT_ACTIONS = ("pipeline_created", "pipeline_edited", "approval_rules_changed", "maintainers_changed",
                 "owner_changed", "pipeline_deleted")


class PipelineAuditEntry(db.Model):
    """One change, written in the same transaction as the change itself.

    The entry outlives its pipeline (pipeline_id is set NULL, the name is kept) and its actor (the
    username is kept), since an audit that forgets whoever was deleted audits nothing."""
    __tablename__ = "pipeline_audit"
    __table_args__ = (enum_check("action", AUDIT_ACTIONS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipelines.id", ondelete="SET NULL"),
                                                    nullable=True, index=True)
    pipeline_name: Mapped[str] = mapped_column(String(120))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    actor: Mapped[str] = mapped_column(String(64))  # a username, or "system" (CLI, seed-demo)
    action: Mapped[str] = mapped_column(String(32))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the definition version after it
    summary: Mapped[str] = mapped_column(Text, default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<PipelineAuditEntry {self.action} {self.pipeline_name} by {self.actor}>"
