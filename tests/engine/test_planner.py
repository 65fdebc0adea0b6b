"""The planner (DESIGN §3 "Execution semantics"): table tests per rule, then properties over
random pipelines run through tests/engine/simulate.py."""
from __future__ import annotations

import os
import random
import sys
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from webapp.engine import graph, planner as P
from webapp.engine.conditions import normalize_conditions, runs_on_cancel, uses_status_functions
from webapp.engine.planner import (
    AwaitApproval, Cancel, Enqueue, FinishExecution, FinishGroup, ResumePlan, ScheduleRetry, Skip,
    WakeAt, actionable, group_outcomes, plan, plan_resume, plan_retry_step, step_outcomes,
)
from webapp.engine.retry import RetryPolicy
from webapp.engine.states import STEP_TERMINAL
from webapp.engine.types import Attempt, ExecutionSnapshot, GroupDef, PipelineDef, StepDef

sys.path.insert(0, os.path.dirname(__file__))
from simulate import T0, SimError, Simulator, simulate  # noqa: E402

T = T0


# --------------------------------------------------------------------------- builders


def S(id, deps=(), name=None, order=None, **kw) -> StepDef:
    return StepDef(id=id, name=name or f"s{id}", order=id if order is None else order,
                   dependencies=None if deps is None else tuple(deps), **kw)


def D(*steps, groups=()) -> PipelineDef:
    return PipelineDef(steps=tuple(steps), groups=tuple(groups))


_TIMED = {"running", "success", "failed", "timed_out"}


def _att(sid: int, i: int, spec) -> Attempt:
    if isinstance(spec, str):
        spec = {"status": spec}
    spec = dict(spec)
    status = spec.setdefault("status", "pending")
    if status in _TIMED:
        spec.setdefault("started_at", T)
    if status in STEP_TERMINAL:
        spec.setdefault("finished_at", spec.get("started_at") or T)
    if status == "failed":
        spec.setdefault("exit_code", 1)
        spec.setdefault("failure", "exit")
    if status == "timed_out":
        spec.setdefault("failure", "timeout")
    spec.setdefault("retry_count", i)
    return Attempt(id=sid * 100 + i, step_id=sid, **spec)


def mk(defn: PipelineDef, states: dict | None = None, **kw) -> ExecutionSnapshot:
    """states: step id -> status | dict of Attempt fields | list of those (successive attempts)."""
    states = states or {}
    attempts = []
    for s in defn.steps:
        spec = states.get(s.id, "pending")
        specs = spec if isinstance(spec, list) else [spec]
        attempts += [_att(s.id, i, x) for i, x in enumerate(specs)]
    kw.setdefault("execution_id", "e1")
    return ExecutionSnapshot(definition=defn, attempts=tuple(attempts), **kw)


def aid(sid: int, i: int = 0) -> int:
    return sid * 100 + i


def brief(ds) -> list[tuple]:
    out = []
    for d in ds:
        if isinstance(d, (Enqueue, AwaitApproval)):
            out.append((type(d).__name__, d.step_id))
        elif isinstance(d, Skip):
            out.append(("Skip", d.step_id, d.upstream_failed))
        elif isinstance(d, Cancel):
            out.append(("Cancel", d.step_id, d.status))
        elif isinstance(d, ScheduleRetry):
            out.append(("ScheduleRetry", d.step_id, d.retry_count))
        elif isinstance(d, FinishGroup):
            out.append(("FinishGroup", d.group_id, d.status))
        elif isinstance(d, FinishExecution):
            out.append(("FinishExecution", d.status))
        elif isinstance(d, WakeAt):
            out.append(("WakeAt", d.at))
    return out


def finish(ds):
    got = [d for d in ds if isinstance(d, FinishExecution)]
    return got[0] if got else None


# --------------------------------------------------------------------------- readiness, stage rule


def test_roots_enqueue_and_dependents_wait():
    d = D(S(1), S(2, [1]), S(3, [1]), S(4, [2, 3]))
    assert brief(plan(mk(d), T)) == [("Enqueue", 1)]
    assert brief(plan(mk(d, {1: "running"}), T)) == []
    assert brief(plan(mk(d, {1: "success"}), T)) == [("Enqueue", 2), ("Enqueue", 3)]
    assert brief(plan(mk(d, {1: "success", 2: "success", 3: "running"}), T)) == []
    ds = plan(mk(d, {1: "success", 2: "success", 3: "success"}), T)
    assert ds == [Enqueue(4, aid(4))]
    done = plan(mk(d, {1: "success", 2: "success", 3: "success", 4: "success"}), T)
    assert done == [FinishExecution("success", "all 4 steps finished")]


def test_stage_rule_implicit_dependency_on_previous_stage():
    """dependencies=None: depends on the previous stage by order; a group is one stage."""
    d = D(S(1, None), S(2, None, parallel_group="g"), S(3, None, parallel_group="g"), S(4, None),
          groups=[GroupDef("g")])
    assert brief(plan(mk(d), T)) == [("Enqueue", 1)]
    assert brief(plan(mk(d, {1: "success"}), T)) == [("Enqueue", 2), ("Enqueue", 3)]
    # 4 waits for the whole group (stage), not just one member
    assert brief(plan(mk(d, {1: "success", 2: "success", 3: "running"}), T)) == []


def test_finished_execution_plans_nothing():
    d = D(S(1))
    for status in ("success", "failed", "cancelled"):
        assert plan(mk(d, status=status), T) == []


def test_queued_and_running_steps_need_no_decision():
    d = D(S(1), S(2))
    assert plan(mk(d, {1: "queued", 2: "running"}), T) == []


def test_missing_attempt_is_an_error():
    d = D(S(1), S(2))
    snap = ExecutionSnapshot("e", d, attempts=(Attempt(1, 1),))
    with pytest.raises(ValueError, match="without an attempt"):
        plan(snap, T)


# --------------------------------------------------------------------------- trigger rules


RULE_TABLE = [
    # rule, outcome of dep 1, outcome of dep 2, expected decision for step 3
    ("on_success", "success", "success", "run"),
    ("on_success", "success", "skipped", "run"),
    ("on_success", "success", "failed", "upstream_failed"),
    ("on_success", "upstream_failed", "success", "upstream_failed"),
    ("on_success", "cancelled", "success", "skip"),
    (None, "failed", "success", "upstream_failed"),          # default rule is on_success
    ("on_failure", "success", "failed", "run"),
    ("on_failure", "upstream_failed", "success", "run"),
    ("on_failure", "success", "success", "skip"),
    ("on_failure", "timed_out", "success", "run"),           # timed_out counts as failed
    ("always", "failed", "cancelled", "run"),
    ("always", "success", "success", "run"),
    ("one_success", "failed", "success", "run"),
    ("one_success", "failed", "failed", "upstream_failed"),
    ("one_success", "skipped", "skipped", "skip"),
    ("none_failed", "success", "skipped", "run"),
    ("none_failed", "failed", "success", "upstream_failed"),
    ("none_failed", "skipped", "skipped", "run"),
]

