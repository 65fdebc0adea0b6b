from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import enum_check, utcnow

CHANNEL_TYPES = ("email", "webhook", "slack", "dingtalk", "wecom", "feishu")
DELIVERY_STATES = ("pending", "sending", "delivered", "retrying", "failed", "refused")


class NotificationChannel(db.Model):
    """A named channel configured once; steps and pipelines refer to it by name."""
    __tablename__ = "notification_channels"
    __table_args__ = (enum_check("channel_type", CHANNEL_TYPES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    channel_type: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # holds secrets: never rendered in full
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class NotificationDelivery(db.Model):
    __tablename__ = "notification_deliveries"
    __table_args__ = (enum_check("status", DELIVERY_STATES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    execution_id: Mapped[int | None] = mapped_column(
        ForeignKey("workflow_executions.id", ondelete="CASCADE"), nullable=True, index=True
    )
    step_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    event: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(80))
    target: Mapped[str] = mapped_column(String(500), default="")  # secrets masked
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(String(300), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
