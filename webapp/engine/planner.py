"""The planner: given a snapshot of an execution and the time, decide what happens now.

``plan(snapshot, now)`` is pure and stateless. The service applies the decisions it returns
(each one a conditional update from the expected state) and calls ``plan`` again until no
*actionable* decision comes back (see ``actionable``). DESIGN §3 is the contract; the
choices this module makes where the contract leaves room are:

* **Fixpoint in one call.** ``plan`` treats its own Skip, Cancel, Enqueue, AwaitApproval and
  ScheduleRetry decisions as applied while it walks the steps in topological order (barrier
  dependencies, see graph.py), so one call already contains e.g. the whole chain of
  upstream_failed skips below a failure, the group decisions those skips make possible, and
  FinishExecution when that was the last thing to decide. The only thing left to a second
  call is enqueueing a retry whose delay is already over (the service creates that attempt).
* **Order.** Group-policy cancels first (groups by their first member), then per-step
  decisions in topological order, then FinishGroup per decided group, then one WakeAt, then
  FinishExecution. Same snapshot + now -> same list.
* **FinishGroup** is informational and emitted on every call in which the group is decided
  (the planner is stateless): the service records the first one and ignores repeats.
  FinishGroup and WakeAt are not "actionable": the service's "call plan again" loop stops
  when ``actionable(decisions)`` is empty.
* **Condition errors** (a broken expression) skip the step with reason
  ``"condition error: ..."`` and ``upstream_failed=False``, and fail the execution: the
  planner recognises such a skip later by its stored ``skip_reason`` prefix, so the service
  must store Skip.reason in ``Attempt.skip_reason``.
* **upstream_failed** is what the verdict says (conditions.py): a skip by ``on_success``
  (the default, with or without an expression), ``none_failed`` or ``one_success``, or by an
  expression that opted out of on_success, when a considered dependency failed or was itself
  upstream_failed (Airflow's trigger-rule semantics), so failures propagate down. A gated
  step is decided the same way *before* it waits: a skipped step never opens an approval.
* **Groups.** A member's outcome is its step outcome (continue_on_failure failure ->
  success, upstream_failed counts as a failure). wait_all/fail_fast: failed if a member
  failed, else cancelled if one was cancelled, else success. wait_any: the first *real*
  success (earliest finished_at) decides and cancels the others; when every member is settled
  without one: success if a member counts as success (continue_on_failure), failed if one
  failed, cancelled if one was cancelled, else (all skipped by a condition) success.
  fail_fast triggers on a member's final failed/timed_out (retries exhausted). A group that
  is decided early (winner, fail_fast) gets no more retries for its members. Timeout: from
  the earliest start of the members' current run; at expiry queued/running/waiting members
  are cancelled as ``timed_out``, pending/retry_scheduled ones as ``cancelled`` (the only
  transitions states.py allows for them). A winner or fail_fast failure that finished before
  the deadline takes precedence over the timeout. Group timed_out counts as failed
  downstream. Steps outside a group that depend on a member wait for the group's outcome and
  see it as ``{group name: outcome}`` in dep_outcomes ("timed_out" -> "failed").
* **Execution outcome**: cancelled if cancel was requested; else failed if a step outside any
  group ended failed/timed_out (not continue_on_failure, not bypassed), a group ended
  failed/timed_out, or a condition errored; else success. A failed member of a group that
  succeeded (wait_any) does not fail the execution.
* **Retries** count within the step's current run: the attempts since (and including) the
  latest attempt without ``scheduled_for`` (retry attempts always carry it, a reset by
  retry_step does not), so retry_step gives the step a fresh budget. The service must store
  ScheduleRetry.run_at in the new attempt's ``scheduled_for``. Failures of kind rejected,
  approval_timeout and cancelled never retry.
* **Approvals**: a step with ``approval_required`` (or of type ``approval``) waits in
  waiting_approval until ``snapshot.approvals[step] == "approved"``; its retries do not ask
  again. Rejections and approval timeouts are applied by the approvals service (the attempt
  fails with failure "rejected"/"approval_timeout", which never retries).
* **Cancel**: every non-terminal step that cannot run on cancel (conditions.runs_on_cancel:
  rule ``always``, or an expression with ``always()``/``cancelled()`` in place of on_success)
  gets Cancel (queued and running ones too: the service kills them), and so does every
  approval gate not approved yet (nobody decides on a cancelled run), no retries are
  scheduled, the others are decided when their dependencies are terminal (``cancelled()``
  is then true), and the execution ends ``cancelled``.
* **Condition context**: only expressions read it (with the status functions answered from
  the same dependency outcomes the rule sees); an expression gets the ``steps`` entries
  it names (``steps.NAME``, ``steps["NAME"]``), or the whole map when it uses ``steps`` any
  other way, because the evaluator converts the whole context on every call. ``previous``
  is the dependency with the highest (order, id). ``depends_on`` ids that are not
  dependencies are waited for too when they come earlier in topological order (else they
  are ignored, which keeps the wait graph acyclic).
* **Cost**: O(steps + edges + attempts) per call. Everything that depends only on the
  definition (effective/barrier dependencies, order, groups, rules, parsed retry policies)
  is built once and cached by ``id(definition)`` in a bounded LRU that keeps a reference to
  the definition.
* **Deadlock guard**: if nothing can ever move (no actionable decision, nothing queued,
  running, waiting or scheduled, some step still pending: only possible for a definition
  that validate() rejects), the pending steps are cancelled and the execution fails.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Union

from . import graph as _graph
from .conditions import evaluate_rule, normalize_conditions, runs_on_cancel
from .retry import Failure, PolicyError, RetryPolicy
from .defcache import DefinitionCache
from .types import Attempt, ExecutionSnapshot, GroupDef, PipelineDef, StepDef

__all__ = [
    "AwaitApproval", "Cancel", "Decision", "Enqueue", "FinishExecution", "FinishGroup",
    "ResumePlan", "ScheduleRetry", "Skip", "WakeAt", "actionable", "focus_after_success",
    "group_outcomes", "plan", "plan_after_success",
    "plan_resume", "plan_retry_step", "step_outcomes",
]


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Enqueue:
    """Run this attempt (pending/waiting_approval/retry_scheduled -> queued)."""
    step_id: int
    attempt_id: int


@dataclass(frozen=True)
class Skip:
    """pending -> skipped; ``reason`` is the verdict's explanation (store it)."""
    step_id: int
    attempt_id: int
    reason: str
    upstream_failed: bool = False