_STATE_FOR = {
    "success": "success", "failed": "failed", "timed_out": "timed_out", "cancelled": "cancelled",
    "skipped": {"status": "skipped", "skip_reason": "condition"},
    "upstream_failed": {"status": "skipped", "upstream_failed": True, "skip_reason": "up"},
}


@pytest.mark.parametrize("rule,o1,o2,expected", RULE_TABLE)
def test_trigger_rules(rule, o1, o2, expected):
    """Airflow trigger rules (all_success -> on_success, all_failed/one_failed -> on_failure,
    all_done -> always, one_success, none_failed): a false verdict of a rule that needs its
    upstream to succeed marks the skip upstream_failed, as Airflow does, so failures propagate."""
    cond = {"type": rule} if rule else None
    d = D(S(1), S(2), S(3, [1, 2], conditions=cond))
    ds = plan(mk(d, {1: _STATE_FOR[o1], 2: _STATE_FOR[o2]}), T)
    mine = [x for x in ds if getattr(x, "step_id", None) == 3]
    assert len(mine) == 1
    got = mine[0]
    if expected == "run":
        assert got == Enqueue(3, aid(3))
    else:
        assert isinstance(got, Skip)
        assert got.upstream_failed == (expected == "upstream_failed")
        assert got.reason.startswith("skipped:")  # the explanation is the stored reason


def test_failure_propagates_down_a_chain_in_one_call():
    """Skips are treated as applied: the whole upstream_failed chain and the on_failure
    handler come out of a single plan() call (fixpoint), then FinishExecution."""
    d = D(S(1), S(2, [1]), S(3, [2]), S(4, [3]), S(5, [3], conditions={"type": "on_failure"}),
          S(6, [5]))
    ds = plan(mk(d, {1: "failed"}), T)
    assert brief(ds) == [("Skip", 2, True), ("Skip", 3, True), ("Skip", 4, True),
                         ("Enqueue", 5)]
    ds = plan(mk(d, {1: "failed", 2: _STATE_FOR["upstream_failed"],
                     3: _STATE_FOR["upstream_failed"], 4: _STATE_FOR["upstream_failed"],
                     5: "success"}), T)
    assert brief(ds) == [("Enqueue", 6)]
    ds = plan(mk(d, {1: "failed", 2: _STATE_FOR["upstream_failed"],
                     3: _STATE_FOR["upstream_failed"], 4: _STATE_FOR["upstream_failed"],
                     5: "success", 6: "success"}), T)
    assert brief(ds) == [("FinishExecution", "failed")]
    assert "s1" in finish(ds).reason


def test_chain_of_skips_and_finish_in_one_call():
    d = D(S(1), S(2, [1]), S(3, [2]))
    ds = plan(mk(d, {1: "failed"}), T)
    assert brief(ds) == [("Skip", 2, True), ("Skip", 3, True), ("FinishExecution", "failed")]
    assert finish(ds).reason == "failed steps: s1"


def test_depends_on_restricts_the_rule_to_the_named_dependencies():
    d = D(S(1), S(2), S(3, [1, 2], conditions={"type": "on_failure", "depends_on": [2]}))
    # 1 failed, 2 succeeded: on_failure looks only at 2 -> skip (not upstream_failed)
    ds = plan(mk(d, {1: "failed", 2: "success"}), T)
    assert brief([x for x in ds if getattr(x, "step_id", 0) == 3]) == [("Skip", 3, False)]
    ds = plan(mk(d, {1: "success", 2: "failed"}), T)
    assert Enqueue(3, aid(3)) in ds
    # but the step still waits for every dependency
    assert plan(mk(d, {1: "running", 2: "failed"}), T) == []


def test_expression_condition_and_its_explanation():
    d = D(S(1, name="build"), S(2, [1], name="deploy", conditions={
        "type": "expression",
        "expression": '$variables.env === "production" && steps.build.outputs.ok == "1"'}))
    ok = {1: {"status": "success", "outputs": {"ok": "1"}}}
    assert plan(mk(d, ok, variables={"env": "production"}), T) == [Enqueue(2, aid(2))]
    ds = plan(mk(d, ok, variables={"env": "staging"}), T)
    skip = ds[0]
    assert isinstance(skip, Skip) and not skip.upstream_failed
    assert "staging" in skip.reason  # the values it saw are stored
    assert finish(ds).status == "success"


def test_expression_sees_previous_and_execution():
    d = D(S(1, name="a"), S(2, name="b"), S(3, [1, 2], conditions={
        "type": "expression",
        "expression": 'previous.name == "b" && previous.exit_code == 0 && execution.id == "e1"'}))
    ds = plan(mk(d, {1: "success", 2: {"status": "success", "exit_code": 0}}), T)
    assert ds == [Enqueue(3, aid(3))]


def test_expression_error_skips_loudly_and_fails_the_execution():
    """A broken expression is not a quiet "false": the skip says "condition error: ..." and the
    execution fails (recognised later by the stored skip_reason)."""
    d = D(S(1), S(2, [1], conditions={"type": "expression", "expression": "variables.nope == 1"}))
    ds = plan(mk(d, {1: "success"}), T)
    skip = ds[0]
    assert isinstance(skip, Skip) and not skip.upstream_failed
    assert skip.reason.startswith(P.COND_ERROR_PREFIX)
    assert finish(ds).status == "failed" and "condition errors: s2" in finish(ds).reason
    # later, from the stored reason
    later = mk(d, {1: "success", 2: {"status": "skipped", "skip_reason": skip.reason}})
    assert finish(plan(later, T)).status == "failed"


# --------------------------------------------------------------------------- continue_on_failure, bypass


def test_continue_on_failure_counts_as_success():
    d = D(S(1, continue_on_failure=True), S(2, [1]))
    assert plan(mk(d, {1: "failed"}), T) == [Enqueue(2, aid(2))]
    assert brief(plan(mk(d, {1: "timed_out", 2: "success"}), T)) == [("FinishExecution", "success")]
    assert step_outcomes(mk(d, {1: "failed", 2: "success"})) == {1: "success", 2: "success"}


def test_bypassed_step_lets_downstream_go_on():
    """bypass: a person marks a failed step skipped (failed -> skipped, bypassed=True)."""
    d = D(S(1), S(2, [1]))
    byp = {"status": "skipped", "bypassed": True, "skip_reason": "bypassed by ann: flaky"}
    assert plan(mk(d, {1: byp}), T) == [Enqueue(2, aid(2))]
    assert brief(plan(mk(d, {1: byp, 2: "success"}), T)) == [("FinishExecution", "success")]
    assert step_outcomes(mk(d, {1: byp}))[1] == "skipped"


