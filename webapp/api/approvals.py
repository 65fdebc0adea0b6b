"""Approvals endpoints (/api/v1)."""
from __future__ import annotations

from . import bp  # noqa: F401
