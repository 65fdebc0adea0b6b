"""Layout of a pipeline's dependency graph for the server-rendered SVG (templates/_graph.html).

Columns are the engine's layers (engine.graph.layers: topological generations over the
barrier dependencies, so everything that waits for a parallel group sits right of the whole
group). Within a column, members of a group are kept together and nodes are ordered by the
mean row of their dependencies (one barycenter pass), which keeps most edges short and flat.

Edges are the effective dependencies: explicit ones solid, stage-rule ones (implicit) dashed.
A dependency on a member of another group is drawn once from that group's box, because the
step waits for the group as a whole. The critical path from engine.graph.analyze is flagged
on its nodes and edges.

The result is plain data (numbers and strings), so the template only draws.
"""
from __future__ import annotations

from typing import Any

from ..engine import graph
from ..engine.types import PipelineDef

NODE_W, NODE_H = 176, 50
COL_GAP, ROW_GAP = 70, 16
PAD = 20
GROUP_PAD = 10          # box padding around the members
GROUP_LABEL = 20        # room for the group's label above its first member
NAME_CHARS = 22


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(seconds: float) -> str:
    s = float(seconds or 0)
    if s < 90:
        return f"{s:g}s"
    if s < 5400:
        return f"{s / 60:.0f}m" if s % 60 == 0 else f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _columns(defn: PipelineDef) -> list[list[int]]:
    try:
        return graph.layers(defn)
    except graph.CycleError:
        # Only a draft can have a cycle (saving refuses it): one step per column, in order.
        return [[s.id] for s in sorted(defn.steps, key=lambda s: (s.order, s.id))]