# --------------------------------------------------------------------------- retries


def _policy(**kw):
    base = {"max_retries": 3, "delay_seconds": 10, "backoff": "exponential",
            "max_delay_seconds": 300, "jitter": 0, "retry_on": ["any"]}
    base.update(kw)
    return base


def test_retry_fail_twice_then_succeed():
    """Argo retryStrategy: limit + backoff{duration, factor, maxDuration}; every attempt is its
    own row; max_retries 3, failing twice then succeeding makes 3 attempts, delays from the policy."""
    pol = _policy()
    d = D(S(1, retry_policy=pol), S(2, [1]))
    sim = simulate(d, script={1: ["failed", "failed", "success"], 2: ["success"]})
    assert sim.status == "success"
    tries = sorted((a for a in sim.attempts.values() if a.step_id == 1), key=lambda a: a.retry_count)
    assert [a.status for a in tries] == ["failed", "failed", "success"]
    rp = RetryPolicy.from_dict(pol)
    sched = [e.info for e in sim.events("schedule_retry")]
    assert [r.retry_count for r in sched] == [1, 2]
    for r in sched:
        assert r.delay_seconds == pytest.approx(rp.delay(r.retry_count, seed="exec-1:1"))
    for prev, nxt in zip(tries, tries[1:]):
        assert nxt.scheduled_for == prev.finished_at + timedelta(seconds=rp.delay(nxt.retry_count, seed="exec-1:1"))
        assert nxt.started_at == nxt.scheduled_for  # enqueued when due (WakeAt), not before
    # the dependent ran only after the final success
    enq2 = next(e for e in sim.events("enqueue") if e.step_id == 2)
    assert enq2.at >= tries[-1].finished_at


def test_retries_exhausted_then_downstream_propagates():
    d = D(S(1, retry_policy=_policy(max_retries=1, delay_seconds=0)), S(2, [1]))
    sim = simulate(d, script={1: ["failed", "failed"]})
    assert sim.status == "failed"
    assert len([a for a in sim.attempts.values() if a.step_id == 1]) == 2
    assert sim.final(2).upstream_failed


def test_schedule_retry_decision_and_wait():
    pol = _policy(delay_seconds=30, backoff="fixed")
    d = D(S(1, retry_policy=pol), S(2, [1]))
    fin = T + timedelta(seconds=5)
    ds = plan(mk(d, {1: {"status": "failed", "finished_at": fin}}), T + timedelta(seconds=6))
    assert len(ds) == 2
    r = ds[0]
    assert isinstance(r, ScheduleRetry) and (r.step_id, r.failed_attempt_id, r.retry_count) == (1, aid(1), 1)
    assert r.delay_seconds == 30 and r.run_at == fin + timedelta(seconds=30)
    assert ds[1] == WakeAt(r.run_at, "retry of s1 due")  # and step 2 waits: not settled
    retry = {"status": "retry_scheduled", "scheduled_for": r.run_at}
    snap = mk(d, {1: ["failed", retry]})
    assert plan(snap, r.run_at - timedelta(seconds=1)) == [WakeAt(r.run_at, "retry of s1 due")]
    assert plan(snap, r.run_at) == [Enqueue(1, aid(1, 1))]


@pytest.mark.parametrize("retry_on,failure,exit_code,retries", [
    ([2], "exit", 2, True),
    ([2], "exit", 1, False),
    ([1, 2], "exit", 1, True),
    (["timeout"], "timeout", None, True),       # timeouts retried only when listed
    ([1], "timeout", None, False),
    (["any"], "exit", 7, True),
    (["any"], "rejected", None, False),         # a rejected approval never retries
    (["any"], "approval_timeout", None, False),
])
def test_retry_on(retry_on, failure, exit_code, retries):
    d = D(S(1, retry_policy=_policy(retry_on=retry_on)))
    status = "timed_out" if failure == "timeout" else "failed"
    ds = plan(mk(d, {1: {"status": status, "failure": failure, "exit_code": exit_code}}), T)
    assert isinstance(ds[0], ScheduleRetry) == retries
    if not retries:
        assert brief(ds) == [("FinishExecution", "failed")]


def test_invalid_stored_policy_means_no_retries():
    d = D(S(1, retry_policy={"max_retries": "lots", "backoff": "sideways"}))
    assert brief(plan(mk(d, {1: "failed"}), T)) == [("FinishExecution", "failed")]


def test_retry_budget_counts_attempts_of_the_current_run():
    d = D(S(1, retry_policy=_policy(max_retries=2)))
    r1 = {"status": "failed", "scheduled_for": T}
    # two attempts made of three allowed -> one more retry
    assert isinstance(plan(mk(d, {1: ["failed", r1]}), T)[0], ScheduleRetry)
    # three made -> done
    assert brief(plan(mk(d, {1: ["failed", r1, r1]}), T)) == [("FinishExecution", "failed")]
    # retry_step reset (an attempt without scheduled_for) starts a fresh budget
    d2 = plan(mk(d, {1: ["failed", r1, r1, "failed"]}), T)[0]
    assert isinstance(d2, ScheduleRetry) and d2.retry_count == 4


def test_no_retry_when_cancel_requested():
    d = D(S(1, retry_policy=_policy()))
    assert brief(plan(mk(d, {1: "failed"}, cancel_requested=True), T)) == [
        ("FinishExecution", "cancelled")]


# --------------------------------------------------------------------------- parallel groups


def _group_def(policy, timeout=None, n=3, after=True):
    steps = [S(1)] + [S(10 + i, [1], parallel_group="g") for i in range(n)]
    if after:
        steps.append(S(20, [10]))  # depends on ONE member -> waits for the group (barrier)
        steps.append(S(21, [10], conditions={"type": "on_failure"}))
    return D(*steps, groups=[GroupDef("g", "grp", policy, timeout)])


def test_group_barrier_waits_for_every_member():
    d = _group_def("wait_all")
    assert brief(plan(mk(d, {1: "success"}), T)) == [("Enqueue", 10), ("Enqueue", 11), ("Enqueue", 12)]
    assert plan(mk(d, {1: "success", 10: "success", 11: "running", 12: "queued"}), T) == []


def test_wait_all_success_and_failure():
    d = _group_def("wait_all")
    skipped = {"status": "skipped", "skip_reason": "cond"}
    ds = plan(mk(d, {1: "success", 10: "success", 11: skipped, 12: "success"}), T)
    assert brief(ds) == [("Enqueue", 20), ("Skip", 21, False), ("FinishGroup", "g", "success")]
    ds = plan(mk(d, {1: "success", 10: "success", 11: "failed", 12: "running"}), T)
    assert ds == []  # wait_all does not stop early
    ds = plan(mk(d, {1: "success", 10: "success", 11: "failed", 12: "success"}), T)
    assert brief(ds) == [("Skip", 20, True), ("Enqueue", 21), ("FinishGroup", "g", "failed")]


