"""Column helpers shared by the models."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import CheckConstraint


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no zone, so every timestamp in AnsFlow is naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def enum_check(column: str, values, name: str | None = None) -> CheckConstraint:
    quoted = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({quoted})", name=name or f"{column}_valid")
