"""The dependency graph of a pipeline: validation, stage rule, layers, critical path, analysis.

Edges point the way work flows: an edge ``a -> b`` means ``b`` depends on ``a``. Cycles are
reported in that direction too ("build -> test -> build": test needs build, build needs test).

Three views of the same dependencies (DESIGN §3):

* effective  -- explicit ``dependencies``, or the stage rule when they were never set (None);
* barrier    -- effective, with a dependency on one member of a parallel group (from a step
                outside the group) widened to every member: such a step waits for the group;
* clean      -- the above without edges ``validate`` rejects (unknown ids, self-dependencies),
                which is what ordering and analysis run on.

Everything here is linear in steps + edges (except the redundant-edge check, which uses
machine-word bitsets), and the per-definition work is cached, because the planner asks for
effective dependencies and group members on every advance.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping

import networkx as nx

from .defcache import DefinitionCache
from .types import PipelineDef, StepDef

__all__ = [
    "CycleError",
    "Problem",
    "analyze",
    "barrier_dependencies",
    "effective_dependencies",
    "find_cycle",
    "group_members",
    "implicit_steps",
    "layers",
    "topological_order",
    "validate",
]

Deps = dict[int, tuple[int, ...]]

# Candidate edges whose removal is evaluated exactly for suggestions, and how many are reported.
_MAX_EVALUATED_SUGGESTIONS = 20
_MAX_SUGGESTIONS = 10


@dataclass(frozen=True)
class Problem:
    code: str  # unknown_dependency | self_dependency | duplicate_name | cycle |
    #            sibling_dependency | empty_group | unknown_group
    message: str
    step_id: int | None = None
    step_name: str | None = None
    group_id: str | None = None


class CycleError(ValueError):
    """The definition has a dependency cycle, so it has no order. ``cycle`` holds step names."""

    def __init__(self, message: str, cycle: list[str]):
        super().__init__(message)
        self.cycle = cycle


# --------------------------------------------------------------------------- graph building


def _kahn(
    order: Iterable[int], preds: Mapping[int, tuple[int, ...]], blocked: frozenset[int] = frozenset()
) -> tuple[list[list[int]], list[int]]:
    """Topological generations (Kahn). Returns (generations, ids left over).

    Predecessors that are not nodes are ignored; a self-loop or a ``blocked`` node never becomes
    ready, so it and everything downstream of it (and every cycle) ends up left over. Written out
    rather than taken from networkx/graphlib because both raise on the first cycle, while
    analysis needs the largest runnable subgraph of an invalid definition.
    """
    succs: dict[int, list[int]] = {v: [] for v in order}
    indeg: dict[int, int] = {}
    for v in succs:
        n = 0
        for p in preds[v]:
            s = succs.get(p)
            if s is not None:
                s.append(v)
                n += 1
        indeg[v] = n
    current = [v for v, n in indeg.items() if n == 0 and v not in blocked]
    generations: list[list[int]] = []
    seen = 0
    while current:
        generations.append(current)
        seen += len(current)
        nxt = []
        for u in current:
            for v in succs[u]:
                indeg[v] -= 1
                if indeg[v] == 0 and v not in blocked:
                    nxt.append(v)
        current = nxt
    if seen == len(succs):
        return generations, []
    done = {v for gen in generations for v in gen}
    return generations, [v for v in succs if v not in done]


class _Graph:
    """Everything derived from one PipelineDef. Built once per definition (see _graph)."""

    def __init__(self, defn: PipelineDef):
        self.defn = defn
        self.steps: list[StepDef] = sorted(defn.steps, key=lambda s: (s.order, s.id))
        self.by_id: dict[int, StepDef] = {s.id: s for s in self.steps}

        group_of: dict[int, str] = {}
        members: dict[str, list[int]] = {}
        for s in self.steps:
            g = s.parallel_group or None  # "" from a form means "no group"
            if g is not None:
                group_of[s.id] = g
                members.setdefault(g, []).append(s.id)
        self.group_of = group_of
        self.members: dict[str, tuple[int, ...]] = {g: tuple(m) for g, m in members.items()}
        self.members_by_id: dict[str, tuple[int, ...]] = {g: tuple(sorted(m)) for g, m in members.items()}

        by_id = self.by_id
        effective: Deps = {}
        implicit: set[int] = set()
        blocked: set[int] = set()  # steps with an unknown or self dependency: they can never run
        for s in self.steps:
            deps = s.dependencies
            if deps is None:
                implicit.add(s.id)
                effective[s.id] = ()  # filled in by the stage rule below, keeping step order
            else:
                deps = tuple(sorted(set(deps))) if len(deps) > 1 else tuple(deps)
                effective[s.id] = deps
                if s.id in deps:
                    blocked.add(s.id)
        unknown = set().union(*effective.values()).difference(by_id)
        if unknown:
            blocked.update(sid for sid, deps in effective.items() if not unknown.isdisjoint(deps))
        if implicit:
            effective.update(self._stage_rule(implicit))
        self.effective = effective
        self.implicit = frozenset(implicit)
        self.blocked = frozenset(blocked)

    def _stage_rule(self, implicit: set[int]) -> Deps:
        """Dependencies of the steps that never set theirs: all steps of the previous stage.

        Stages in (order, id): each ungrouped step is one; each group is one, placed where its
        first member is. Members of a group share the stage before their group, never each other."""
        out: Deps = {}
        previous: tuple[int, ...] = ()  # the stage before the current one
        group_deps: dict[str, tuple[int, ...]] = {}  # group -> the stage before that group
        for s in self.steps:
            g = self.group_of.get(s.id)
            if g is None:
                if s.id in implicit:
                    out[s.id] = previous
                previous = (s.id,)
            else:
                if g not in group_deps:  # first member: the group's stage starts here
                    group_deps[g] = previous
                    previous = self.members_by_id[g]
                if s.id in implicit:
                    out[s.id] = group_deps[g]
        return out

    @cached_property
    def rank(self) -> dict[int, int]:
        """Position in (order, id): the tie-breaker for every deterministic listing."""
        return {s.id: i for i, s in enumerate(self.steps)}

    # ---- derived dependency views

    def widen(self, sid: int, deps: tuple[int, ...]) -> tuple[int, ...]:
        """Barrier rule: depending on one member of another group means depending on all of it."""
        own = self.group_of.get(sid)
        out: set[int] | None = None
        for d in deps:
            g = self.group_of.get(d)
            if g is not None and g != own:
                if out is None:
                    out = set(deps)
                out.update(self.members_by_id[g])
        return deps if out is None else tuple(sorted(out))

    @cached_property
    def barrier(self) -> Deps:
        if not self.group_of:
            return self.effective
        return {sid: self.widen(sid, deps) for sid, deps in self.effective.items()}

    @cached_property
    def clean_effective(self) -> Deps:
        if not self.blocked:
            return self.effective
        by_id = self.by_id
        out = dict(self.effective)
        for sid in self.blocked:
            out[sid] = tuple(d for d in out[sid] if d != sid and d in by_id)
        return out

    @cached_property
    def clean_barrier(self) -> Deps:
        if not self.blocked:
            return self.barrier
        if not self.group_of:
            return self.clean_effective
        return {sid: self.widen(sid, deps) for sid, deps in self.clean_effective.items()}

    # ---- ordering

    @cached_property
    def order_ids(self) -> list[int]:
        return [s.id for s in self.steps]

    @cached_property
    def barrier_kahn(self) -> tuple[list[list[int]], list[int]]:
        """Generations of the clean barrier graph; leftovers are cycle members and downstream."""
        return _kahn(self.order_ids, self.clean_barrier)

    @cached_property
    def runnable_kahn(self) -> tuple[list[list[int]], list[int]]:
        """Like barrier_kahn, but steps with unknown/self dependencies (and their downstream) are out."""
        if not self.blocked:
            return self.barrier_kahn
        return _kahn(self.order_ids, self.clean_barrier, self.blocked)

    # ---- names

    @cached_property
    def label(self) -> dict[int, str]:
        """Step name, or "name#id" when the name is not unique (so outputs keyed by name stay lossless)."""
        count: dict[str, int] = defaultdict(int)
        for s in self.steps:
            count[s.name] += 1
        return {s.id: s.name if count[s.name] == 1 else f"{s.name}#{s.id}" for s in self.steps}

    # ---- cycles and problems

    @cached_property
    def cycles(self) -> list[tuple[list[int], str | None]]:
        """One shortest cycle per strongly connected component: (ids with the first repeated at
        the end, group id whose barrier closes the cycle or None for a plain cycle).

        Plain cycles (over effective deps) are reported first; only when there are none are
        cycles that exist solely through a group barrier looked for (barrier ⊇ effective)."""
        _, left = self.barrier_kahn
        if not left:
            return []
        _, eff_left = _kahn(self.order_ids, self.clean_effective)
        if eff_left:
            return [(c, None) for c in self._scc_cycles(eff_left, self.clean_effective)]
        out = []
        for cyc in self._scc_cycles(left, self.clean_barrier):
            group = next(
                self.group_of[u]
                for u, v in zip(cyc, cyc[1:])
                if u not in self.clean_effective[v]
            )
            out.append((cyc, group))
        return out

    def _scc_cycles(self, nodes: list[int], preds: Deps) -> list[list[int]]:
        node_set = set(nodes)
        g = nx.DiGraph()
        g.add_nodes_from(nodes)
        g.add_edges_from((p, v) for v in nodes for p in preds[v] if p in node_set)
        rank = self.rank
        cycles = []
        comps = [c for c in nx.strongly_connected_components(g) if len(c) > 1]
        for comp in sorted(comps, key=lambda c: min(rank[v] for v in c)):
            start = min(comp, key=rank.__getitem__)
            cycles.append(self._shortest_cycle(g, start, comp))
        return cycles

    def _shortest_cycle(self, g: nx.DiGraph, start: int, comp: set[int]) -> list[int]:
        parent: dict[int, int | None] = {start: None}
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for v in sorted(g.successors(u), key=self.rank.__getitem__):
                if v == start:
                    path = [u]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])  # type: ignore[arg-type]
                    path.reverse()
                    return path + [start]
                if v in comp and v not in parent:
                    parent[v] = u
                    queue.append(v)
        raise AssertionError("a strongly connected component always has a cycle")

    def cycle_message(self, cycle: list[int], group: str | None) -> str:
        path = " -> ".join(self.label[v] for v in cycle)
        if group is None:
            return f"Dependency cycle: {path}"
        return (
            f"Dependency cycle: {path} (through parallel group '{group}': a step that depends on "
            f"one member of a group waits for all of its members)"
        )

    @cached_property
    def problems(self) -> list[Problem]:
        defn, label = self.defn, self.label
        problems: list[Problem] = []

        declared: dict[str, None] = dict.fromkeys(g.id for g in defn.groups)
        for s in self.steps:
            g = self.group_of.get(s.id)
            if g is not None and g not in declared:
                problems.append(Problem(
                    "unknown_group",
                    f"Step '{s.name}' is in parallel group '{g}', which is not defined.",
                    s.id, s.name, g))
        for g in declared:
            if g not in self.members:
                problems.append(Problem(
                    "empty_group", f"Parallel group '{g}' has no steps.", group_id=g))

        first_with_name: dict[str, StepDef] = {}
        for s in self.steps:
            first = first_with_name.setdefault(s.name, s)
            if first is not s:
                problems.append(Problem(
                    "duplicate_name",
                    f"Step name '{s.name}' is used by more than one step (ids {first.id} and {s.id}).",
                    s.id, s.name))

        for s in self.steps:
            if s.dependencies is None:
                continue
            own = self.group_of.get(s.id)
            for d in self.effective[s.id]:
                if d == s.id:
                    problems.append(Problem(
                        "self_dependency", f"Step '{s.name}' depends on itself.", s.id, s.name))
                elif d not in self.by_id:
                    problems.append(Problem(
                        "unknown_dependency",
                        f"Step '{s.name}' depends on step id {d}, which is not a step of this pipeline.",
                        s.id, s.name))
                elif own is not None and self.group_of.get(d) == own:
                    problems.append(Problem(
                        "sibling_dependency",
                        f"Step '{s.name}' depends on '{label[d]}', another member of parallel group "
                        f"'{own}'; members of a group run side by side.",
                        s.id, s.name, own))

        for cycle, group in self.cycles:
            first = self.by_id[cycle[0]]
            problems.append(Problem(
                "cycle", self.cycle_message(cycle, group), first.id, first.name, group))
        return problems


# A few definitions are in play at a time (the planner's snapshots, an editor's draft).
_graphs: DefinitionCache[_Graph] = DefinitionCache(lambda defn: _Graph(defn), size=8)


def _graph(defn: PipelineDef) -> _Graph:
    return _graphs.get(defn)


# --------------------------------------------------------------------------- public API


def validate(defn: PipelineDef) -> list[Problem]:
    """Every problem of the definition (empty when it is valid), in a stable order."""
    return list(_graph(defn).problems)


def effective_dependencies(defn: PipelineDef) -> dict[int, tuple[int, ...]]:
    """Step id -> sorted dependency ids, explicit or from the stage rule. Unknown ids are kept."""
    return dict(_graph(defn).effective)


def implicit_steps(defn: PipelineDef) -> set[int]:
    """Ids of steps whose dependencies come from the stage rule (dependencies is None)."""
    return set(_graph(defn).implicit)


def group_members(defn: PipelineDef) -> dict[str, tuple[int, ...]]:
    """Group id -> member ids by (order, id). Only groups that have members appear."""
    return dict(_graph(defn).members)


def barrier_dependencies(defn: PipelineDef) -> dict[int, tuple[int, ...]]:
    """effective_dependencies with a dependency on any member of another group widened to all of it."""
    return dict(_graph(defn).barrier)


def _ordered_generations(defn: PipelineDef) -> tuple[_Graph, list[list[int]]]:
    g = _graph(defn)
    generations, left = g.barrier_kahn
    if left:
        cycle, group = g.cycles[0]
        raise CycleError(g.cycle_message(cycle, group), [g.label[v] for v in cycle])
    return g, generations


def layers(defn: PipelineDef) -> list[list[int]]:
    """Topological generations over barrier dependencies, ids sorted within a layer.

    Unknown and self dependencies are ignored (validate reports them); raises CycleError
    when the definition has a cycle."""
    _, generations = _ordered_generations(defn)
    return [sorted(gen) for gen in generations]


def topological_order(defn: PipelineDef) -> list[int]:
    """All step ids, by layer, then order, then id. Raises CycleError like layers()."""
    g, generations = _ordered_generations(defn)
    key = g.rank.__getitem__
    return [v for gen in generations for v in sorted(gen, key=key)]


def find_cycle(defn: PipelineDef) -> list[str] | None:
    """The first cycle validate reports, as step names with the first repeated at the end."""
    g = _graph(defn)
    if not g.cycles:
        return None
    return [g.label[v] for v in g.cycles[0][0]]


# --------------------------------------------------------------------------- analysis


def _secs(x: float) -> str:
    """Seconds for a sentence: 70s, 12.5s, 3600s (never 3.6e+03s)."""
    return f"{x:.3f}".rstrip("0").rstrip(".") + "s"


def _r(x: float) -> float:
    return round(x, 6)


def analyze(defn: PipelineDef) -> dict[str, Any]:
    """Critical path, slack, parallelism, redundant edges and suggestions (JSON-serialisable).

    Runs on the runnable subgraph: steps in a cycle, with an unknown or self dependency, or
    downstream of one are listed under "unreachable" and left out of everything else."""
    g = _graph(defn)
    label, by_id, rank = g.label, g.by_id, g.rank
    generations, left = g.runnable_kahn
    generations = [sorted(gen, key=rank.__getitem__) for gen in generations]
    topo = [v for gen in generations for v in gen]
    n = len(topo)
    idx = {v: i for i, v in enumerate(topo)}
    preds_of = g.clean_barrier
    # Work on list indices in topological order: every predecessor index is smaller.
    P = [[idx[p] for p in preds_of[v]] for v in topo]
    S: list[list[int]] = [[] for _ in range(n)]
    for i, ps in enumerate(P):
        for j in ps:
            S[j].append(i)
    dur = []
    for v in topo:
        d = float(by_id[v].estimated_duration or 0.0)
        dur.append(d if math.isfinite(d) and d > 0 else 0.0)

    es, ef = _forward(P, dur)
    total = max(ef, default=0.0)
    lf = [total] * n
    ls = [0.0] * n
    for i in range(n - 1, -1, -1):
        f = min([ls[j] for j in S[i]]) if S[i] else total
        lf[i] = f
        ls[i] = f - dur[i]
    eps = 1e-9 * max(1.0, total)

    slack = [ls[i] - es[i] for i in range(n)]
    steps_out: dict[str, dict[str, Any]] = {}
    for i, v in enumerate(topo):
        critical = slack[i] <= eps
        # rounded to µs: sums of floats otherwise show as 59.99999999999999
        steps_out[label[v]] = {
            "id": v,
            "duration": dur[i],
            "earliest_start": round(es[i], 6),
            "earliest_finish": round(ef[i], 6),
            "latest_start": round(ls[i], 6),
            "latest_finish": round(lf[i], 6),
            "slack": 0.0 if critical else round(slack[i], 6),
            "critical": critical,
        }

    chain = _critical_chain(P, es, ef, total)
    by_rank = rank.__getitem__
    return {
        "valid": not g.problems,
        "problems": [asdict(p) for p in g.problems],
        "total_steps": len(defn.steps),
        "critical_path": {
            "steps": [label[topo[i]] for i in chain],
            "step_ids": [topo[i] for i in chain],
            "total_seconds": _r(total),
        },
        "steps": steps_out,
        "max_parallelism": _max_parallelism(es, ef, dur),
        "layers": [[label[v] for v in gen] for gen in generations],
        "layer_count": len(generations),
        "redundant_edges": _redundant_edges(g, topo, idx, P),
        "roots": [label[v] for v in sorted((topo[i] for i in range(n) if not P[i]), key=by_rank)],
        "sinks": [label[v] for v in sorted((topo[i] for i in range(n) if not S[i]), key=by_rank)],
        "unreachable": [label[v] for v in sorted(left, key=by_rank)],
        "suggestions": _suggestions(g, topo, idx, P, dur, S, es, ef, lf, slack, total, chain, eps),
    }


def _forward(P: list[list[int]], dur: list[float]) -> tuple[list[float], list[float]]:
    n = len(P)
    es = [0.0] * n
    ef = [0.0] * n
    for i in range(n):
        ps = P[i]
        s = max([ef[j] for j in ps]) if ps else 0.0
        es[i] = s
        ef[i] = s + dur[i]
    return es, ef


def _critical_chain(P: list[list[int]], es: list[float], ef: list[float], total: float) -> list[int]:
    """One longest path, ending at the first step (topologically) that finishes last."""
    if not ef:
        return []
    i = ef.index(total)
    chain = [i]
    while P[i]:
        # es[i] is exactly the max ef of its predecessors, so equality is exact
        i = min(j for j in P[i] if ef[j] == es[i])
        chain.append(i)
    chain.reverse()
    return chain


def _max_parallelism(es: list[float], ef: list[float], dur: list[float]) -> int:
    """Most steps running at one instant of the earliest-start schedule (unlimited workers).

    A step occupies [start, finish): one finishing when another starts does not overlap it.
    A zero-duration step counts only at its own instant."""
    delta: dict[float, int] = defaultdict(int)
    instant: dict[float, int] = defaultdict(int)
    for s, f, d in zip(es, ef, dur):
        if d > 0:
            delta[s] += 1
            delta[f] -= 1
        else:
            instant[s] += 1
    running = best = 0
    for t in sorted(delta.keys() | instant.keys()):
        running += delta.get(t, 0)
        best = max(best, running + instant.get(t, 0))
    return best


def _redundant_edges(g: _Graph, topo: list[int], idx: dict[int, int], P: list[list[int]]) -> list[dict[str, str]]:
    """Explicit edges d -> v already implied by a longer path d -> ... -> p -> v.

    Ancestor sets as Python int bitsets indexed by topological position: a couple of ORs per
    edge over at most n/64 machine words. networkx.transitive_reduction keeps a descendant set
    per step instead, which on a random DAG of 5,000 steps takes ~0.8 s against ~10 ms here."""
    bits = [1 << i for i in range(len(topo))]
    anc = [0] * len(topo)
    out = []
    label, by_id, clean = g.label, g.by_id, g.clean_effective
    for i, v in enumerate(topo):
        above = 0  # ancestors of v's predecessors: what v reaches back by a path of length >= 2
        direct = 0
        for j in P[i]:
            above |= anc[j]
            direct |= bits[j]
        anc[i] = above | direct
        if not above or by_id[v].dependencies is None:
            continue
        for d in clean[v]:
            if above & bits[idx[d]]:
                out.append({"from": label[d], "to": label[v]})
    return out


def _suggestions(
    g: _Graph, topo: list[int], idx: dict[int, int], P: list[list[int]], dur: list[float],
    S: list[list[int]], es: list[float], ef: list[float], lf: list[float], slack: list[float],
    total: float, chain: list[int], eps: float,
) -> list[dict[str, Any]]:
    """For each dependency a -> b on the critical path, the exact time saved if b did not need a.

    b keeps waiting for what a waited for (a's own dependencies): "b does not need a" says
    nothing about a's prerequisites, so b moves alongside a rather than to the very start. When
    a is a member of a group b is outside of, b waits for the whole group, so the group is the
    unit dropped.

    That lets b start `gain` earlier, so the path through b becomes T - gain long: a lower bound
    of the new total T', and `gain` an upper bound of the saving. Candidates are evaluated by
    decreasing gain, at most _MAX_EVALUATED_SUGGESTIONS of them.

    T' itself: earlier finishes are pushed downstream in topological order, but only into steps
    whose longest path (T - slack) beats the best lower bound so far. A step that doesn't lies
    only on paths no longer than that bound, so its stale (larger) finish cannot change
    max(bound, max finish) = T'. Every finish computed on the way is either a real path of the
    new graph or no longer than the bound, so `finish + what follows` safely raises the bound,
    which prunes more as the walk goes on: a few near-critical steps are visited, not all
    descendants of b."""
    rank, clean = g.rank, g.clean_effective
    candidates = []
    for a, b in zip(chain, chain[1:]):
        A, B = topo[a], topo[b]
        ga, gb = g.group_of.get(A), g.group_of.get(B)
        unit = g.members[ga] if ga is not None and ga != gb else (A,)
        remove = set(unit).intersection(clean[B])
        if not remove:
            continue
        new_deps = {d for d in clean[B] if d not in remove}
        for u in unit:
            new_deps.update(clean[u])
        new_preds = g.widen(B, tuple(sorted(new_deps)))
        new_start = max([ef[idx[d]] for d in new_preds]) if new_preds else 0.0
        gain = es[b] - new_start
        if gain > eps:
            group = ga if len(unit) > 1 else None
            candidates.append((gain, b, new_start, A, group, remove, new_deps))
    candidates.sort(key=lambda c: (-c[0], c[1]))

    out: list[dict[str, Any]] = []
    for gain, b, new_start, A, group, remove, new_deps in candidates[:_MAX_EVALUATED_SUGGESTIONS]:
        if len(out) >= _MAX_SUGGESTIONS and gain <= min(s["saves_seconds"] for s in out):
            break  # gain bounds the saving and candidates come by gain: none of the rest can rank
        ef2 = ef[:]
        ef2[b] = new_start + dur[b]
        lower = total - gain  # a path of the new graph: the one through b
        heap = [k for k in S[b] if slack[k] < gain]
        heapq.heapify(heap)
        queued = set(heap)
        while heap:
            i = heapq.heappop(heap)
            if total - slack[i] <= lower:
                continue  # only on paths no longer than one we already have
            finish = max([ef2[j] for j in P[i]]) + dur[i]
            # the longest path through i now (what follows i is unchanged) raises the bound
            lower = max(lower, finish + total - lf[i])
            if finish < ef2[i]:
                ef2[i] = finish
                for k in S[i]:
                    if k not in queued and total - slack[k] > lower:
                        queued.add(k)
                        heapq.heappush(heap, k)
        new_total = max(lower, max(ef2))
        saves = total - new_total
        if saves <= eps:
            continue
        out.append(_suggestion(g, topo[b], A, group, remove, new_deps, total, new_total))
    out.sort(key=lambda s: (-s["saves_seconds"], rank[s["step_id"]]))
    return out[:_MAX_SUGGESTIONS]


def _suggestion(
    g: _Graph, B: int, A: int, group: str | None, remove: set[int], new_deps: set[int],
    total: float, new_total: float,
) -> dict[str, Any]:
    label, rank = g.label, g.rank.__getitem__
    b = label[B]
    drop = A if A in remove else min(remove, key=rank)
    what = f"parallel group '{group}'" if group is not None else f"'{label[drop]}'"
    suggested = [label[d] for d in sorted(new_deps, key=rank)]
    implicit = g.by_id[B].dependencies is None
    if implicit:
        why = f"'{b}' has no explicit dependencies, so the stage rule makes it wait for {what}"
    else:
        why = f"'{b}' waits for {what} on the critical path"
    if suggested:
        names = ", ".join(f"'{n}'" for n in suggested)
        how = f"{'give it explicit dependencies on' if implicit else 'let it depend on'} {names} so it runs alongside"
    else:
        how = f"{'give it an empty dependency list' if implicit else 'drop that dependency'} so it starts at once"
    message = (
        f"{why}. If '{b}' does not need {what}, {how}: the pipeline would take "
        f"{_secs(new_total)} instead of {_secs(total)} (saves {_secs(total - new_total)})."
    )
    return {
        "step": b,
        "step_id": B,
        "drop_dependency": label[drop],
        "drop_dependencies": [label[d] for d in sorted(remove, key=rank)],
        "group": group,
        "kind": "implicit" if implicit else "explicit",
        "suggested_dependencies": suggested,
        "saves_seconds": _r(total - new_total),
        "new_total_seconds": _r(new_total),
        "message": message,
    }


def upstream(defn: PipelineDef, step_id: int) -> frozenset[int]:
    """Every step that must have finished before `step_id` may start (transitive, with group
    barriers): the steps whose outputs a step can rely on."""
    deps = _graph(defn).barrier  # read only: barrier_dependencies() would copy it per call
    seen: set[int] = set()
    stack = list(deps.get(step_id, ()))
    while stack:
        sid = stack.pop()
        if sid in seen or sid not in deps:
            continue
        seen.add(sid)
        stack.extend(deps[sid])
    return frozenset(seen)