def test_group_outcome_is_seen_under_the_group_name():
    steps = [S(1), S(10, [1], parallel_group="g"), S(11, [1], parallel_group="g"),
             S(20, [10, 1], conditions={"expression": 'always() && steps.s10.status == "success"'})]
    d = D(*steps, groups=[GroupDef("g", "grp", "wait_all")])
    ds = plan(mk(d, {1: "success", 10: "success", 11: "failed"}), T)
    assert Enqueue(20, aid(20)) in ds
    # without always() the expression adds to on_success: the failed group skips it
    d1 = D(*steps[:3], S(20, [10, 1], conditions={"type": "expression", "expression": "true"}),
           groups=[GroupDef("g", "grp", "wait_all")])
    skip = plan(mk(d1, {1: "success", 10: "success", 11: "failed"}), T)[0]
    assert isinstance(skip, Skip) and skip.upstream_failed and "grp failed" in skip.reason
    # the on_success default names the group in its explanation
    d2 = D(*steps[:3], S(20, [10, 1]), groups=[GroupDef("g", "grp", "wait_all")])
    skip = plan(mk(d2, {1: "success", 10: "success", 11: "failed"}), T)[0]
    assert isinstance(skip, Skip) and "grp" in skip.reason and skip.upstream_failed


def test_wait_any_first_success_cancels_the_others():
    d = _group_def("wait_any", n=4)
    ds = plan(mk(d, {1: "success", 10: "running", 11: "success", 12: "queued",
                     13: {"status": "retry_scheduled", "scheduled_for": T + timedelta(hours=1)}}), T)
    cancels = [x for x in ds if isinstance(x, Cancel)]
    assert [(c.step_id, c.status) for c in cancels] == [(10, "cancelled"), (12, "cancelled"),
                                                        (13, "cancelled")]
    assert all(c.reason == "wait_any: s11 succeeded first" for c in cancels)
    assert brief(ds)[3:] == [("Enqueue", 20), ("Skip", 21, False), ("FinishGroup", "g", "success")]
    # two successes: the earliest finished one is the winner
    ds = plan(mk(d, {1: "success", 10: {"status": "success", "finished_at": T + timedelta(2)},
                     11: {"status": "success", "finished_at": T + timedelta(1)}, 12: "running",
                     13: "pending"}), T + timedelta(3))
    assert {c.reason for c in ds if isinstance(c, Cancel)} == {"wait_any: s11 succeeded first"}


def test_wait_any_all_failed():
    d = _group_def("wait_any")
    ds = plan(mk(d, {1: "success", 10: "failed", 11: "running", 12: "timed_out"}), T)
    assert ds == []
    ds = plan(mk(d, {1: "success", 10: "failed", 11: "failed", 12: "timed_out"}), T)
    assert brief(ds) == [("Skip", 20, True), ("Enqueue", 21), ("FinishGroup", "g", "failed")]


def test_wait_any_member_failure_does_not_fail_the_execution():
    d = _group_def("wait_any", after=False)
    ds = plan(mk(d, {1: "success", 10: "failed", 11: "success", 12: "success"}), T)
    assert brief(ds) == [("FinishGroup", "g", "success"), ("FinishExecution", "success")]


def test_fail_fast_cancels_every_unfinished_member():
    """Jenkins parallel failFast: the first failing branch aborts the others at once."""
    d = _group_def("fail_fast", n=6)
    states = {1: "success", 10: "failed", 11: "running", 12: "queued", 13: "pending",
              14: {"status": "retry_scheduled", "scheduled_for": T + timedelta(hours=1)},
              15: "waiting_approval"}
    ds = plan(mk(d, states), T)
    assert brief(ds) == [("Cancel", 11, "cancelled"), ("Cancel", 12, "cancelled"),
                         ("Cancel", 13, "cancelled"), ("Cancel", 14, "cancelled"),
                         ("Cancel", 15, "cancelled"), ("Skip", 20, True), ("Enqueue", 21),
                         ("FinishGroup", "g", "failed")]
    assert ds[0].reason == "fail_fast: s10 failed"
    assert ds[4].attempt_id == aid(15)


def test_fail_fast_waits_for_retries_of_the_failing_member():
    d = D(S(1), S(10, [1], parallel_group="g", retry_policy=_policy(delay_seconds=5, backoff="fixed")),
          S(11, [1], parallel_group="g"), groups=[GroupDef("g", sync_policy="fail_fast")])
    ds = plan(mk(d, {1: "success", 10: "failed", 11: "running"}), T)
    assert brief(ds)[0] == ("ScheduleRetry", 10, 1)
    assert not [x for x in ds if isinstance(x, Cancel)]


def test_fail_fast_never_enqueues_after_a_failure():
    d = D(S(1), S(2, [1]), S(10, [], parallel_group="g"), S(11, [2], parallel_group="g"),
          groups=[GroupDef("g", sync_policy="fail_fast")])
    # 11 becomes ready at the moment 10 has failed: it is cancelled, not enqueued
    ds = plan(mk(d, {1: "success", 2: "success", 10: "failed"}), T)
    assert brief(ds) == [("Cancel", 11, "cancelled"), ("FinishGroup", "g", "failed"),
                         ("FinishExecution", "failed")]
    assert "g (failed: s10)" in finish(ds).reason


def test_group_timeout():
    d = _group_def("wait_all", timeout=60)
    t_start = T + timedelta(seconds=10)
    states = {1: "success", 10: {"status": "running", "started_at": t_start},
              11: {"status": "success", "started_at": t_start + timedelta(seconds=5)},
              12: "pending"}
    deadline = t_start + timedelta(seconds=60)
    # before the deadline: wake up at it
    ds = plan(mk(d, {**states, 12: "queued"}), T + timedelta(seconds=20))
    assert ds == [WakeAt(deadline, "group grp times out")]
    ds = plan(mk(d, states), deadline)
    assert brief(ds)[:2] == [("Cancel", 10, "timed_out"), ("Cancel", 12, "cancelled")]
    assert ds[0].reason == "group grp timed out after 60s"
    assert brief(ds)[2:] == [("Skip", 20, True), ("Enqueue", 21), ("FinishGroup", "g", "timed_out")]
    # afterwards (members ended at the deadline) the group stays timed_out
    later = {**states, 10: {"status": "timed_out", "started_at": t_start, "finished_at": deadline},
             12: {"status": "cancelled", "finished_at": deadline},
             20: _STATE_FOR["upstream_failed"], 21: "success"}
    ds = plan(mk(d, later), deadline + timedelta(seconds=5))
    assert brief(ds) == [("FinishGroup", "g", "timed_out"), ("FinishExecution", "failed")]
    assert group_outcomes(mk(d, later), deadline + timedelta(seconds=5)) == {"g": "timed_out"}


