"""plan_after_success: the runtime's fast path after a step succeeds, checked against plan()."""
from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, given, settings, strategies as st

from webapp.engine import planner as P
from webapp.engine.types import GroupDef

sys.path.insert(0, os.path.dirname(__file__))
from simulate import T0, simulate  # noqa: E402
from test_planner import D, S, brief, mk, pipelines  # noqa: E402

T = T0


def _part(snap, step_id):
    focus = P.focus_after_success(snap.definition, step_id)
    assert focus is not None
    return snap.__class__(**{**snap.__dict__, "attempts": tuple(a for a in snap.attempts if a.step_id in focus)})


def test_focus_is_the_step_its_dependents_and_their_dependencies():
    d = D(S(1), S(2), S(3, [1, 2]), S(4, [3]), S(5, [1], conditions={
        "type": "expression", "expression": 'steps.s4.status == "x"'}))
    assert P.focus_after_success(d, 1) == {1, 2, 3, 5, 4}
    assert P.focus_after_success(d, 4) == {4}


def test_focus_gives_up_on_groups_and_whole_map_expressions():
    d = D(S(1), S(2, [1], parallel_group="g"), S(3, [1]), groups=(GroupDef(id="g"),))
    assert P.focus_after_success(d, 1) is None      # a dependent is a group member
    assert P.focus_after_success(d, 2) is None      # the step itself is one
    d = D(S(1), S(2, [1], conditions={"type": "expression", "expression": "size(steps) > 0"}))
    assert P.focus_after_success(d, 1) is None


def test_a_chain_enqueues_the_next_step_from_two_attempts():
    d = D(*[S(i, [i - 1] if i > 1 else []) for i in range(1, 101)])
    snap = mk(d, {**{i: "success" for i in range(1, 51)}})
    part = _part(snap, 50)
    assert len(part.attempts) == 2
    assert brief(P.plan_after_success(part, T, 50)) == [("Enqueue", 51)]


def test_a_join_waits_for_its_other_dependencies():
    d = D(S(1), S(2), S(3), S(4, [1, 2, 3]))
    assert P.plan_after_success(_part(mk(d, {1: "success", 2: "running", 3: "success"}), 1), T, 1) == []
    assert brief(P.plan_after_success(_part(mk(d, {1: "success", 2: "success", 3: "success"}), 2), T, 2)) \
        == [("Enqueue", 4)]


def test_it_leaves_everything_but_plain_enqueues_to_plan():
    d = D(S(1), S(2), S(3, [1, 2]))
    # another dependency failed: skips and upstream_failed are plan()'s
    assert P.plan_after_success(_part(mk(d, {1: "success", 2: "failed"}), 1), T, 1) is None
    # a false condition skips
    d2 = D(S(1), S(2, [1], conditions={"type": "one_failed"}))
    assert P.plan_after_success(_part(mk(d2, {1: "success"}), 1), T, 1) is None
    # an approval gate
    d3 = D(S(1), S(2, [1], approval_required=True))
    assert P.plan_after_success(_part(mk(d3, {1: "success"}), 1), T, 1) is None
    # a cancel request, or the step did not succeed
    assert P.plan_after_success(_part(mk(d, {1: "success"}, cancel_requested=True), 1), T, 1) is None
    assert P.plan_after_success(_part(mk(d, {1: "failed"}), 1), T, 1) is None


def test_expression_dependents_see_the_steps_they_name():
    d = D(S(1, name="build"), S(2, [1], conditions={
        "type": "expression", "expression": 'steps.build.outputs.ok == "yes"'}))
    yes = mk(d, {1: {"status": "success", "outputs": {"ok": "yes"}}})
    assert brief(P.plan_after_success(_part(yes, 1), T, 1)) == [("Enqueue", 2)]
    no = mk(d, {1: {"status": "success", "outputs": {"ok": "no"}}})
    assert P.plan_after_success(_part(no, 1), T, 1) is None  # the skip is plan()'s


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(defn=pipelines(), seed=st.integers(0, 10_000), p_fail=st.sampled_from([0.0, 0.2]))
def test_property_agrees_with_plan_after_every_lone_success(defn, seed, p_fail):
    # the simulator compares the two after every success it sees alone (SimError otherwise)
    simulate(defn, seed=seed, p_fail=p_fail, p_timeout=0.0, batch=1)


def test_the_property_exercises_the_fast_path():
    d = D(*[S(i, [i - 1] if i > 1 else []) for i in range(1, 31)], S(40), S(41, [40, 30]))
    sim = simulate(d, seed=3, p_fail=0.0, p_timeout=0.0)
    assert sim.status == "success"
    assert sim.focused_checks >= 29
