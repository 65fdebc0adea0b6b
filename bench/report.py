"""The readable table and the targets of issue "Benchmarks"."""
from __future__ import annotations

from typing import Any

# (section, key, comparison, bound): the figures to reach, medians on the reference machine kind.
TARGETS = [
    ("chain100", "ratio", "<=", 1.3),
    ("chain100", "overhead_ms_per_step", "<=", 1.0),
    ("fan50", "ratio", "<=", 1.5),
    ("throughput", "ratio", ">=", 0.75),
    ("submit", "ratio", "<=", 2.0),
    ("analysis", "steps_5000_ms", "<", 500.0),
    ("analysis", "growth", "<", 7.0),
    ("memory", "growth_mb", "<", 20.0),
]


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    # the orchestration targets hold on PostgreSQL too, for the figures its run measured
    pg = (results.get("database") or {}).get("postgresql") or {}
    return {**_checked(results, ""), **_checked(pg, "postgresql.")}


def _checked(results: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for section, key, op, bound in TARGETS:
        value = (results.get(section) or {}).get(key)
        if value is None:
            continue
        met = {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[f"{prefix}{section}.{key}"] = {"value": value, "target": f"{op} {bound:g}", "met": met}
    return out


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return f"{text}{unit}"


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = [("figure", "AnsFlow", "raw RQ", "ratio / note")]
    c = results.get("chain100")
    if c:
        rows.append((f"chain of {c['steps']} (s)", _fmt(c["ansflow_s"]), _fmt(c["raw_rq_s"]), f"x{c['ratio']}"))
        rows.append(("  per step (ms)", _fmt(c["ansflow_ms_per_step"]), _fmt(c["raw_rq_ms_per_step"]),
                     f"overhead {c['overhead_ms_per_step']} ms/step"))
    f = results.get("fan50")
    if f:
        rows.append((f"fan 1->{f['width']}->1 on {f['workers']} workers (s)", _fmt(f["ansflow_s"]), _fmt(f["raw_rq_s"]),
                     f"x{f['ratio']}"))
        rows.append(("  release fan-out (ms)", _fmt(f["release_ms"]), _fmt(f["raw_rq_release_ms"]), ""))
        rows.append(("  join (ms)", _fmt(f["join_ms"]), _fmt(f["raw_rq_join_ms"]), ""))
    t = results.get("throughput")
    if t:
        rows.append((f"{t['steps']} independent steps (steps/s)", _fmt(t["ansflow_steps_s"]), _fmt(t["raw_rq_jobs_s"]),
                     f"x{t['ratio']}"))
    s = results.get("submit")
    if s:
        rows.append((f"start a {s['steps']}-step execution (ms)", _fmt(s["ansflow_ms"]), _fmt(s["raw_rq_ms"]),
                     f"x{s['ratio']} (enqueue loop {_fmt(s['raw_rq_enqueue_loop_ms'])} ms)"))
    a = results.get("analysis")
    if a:
        rows.append(("graph analysis 1000 steps (ms)", _fmt(a["steps_1000_ms"]), "", ""))
        rows.append(("graph analysis 5000 steps (ms)", _fmt(a["steps_5000_ms"]), "", f"growth x{a['growth']}"))
    m = results.get("memory")
    if m:
        rows.append(("worker RSS at start (MB)", _fmt(m["worker_rss_start_mb"]), "", ""))
        rows.append((f"worker RSS after {m['steps']} steps (MB)", _fmt(m["worker_rss_after_5000_steps_mb"]), "",
                     f"growth {m['growth_mb']} MB"))
    for kind, figures in (results.get("database") or {}).items():
        if figures:
            rows.append((f"chain on {kind}: ratio", _fmt(figures.get("chain100_ratio")), "",
                         f"overhead {figures.get('overhead_ms_per_step')} ms/step"))
            for name, label in (("fan50", "fan"), ("throughput", "throughput"), ("submit", "submit")):
                fig = figures.get(name)
                if fig:
                    a, r = ((fig["ansflow_steps_s"], fig["raw_rq_jobs_s"]) if name == "throughput"
                            else (fig.get("ansflow_s", fig.get("ansflow_ms")), fig.get("raw_rq_s", fig.get("raw_rq_ms"))))
                    rows.append((f"{label} on {kind}: ratio", _fmt(fig["ratio"]), "", f"{_fmt(a)} vs {_fmt(r)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[k]) if k == 0 else cell.rjust(widths[k]) if k < 3 else cell
                               for k, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    checks = results.get("targets") or {}
    if checks:
        lines.append("")
        lines.append("targets: " + ", ".join(
            f"{name} {v['value']} {v['target']} {'ok' if v['met'] else 'MISSED'}" for name, v in checks.items()))
    env = results.get("environment") or {}
    lines.append("")
    lines.append(f"{env.get('mode')} run, {env.get('worker_class')} x{env.get('workers')}, {env.get('database')}, "
                 f"{env.get('cpu_count')} cores, load average at start {env.get('load_average_start')}")
    return "\n".join(lines)