def test_group_finished_before_its_deadline_is_not_timed_out():
    d = _group_def("wait_all", timeout=60, after=False)
    states = {1: "success", 10: "success", 11: "success", 12: "success"}
    assert brief(plan(mk(d, states), T + timedelta(hours=1))) == [
        ("FinishGroup", "g", "success"), ("FinishExecution", "success")]


def test_group_outcomes_and_undecided():
    d = _group_def("wait_all")
    snap = mk(d, {1: "success", 10: "success", 11: "running"})
    assert group_outcomes(snap, T) == {"g": None}


# --------------------------------------------------------------------------- approvals


def test_approval_gate():
    d = D(S(1), S(2, [1], approval_required=True), S(3, [1], step_type="approval"))
    assert brief(plan(mk(d, {1: "success"}), T)) == [("AwaitApproval", 2), ("AwaitApproval", 3)]
    waiting = {1: "success", 2: "waiting_approval", 3: "waiting_approval"}
    assert plan(mk(d, waiting, approvals={2: "pending", 3: "pending"}), T) == []
    assert plan(mk(d, waiting, approvals={2: "approved", 3: "pending"}), T) == [Enqueue(2, aid(2))]
    # already approved (e.g. a resumed execution) -> straight to the queue
    assert plan(mk(d, {1: "success"}, approvals={2: "approved", 3: "approved"}), T) == [
        Enqueue(2, aid(2)), Enqueue(3, aid(3))]


def test_no_approval_opens_for_a_gate_whose_upstream_failed():
    # issue 12: deploy (an expression true, 2-of-3 gate) after unit tests failed and canary was skipped
    deploy = {"type": "expression", "expression": '$variables.env === "production"'}
    d = D(S(1, name="unit tests"), S(2, [], name="canary", conditions={"type": "on_failure"}),
          S(3, [1, 2], name="deploy", approval_required=True, conditions=deploy))
    ds = plan(mk(d, {1: "failed", 2: "skipped"}, variables={"env": "production"}), T)
    assert not [x for x in ds if isinstance(x, (AwaitApproval, Enqueue))]
    skip = next(x for x in ds if isinstance(x, Skip) and x.step_id == 3)
    assert skip.upstream_failed and "unit tests failed" in skip.reason
    # with a status function the gate opts out of on_success and still asks
    d2 = D(S(1, name="unit tests"), S(3, [1], name="deploy", approval_required=True,
                                      conditions={"expression": "always() && variables.env == 'production'"}))
    assert brief(plan(mk(d2, {1: "failed"}, variables={"env": "production"}), T)) == [("AwaitApproval", 3)]


def test_rejected_approval_fails_and_never_retries():
    d = D(S(1, approval_required=True, retry_policy=_policy()), S(2, [1]))
    rejected = {"status": "failed", "failure": "rejected", "exit_code": None}
    ds = plan(mk(d, {1: rejected}, approvals={1: "rejected"}), T)
    assert brief(ds) == [("Skip", 2, True), ("FinishExecution", "failed")]


# --------------------------------------------------------------------------- cancel


def test_cancel_stops_everything_but_always_steps():
    d = D(S(1), S(2), S(3, [1]), S(4, [1, 2], conditions={"type": "always"}),
          S(5, [], approval_required=True))
    snap = mk(d, {1: "running", 2: "queued", 5: "waiting_approval"}, cancel_requested=True)
    ds = plan(snap, T)
    assert brief(ds) == [("Cancel", 1, "cancelled"), ("Cancel", 2, "cancelled"),
                         ("Cancel", 5, "cancelled"), ("Cancel", 3, "cancelled"), ("Enqueue", 4)]
    assert all(c.reason == "execution cancelled" for c in ds if isinstance(c, Cancel))
    after = mk(d, {1: "cancelled", 2: "cancelled", 3: "cancelled", 4: "success", 5: "cancelled"},
               cancel_requested=True)
    assert plan(after, T) == [FinishExecution("cancelled", "cancelled on request")]


def test_cancel_runs_steps_that_opt_in_with_always_or_cancelled():
    d = D(S(1), S(2, [1], conditions={"expression": "cancelled()"}),
          S(3, [1], conditions={"expression": "always() && variables.force == 'yes'"}),
          S(4, [1], conditions={"expression": "failure()"}), S(5, [1], conditions={"expression": "!cancelled()"}))
    ds = plan(mk(d, {1: "running"}, cancel_requested=True, variables={"force": "yes"}), T)
    assert brief(ds) == [("Cancel", 1, "cancelled"), ("Enqueue", 2), ("Enqueue", 3),
                         ("Cancel", 4, "cancelled"), ("Skip", 5, False)]


def test_cancel_cancels_an_unapproved_gate_even_with_rule_always():
    # nobody can decide on a cancelled run: the gate would wait for ever
    d = D(S(1), S(2, [1], conditions={"type": "always"}, approval_required=True),
          S(3, [1], conditions={"type": "always"}, approval_required=True))
    ds = plan(mk(d, {1: "running", 2: "waiting_approval"}, cancel_requested=True,
                 approvals={2: "pending", 3: "approved"}), T)
    # 3 was approved before the cancel: an always step still runs
    assert brief(ds) == [("Cancel", 1, "cancelled"), ("Cancel", 2, "cancelled"), ("Enqueue", 3)]


def test_running_always_step_keeps_running_during_cancel():
    d = D(S(1, conditions={"type": "always"}), S(2))
    assert plan(mk(d, {1: "running", 2: "running"}, cancel_requested=True), T) == [
        Cancel(2, aid(2), "cancelled", "execution cancelled")]


# --------------------------------------------------------------------------- misc


def test_deadlock_guard_for_an_invalid_cyclic_definition():
    d = D(S(1), S(2, [3]), S(3, [2]))
    assert graph.validate(d)  # rejected when saved; the planner still never hangs
    ds = plan(mk(d, {1: "success"}), T)
    assert brief(ds) == [("Cancel", 2, "cancelled"), ("Cancel", 3, "cancelled"),
                         ("FinishExecution", "failed")]
    assert ds[0].reason.startswith("deadlock")


def test_actionable_filters_informational_decisions():
    ds = [FinishGroup("g", "success", ""), WakeAt(T, ""), Enqueue(1, 1)]
    assert actionable(ds) == [Enqueue(1, 1)]


