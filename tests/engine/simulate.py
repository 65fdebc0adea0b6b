"""A small, pure, discrete-event simulator of the service loop around ``engine.planner.plan``.

It plays the part of the services and the workers: it builds a snapshot, calls plan(),
applies every decision the way the services would (checking each step transition against
engine.states), then, when plan() has nothing actionable left, lets the next thing happen:
a running step finishes (outcome from a seeded RNG or a script), an approver answers, a
cancel request arrives, or the clock reaches the planner's WakeAt. A step budget turns a
livelock into an error. Everything is recorded in ``log`` (and per-step status history) so
property tests can check what happened and in which order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from webapp.engine import planner as P
from webapp.engine.states import STEP_TERMINAL, can_transition
from webapp.engine.types import Attempt, ExecutionSnapshot, PipelineDef

T0 = datetime(2024, 1, 1, 12, 0, 0)


class SimError(AssertionError):
    """The planner asked for something the services would refuse, or the run never ended."""


@dataclass(frozen=True)
class Event:
    seq: int
    at: datetime
    kind: str          # plan | enqueue | skip | await_approval | schedule_retry | cancel |
    #                    finish_group | finish | complete | approve | reject | cancel_requested | wake
    step_id: int | None = None
    attempt_id: int | None = None
    info: Any = None


@dataclass
class Simulator:
    definition: PipelineDef
    seed: int = 0
    p_fail: float = 0.2
    p_timeout: float = 0.05
    # step id -> outcomes for its successive attempts ("success"|"failed"|"timed_out"|(status, exit_code));
    # when the script runs out (or for other steps) the RNG decides
    script: dict[int, list[Any]] = field(default_factory=dict)
    approve: bool | float = True        # True/False, or the probability of approving
    cancel_at: datetime | None = None   # when a person presses "cancel"
    durations: tuple[float, float] = (1.0, 120.0)
    approval_delay: tuple[float, float] = (5.0, 600.0)
    variables: dict[str, Any] = field(default_factory=dict)
    check_determinism: bool = True
    # how many things may happen between two plan() calls (1..batch, drawn each time): >1 models
    # several workers finishing before the service gets to advance the execution
    batch: int = 1
    budget: int | None = None
    execution_id: str = "exec-1"
    now: datetime = T0
    # after each lone success, compare plan_after_success on a partial snapshot with plan()
    check_focused: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.attempts: dict[int, Attempt] = {}
        self.latest: dict[int, int] = {}
        self.approvals: dict[int, str] = {}
        self.status = "running"
        self.finish_reason = ""
        self.cancel_requested = False
        self.log: list[Event] = []
        self.hist: dict[int, list[tuple[int, str]]] = {}
        self.groups: dict[str, str] = {}          # first FinishGroup per group
        self.enqueued: list[int] = []             # attempt ids, in order
        self.running: dict[int, tuple[datetime, str, int | None]] = {}  # attempt -> (finish at, outcome, exit)
        self.answers: dict[int, tuple[datetime, bool]] = {}  # step -> (answer at, approve?)
        self.wake: datetime | None = None
        self.plans = 0
        self.focused_checks = 0   # successes the focused plan answered (and matched plan())
        self._lone_success: int | None = None
        self._next_id = 1
        self._seq = 0
        for s in sorted(self.definition.steps, key=lambda s: (s.order, s.id)):
            self._new_attempt(s.id, 0, "pending")
        if self.budget is None:
            self.budget = 200 + 40 * len(self.definition.steps)

    # ------------------------------------------------------------------ bookkeeping

    def _emit(self, kind: str, step_id=None, attempt_id=None, info=None) -> Event:
        self._seq += 1
        ev = Event(self._seq, self.now, kind, step_id, attempt_id, info)
        self.log.append(ev)
        return ev

    def _new_attempt(self, step_id: int, retry_count: int, status: str, **kw) -> Attempt:
        a = Attempt(id=self._next_id, step_id=step_id, retry_count=retry_count, status=status, **kw)
        self._next_id += 1
        self.attempts[a.id] = a
        self.latest[step_id] = a.id
        self.hist.setdefault(step_id, []).append((self._seq, status))
        return a

    def _update(self, aid: int, status: str | None = None, **kw) -> Attempt:
        a = self.attempts[aid]
        if status is not None and status != a.status:
            if not can_transition("step", a.status, status):
                raise SimError(f"forbidden step transition {a.status} -> {status} (attempt {aid})")
            kw["status"] = status
        a = replace(a, **kw)
        self.attempts[aid] = a
        if status is not None and self.latest[a.step_id] == aid:
            self.hist[a.step_id].append((self._seq, status))
        return a

    def _current(self, step_id: int, attempt_id: int, what: str) -> Attempt:
        if self.latest.get(step_id) != attempt_id:
            raise SimError(f"{what}: attempt {attempt_id} is not the latest of step {step_id}")
        return self.attempts[attempt_id]

    def snapshot(self) -> ExecutionSnapshot:
        return ExecutionSnapshot(
            execution_id=self.execution_id, definition=self.definition,
            attempts=tuple(self.attempts.values()), status=self.status,
            cancel_requested=self.cancel_requested, variables=self.variables,
            trigger={"type": "manual"}, started_at=T0, approvals=dict(self.approvals))

    def status_at(self, step_id: int, seq: int) -> str:
        """The step's (latest attempt's) status right after event ``seq``."""
        out = "pending"
        for s, status in self.hist[step_id]:
            if s > seq:
                break
            out = status
        return out

    def final(self, step_id: int) -> Attempt:
        return self.attempts[self.latest[step_id]]

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.log if e.kind == kind]

    # ------------------------------------------------------------------ outcomes

    def _draw_outcome(self, step_id: int) -> tuple[str, int | None]:
        script = self.script.get(step_id)
        if script:
            o = script.pop(0)
            if isinstance(o, tuple):
                return o
            return o, (0 if o == "success" else 1 if o == "failed" else None)
        r = self.rng.random()
        if r < self.p_timeout:
            return "timed_out", None
        if r < self.p_timeout + self.p_fail:
            return "failed", self.rng.choice((1, 2, 127))
        return "success", 0

    # ------------------------------------------------------------------ applying decisions

    def apply(self, decisions: list[P.Decision]) -> None:
        for d in decisions:
            if isinstance(d, P.Enqueue):
                a = self._current(d.step_id, d.attempt_id, "Enqueue")
                if d.attempt_id in self.enqueued:
                    raise SimError(f"attempt {d.attempt_id} enqueued twice")
                self._emit("enqueue", d.step_id, d.attempt_id, a.status)
                self._update(d.attempt_id, "queued")
                self.enqueued.append(d.attempt_id)
                # a worker picks it up at once
                self._update(d.attempt_id, "running", started_at=self.now)
                outcome, code = self._draw_outcome(d.step_id)
                dur = self.rng.uniform(*self.durations)
                self.running[d.attempt_id] = (self.now + timedelta(seconds=dur), outcome, code)
            elif isinstance(d, P.Skip):
                self._current(d.step_id, d.attempt_id, "Skip")
                self._emit("skip", d.step_id, d.attempt_id, (d.reason, d.upstream_failed))
                self._update(d.attempt_id, "skipped", skip_reason=d.reason,
                             upstream_failed=d.upstream_failed, finished_at=self.now)
            elif isinstance(d, P.AwaitApproval):
                self._current(d.step_id, d.attempt_id, "AwaitApproval")
                self._emit("await_approval", d.step_id, d.attempt_id)
                self._update(d.attempt_id, "waiting_approval")
                self.approvals[d.step_id] = "pending"
                ok = self.approve if isinstance(self.approve, bool) else self.rng.random() < self.approve
                self.answers[d.step_id] = (
                    self.now + timedelta(seconds=self.rng.uniform(*self.approval_delay)), ok)
            elif isinstance(d, P.ScheduleRetry):
                a = self._current(d.step_id, d.failed_attempt_id, "ScheduleRetry")
                if a.status not in ("failed", "timed_out"):
                    raise SimError(f"ScheduleRetry of a {a.status} attempt")
                if d.retry_count != a.retry_count + 1:
                    raise SimError("ScheduleRetry.retry_count must follow the failed attempt's")
                self._emit("schedule_retry", d.step_id, d.failed_attempt_id, d)
                self._new_attempt(d.step_id, d.retry_count, "retry_scheduled",
                                  scheduled_for=d.run_at)
            elif isinstance(d, P.Cancel):
                a = self._current(d.step_id, d.attempt_id, "Cancel")
                self._emit("cancel", d.step_id, d.attempt_id, (d.status, d.reason, a.status))
                self._update(d.attempt_id, d.status, finished_at=self.now,
                             failure="cancelled" if d.status == "cancelled" else "timeout")
                self.running.pop(d.attempt_id, None)
                if self.approvals.get(d.step_id) == "pending":
                    self.approvals[d.step_id] = "cancelled"
                    self.answers.pop(d.step_id, None)
            elif isinstance(d, P.FinishGroup):
                if d.group_id not in self.groups:
                    self.groups[d.group_id] = d.status
                    self._emit("finish_group", None, None, (d.group_id, d.status, d.reason))
            elif isinstance(d, P.WakeAt):
                if d.at <= self.now:
                    raise SimError(f"WakeAt in the past: {d}")
                self.wake = d.at
            elif isinstance(d, P.FinishExecution):
                for sid, aid in self.latest.items():
                    if self.attempts[aid].status not in STEP_TERMINAL:
                        raise SimError(f"FinishExecution while step {sid} is {self.attempts[aid].status}")
                self._emit("finish", None, None, (d.status, d.reason))
                self.status = d.status
                self.finish_reason = d.reason
            else:  # pragma: no cover
                raise SimError(f"unknown decision {d!r}")

    # ------------------------------------------------------------------ the loop

    def _next_event(self) -> tuple[datetime, int, str, int] | None:
        cands: list[tuple[datetime, int, str, int]] = []
        if self.wake is not None:
            cands.append((self.wake, 0, "wake", 0))
        if self.cancel_at is not None and not self.cancel_requested:
            cands.append((max(self.cancel_at, self.now), 1, "cancel", 0))
        for aid, (at, _, _) in self.running.items():
            cands.append((at, 2, "complete", aid))
        for sid, (at, _) in self.answers.items():
            cands.append((at, 3, "answer", sid))
        return min(cands) if cands else None

    def _happen(self, ev: tuple[datetime, int, str, int]) -> None:
        at, _, kind, ref = ev
        self.now = max(self.now, at)
        if kind == "wake":
            self.wake = None
            self._emit("wake")
        elif kind == "cancel":
            self.cancel_requested = True
            self._emit("cancel_requested")
        elif kind == "complete":
            _, outcome, code = self.running.pop(ref)
            a = self.attempts[ref]
            failure = None if outcome == "success" else "timeout" if outcome == "timed_out" else "exit"
            self._emit("complete", a.step_id, ref, outcome)
            self._update(ref, outcome, finished_at=self.now, exit_code=code, failure=failure,
                         outputs={"attempt": str(a.retry_count)} if outcome == "success" else {},
                         log_tail=f"exit {code}")
        elif kind == "answer":
            _, ok = self.answers.pop(ref)
            aid = self.latest[ref]
            if self.attempts[aid].status != "waiting_approval":
                return
            if ok:
                self.approvals[ref] = "approved"
                self._emit("approve", ref, aid)
            else:
                self.approvals[ref] = "rejected"
                self._emit("reject", ref, aid)
                self._update(aid, "failed", finished_at=self.now, failure="rejected")

    def run(self) -> "Simulator":
        for _ in range(self.budget):
            snap = self.snapshot()
            decisions = P.plan(snap, self.now)
            self.plans += 1
            if self._lone_success is not None:
                self._check_focused(snap, decisions, self._lone_success)
                self._lone_success = None
            if self.check_determinism:
                again = P.plan(snap, self.now)
                if again != decisions:
                    raise SimError(f"plan() is not deterministic:\n{decisions}\n{again}")
            self._emit("plan", info=decisions)
            self.wake = None
            self.apply(decisions)
            if self.status in ("success", "failed", "cancelled"):
                if P.plan(self.snapshot(), self.now) != []:
                    raise SimError("plan() of a finished execution must be []")
                return self
            if P.actionable(decisions):
                continue
            ev = self._next_event()
            if ev is None:
                raise SimError("stuck: nothing running, nothing scheduled, and no FinishExecution")
            self._happen(ev)
            if ev[2] == "complete" and self.attempts[ev[3]].status == "success" and self.check_focused:
                self._lone_success = self.attempts[ev[3]].step_id
            extra = self.rng.randint(1, self.batch) - 1 if ev[2] not in ("wake", "cancel") else 0
            for _ in range(extra):
                ev = self._next_event()
                if ev is None or ev[2] in ("wake", "cancel"):  # time never passes a WakeAt unplanned
                    break
                self._happen(ev)
                self._lone_success = None  # several things happened: not the focused plan's case
        raise SimError(f"livelock: no FinishExecution after {self.budget} rounds")


    def _check_focused(self, snap: ExecutionSnapshot, full: list, step_id: int) -> None:
        """The runtime's fast path must agree with plan() whenever it answers."""
        focus = P.focus_after_success(self.definition, step_id)
        if focus is None:
            return
        part = replace(snap, attempts=tuple(a for a in snap.attempts if a.step_id in focus))
        got = P.plan_after_success(part, self.now, step_id)
        if got is None:
            return
        want = [d for d in full if not isinstance(d, (P.FinishGroup, P.WakeAt, P.FinishExecution))]
        if got != want:
            raise SimError(f"plan_after_success({step_id}) = {got}, plan() = {want}")
        self.focused_checks += 1


def simulate(definition: PipelineDef, **kw) -> Simulator:
    return Simulator(definition, **kw).run()

