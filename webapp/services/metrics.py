"""Workflow metrics for the dashboard and the API (AnsFlow's workflow-metrics).

Everything is aggregate SQL over a bounded window: the executions created in the last
`days` days, at most the `limit` most recent of them. Percentiles (median, p95) are computed
in SQL too, with window functions (row_number / count over a partition), the same way on
SQLite and PostgreSQL: the query returns at most two ranked rows per group and per
percentile, and they are interpolated linearly like PostgreSQL's percentile_cont.

Definitions
- success_rate: successful / finished executions (success + failed + cancelled), in percent;
  None when nothing finished in the window.
- duration: finished executions, started_at -> finished_at, in seconds.
- queue wait: step attempts, queued_at -> started_at, in seconds (how long work waited for a worker).
- retries: attempts beyond a step's first one (engine retries and people's "retry step"), and the
  executions that had any.
- bypassed: successful executions in which a person bypassed a failed step ("success · 1 bypassed").
- A step's outcome in an execution is its final attempt's. Counts of steps are per execution
  ("executions") unless they say attempts:
- most failing steps: executions in which the step finally failed or timed out, of the executions
  in which it reached a verdict (success, failed, timed out); failed_attempts counts its attempts.
- flaky steps: executions in which the step failed, then passed on a retry in the same execution.
- slowest steps: the median duration of the attempts of a step that ran (success, failed, timed out).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import aliased

from ..database import is_sqlite
from ..extensions import db
from ..models import Pipeline, StepExecutionHistory, WorkflowExecution, utcnow

WE, SEH = WorkflowExecution, StepExecutionHistory
TERMINAL = ("success", "failed", "cancelled")
ACTIVE = ("pending", "running", "waiting_approval")
FAILED_STEP = ("failed", "timed_out")
RAN_STEP = ("success", "failed", "timed_out")
DEFAULT_DAYS, MAX_DAYS = 30, 365
DEFAULT_LIMIT, MAX_LIMIT = 500, 5000
TOP = 5


def _seconds(later, earlier):
    """Seconds between two timestamp columns, in SQL."""
    if is_sqlite():
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


def clamp_window(days: Any = None, limit: Any = None) -> tuple[int, int]:
    """Parse and bound the window (bad or missing values fall back to the defaults)."""
    def num(value, default, hi):
        try:
            n = int(value)
        except (TypeError, ValueError):
            return default
        return max(1, min(n, hi))
    return num(days, DEFAULT_DAYS, MAX_DAYS), num(limit, DEFAULT_LIMIT, MAX_LIMIT)


def _window_ids(pipeline_id: int | None, since: datetime, limit: int):
    q = select(WE.id).where(WE.created_at >= since)
    if pipeline_id is not None:
        q = q.where(WE.pipeline_id == pipeline_id)
    return q.order_by(WE.id.desc()).limit(limit).subquery()


def percentiles(values, keys: Iterable[str] = (), pcts: Iterable[int] = (50, 95)) -> dict[tuple, dict[int, float]]:
    """{(key values...): {pct: value}} over a subquery with a `val` column and the `keys` columns,
    interpolated like percentile_cont. NULL values are ignored; no keys: one group, ()."""
    pcts, keys = tuple(pcts), tuple(keys)
    cols = [values.c[k] for k in keys]
    part = {"partition_by": cols} if cols else {}
    ranked = select(
        *cols, values.c.val,
        func.row_number().over(order_by=values.c.val, **part).label("rn"),
        func.count().over(**part).label("cnt"),
    ).where(values.c.val.isnot(None)).subquery()
    wanted = []
    for p in pcts:
        lo = ((ranked.c.cnt - 1) * p) // 100 + 1
        wanted.append(or_(ranked.c.rn == lo, ranked.c.rn == lo + 1))
    rows = db.session.execute(
        select(*[ranked.c[k] for k in keys], ranked.c.val, ranked.c.rn, ranked.c.cnt).where(or_(*wanted))).all()
    ranks: dict[tuple, dict[int, float]] = defaultdict(dict)
    counts: dict[tuple, int] = {}
    for row in rows:
        key = tuple(row[: len(keys)])
        ranks[key][row.rn] = float(row.val)
        counts[key] = row.cnt
    out: dict[tuple, dict[int, float]] = {}
    for key, got in ranks.items():
        res = {}
        for p in pcts:
            lo, frac = divmod((counts[key] - 1) * p, 100)
            a = got[lo + 1]
            b = got.get(lo + 2, a)
            res[p] = round(a + (b - a) * frac / 100, 3)
        out[key] = res
    return out


def _rate(success: int, finished: int) -> float | None:
    return round(100.0 * success / finished, 1) if finished else None


def _status_counts(ids) -> dict[str, int]:
    rows = db.session.execute(
        select(WE.status, func.count()).where(WE.id.in_(select(ids.c.id))).group_by(WE.status)).all()
    return {status: n for status, n in rows}


def _duration_stats(ids) -> dict[str, float | None]:
    dur = _seconds(WE.finished_at, WE.started_at)
    base = and_(WE.id.in_(select(ids.c.id)), WE.status.in_(TERMINAL), WE.started_at.isnot(None),
                WE.finished_at.isnot(None))
    avg, = db.session.execute(select(func.avg(dur)).where(base)).one()
    pct = percentiles(select(dur.label("val")).where(base).subquery()).get((), {})
    return {"median": pct.get(50), "p95": pct.get(95), "average": round(float(avg), 3) if avg is not None else None}


def _step_stats(ids, by_pipeline: bool) -> dict[str, Any]:
    in_window = SEH.execution_id.in_(select(ids.c.id))
    wait = _seconds(SEH.started_at, SEH.queued_at)
    avg_wait, retries, retried_execs = db.session.execute(
        select(func.avg(case((and_(SEH.queued_at.isnot(None), SEH.started_at.isnot(None)), wait))),
               func.sum(case((SEH.retry_count > 0, 1), else_=0)),
               func.count(func.distinct(case((SEH.retry_count > 0, SEH.execution_id)))))
        .where(in_window)).one()

    outcomes = _step_outcomes(in_window, by_pipeline)
    key_cols = [WE.pipeline_id.label("pipeline"), SEH.step_name.label("step_name")] if by_pipeline \
        else [SEH.step_name.label("step_name")]
    names = [c.name for c in key_cols]
    durations = (select(*key_cols, SEH.duration_seconds.label("val"))
                 .select_from(SEH).join(WE, WE.id == SEH.execution_id)
                 .where(in_window, SEH.status.in_(RAN_STEP), SEH.duration_seconds.isnot(None)).subquery())
    pct = percentiles(durations, names)
    counts = {tuple(r[:-1]): r[-1] for r in db.session.execute(
        select(*[durations.c[k] for k in names], func.count()).group_by(*[durations.c[k] for k in names])).all()}
    slow = sorted(pct.items(), key=lambda kv: (-kv[1][50], kv[0]))[:TOP]

    return {
        "average_queue_wait_seconds": round(float(avg_wait), 3) if avg_wait is not None else None,
        "retries": {"attempts": int(retries or 0), "executions": int(retried_execs or 0)},
        **outcomes,
        "slowest_steps": [
            {**dict(zip(names, key)), "median_seconds": v.get(50), "p95_seconds": v.get(95),
             "attempts": int(counts.get(key, 0))}
            for key, v in slow],
    }


def _step_outcomes(in_window, by_pipeline: bool) -> dict[str, list[dict[str, Any]]]:
    """most_failing_steps and flaky_steps, counted in executions: one row per (execution, step)
    with its final attempt (the highest retry_count: unique per execution and step)."""
    per_run = (select(SEH.execution_id, SEH.step_id, func.max(SEH.retry_count).label("last"),
                      func.sum(case((SEH.status.in_(FAILED_STEP), 1), else_=0)).label("failed_attempts"))
               .where(in_window).group_by(SEH.execution_id, SEH.step_id).subquery())
    final = aliased(SEH)
    keys = [WE.pipeline_id, final.step_name] if by_pipeline else [final.step_name]
    failed = func.sum(case((final.status.in_(FAILED_STEP), 1), else_=0))
    verdicts = func.sum(case((final.status.in_(RAN_STEP), 1), else_=0))
    flaky = func.sum(case((and_(final.status == "success", per_run.c.failed_attempts > 0), 1), else_=0))
    rows = db.session.execute(
        select(*keys, failed.label("failed"), verdicts.label("verdicts"), flaky.label("flaky"),
               func.sum(per_run.c.failed_attempts).label("failed_attempts"))
        .select_from(per_run)
        .join(final, and_(final.execution_id == per_run.c.execution_id, final.step_id == per_run.c.step_id,
                          final.retry_count == per_run.c.last))
        .join(WE, WE.id == per_run.c.execution_id)
        .group_by(*keys).having(or_(failed > 0, flaky > 0, func.sum(per_run.c.failed_attempts) > 0))).all()

    def row(r, **counts) -> dict[str, Any]:
        return {**({"pipeline": r[0]} if by_pipeline else {}), "step_name": r[len(keys) - 1], **counts}

    failing = sorted((r for r in rows if r.failed), key=lambda r: (-int(r.failed), tuple(r[:len(keys)])))[:TOP]
    flaky_rows = sorted((r for r in rows if r.flaky), key=lambda r: (-int(r.flaky), tuple(r[:len(keys)])))[:TOP]
    return {
        "most_failing_steps": [
            row(r, failed_executions=int(r.failed), executions=int(r.verdicts),
                failure_rate=_rate(int(r.failed), int(r.verdicts)), failed_attempts=int(r.failed_attempts))
            for r in failing],
        "flaky_steps": [
            row(r, flaky_executions=int(r.flaky), executions=int(r.verdicts),
                flaky_rate=_rate(int(r.flaky), int(r.verdicts)))
            for r in flaky_rows],
    }


def _bypassed(ids) -> tuple[int, dict[int, int]]:
    """Successful executions with a bypassed step: in all, and per pipeline."""
    rows = db.session.execute(
        select(WE.pipeline_id, func.count(func.distinct(WE.id)))
        .join(SEH, SEH.execution_id == WE.id)
        .where(WE.id.in_(select(ids.c.id)), WE.status == "success", SEH.bypassed.is_(True))
        .group_by(WE.pipeline_id)).all()
    per = {pid: int(n) for pid, n in rows}
    return sum(per.values()), per


def _recent_failures(ids, n: int = 10) -> list[dict[str, Any]]:
    rows = db.session.execute(
        select(WE.execution_id, WE.pipeline_id, Pipeline.name, WE.status_reason, WE.failed_steps,
               WE.finished_at, WE.started_at)
        .join(Pipeline, Pipeline.id == WE.pipeline_id)
        .where(WE.id.in_(select(ids.c.id)), WE.status == "failed")
        .order_by(WE.id.desc()).limit(n)).all()
    return [{"execution_id": r.execution_id, "pipeline": r.pipeline_id, "pipeline_name": r.name,
             "status_reason": r.status_reason or "", "failed_steps": list(r.failed_steps or []),
             "started_at": r.started_at, "finished_at": r.finished_at} for r in rows]


def _daily(ids, since: datetime, now: datetime) -> list[dict[str, Any]]:
    day = func.date(WE.created_at)
    rows = db.session.execute(
        select(day.label("day"), WE.status, func.count())
        .where(WE.id.in_(select(ids.c.id))).group_by(day, WE.status)).all()
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for d, status, n in rows:
        key = d.isoformat() if isinstance(d, date) else str(d)
        counts[key][status] = n
    out = []
    cur, last = since.date(), now.date()
    while cur <= last:
        c = counts.get(cur.isoformat(), {})
        other = sum(v for k, v in c.items() if k not in ("success", "failed", "cancelled"))
        out.append({"date": cur.isoformat(), "success": c.get("success", 0), "failed": c.get("failed", 0),
                    "cancelled": c.get("cancelled", 0), "running": other, "total": sum(c.values())})
        cur += timedelta(days=1)
    return out


def _per_pipeline(ids) -> list[dict[str, Any]]:
    def n(status):
        return func.sum(case((WE.status == status, 1), else_=0))
    rows = db.session.execute(
        select(WE.pipeline_id, Pipeline.name, func.count().label("total"), n("success").label("success"),
               n("failed").label("failed"), n("cancelled").label("cancelled"),
               func.sum(case((WE.status.in_(ACTIVE), 1), else_=0)).label("active"),
               func.max(WE.created_at).label("last_run_at"))
        .join(Pipeline, Pipeline.id == WE.pipeline_id)
        .where(WE.id.in_(select(ids.c.id))).group_by(WE.pipeline_id, Pipeline.name)
        .order_by(func.count().desc(), Pipeline.name)).all()
    dur = _seconds(WE.finished_at, WE.started_at)
    values = (select(WE.pipeline_id.label("grp"), dur.label("val"))
              .where(WE.id.in_(select(ids.c.id)), WE.status.in_(TERMINAL), WE.started_at.isnot(None),
                     WE.finished_at.isnot(None)).subquery())
    pct = percentiles(values, ["grp"], pcts=(50,))
    out = []
    for r in rows:
        finished = int(r.success) + int(r.failed) + int(r.cancelled)
        out.append({"id": r.pipeline_id, "name": r.name, "total": int(r.total), "success": int(r.success),
                    "failed": int(r.failed), "cancelled": int(r.cancelled), "active": int(r.active),
                    "success_rate": _rate(int(r.success), finished),
                    "median_duration_seconds": pct.get((r.pipeline_id,), {}).get(50), "last_run_at": r.last_run_at})
    return out


def workflow_metrics(pipeline_id: int | None = None, days: int = DEFAULT_DAYS, limit: int = DEFAULT_LIMIT,
                     now: datetime | None = None) -> dict[str, Any]:
    """Metrics of one pipeline (pipeline_id) or of all of them, over the bounded window."""
    days, limit = clamp_window(days, limit)
    now = now or utcnow()
    since = now - timedelta(days=days)
    ids = _window_ids(pipeline_id, since, limit)
    by_status = _status_counts(ids)
    bypassed, bypassed_by_pipeline = _bypassed(ids)
    total = sum(by_status.values())
    finished = sum(by_status.get(s, 0) for s in TERMINAL)
    out: dict[str, Any] = {
        "window": {"days": days, "limit": limit, "since": since, "until": now, "executions": total,
                   "truncated": total >= limit},
        "total_executions": total,
        "successful_executions": by_status.get("success", 0),
        "bypassed_executions": bypassed,
        "failed_executions": by_status.get("failed", 0),
        "cancelled_executions": by_status.get("cancelled", 0),
        "active_executions": sum(by_status.get(s, 0) for s in ACTIVE),
        "by_status": by_status,
        "success_rate": _rate(by_status.get("success", 0), finished),
        "duration_seconds": _duration_stats(ids),
    }
    out.update(_step_stats(ids, by_pipeline=pipeline_id is None))
    out["recent_failures"] = _recent_failures(ids)
    out["daily"] = _daily(ids, since, now) if days <= 90 else []
    if pipeline_id is None:
        out["pipelines"] = _per_pipeline(ids)
        for p in out["pipelines"]:
            p["bypassed"] = bypassed_by_pipeline.get(p["id"], 0)
        names = {p["id"]: p["name"] for p in out["pipelines"]}
        for row in out["most_failing_steps"] + out["flaky_steps"] + out["slowest_steps"]:
            row["pipeline_name"] = names.get(row["pipeline"], "")
    return out


def jsonable(value: Any) -> Any:
    """The metrics with datetimes as ISO 8601 UTC strings (for the JSON API)."""
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