def test_definition_cache_is_bounded_and_identity_keyed():
    d = D(S(1), S(2, [1]))
    c1 = P._compiled(d)
    assert P._compiled(d) is c1
    for i in range(P._compiled_defs.size + 3):
        P._compiled(D(S(1), S(2, [1])))
    assert len(P._compiled_defs) <= P._compiled_defs.size
    assert P._compiled(d) is not c1  # evicted, rebuilt for the same object
    equal_but_other = D(S(1), S(2, [1]))
    assert P._compiled(equal_but_other) is not P._compiled(d)


def test_step_outcomes():
    d = D(S(1), S(2), S(3), S(4), S(5), S(6, continue_on_failure=True), S(7))
    snap = mk(d, {1: "success", 2: "timed_out", 3: _STATE_FOR["upstream_failed"],
                  4: _STATE_FOR["skipped"], 5: "cancelled", 6: "failed", 7: "running"})
    assert step_outcomes(snap) == {1: "success", 2: "failed", 3: "upstream_failed",
                                   4: "skipped", 5: "cancelled", 6: "success", 7: "running"}


def test_latest_attempt_is_highest_retry_count_then_id():
    d = D(S(1), S(2, [1]))
    attempts = (Attempt(5, 1, 1, "success"), Attempt(9, 1, 0, "failed"), Attempt(3, 2, 0),
                Attempt(4, 2, 0, "success"))
    assert plan(ExecutionSnapshot("e", d, attempts), T) == [FinishExecution("success", "all 2 steps finished")]


# --------------------------------------------------------------------------- resume / retry_step


def _resume_def():
    return D(S(1), S(2, [1]), S(10, [2], parallel_group="g"), S(11, [2], parallel_group="g"),
             S(20, [10]), S(21, [1]), S(22, [21]), S(30, [1], conditions={"type": "on_failure"}),
             groups=[GroupDef("g", sync_policy="fail_fast")])


def test_plan_resume_default_reruns_failed_and_downstream():
    d = _resume_def()
    snap = mk(d, {1: "success", 2: "success", 10: "failed", 11: "cancelled",
                  20: _STATE_FOR["upstream_failed"], 21: "success", 22: "success",
                  30: _STATE_FOR["skipped"]}, status="failed")
    rp = plan_resume(snap)
    assert rp == ResumePlan(keep=frozenset({1, 2, 21, 22, 30}), rerun=frozenset({10, 11, 20}))


def test_plan_resume_from_chosen_steps_with_group_barrier():
    d = _resume_def()
    snap = mk(d, {i: "success" for i in (1, 2, 10, 11, 20, 21, 22)} | {30: _STATE_FOR["skipped"]},
              status="success")
    rp = plan_resume(snap, from_steps=[11])   # downstream of a member = what waits on the group
    assert rp.rerun == {11, 20} and rp.keep == {1, 2, 10, 21, 22, 30}
    rp = plan_resume(snap, from_steps=[1])
    assert rp.rerun == set(s.id for s in d.steps) and rp.keep == set()
    with pytest.raises(KeyError):
        plan_resume(snap, from_steps=[999])


def test_plan_resume_keeps_continue_on_failure_and_bypassed():
    d = D(S(1, continue_on_failure=True), S(2, [1]), S(3), S(4, [3]))
    snap = mk(d, {1: "failed", 2: "success", 3: {"status": "skipped", "bypassed": True}, 4: "success"},
              status="success")
    assert plan_resume(snap) == ResumePlan(keep=frozenset({1, 2, 3, 4}), rerun=frozenset())


def test_plan_retry_step():
    d = _resume_def()
    snap = mk(d, {1: "success", 2: "success", 10: "failed", 11: "cancelled",
                  20: _STATE_FOR["upstream_failed"], 21: "success", 22: "failed",
                  30: _STATE_FOR["skipped"]}, status="failed")
    # a fail_fast member: its cancelled siblings and what waits on the group run again
    assert plan_retry_step(snap, 10) == {10, 11, 20}
    assert plan_retry_step(snap, 22) == {22}
    assert plan_retry_step(snap, 2) == {2, 10, 11, 20}
    with pytest.raises(KeyError):
        plan_retry_step(snap, 999)


# --------------------------------------------------------------------------- properties


@st.composite
def pipelines(draw, max_steps=150):
    """A random valid pipeline: explicit and implicit (stage rule) dependencies, groups as
    blocks of consecutive orders (members never depend on each other), every rule, retry
    policies (some invalid), continue_on_failure, approvals."""
    n = draw(st.integers(1, max_steps))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = random.Random(seed)
    steps: list[StepDef] = []
    groups: list[GroupDef] = []
    i = 0
    block_start = {}
    while i < n:
        if rng.random() < 0.15 and n - i >= 2:
            size = rng.randint(2, min(5, n - i))
            gid = f"g{len(groups)}"
            groups.append(GroupDef(gid, f"group{len(groups)}",
                                   rng.choice(["wait_all", "wait_any", "fail_fast"]),
                                   rng.choice([None, None, 30, 120, 600])))
            members = [(i + k, gid) for k in range(size)]
            i += size
        else:
            members = [(i, None)]
            i += 1
        for idx, gid in members:
            block_start[idx] = members[0][0]
            earlier = list(range(0, members[0][0]))
            if rng.random() < 0.25:
                deps = None
            else:
                deps = tuple(sorted({100 + rng.choice(earlier) for _ in range(rng.randint(0, 3))})) \
                    if earlier else ()
            r = rng.random()
            if r < 0.55:
                cond = None
            elif r < 0.65:
                cond = {"type": "on_failure"}
            elif r < 0.73:
                cond = {"type": "always"}
            elif r < 0.8:
                cond = {"type": "one_success"}
            elif r < 0.87:
                cond = {"type": "none_failed"}
            elif r < 0.95:
                expression = rng.choice([
                    'variables.env == "prod"', 'variables.env != "prod"', "true",
                    'previous.status == "success"', "variables.missing == 1",
                    'always() && variables.env == "prod"', "failure()", "!cancelled() && success()"])
                cond = rng.choice([{"type": "expression", "expression": expression},
                                   {"expression": expression},
                                   {"type": rng.choice(["on_failure", "always", "one_success", "none_failed"]),
                                    "expression": expression}])
            else:
                cond = {"type": "on_success", "depends_on": [100 + rng.choice(earlier)]} if earlier else None
            pol = None
            if rng.random() < 0.2:
                pol = rng.choice([
                    {"max_retries": rng.randint(0, 3), "delay_seconds": rng.choice([0, 5, 30]),
                     "backoff": rng.choice(["fixed", "exponential"]), "retry_on": ["any"]},
                    {"max_retries": 2, "delay_seconds": 1, "retry_on": [1]},
                    {"max_retries": 2, "delay_seconds": 1, "retry_on": ["timeout"]},
                    {"max_retries": "x"},
                ])
            steps.append(StepDef(
                id=100 + idx, name=f"s{idx}", order=idx, dependencies=deps, parallel_group=gid,
                conditions=cond, retry_policy=pol, continue_on_failure=rng.random() < 0.08,
                approval_required=rng.random() < 0.1))
    defn = PipelineDef(tuple(steps), tuple(groups))
    assert graph.validate(defn) == [], graph.validate(defn)
    return defn