def layout(defn: PipelineDef, analysis: dict[str, Any] | None = None) -> dict[str, Any]:
    """Positions of nodes, group boxes and edge paths for `defn` (a PipelineDef with real ids)."""
    if analysis is None:
        analysis = graph.analyze(defn)
    steps = {s.id: s for s in defn.steps}
    rank = {s.id: i for i, s in enumerate(sorted(defn.steps, key=lambda s: (s.order, s.id)))}
    effective = graph.effective_dependencies(defn)
    implicit = graph.implicit_steps(defn)
    members = graph.group_members(defn)
    group_of = {m: g for g, ms in members.items() for m in ms}
    groups = {g.id: g for g in defn.groups}
    columns = _columns(defn)

    # order within columns: group runs kept together, then by the mean row of dependencies
    row: dict[int, float] = {}
    ordered: list[list[int]] = []
    for col in columns:
        def bary(v: int) -> float:
            ds = [row[d] for d in effective.get(v, ()) if d in row]
            return sum(ds) / len(ds) if ds else float(rank[v])
        own = {v: bary(v) for v in col}
        by_group: dict[str, list[float]] = {}
        for v in col:
            if v in group_of:
                by_group.setdefault(group_of[v], []).append(own[v])
        group_key = {g: sum(b) / len(b) for g, b in by_group.items()}

        def key(v: int):
            g = group_of.get(v)
            return (group_key[g] if g else own[v], g or "", own[v], rank[v])
        col = sorted(col, key=key)
        for i, v in enumerate(col):
            row[v] = float(i)
        ordered.append(col)

    # y positions: each column stacked, with room for group labels; columns centred vertically
    ys: dict[int, float] = {}
    heights: list[float] = []
    for col in ordered:
        y = 0.0
        prev_group = None
        for v in col:
            g = group_of.get(v)
            if g != prev_group:
                if prev_group is not None:
                    y += GROUP_PAD
                if g is not None:
                    y += GROUP_LABEL + GROUP_PAD
            ys[v] = y
            y += NODE_H + ROW_GAP
            prev_group = g
        if prev_group is not None:
            y += GROUP_PAD
        heights.append(max(0.0, y - ROW_GAP))
    inner_h = max(heights, default=0.0)
    pos: dict[int, tuple[float, float]] = {}
    for c, col in enumerate(ordered):
        offset = (inner_h - heights[c]) / 2
        x = PAD + GROUP_PAD + c * (NODE_W + COL_GAP)
        for v in col:
            pos[v] = (x, PAD + offset + ys[v])

    chain = analysis.get("critical_path", {}).get("step_ids", []) if analysis else []
    critical_nodes = set(chain)
    critical_pairs = set(zip(chain, chain[1:]))
    stats = analysis.get("steps", {}) if analysis else {}
    redundant = {(e["from"], e["to"]) for e in (analysis or {}).get("redundant_edges", [])}

    group_boxes: dict[str, dict[str, Any]] = {}
    for g, ms in members.items():
        xs = [pos[m][0] for m in ms if m in pos]
        yv = [pos[m][1] for m in ms if m in pos]
        if not xs:
            continue
        gd = groups.get(g)
        x0, y0 = min(xs) - GROUP_PAD, min(yv) - GROUP_PAD - GROUP_LABEL
        x1, y1 = max(xs) + NODE_W + GROUP_PAD, max(yv) + NODE_H + GROUP_PAD
        policy = gd.sync_policy if gd else "wait_all"
        timeout = f" · {_duration(gd.timeout_seconds)} timeout" if gd and gd.timeout_seconds else ""
        group_boxes[g] = {
            "id": g, "name": (gd.name if gd and gd.name else g), "sync_policy": policy,
            "label": _short(f"{gd.name if gd and gd.name else g} · {policy}{timeout}", 40),
            "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0, "members": list(ms),
            "critical": any(m in critical_nodes for m in ms),
        }

    nodes = []
    for v, (x, y) in sorted(pos.items(), key=lambda kv: rank[kv[0]]):
        s = steps[v]
        st = stats.get(s.name) or next((d for d in stats.values() if d.get("id") == v), {})
        nodes.append({
            "id": v, "name": s.name, "label": _short(s.name, NAME_CHARS), "type": s.step_type,
            "x": x, "y": y, "w": NODE_W, "h": NODE_H,
            "detail": f"{s.step_type} · {_duration(s.estimated_duration)}",
            "group": group_of.get(v), "critical": v in critical_nodes, "implicit": v in implicit,
            "approval": bool(s.approval_required or s.step_type == "approval"),
            "slack": st.get("slack"), "earliest_start": st.get("earliest_start"),
        })

    edges = []
    seen: set[tuple[Any, int]] = set()
    for v in sorted(pos, key=rank.__getitem__):
        own = group_of.get(v)
        for d in effective.get(v, ()):
            if d not in pos or d == v:
                continue
            g = group_of.get(d)
            if g is not None and g != own and g in group_boxes:
                key = ("g", g)
                if (key, v) in seen:
                    continue
                seen.add((key, v))
                box = group_boxes[g]
                x1, y1 = box["x"] + box["w"], box["y"] + box["h"] / 2
                crit = any((m, v) in critical_pairs for m in members[g])
                source_name = box["name"]
                red = False
            else:
                seen.add((d, v))
                x1, y1 = pos[d][0] + NODE_W, pos[d][1] + NODE_H / 2
                crit = (d, v) in critical_pairs
                source_name = steps[d].name
                red = (steps[d].name, steps[v].name) in redundant
            x2, y2 = pos[v][0], pos[v][1] + NODE_H / 2
            dx = max(24.0, (x2 - x1) / 2)
            edges.append({
                "from": source_name, "to": steps[v].name, "from_group": g if g is not None and g != own else None,
                "path": f"M{x1:.1f},{y1:.1f} C{x1 + dx:.1f},{y1:.1f} {x2 - dx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}",
                "implicit": v in implicit, "critical": crit, "redundant": red,
            })

    width = PAD * 2 + GROUP_PAD * 2 + max(0, len(ordered)) * (NODE_W + COL_GAP) - (COL_GAP if ordered else 0)
    height = PAD * 2 + inner_h
    return {
        "width": round(max(width, 240)), "height": round(max(height, 80)),
        "nodes": nodes, "edges": edges, "groups": list(group_boxes.values()),
        "critical_seconds": (analysis or {}).get("critical_path", {}).get("total_seconds"),
        "empty": not nodes,
    }
