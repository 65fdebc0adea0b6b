"""What an execution's summaries say: bypassed steps, steps that never ran, groups skipped
because of an upstream failure. Lists, badges, the execution page and the API all read these,
so no summary can call a run "success" without its bypasses, or a group "failed" whose
members never ran.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from sqlalchemy import func, select

from ..extensions import db
from ..models import StepExecutionHistory as SEH

GROUP_SKIPPED = "skipped (upstream failed)"


def bypassed_counts(execution_pks: Iterable[int]) -> dict[int, int]:
    """execution pk -> how many of its steps a person bypassed (absent: none), in one query.

    A bypassed attempt is always its step's latest (bypass turns the failed latest attempt into
    a skip; a skipped step is never retried), so counting the flagged rows counts steps."""
    pks = list(set(execution_pks))
    if not pks:
        return {}
    rows = db.session.execute(select(SEH.execution_id, func.count()).where(
        SEH.execution_id.in_(pks), SEH.bypassed.is_(True)).group_by(SEH.execution_id)).all()
    return {pk: n for pk, n in rows}


def status_text(status: str, bypassed: int = 0) -> str:
    """'success · 1 bypassed': a run that went on past a person's bypass says so."""
    text = status.replace("_", " ")
    return f"{text} · {bypassed} bypassed" if bypassed else text


def latest_by_step(attempts) -> dict[int, Any]:
    """The latest attempt of each step (highest retry_count, then id), by step id."""
    latest: dict[int, Any] = {}
    for a in attempts:
        cur = latest.get(a.step_id)
        if cur is None or (a.retry_count, a.id) > (cur.retry_count, cur.id):
            latest[a.step_id] = a
    return latest


def never_ran(attempts) -> bool:
    """A step cancelled before any attempt of it started: it did not run (nothing to retry)."""
    attempts = list(attempts)
    return bool(attempts) and attempts[-1].status == "cancelled" and not any(a.started_at for a in attempts)


def step_status(status: str, attempts) -> str:
    """The status a person reads for a step: 'not_run' for one cancelled before it started,
    'upstream_failed' for one skipped because something above it failed (not by its own condition)."""
    if status == "cancelled" and never_ran(attempts):
        return "not_run"
    attempts = list(attempts)
    if status == "skipped" and attempts and attempts[-1].upstream_failed and not attempts[-1].bypassed:
        return "upstream_failed"
    return status


def group_verdict(status: str, members) -> tuple[str, str] | None:
    """(status, reason) to record for a group whose members were only skipped because a step
    they depend on failed: the engine decides it failed (its dependents must not run), but no
    member ran and failed, so it is 'skipped (upstream failed)'. None: record the engine's."""
    members = list(members)
    if status != "failed" or not members:
        return None
    if any(a.status in ("failed", "timed_out", "cancelled") for a in members):
        return None
    skipped = [a.step_name for a in members if a.status == "skipped" and a.upstream_failed]
    if not skipped:
        return None
    return "skipped", f"{GROUP_SKIPPED}: {', '.join(skipped)} did not run because a step they depend on failed"


_GROUP_ENTRY = re.compile(r"[^,()]+?\s\([^)]*\)")


def truthful_reason(reason: str, skipped_groups: list[str]) -> str:
    """The engine's end-of-run reason with the groups in `skipped_groups` (names) moved from
    'failed groups: canary (failed)' to 'skipped (upstream failed): canary'."""
    if not reason or not skipped_groups:
        return reason
    parts, moved = [], []
    for part in reason.split("; "):
        if part.startswith("failed groups: "):
            kept = []
            for entry in _GROUP_ENTRY.findall(part[len("failed groups: "):]):
                entry = entry.strip()
                name = next((g for g in skipped_groups if entry == f"{g} (failed)"), None)
                (moved if name is not None else kept).append(name or entry)
            if kept:
                parts.append("failed groups: " + ", ".join(kept))
        else:
            parts.append(part)
    if moved:
        parts.append(f"{GROUP_SKIPPED}: " + ", ".join(moved))
    return "; ".join(parts)


def bypassed_count_of(execution_pk_column):
    """bypassed_counts as a correlated scalar subquery, for a list query that must stay one query."""
    return (select(func.count()).select_from(SEH)
            .where(SEH.execution_id == execution_pk_column, SEH.bypassed.is_(True))
            .scalar_subquery())