def _settled_at(sim: Simulator, sid: int, seq: int) -> bool:
    """Terminal right after event seq, and never attempted again afterwards."""
    if sim.status_at(sid, seq) not in STEP_TERMINAL:
        return False
    return not any(e.seq > seq and e.step_id == sid and e.kind in ("enqueue", "schedule_retry")
                   for e in sim.log)


def _expected_status(sim: Simulator, defn: PipelineDef) -> str:
    """DESIGN §3, computed independently from the final attempts and the log."""
    if sim.cancel_requested:
        return "cancelled"
    outcomes = step_outcomes(sim.snapshot())
    in_group = {s.id for s in defn.steps if s.parallel_group}
    if any(outcomes[s.id] == "failed" for s in defn.steps if s.id not in in_group):
        return "failed"
    if any(sim.final(s.id).skip_reason and sim.final(s.id).skip_reason.startswith("condition error")
           for s in defn.steps):
        return "failed"
    for g in defn.groups:
        mem = [s.id for s in defn.steps if s.parallel_group == g.id]
        outs = [outcomes[m] for m in mem]
        timed_out = any(e.kind == "cancel" and e.step_id in mem and "timed out" in e.info[1]
                        for e in sim.log)
        raw_success = any(sim.final(m).status == "success" for m in mem)
        failed = any(o in ("failed", "upstream_failed") for o in outs)
        if g.sync_policy == "wait_any":
            if raw_success:
                continue
            if timed_out or ("success" not in outs and failed):
                return "failed"
        elif timed_out or failed:
            return "failed"
    return "success"


def _failed_at(sim: Simulator, defn: PipelineDef, sid: int, seq: int) -> list[str]:
    """The dependencies (steps, or groups for members of another group) that its rule sees
    and that had failed (or were upstream_failed) when step ``sid`` was decided at event ``seq``."""
    by_id = {s.id: s for s in defn.steps}
    own = by_id[sid].parallel_group
    cond = normalize_conditions(by_id[sid].conditions or {})
    only = set(cond.get("depends_on") or ()) or None
    out = []
    for d in graph.effective_dependencies(defn).get(sid, ()):
        if only is not None and d not in only:
            continue
        g = by_id[d].parallel_group
        if g is not None and g != own:
            decided = [e for e in sim.log if e.kind == "finish_group" and e.info[0] == g and e.seq <= seq]
            if decided and decided[0].info[1] in ("failed", "timed_out"):
                out.append(f"group {g}")
            continue
        status = sim.status_at(d, seq)
        if status in ("failed", "timed_out") and not by_id[d].continue_on_failure:
            out.append(by_id[d].name)
        elif status == "skipped" and sim.final(d).upstream_failed:
            out.append(by_id[d].name)
    return out


def _check_no_on_success_step_runs_after_a_failure(sim: Simulator, defn: PipelineDef) -> None:
    """Issue 12's invariant: a step whose rule is on_success (default, with or without an
    expression that does not opt out with a status function) never runs, and never opens an
    approval, when a dependency it waits for failed."""
    by_id = {s.id: s for s in defn.steps}
    for e in sim.log:
        if not (e.kind == "await_approval" or (e.kind == "enqueue" and e.info == "pending")):
            continue
        cond = normalize_conditions(by_id[e.step_id].conditions or {})
        if (cond.get("type") or "on_success") != "on_success" or uses_status_functions(cond.get("expression")):
            continue
        assert not _failed_at(sim, defn, e.step_id, e.seq), (e, _failed_at(sim, defn, e.step_id, e.seq))


def _check_run(sim: Simulator, defn: PipelineDef) -> None:
    assert sim.status in ("success", "failed", "cancelled")
    _check_no_on_success_step_runs_after_a_failure(sim, defn)
    # no attempt enqueued twice
    assert len(sim.enqueued) == len(set(sim.enqueued))
    # the final status agrees with DESIGN §3
    assert sim.status == _expected_status(sim, defn), sim.finish_reason
    barrier = graph.barrier_dependencies(defn)
    by_id = {s.id: s for s in defn.steps}
    group_members = graph.group_members(defn)
    gdefs = {g.id: g for g in defn.groups}
    left_pending = [e for e in sim.log if e.kind in ("enqueue", "await_approval")
                    and e.info in (None, "pending")]
    for e in left_pending:
        # never before its dependencies and group barrier allow (terminal, no retry to come)
        for d in barrier[e.step_id]:
            assert _settled_at(sim, d, e.seq), (e, d)
    for g, mem in group_members.items():
        policy = gdefs[g].sync_policy
        if policy == "fail_fast":
            final_fail = [e.seq for e in sim.log if e.kind in ("complete", "reject")
                          and e.step_id in mem and (e.kind == "reject" or e.info in ("failed", "timed_out"))
                          and not by_id[e.step_id].continue_on_failure and _settled_at(sim, e.step_id, e.seq)]
            if final_fail:
                first = min(final_fail)
                # nothing of the group runs or retries after its first final failure
                assert not [e for e in sim.log if e.kind in ("enqueue", "schedule_retry")
                            and e.step_id in mem and e.seq > first]
        if policy == "wait_any":
            wins = [e for e in sim.log if e.kind == "complete" and e.step_id in mem
                    and e.info == "success"]
            if sim.batch == 1:
                assert len(wins) <= 1  # exactly one success is decisive
            if wins:
                # the planner sees the win at the next plan(): every member still unfinished
                # then ends cancelled, and nothing of the group runs or retries afterwards
                w = next(e for e in sim.log if e.kind == "plan" and e.seq > wins[0].seq)
                for m in mem:
                    if sim.status_at(m, w.seq) not in STEP_TERMINAL:
                        assert sim.final(m).status == "cancelled", (m, sim.final(m))
                assert not [e for e in sim.log if e.kind in ("enqueue", "schedule_retry")
                            and e.step_id in mem and e.seq > w.seq]
        timeout = gdefs[g].timeout_seconds
        member_attempts = [a for a in sim.attempts.values() if a.step_id in mem]
        starts = [a.started_at for a in member_attempts if a.started_at]
        if timeout and starts:
            # at the deadline every unfinished member is stopped: nothing of it outlives it
            deadline = min(starts) + timedelta(seconds=timeout)
            for a in member_attempts:
                assert a.finished_at is not None and a.finished_at <= deadline, (a, deadline)
    if sim.cancel_requested:
        t = next(e.seq for e in sim.log if e.kind == "cancel_requested")
        for e in sim.log:
            if e.kind == "enqueue" and e.seq > t:
                assert runs_on_cancel(by_id[e.step_id].conditions), e
    # every group got decided exactly once, and before the execution finished
    assert set(sim.groups) == set(group_members)