@dataclass(frozen=True)
class AwaitApproval:
    """pending -> waiting_approval; create the ApprovalRequest and notify approvers."""
    step_id: int
    attempt_id: int


@dataclass(frozen=True)
class ScheduleRetry:
    """Create a new attempt (retry_count, status retry_scheduled, scheduled_for=run_at)."""
    step_id: int
    failed_attempt_id: int
    retry_count: int
    delay_seconds: float
    run_at: datetime


@dataclass(frozen=True)
class Cancel:
    """Stop this attempt (kill its process if running); status "cancelled" or "timed_out"."""
    step_id: int
    attempt_id: int
    status: str
    reason: str


@dataclass(frozen=True)
class FinishGroup:
    """The group is decided: "success" | "failed" | "timed_out" | "cancelled" (idempotent)."""
    group_id: str
    status: str
    reason: str


@dataclass(frozen=True)
class FinishExecution:
    status: str
    reason: str


@dataclass(frozen=True)
class WakeAt:
    """Call plan() again at this moment (a retry falls due, a group times out)."""
    at: datetime
    reason: str


Decision = Union[Enqueue, Skip, AwaitApproval, ScheduleRetry, Cancel, FinishGroup,
                 FinishExecution, WakeAt]

_ACTIONABLE = (Enqueue, Skip, AwaitApproval, ScheduleRetry, Cancel, FinishExecution)


def actionable(decisions: Iterable[Decision]) -> list[Decision]:
    """The decisions that change state (not FinishGroup, not WakeAt): the service loops
    ``plan -> apply`` while this is non-empty."""
    return [d for d in decisions if isinstance(d, _ACTIONABLE)]


# --------------------------------------------------------------------------- constants

_PENDING, _QUEUED, _RUNNING = "pending", "queued", "running"
_WAITING, _RETRY = "waiting_approval", "retry_scheduled"
_SUCCESS, _FAILED, _SKIPPED, _CANCELLED, _TIMED_OUT = (
    "success", "failed", "skipped", "cancelled", "timed_out")
_TERMINAL = frozenset({_SUCCESS, _FAILED, _SKIPPED, _CANCELLED, _TIMED_OUT})
_ACTIVE = frozenset({_QUEUED, _RUNNING, _WAITING, _RETRY})
_FAILURES = frozenset({_FAILED, _TIMED_OUT})
_EXEC_TERMINAL = frozenset({"success", "failed", "cancelled"})
_NO_RETRY_KINDS = frozenset({"rejected", "approval_timeout", "cancelled"})
COND_ERROR_PREFIX = "condition error: "
_CANCEL_REASON = "execution cancelled"

_STEPS_WORD = re.compile(r"(?<![\w.])steps\b")
_STEPS_MEMBER = re.compile(r"\s*\.\s*(?P<name>[A-Za-z_][\w#]*+)(?!\s*\()")
_STEPS_INDEX = re.compile(r"""\s*\[\s*(?P<q>["'])(?P<name>[^"'\\]*)(?P=q)\s*\]""")

# group outcome -> what a dependent sees
_GROUP_DEP_OUTCOME = {_SUCCESS: _SUCCESS, _FAILED: _FAILED, _TIMED_OUT: _FAILED,
                      _CANCELLED: _CANCELLED}


# --------------------------------------------------------------------------- per-definition cache


