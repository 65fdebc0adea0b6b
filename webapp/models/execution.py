from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import enum_check, utcnow

EXECUTION_STATES = ("pending", "running", "waiting_approval", "success", "failed", "cancelled")
STEP_STATES = (
    "pending", "queued", "running", "waiting_approval", "retry_scheduled",
    "success", "failed", "skipped", "cancelled", "timed_out",
)
TRIGGER_TYPES = ("manual", "api", "webhook", "schedule", "resume", "cli")


class WorkflowExecution(db.Model):
    __tablename__ = "workflow_executions"
    # AUTOINCREMENT: SQLite would give a deleted execution's id to the next one (migration 0004)
    __table_args__ = (enum_check("status", EXECUTION_STATES), enum_check("trigger_type", TRIGGER_TYPES),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    execution_id: Mapped[str] = mapped_column(String(40), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    trigger_type: Mapped[str] = mapped_column(String(16), default="manual")
    trigger_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    context_variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # names of context variables whose values are masked in logs
    secret_variables: Mapped[list[str]] = mapped_column(JSON, default=list)
    # their values, one Fernet token (context_variables holds a placeholder): services/secrets_store.py
    secret_values: Mapped[str | None] = mapped_column(Text, nullable=True)
    step_results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    current_step: Mapped[str | None] = mapped_column(String(120), nullable=True)
    failed_steps: Mapped[list[str]] = mapped_column(JSON, default=list)
    pending_approvals: Mapped[list[int]] = mapped_column(JSON, default=list)
    recovery_point: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    pipeline_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pipeline_version: Mapped[int] = mapped_column(Integer, default=1)
    parent_execution_id: Mapped[int | None] = mapped_column(
        ForeignKey("workflow_executions.id", ondelete="SET NULL"), nullable=True
    )
    triggered_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    pipeline = relationship("Pipeline")
    triggered_by = relationship("User")
    parent_execution = relationship("WorkflowExecution", remote_side=[id])
    attempts: Mapped[list["StepExecutionHistory"]] = relationship(
        back_populates="execution", cascade="all, delete-orphan", passive_deletes=True,
        order_by="StepExecutionHistory.id",
    )

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    def __repr__(self) -> str:
        return f"<WorkflowExecution {self.execution_id} {self.status}>"


class StepExecutionHistory(db.Model):
    """One row per attempt of a step (a retry is a new row)."""
    __tablename__ = "step_execution_history"
    __table_args__ = (
        enum_check("status", STEP_STATES),
        UniqueConstraint("execution_id", "step_id", "retry_count"),
        # "the running (or queued) steps of this execution", read as each step finishes
        Index("ix_step_execution_history_execution_status", "execution_id", "status"),
        {"sqlite_autoincrement": True},   # attempt ids name Redis cancel flags: never reused
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("workflow_executions.id", ondelete="CASCADE"), index=True)
    # The step id of the frozen snapshot; no foreign key, so history outlives edits of the pipeline.
    step_id: Mapped[int] = mapped_column(Integer)
    step_name: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    logs: Mapped[str] = mapped_column(Text, default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    output_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_kind: Mapped[str | None] = mapped_column(String(20), nullable=True)
    skip_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    upstream_failed: Mapped[bool] = mapped_column(Boolean, default=False)
    bypassed: Mapped[bool] = mapped_column(Boolean, default=False)
    # the pipeline version whose definition this attempt ran (a resumed execution keeps its
    # parent's attempts, which ran an older one); NULL: rows from before it was recorded
    definition_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    rq_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker_name: Mapped[str | None] = mapped_column(String(120), nullable=True)

    execution: Mapped[WorkflowExecution] = relationship(back_populates="attempts")

    def __repr__(self) -> str:
        return f"<Attempt {self.step_name}#{self.retry_count} {self.status}>"
