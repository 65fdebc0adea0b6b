from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import enum_check, utcnow

STEP_TYPES = ("shell", "http", "wait", "approval", "notification")
SYNC_POLICIES = ("wait_all", "wait_any", "fail_fast")

# Dependencies are rows with foreign keys on both ends, so no dangling reference can exist:
# deleting a step deletes its edges.
step_dependencies = Table(
    "pipeline_step_dependencies",
    db.metadata,
    Column("step_id", Integer, ForeignKey("pipeline_steps.id", ondelete="CASCADE"), primary_key=True),
    Column("depends_on_id", Integer, ForeignKey("pipeline_steps.id", ondelete="CASCADE"), primary_key=True),
)

# Named maintainers of a pipeline: beside its owner, the only non-admins who may edit it
# (services/pipeline_access.py). They may not change its approval rules.
pipeline_maintainers = Table(
    "pipeline_maintainers",
    db.metadata,
    Column("pipeline_id", Integer, ForeignKey("pipelines.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)


class Pipeline(db.Model):
    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    notification_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    allow_self_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    # Username of whoever last changed the approval rules (None: the system, e.g. seed-demo). Frozen
    # into each execution: that person never self-approves a run on the strength of their own rule.
    approval_rules_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    owner = relationship("User")
    maintainers = relationship("User", secondary=pipeline_maintainers, order_by="User.username")
    steps: Mapped[list["PipelineStep"]] = relationship(
        back_populates="pipeline", cascade="all, delete-orphan", order_by="(PipelineStep.order, PipelineStep.id)"
    )
    groups: Mapped[list["ParallelGroup"]] = relationship(
        back_populates="pipeline", cascade="all, delete-orphan", order_by="ParallelGroup.id"
    )
    mappings: Mapped[list["PipelineToolMapping"]] = relationship(back_populates="pipeline", cascade="all, delete-orphan")

    def __repr__(self) -> str:
        return f"<Pipeline {self.name} v{self.version}>"


class ParallelGroup(db.Model):
    __tablename__ = "parallel_groups"
    __table_args__ = (enum_check("sync_policy", SYNC_POLICIES), UniqueConstraint("pipeline_id", "name"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    sync_policy: Mapped[str] = mapped_column(String(16), default="wait_all")
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)

    pipeline: Mapped[Pipeline] = relationship(back_populates="groups")


class PipelineStep(db.Model):
    __tablename__ = "pipeline_steps"
    __table_args__ = (UniqueConstraint("pipeline_id", "name"), enum_check("step_type", STEP_TYPES))

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    order: Mapped[int] = mapped_column(Integer, default=0)
    step_type: Mapped[str] = mapped_column(String(16), default="shell")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # False: dependencies were never set, so the stage rule applies (DESIGN §3).
    explicit_dependencies: Mapped[bool] = mapped_column(Boolean, default=False)
    parallel_group: Mapped[str | None] = mapped_column(
        ForeignKey("parallel_groups.id", ondelete="SET NULL"), nullable=True, index=True
    )
    conditions: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    approval_required: Mapped[bool] = mapped_column(Boolean, default=False)
    approval_users: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # {required_approvals, timeout_hours, auto_approve_on_timeout, message, reminder_hours}
    approval_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    approval_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    retry_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    notification_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    continue_on_failure: Mapped[bool] = mapped_column(Boolean, default=False)
    estimated_duration: Mapped[float] = mapped_column(Float, default=60.0)

    pipeline: Mapped[Pipeline] = relationship(back_populates="steps")
    depends_on: Mapped[list["PipelineStep"]] = relationship(
        secondary=step_dependencies,
        primaryjoin=lambda: PipelineStep.id == step_dependencies.c.step_id,
        secondaryjoin=lambda: PipelineStep.id == step_dependencies.c.depends_on_id,
        order_by=lambda: PipelineStep.id,
    )

    @property
    def dependencies(self) -> list[int] | None:
        if not self.explicit_dependencies:
            return None
        return sorted(s.id for s in self.depends_on)

    def __repr__(self) -> str:
        return f"<PipelineStep {self.name} ({self.step_type})>"


class PipelineToolMapping(db.Model):
    __tablename__ = "pipeline_tool_mappings"

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    tool_name: Mapped[str] = mapped_column(String(120))
    tool_type: Mapped[str] = mapped_column(String(40), default="jenkins")
    tool_url: Mapped[str] = mapped_column(String(500), default="")
    external_job_name: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    pipeline: Mapped[Pipeline] = relationship(back_populates="mappings")