class _Compiled:
    """Everything plan() needs that depends only on the definition. Built once per definition."""

    def __init__(self, defn: PipelineDef):
        self.defn = defn
        steps = defn.steps
        by_id: dict[int, StepDef] = {s.id: s for s in steps}
        self.step = by_id
        try:
            order = _graph.topological_order(defn)
        except ValueError:  # CycleError: an invalid definition; the deadlock guard handles it
            order = [s.id for s in sorted(steps, key=lambda s: (s.order, s.id))]
        self.order: list[int] = order
        rank = {sid: i for i, sid in enumerate(order)}
        self.rank = rank

        counts: dict[str, int] = {}
        for s in steps:
            counts[s.name] = counts.get(s.name, 0) + 1
        self.label: dict[int, str] = {
            s.id: s.name if counts[s.name] == 1 else f"{s.name}#{s.id}" for s in steps}

        group_of: dict[int, str] = {}
        members: dict[str, list[int]] = {}
        for sid in order:
            g = by_id[sid].parallel_group or None
            if g is not None:
                group_of[sid] = g
                members.setdefault(g, []).append(sid)
        self.group_of = group_of
        self.members: dict[str, tuple[int, ...]] = {g: tuple(m) for g, m in members.items()}
        gdefs = {g.id: g for g in defn.groups}
        self.gdef: dict[str, GroupDef] = {g: gdefs.get(g) or GroupDef(id=g) for g in members}
        # groups listed by their first member's position
        self.group_order: list[str] = sorted(members, key=lambda g: rank[members[g][0]])
        self.group_key: dict[str, str] = {g: (gd.name or g) for g, gd in self.gdef.items()}

        eff = _graph.effective_dependencies(defn)
        dep_steps: dict[int, tuple[int, ...]] = {}
        dep_groups: dict[int, tuple[str, ...]] = {}
        # (key for dep_outcomes, kind 0=step/1=group, ref): the dependencies a rule sees
        cond_units: dict[int, tuple[tuple[str, int, Any], ...]] = {}
        previous: dict[int, int | None] = {}
        always: set[int] = set()
        approval: set[int] = set()
        preds: dict[int, tuple[int, ...]] = {}  # barrier predecessors (for descendants)
        # steps with an expression -> the step ids it names (None: it uses the whole map)
        expr_refs: dict[int, tuple[int, ...] | None] = {}
        self.by_label = {lbl: sid for sid, lbl in self.label.items()}
        for sid in order:
            s = by_id[sid]
            own = group_of.get(sid)
            deps = [d for d in eff.get(sid, ()) if d != sid and d in by_id]
            conds = normalize_conditions(s.conditions or {})
            dep_on = conds.get("depends_on") if isinstance(conds, dict) else None
            restrict: set[int] | None = None
            if dep_on:
                restrict = set()
                for d in dep_on:
                    try:
                        d = int(d)
                    except (TypeError, ValueError):
                        continue
                    if d in by_id and d != sid:
                        restrict.add(d)
                        # a rule may name a step that is not a dependency: wait for it too,
                        # as long as that cannot create a cycle (it comes earlier in order)
                        if d not in deps and rank[d] < rank[sid]:
                            deps.append(d)
            ds: list[int] = []
            gs: list[str] = []
            units: list[tuple[str, int, Any]] = []
            seen_groups: set[str] = set()
            for d in sorted(set(deps), key=rank.__getitem__):
                g = group_of.get(d)
                if g is not None and g != own:
                    if g not in seen_groups:
                        seen_groups.add(g)
                        gs.append(g)
                        if restrict is None or any(m in restrict for m in members[g]):
                            units.append((self.group_key[g], 1, g))
                else:
                    ds.append(d)
                    if restrict is None or d in restrict:
                        units.append((self.label[d], 0, d))
            dep_steps[sid] = tuple(ds)
            dep_groups[sid] = tuple(gs)
            cond_units[sid] = tuple(units)
            p = set(ds)
            for g in gs:
                p.update(members[g])
            preds[sid] = tuple(p)
            previous[sid] = max(deps, key=lambda d: (by_id[d].order, d)) if deps else None
            if runs_on_cancel(conds):
                always.add(sid)
            if s.approval_required or s.step_type == "approval":
                approval.add(sid)
            if isinstance(conds, dict) and conds.get("expression") is not None:
                expr_refs[sid] = self._referenced_steps(conds.get("expression"))
        self.dep_steps = dep_steps
        self.dep_groups = dep_groups
        self.cond_units = cond_units
        self.previous = previous
        self.always = frozenset(always)
        self.approval = frozenset(approval)
        self.preds = preds
        self.expr_refs = expr_refs
        self._succs: dict[int, tuple[int, ...]] | None = None
        self._policies: dict[int, dict[int, RetryPolicy]] = {}
        self._focus: dict[int, frozenset[int] | None] = {}
        self._lock = threading.Lock()

    def _referenced_steps(self, expression: Any) -> tuple[int, ...] | None:
        """The steps an expression reads through ``steps.NAME`` / ``steps["NAME"]``, so that its
        context carries only those (converting a 5,000-step map for every evaluation would cost
        ~0.1 s). Any other use of ``steps`` (``size(steps)``, ``steps.exists(...)``, an index
        that is not a literal) gets the whole map: None."""
        if not isinstance(expression, str):
            return ()
        names: set[str] = set()
        for m in _STEPS_WORD.finditer(expression):
            tail = expression[m.end():]
            acc = _STEPS_MEMBER.match(tail) or _STEPS_INDEX.match(tail)
            if acc is None:
                return None
            names.add(acc.group("name"))
        return tuple(sorted(self.by_label[n] for n in names if n in self.by_label))

    def policies(self, cap: int) -> dict[int, RetryPolicy]:
        """Parsed retry policies by step id (steps without a valid policy are absent)."""
        got = self._policies.get(cap)
        if got is None:
            got = {}
            for s in self.defn.steps:
                if s.retry_policy:
                    try:
                        got[s.id] = RetryPolicy.from_dict(s.retry_policy, cap=cap)
                    except (PolicyError, TypeError, ValueError):
                        pass  # an invalid stored policy means no retries
            with self._lock:
                self._policies[cap] = got
        return got

    def focus(self, step_id: int) -> frozenset[int] | None:
        """See focus_after_success (memoised per step)."""
        if step_id in self._focus:
            return self._focus[step_id]
        need: set[int] | None = {step_id}
        if step_id not in self.step or step_id in self.group_of:
            need = None
        else:
            for t in self.succs()[step_id]:
                refs = self.expr_refs.get(t, ())
                if t in self.group_of or self.dep_groups[t] or refs is None:
                    need = None
                    break
                need.add(t)
                need.update(self.dep_steps[t])
                need.update(refs)
                if self.previous[t] is not None:
                    need.add(self.previous[t])
        found = None if need is None else frozenset(need)
        with self._lock:
            self._focus[step_id] = found
        return found

    def succs(self) -> dict[int, tuple[int, ...]]:
        if self._succs is None:
            out: dict[int, list[int]] = {sid: [] for sid in self.order}
            for sid in self.order:
                for p in self.preds[sid]:
                    out[p].append(sid)
            self._succs = {k: tuple(v) for k, v in out.items()}
        return self._succs

    def descendants(self, seeds: Iterable[int]) -> set[int]:
        succs = self.succs()
        seen = set(seeds)
        stack = list(seen)
        while stack:
            for n in succs.get(stack.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    stack.append(n)
        return seen


_compiled_defs: DefinitionCache[_Compiled] = DefinitionCache(lambda defn: _Compiled(defn), size=32)


def _compiled(defn: PipelineDef) -> _Compiled:
    return _compiled_defs.get(defn)


# --------------------------------------------------------------------------- helpers


def _latest_attempts(c: _Compiled, snapshot: ExecutionSnapshot,
                     partial: bool = False) -> tuple[dict[int, Attempt], set[int]]:
    """Latest attempt per step (highest retry_count, then id), and the steps with several.
    A `partial` snapshot (see plan_after_success) may hold the attempts of some steps only."""
    latest: dict[int, Attempt] = {}
    multi: set[int] = set()
    step = c.step
    for a in snapshot.attempts:
        sid = a.step_id
        cur = latest.get(sid)
        if cur is None:
            if sid in step:
                latest[sid] = a
        else:
            multi.add(sid)
            if a.retry_count > cur.retry_count or (a.retry_count == cur.retry_count and a.id > cur.id):
                latest[sid] = a
    if len(latest) != len(step) and not partial:
        missing = sorted(set(step) - set(latest))
        raise ValueError(f"execution {snapshot.execution_id}: steps without an attempt: {missing}")
    return latest, multi


def _current_run(snapshot: ExecutionSnapshot, latest: dict[int, Attempt], multi: set[int],
                 sids: Iterable[int]) -> dict[int, list[Attempt]]:
    """Attempts of the current run of each step, oldest first (see module doc, Retries)."""
    out = {sid: [latest[sid]] for sid in sids}
    need = multi.intersection(out)
    if not need:
        return out
    by: dict[int, list[Attempt]] = {sid: [] for sid in need}
    for a in snapshot.attempts:
        lst = by.get(a.step_id)
        if lst is not None:
            lst.append(a)
    for sid, lst in by.items():
        lst.sort(key=lambda a: (a.retry_count, a.id))
        i = len(lst) - 1
        while i > 0 and lst[i].scheduled_for is not None:
            i -= 1
        out[sid] = lst[i:]
    return out


def _failure(a: Attempt) -> Failure:
    kind = a.failure
    if not kind:
        if a.status == _TIMED_OUT:
            kind = "timeout"
        elif a.exit_code not in (None, 0):
            kind = "exit"
        else:
            kind = "error"
    return Failure(kind, a.exit_code, a.log_tail or "")


def _outcome(status: str, a: Attempt, cof: bool, uf: bool) -> str:
    if status == _SUCCESS:
        return _SUCCESS
    if status in _FAILURES:
        return _SUCCESS if cof else _FAILED
    if status == _SKIPPED:
        return "upstream_failed" if uf else _SKIPPED
    return status


# --------------------------------------------------------------------------- the planner


class _Run:
    """One planning pass over a snapshot: current (virtually updated) state + decisions."""

    def __init__(self, snapshot: ExecutionSnapshot, now: datetime, partial: bool = False):
        c = _compiled(snapshot.definition)
        self.c = c
        self.snap = snapshot
        self.now = now
        latest, self.multi = _latest_attempts(c, snapshot, partial)
        self.latest = latest
        st: dict[int, str] = {}
        uf: dict[int, bool] = {}
        cond_error: set[int] = set()
        failures: list[int] = []
        SKIPPED, FAILURES = _SKIPPED, _FAILURES
        for sid, a in latest.items():
            s = st[sid] = a.status
            if s == SKIPPED:
                if a.upstream_failed:
                    uf[sid] = True
                if a.skip_reason and a.skip_reason.startswith(COND_ERROR_PREFIX):
                    cond_error.add(sid)
            elif s in FAILURES:
                failures.append(sid)
        self.st, self.uf, self.cond_error, self.failures = st, uf, cond_error, failures
        self.cancel = bool(snapshot.cancel_requested)
        self.pre: list[Decision] = []      # group-policy cancels
        self.out: list[Decision] = []      # per-step decisions
        self.wake: list[tuple[datetime, str]] = []
        self.retry: dict[int, ScheduleRetry] = {}   # failed steps that will retry
        self.gdec: dict[str, tuple[str, str]] = {}  # decided groups -> (status, reason)
        self.deadline: dict[str, datetime] = {}
        self.ctx_steps: dict[str, dict[str, Any]] | None = None
        self._runs: dict[int, list[Attempt]] | None = None
        self.retry_candidates: list[int] = []
        self.deadlocked: list[str] = []

    # -- state helpers

    def runs(self) -> dict[int, list[Attempt]]:
        if self._runs is None:
            need = set(self.retry_candidates)
            for g, gd in self.c.gdef.items():
                if gd.timeout_seconds:
                    need.update(self.c.members[g])
            self._runs = _current_run(self.snap, self.latest, self.multi, need)
        return self._runs

    def set(self, sid: int, status: str) -> None:
        self.st[sid] = status
        if self.ctx_steps is not None:
            self.ctx_steps[self.c.label[sid]]["status"] = status

    def outcome(self, sid: int) -> str:
        return _outcome(self.st[sid], self.latest[sid], self.c.step[sid].continue_on_failure,
                        self.uf.get(sid, False))

    def settled(self, sid: int) -> bool:
        return self.st[sid] in _TERMINAL and sid not in self.retry

    # -- retries

    def compute_retries(self) -> None:
        """Which failed steps retry (before group decisions, which may veto them)."""
        c, latest, now = self.c, self.latest, self.now
        if self.cancel or not self.failures:
            return
        policies = c.policies(self.snap.max_retries_cap)
        self.retry_candidates = cands = [sid for sid in self.failures if sid in policies]
        runs = self.runs()
        for sid in cands:
            a = latest[sid]
            f = _failure(a)
            if f.kind in _NO_RETRY_KINDS:
                continue
            pol = policies[sid]
            made = len(runs.get(sid, (a,)))  # attempts made in the current run
            try:
                if not pol.should_retry(made, f):
                    continue
                delay = float(pol.delay(made, seed=f"{self.snap.execution_id}:{sid}"))
            except Exception:  # a policy that cannot decide never retries
                continue
            base = a.finished_at or now
            self.retry[sid] = ScheduleRetry(sid, a.id, a.retry_count + 1, delay,
                                            base + timedelta(seconds=delay))

    # -- groups

    def group_early(self) -> None:
        """Winner (wait_any), final failure (fail_fast) and timeout decisions, with their cancels."""
        c, st, now = self.c, self.st, self.now
        for g in c.group_order:
            gd = c.gdef[g]
            mem = c.members[g]
            deadline = None
            if gd.timeout_seconds:
                runs = self.runs()
                starts = [a.started_at for m in mem for a in runs.get(m, ()) if a.started_at]
                if starts:
                    deadline = min(starts) + timedelta(seconds=gd.timeout_seconds)
                    self.deadline[g] = deadline

            def fin(sid: int) -> datetime:
                return self.latest[sid].finished_at or now

            def early_rank(sid: int):
                return (fin(sid), c.rank[sid])

            winner = None
            if gd.sync_policy == "wait_any":
                wins = [m for m in mem if st[m] == _SUCCESS]
                if wins:
                    winner = min(wins, key=early_rank)
            loser = None
            if gd.sync_policy == "fail_fast":
                fails = [m for m in mem if st[m] in _FAILURES and m not in self.retry
                         and not c.step[m].continue_on_failure]
                if fails:
                    loser = min(fails, key=early_rank)
            decided = None
            if winner is not None and (deadline is None or fin(winner) < deadline):
                decided = (_SUCCESS, f"wait_any: {c.label[winner]} succeeded first")
            elif loser is not None and (deadline is None or fin(loser) < deadline):
                decided = (_FAILED, f"fail_fast: {c.label[loser]} {st[loser]}")
            elif deadline is not None and now >= deadline and any(
                    st[m] not in _TERMINAL or m in self.retry
                    or (st[m] in (_TIMED_OUT, _CANCELLED)
                        and (self.latest[m].finished_at is None
                             or self.latest[m].finished_at >= deadline))
                    for m in mem):
                decided = (_TIMED_OUT,
                           f"group {c.group_key[g]} timed out after {gd.timeout_seconds}s")
            elif winner is not None:
                decided = (_SUCCESS, f"wait_any: {c.label[winner]} succeeded first")
            elif loser is not None:
                decided = (_FAILED, f"fail_fast: {c.label[loser]} {st[loser]}")
            if decided is None:
                continue
            self.gdec[g] = decided
            status, reason = decided
            for m in mem:
                self.retry.pop(m, None)  # a decided group's members do not retry
                s = st[m]
                if s in _TERMINAL:
                    continue
                cstat = _TIMED_OUT if status == _TIMED_OUT and s in (_QUEUED, _RUNNING, _WAITING) \
                    else _CANCELLED
                self.pre.append(Cancel(m, self.latest[m].id, cstat, reason))
                self.set(m, cstat)

    def group_outcome(self, g: str) -> str | None:
        """The group's status once decided (memoised), None while undecided."""
        got = self.gdec.get(g)
        if got is not None:
            return got[0]
        c = self.c
        mem = c.members[g]
        for m in mem:
            if not self.settled(m):
                return None
        outs = [self.outcome(m) for m in mem]
        failed = [c.label[m] for m, o in zip(mem, outs) if o in (_FAILED, "upstream_failed")]
        cancelled = [c.label[m] for m, o in zip(mem, outs) if o == _CANCELLED]
        policy = c.gdef[g].sync_policy
        if policy == "wait_any" and _SUCCESS in outs:
            res = (_SUCCESS, "wait_any: a member succeeded")
        elif failed:
            res = (_FAILED, f"{policy}: failed members: {', '.join(failed)}")
        elif cancelled:
            res = (_CANCELLED, f"{policy}: cancelled members: {', '.join(cancelled)}")
        else:
            res = (_SUCCESS, f"{policy}: no member failed")
        self.gdec[g] = res
        return res[0]

    # -- conditions

    def _entry(self, x: int) -> dict[str, Any]:
        a = self.latest[x]
        return {"status": self.st[x], "outputs": a.outputs, "exit_code": a.exit_code}

    def context(self, sid: int) -> dict[str, Any]:
        """The condition context (DESIGN §3). Only expressions read it, so other rules get it
        without ``steps``/``previous``; an expression gets the steps it names (see
        _Compiled._referenced_steps), or all of them when it uses the map as a whole."""
        c, snap = self.c, self.snap
        ctx: dict[str, Any] = {"variables": snap.variables, "trigger": snap.trigger, "steps": {},
                               "previous": {},
                               "execution": {"id": snap.execution_id, "status": snap.status}}
        if sid not in c.expr_refs:
            return ctx
        refs = c.expr_refs.get(sid)
        if refs is None:
            if self.ctx_steps is None:
                self.ctx_steps = {c.label[x]: self._entry(x) for x in c.order}
            ctx["steps"] = self.ctx_steps
        else:
            ctx["steps"] = {c.label[x]: self._entry(x) for x in refs}
        p = c.previous[sid]
        if p is not None:
            ctx["previous"] = {"name": c.label[p], **self._entry(p)}
        return ctx

    # -- the pass

    def decide_pending(self, sid: int, a: Attempt) -> None:
        c = self.c
        dep_outcomes: dict[str, str] = {}
        for key, kind, ref in c.cond_units[sid]:
            if kind:
                dep_outcomes[key] = _GROUP_DEP_OUTCOME[self.group_outcome(ref)]
            else:
                dep_outcomes[key] = self.outcome(ref)
        verdict = evaluate_rule(c.step[sid].conditions, dep_outcomes, self.context(sid), self.cancel)
        if verdict.error:
            expl = verdict.explanation or ""
            reason = COND_ERROR_PREFIX + str(verdict.error)
            if expl and expl != verdict.error:
                reason += f" ({expl})"
            self.out.append(Skip(sid, a.id, reason, False))
            self.set(sid, _SKIPPED)
            self.uf.pop(sid, None)
            self.cond_error.add(sid)
        elif verdict.result:
            if sid in c.approval and self.snap.approvals.get(sid) != "approved":
                self.out.append(AwaitApproval(sid, a.id))
                self.set(sid, _WAITING)
            else:
                self.out.append(Enqueue(sid, a.id))
                self.set(sid, _QUEUED)
        else:
            uf = verdict.upstream_failed
            self.out.append(Skip(sid, a.id, verdict.explanation or "condition is false", uf))
            self.set(sid, _SKIPPED)
            if uf:
                self.uf[sid] = True
            else:
                self.uf.pop(sid, None)

    def walk(self) -> None:
        c, st, latest, now, out, retry = self.c, self.st, self.latest, self.now, self.out, self.retry
        cancel, always, dep_steps, dep_groups = self.cancel, c.always, c.dep_steps, c.dep_groups
        TERMINAL, ACTIVE, PENDING = _TERMINAL, _ACTIVE, _PENDING
        unsettled = 0
        active = False
        for sid in c.order:
            s = st[sid]
            if s in TERMINAL:
                r = retry.get(sid)
                if r is not None:
                    out.append(r)
                    self.set(sid, _RETRY)
                    unsettled += 1
                    active = True
                    if r.run_at > now:
                        self.wake.append((r.run_at, f"retry of {c.label[sid]} due"))
                continue
            a = latest[sid]
            if cancel and (sid not in always or (sid in c.approval and self.snap.approvals.get(sid) != "approved")):
                # a gate that is not approved yet can never be: nobody decides on a cancelled run
                out.append(Cancel(sid, a.id, _CANCELLED, _CANCEL_REASON))
                self.set(sid, _CANCELLED)
                continue
            if s == PENDING:
                for d in dep_steps[sid]:
                    if st[d] not in TERMINAL or d in retry:
                        break
                else:
                    for g in dep_groups[sid]:
                        if self.group_outcome(g) is None:
                            break
                    else:
                        self.decide_pending(sid, a)
            elif s == _RETRY:
                if a.scheduled_for is None or a.scheduled_for <= now:
                    out.append(Enqueue(sid, a.id))
                    self.set(sid, _QUEUED)
                else:
                    self.wake.append((a.scheduled_for, f"retry of {c.label[sid]} due"))
            elif s == _WAITING:
                if self.snap.approvals.get(sid) == "approved":
                    out.append(Enqueue(sid, a.id))
                    self.set(sid, _QUEUED)
            # queued / running: nothing to decide
            s = st[sid]
            if s not in TERMINAL:
                unsettled += 1
                if s in ACTIVE:
                    active = True
        self.unsettled, self.active = unsettled, active

    def finish(self) -> list[Decision]:
        c = self.c
        decisions: list[Decision] = self.pre + self.out
        all_settled = self.unsettled == 0
        active = self.active
        if not all_settled and not active and not actionable(decisions):
            # nothing can ever move: only an invalid (cyclic) definition gets here
            stuck = [sid for sid in c.order if self.st[sid] not in _TERMINAL]
            self.deadlocked = [c.label[sid] for sid in stuck]
            for sid in stuck:
                decisions.append(Cancel(sid, self.latest[sid].id, _CANCELLED,
                                        "deadlock: its dependencies can never be satisfied"))
                self.set(sid, _CANCELLED)
            all_settled = True
        for g in c.group_order:
            st = self.group_outcome(g)
            if st is not None:
                decisions.append(FinishGroup(g, st, self.gdec[g][1]))
        if not all_settled:
            for g, dl in self.deadline.items():
                if g not in self.gdec and dl > self.now:
                    self.wake.append((dl, f"group {c.group_key[g]} times out"))
            if self.wake:
                at, why = min(self.wake)
                decisions.append(WakeAt(at, why))
            return decisions
        decisions.append(self.execution_outcome())
        return decisions

    def execution_outcome(self) -> FinishExecution:
        c = self.c
        if self.cancel:
            return FinishExecution(_CANCELLED, "cancelled on request")
        failed_steps = [c.label[sid] for sid in c.order
                        if sid not in c.group_of and self.outcome(sid) == _FAILED]
        failed_groups = []
        for g in c.group_order:
            st = self.group_outcome(g)
            if st in (_FAILED, _TIMED_OUT):
                names = [c.label[m] for m in c.members[g]
                         if self.st[m] in (_FAILED, _TIMED_OUT) and self.outcome(m) == _FAILED]
                failed_groups.append(f"{c.group_key[g]} ({st}"
                                     + (f": {', '.join(names)}" if names else "") + ")")
        errors = [c.label[sid] for sid in c.order if sid in self.cond_error]
        if failed_steps or failed_groups or errors or self.deadlocked:
            parts = []
            if self.deadlocked:
                parts.append("deadlock: " + ", ".join(self.deadlocked) + " can never run")
            if failed_steps:
                parts.append("failed steps: " + ", ".join(failed_steps))
            if failed_groups:
                parts.append("failed groups: " + ", ".join(failed_groups))
            if errors:
                parts.append("condition errors: " + ", ".join(errors))
            return FinishExecution(_FAILED, "; ".join(parts))
        return FinishExecution(_SUCCESS, f"all {len(c.order)} steps finished")


def plan(snapshot: ExecutionSnapshot, now: datetime) -> list[Decision]:
    """The decisions for this moment (see the module doc). [] for a finished execution."""
    if snapshot.status in _EXEC_TERMINAL:
        return []
    run = _Run(snapshot, now)
    run.compute_retries()
    run.group_early()
    run.walk()
    return run.finish()


def focus_after_success(defn: PipelineDef, step_id: int) -> frozenset[int] | None:
    """The steps whose attempts ``plan_after_success`` must see after `step_id` succeeded: the
    step, its dependents, their dependencies and the steps their expressions read. None when
    only a full plan can decide (the step or a dependent is in a group, a dependent waits for a
    group, or an expression reads the whole ``steps`` map)."""
    return _compiled(defn).focus(step_id)


def plan_after_success(snapshot: ExecutionSnapshot, now: datetime, step_id: int) -> list[Decision] | None:
    """The decisions that `step_id`'s success makes, from a snapshot that may hold only the
    attempts of ``focus_after_success`` (the runtime's hot path: a finished step must not cost
    a read of every attempt of a 1,000-step execution).

    It answers only the common case, and None otherwise (the caller then runs ``plan``): every
    dependency of a dependent that is now ready succeeded, and each such dependent's rule says
    "run" without an approval gate. Its answer is then exactly ``plan``'s decisions about those
    dependents, provided the snapshot before the success was fully planned (the runtime's
    invariant). It never finishes the execution: the caller knows from its counts whether any
    step is still open.
    """
    c = _compiled(snapshot.definition)
    if snapshot.status in _EXEC_TERMINAL or snapshot.cancel_requested or c.focus(step_id) is None:
        return None
    run = _Run(snapshot, now, partial=True)
    st = run.st
    if st.get(step_id) != _SUCCESS:
        return None
    for t in c.succs()[step_id]:  # in topological order
        a = run.latest.get(t)
        if a is None:
            return None
        if st[t] != _PENDING:
            continue
        deps = [st.get(d) for d in c.dep_steps[t]]
        if None in deps:
            return None
        if any(x not in _TERMINAL for x in deps):
            continue  # still waiting for another dependency
        if any(x != _SUCCESS for x in deps):
            return None  # failures, skips and retries are plan()'s
        run.decide_pending(t, a)
    if any(not isinstance(d, Enqueue) for d in run.out):
        return None
    return run.out


def step_outcomes(snapshot: ExecutionSnapshot) -> dict[int, str]:
    """Effective outcome per step id: success (also a continue_on_failure failure), failed
    (failed or timed_out), skipped (by a condition or bypassed), upstream_failed, cancelled;
    the raw state for a step that is not terminal."""
    c = _compiled(snapshot.definition)
    latest = _latest_attempts(c, snapshot)[0]
    return {sid: _outcome(latest[sid].status, latest[sid], c.step[sid].continue_on_failure,
                          latest[sid].upstream_failed) for sid in c.order}


def group_outcomes(snapshot: ExecutionSnapshot, now: datetime) -> dict[str, str | None]:
    """Group id -> "success"|"failed"|"timed_out"|"cancelled", None while undecided, as the
    planner sees it at ``now`` (with its pending decisions for this moment applied)."""
    c = _compiled(snapshot.definition)
    run = _Run(snapshot, now)
    run.compute_retries()
    run.group_early()
    if snapshot.status not in _EXEC_TERMINAL:
        run.walk()
    return {g: run.group_outcome(g) for g in c.group_order}


# --------------------------------------------------------------------------- resume / retry


@dataclass(frozen=True)
class ResumePlan:
    keep: frozenset[int]   # keep results and outputs
    rerun: frozenset[int]  # start again (fresh pending attempts)


def _check_ids(c: _Compiled, ids: Iterable[int]) -> set[int]:
    out = set(ids)
    unknown = out - set(c.step)
    if unknown:
        raise KeyError(f"unknown step ids: {sorted(unknown)}")
    return out


def plan_resume(snapshot: ExecutionSnapshot, from_steps: Iterable[int] | None = None) -> ResumePlan:
    """Which steps a resumed execution keeps and which it runs again (DESIGN §3).

    rerun = from_steps (default: the steps that ended failed/timed_out, not
    continue_on_failure) + steps that ended cancelled, upstream_failed, failed or not at all,
    + everything downstream of those (barrier edges: downstream of a member includes what
    depends on its group). keep = the rest (succeeded, skipped by a condition or bypassed,
    continue_on_failure failures)."""
    c = _compiled(snapshot.definition)
    latest = _latest_attempts(c, snapshot)[0]
    seeds: set[int] = set()
    for sid in c.order:
        a = latest[sid]
        o = _outcome(a.status, a, c.step[sid].continue_on_failure, a.upstream_failed)
        if o in (_FAILED, _CANCELLED, "upstream_failed") or a.status not in _TERMINAL:
            seeds.add(sid)
    if from_steps is not None:
        seeds |= _check_ids(c, from_steps)
    rerun = c.descendants(seeds)
    return ResumePlan(keep=frozenset(set(c.order) - rerun), rerun=frozenset(rerun))


def plan_retry_step(snapshot: ExecutionSnapshot, step_id: int) -> frozenset[int]:
    """The steps to reset in place for retry_step: the step, its group siblings that ended
    cancelled or upstream_failed (a fail_fast group cancelled them because of this step), and
    everything downstream of those."""
    c = _compiled(snapshot.definition)
    _check_ids(c, (step_id,))
    latest = _latest_attempts(c, snapshot)[0]
    seeds = {step_id}
    g = c.group_of.get(step_id)
    if g is not None:
        for m in c.members[g]:
            a = latest[m]
            if a.status == _CANCELLED or (a.status == _SKIPPED and a.upstream_failed):
                seeds.add(m)
    return frozenset(c.descendants(seeds))
