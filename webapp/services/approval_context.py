"""What an approver needs to see before deciding: one place, used by the inbox card, the approval
page, the API (`context` of a request) and the approval notification.

The run is read as it is *now* (the latest attempt of every step): who started it and when, which
definition version, the variables (secrets masked), the trigger data, every upstream step of the
gated step (failed and skipped ones first, with their reasons) and the state of the whole run.
`failed_count(execution_pk)` is the number the Approve button asks the approver to acknowledge.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from ..engine import graph
from ..extensions import db
from ..models import ApprovalRequest, StepExecutionHistory as SEH, WorkflowExecution
from ..models.snapshots import cached_pipeline_def
from . import run_summary

MASK = "••••••"
FAILED = ("failed", "timed_out")
MAX_VALUE_CHARS = 200
# Each status in the run summary, in the order people read it: what went wrong first.
_SUMMARY = (
    ("failed", ("failed", "timed_out"), "failed"),
    ("cancelled", ("cancelled",), "cancelled"),
    ("skipped", ("skipped",), "skipped"),
    ("bypassed", ("bypassed",), "bypassed"),
    ("succeeded", ("success",), "succeeded"),
    ("running", ("queued", "running", "retry_scheduled"), "running"),
    ("waiting", ("waiting_approval",), "waiting for approval"),
    ("not_started", ("pending", "not started"), "not started"),
)
_RANK = {"failed": 0, "timed_out": 0, "skipped": 1, "cancelled": 2, "bypassed": 3}


def _latest(execution_pk: int) -> dict[int, Any]:
    rows = db.session.execute(
        select(SEH.id, SEH.step_id, SEH.step_name, SEH.status, SEH.retry_count, SEH.error_message,
               SEH.exit_code, SEH.skip_reason, SEH.upstream_failed, SEH.bypassed, SEH.finished_at)
        .where(SEH.execution_id == execution_pk)
    ).all()
    return run_summary.latest_by_step(rows)


def _kind(row) -> str:
    if row is None:
        return "not started"
    if row.status == "skipped" and row.bypassed:
        return "bypassed"
    return row.status


def failed_steps(execution_pk: int, except_step: int | None = None) -> list[str]:
    """Names of the steps of this run whose latest attempt failed or timed out."""
    return sorted(r.step_name for sid, r in _latest(execution_pk).items()
                  if r.status in FAILED and sid != except_step)


def failed_count(execution_pk: int, except_step: int | None = None) -> int:
    return len(failed_steps(execution_pk, except_step))


def _reason(row) -> str:
    if row is None:
        return ""
    if row.status in FAILED or row.status == "cancelled":
        text = row.error_message or ""
        said = f"code {row.exit_code}" in text or f"exit {row.exit_code}" in text  # the runner's own words
        if row.exit_code not in (None, 0) and not said:
            text = f"exit code {row.exit_code}" + (f": {text}" if text else "")
        return text[:500]
    if row.status == "skipped":
        text = row.skip_reason or ""
        if row.upstream_failed and "upstream" not in text:
            text = "upstream failed" + (f": {text}" if text else "")
        return text[:500]
    return ""


def _label(kind: str, row) -> str:
    if kind == "skipped" and row is not None and row.upstream_failed:
        return "skipped (upstream failed)"
    return {"success": "succeeded", "timed_out": "timed out", "waiting_approval": "waiting for approval",
            "retry_scheduled": "retry scheduled"}.get(kind, kind.replace("_", " "))


def _step_entry(step: dict, row) -> dict[str, Any]:
    kind = _kind(row)
    return {"id": step["id"], "name": step["name"], "status": kind, "status_label": _label(kind, row),
            "reason": _reason(row), "attempt": (row.retry_count + 1) if row is not None else None,
            "failed": kind in FAILED}


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 1] + "…"


def _masked(items: dict, secret_names: set[str], secret_values: list[str]) -> list[dict[str, Any]]:
    from .executions import SECRET_NAME
    from .notify_net import scrub

    out = []
    for key, value in (items or {}).items():
        secret = key in secret_names or bool(SECRET_NAME.search(str(key)))
        out.append({"name": str(key), "value": MASK if secret else scrub(_shown(value), secret_values),
                    "secret": secret})
    return out


def summary_text(counts: dict[str, int]) -> str:
    """'2 failed, 1 skipped, 3 succeeded so far' (categories with a count, most worrying first)."""
    parts = [f"{counts[key]} {words}" for key, _states, words in _SUMMARY if counts.get(key)]
    return (", ".join(parts) + " so far") if parts else "nothing else has run yet"


def approval_context(req: ApprovalRequest) -> dict[str, Any]:
    """The context of a request's run (JSON-ready). Empty pieces when the execution is gone."""
    from .notifications import execution_url

    ex: WorkflowExecution | None = req.execution
    if ex is None:
        return {"available": False, "failed_count": 0, "needs_confirmation": False}
    snapshot = ex.pipeline_snapshot or {}
    steps = sorted(snapshot.get("steps") or [], key=lambda s: (s.get("order", 0), s["id"]))
    latest = _latest(ex.id)
    try:
        up_ids = graph.upstream(cached_pipeline_def(ex), req.step_id)
    except Exception:  # noqa: BLE001 - a definition the graph cannot read still shows the run
        up_ids = frozenset()
    entries = {s["id"]: _step_entry(s, latest.get(s["id"])) for s in steps}
    position = {s["id"]: i for i, s in enumerate(steps)}
    upstream = sorted((entries[sid] for sid in up_ids if sid in entries),
                      key=lambda e: (_RANK.get(e["status"], 9), position[e["id"]]))
    others = [entries[s["id"]] for s in steps if s["id"] not in up_ids and s["id"] != req.step_id]
    counts: dict[str, int] = {}
    for sid, e in entries.items():
        if sid == req.step_id:
            continue
        key = next((k for k, states, _w in _SUMMARY if e["status"] in states), "running")
        counts[key] = counts.get(key, 0) + 1
    failed = [e for e in entries.values() if e["failed"] and e["id"] != req.step_id]
    secrets = set(ex.secret_variables or [])
    from .secrets_store import secret_values_of  # sealed at rest: the other values are scrubbed of the real ones
    secret_values = secret_values_of(ex)
    n = len(failed)
    version_now = ex.pipeline.version if ex.pipeline is not None else None
    return {
        "available": True,
        "pipeline": {"id": ex.pipeline_id, "name": snapshot.get("name") or (ex.pipeline.name if ex.pipeline else ""),
                     "version": ex.pipeline_version, "current_version": version_now},
        "execution": {
            "execution_id": ex.execution_id, "status": ex.status, "trigger_type": ex.trigger_type,
            "started_by": ex.triggered_by.username if ex.triggered_by is not None else None,
            "started_by_label": ex.triggered_by.label if ex.triggered_by is not None else "system",
            "started_at": ex.started_at.isoformat() + "Z" if ex.started_at else None,
            "started_at_text": ex.started_at.strftime("%Y-%m-%d %H:%M UTC") if ex.started_at else "not started",
            "url": execution_url(ex.execution_id),
        },
        "variables": _masked(ex.context_variables or {}, secrets, secret_values),
        "trigger": _masked(ex.trigger_data or {}, set(), secret_values),
        "upstream": upstream,
        "elsewhere_failed": [e for e in others if e["failed"]],
        "run": {"counts": counts, "summary": summary_text(counts), "total_steps": len(steps)},
        "failed_steps": [e["name"] for e in failed],
        "failed_count": n,
        "needs_confirmation": n > 0,
        "warning": (f"{n} step{'s' if n != 1 else ''} failed in this run "
                    f"({', '.join(e['name'] for e in failed)}): approving lets the gated step run anyway.")
        if n else "",
    }