_PROP = settings(max_examples=120, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_PROP
@given(defn=pipelines(), seed=st.integers(0, 10_000), p_fail=st.sampled_from([0.0, 0.15, 0.4]),
       approve=st.sampled_from([True, False, 0.5]), env=st.sampled_from(["prod", "dev"]),
       batch=st.sampled_from([1, 1, 4]))
def test_property_random_executions_finish_correctly(defn, seed, p_fail, approve, env, batch):
    sim = simulate(defn, seed=seed, p_fail=p_fail, p_timeout=p_fail / 4, approve=approve,
                   variables={"env": env}, batch=batch)
    _check_run(sim, defn)


@_PROP
@given(defn=pipelines(max_steps=60), seed=st.integers(0, 10_000),
       cancel_after=st.floats(0, 600), batch=st.sampled_from([1, 3]))
def test_property_cancel(defn, seed, cancel_after, batch):
    sim = simulate(defn, seed=seed, p_fail=0.1, cancel_at=T0 + timedelta(seconds=cancel_after),
                   batch=batch)
    _check_run(sim, defn)
    if sim.cancel_requested:
        assert sim.status == "cancelled"


def test_simulator_detects_livelock(monkeypatch):
    def looping(snap, now):  # a broken planner that never finishes
        return [WakeAt(now + timedelta(seconds=1), "again")]
    monkeypatch.setattr(P, "plan", looping)
    with pytest.raises(SimError, match="livelock"):
        simulate(D(S(1)), budget=50)


# --------------------------------------------------------------------------- context, wake-ups, groups again


def test_expression_context_carries_only_the_named_steps_unless_the_map_is_used_whole():
    d = D(S(1, name="build"), S(2, name="lint"), S(3, [1, 2], name="x", conditions={
        "type": "expression", "expression": 'steps.build.status == "success" && steps["lint"].exit_code == 0'}),
        S(4, [1, 2], conditions={"type": "expression", "expression": "size(steps) == 6"}),
        S(5, [1, 2], conditions={"type": "expression", "expression": 'steps.exists(k, k == "lint")'}),
        S(6, [1, 2], conditions={"type": "expression", "expression": "steps.nosuch.status == 1"}))
    c = P._compiled(d)
    assert c.expr_refs == {3: (1, 2), 4: None, 5: None, 6: ()}
    ds = plan(mk(d, {1: "success", 2: {"status": "success", "exit_code": 0}}), T)
    assert brief(ds)[:3] == [("Enqueue", 3), ("Enqueue", 4), ("Enqueue", 5)]
    assert isinstance(ds[3], Skip) and ds[3].reason.startswith(P.COND_ERROR_PREFIX)
    assert "nosuch" in ds[3].reason


def test_expression_sees_statuses_decided_earlier_in_the_same_call():
    d = D(S(1), S(2, [1], name="b"), S(3, [2], conditions={
        "type": "always", "expression": 'steps.b.status == "skipped"'}))
    ds = plan(mk(d, {1: "failed"}), T)
    assert brief(ds) == [("Skip", 2, True), ("Enqueue", 3)]


def test_wake_at_is_the_earliest_moment():
    pol = {"max_retries": 1, "delay_seconds": 100, "retry_on": ["any"]}
    d = D(S(1, retry_policy=pol), S(2, retry_policy=pol), S(10, parallel_group="g"),
          S(11, parallel_group="g"), groups=[GroupDef("g", timeout_seconds=50)])
    states = {1: ["failed", {"status": "retry_scheduled", "scheduled_for": T + timedelta(seconds=300)}],
              2: ["failed", {"status": "retry_scheduled", "scheduled_for": T + timedelta(seconds=200)}],
              10: "running", 11: "running"}
    ds = plan(mk(d, states), T + timedelta(seconds=10))
    assert ds == [WakeAt(T + timedelta(seconds=50), "group g times out")]
    ds = plan(mk(d, {**states, 10: "success", 11: "success"}), T + timedelta(seconds=10))
    assert ds == [FinishGroup("g", "success", "wait_all: no member failed"),
                  WakeAt(T + timedelta(seconds=200), "retry of s2 due")]


def test_finish_group_is_repeated_while_decided_and_is_not_actionable():
    """The planner is stateless: FinishGroup comes with every plan() in which the group is
    decided; the service keeps the first. The "plan again" loop ignores it."""
    d = _group_def("wait_all", after=False)
    d = D(*d.steps, S(30), groups=d.groups)
    snap = mk(d, {1: "success", 10: "success", 11: "success", 12: "success", 30: "running"})
    ds = plan(snap, T)
    assert ds == [FinishGroup("g", "success", "wait_all: no member failed")]
    assert plan(snap, T + timedelta(hours=1)) == ds and actionable(ds) == []


def test_decided_group_members_do_not_retry():
    pol = {"max_retries": 3, "delay_seconds": 1, "retry_on": ["any"]}
    d = D(S(10, [], parallel_group="g", retry_policy=pol), S(11, [], parallel_group="g"),
          groups=[GroupDef("g", sync_policy="wait_any")])
    ds = plan(mk(d, {10: "failed", 11: "success"}), T)
    assert brief(ds) == [("FinishGroup", "g", "success"), ("FinishExecution", "success")]


def test_zero_delay_retry_is_enqueued_by_the_next_call():
    pol = {"max_retries": 1, "delay_seconds": 0, "retry_on": ["any"]}
    d = D(S(1, retry_policy=pol))
    ds = plan(mk(d, {1: "failed"}), T)
    assert brief(ds) == [("ScheduleRetry", 1, 1)] and ds[0].run_at == T
    nxt = mk(d, {1: ["failed", {"status": "retry_scheduled", "scheduled_for": T}]})
    assert plan(nxt, T) == [Enqueue(1, aid(1, 1))]


def test_cancel_during_a_group_and_a_pending_retry():
    pol = {"max_retries": 3, "delay_seconds": 60, "retry_on": ["any"]}
    d = D(S(1, retry_policy=pol), S(10, parallel_group="g"), S(11, parallel_group="g"),
          S(20, [10], conditions={"type": "always"}), groups=[GroupDef("g", sync_policy="wait_all")])
    snap = mk(d, {1: ["failed", {"status": "retry_scheduled", "scheduled_for": T + timedelta(60)}],
                  10: "running", 11: "success"}, cancel_requested=True)
    ds = plan(snap, T)
    assert brief(ds) == [("Cancel", 1, "cancelled"), ("Cancel", 10, "cancelled"), ("Enqueue", 20),
                         ("FinishGroup", "g", "cancelled")]
    assert ds[0].attempt_id == aid(1, 1)
