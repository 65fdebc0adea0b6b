"""engine.graph: validation, the stage rule, group barriers, ordering and analysis."""
from __future__ import annotations

import json
import random
from dataclasses import replace

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webapp.engine import graph
from webapp.engine.graph import CycleError, Problem
from webapp.engine.types import GroupDef, PipelineDef, StepDef

_UNSET = object()


def S(id: int, name: str | None = None, order: int | None = None, deps=_UNSET,
      group: str | None = None, dur: float = 60.0) -> StepDef:
    """A step; deps left out means "never set" (stage rule), like a fresh editor row."""
    return StepDef(
        id=id, name=name or f"s{id}", order=id if order is None else order,
        dependencies=None if deps is _UNSET else tuple(deps),
        parallel_group=group, estimated_duration=dur,
    )


def D(*steps: StepDef, groups: tuple[str, ...] = ()) -> PipelineDef:
    return PipelineDef(steps=tuple(steps), groups=tuple(GroupDef(id=g) for g in groups))


def codes(defn: PipelineDef) -> list[tuple[str, int | None, str | None]]:
    return [(p.code, p.step_id, p.group_id) for p in graph.validate(defn)]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("defn, expected", [
    pytest.param(D(S(1), S(2, deps=[1]), S(3)), [], id="valid"),
    pytest.param(D(S(1), S(2, deps=[1, 99])), [("unknown_dependency", 2, None)], id="unknown"),
    pytest.param(D(S(1), S(2, deps=[2])), [("self_dependency", 2, None)], id="self"),
    pytest.param(D(S(1, "build"), S(2, "build")), [("duplicate_name", 2, None)], id="duplicate-name"),
    pytest.param(D(S(1, group="g"), S(2, group="g", deps=[1]), groups=("g",)),
                 [("sibling_dependency", 2, "g")], id="sibling"),
    pytest.param(D(S(1), groups=("g",)), [("empty_group", None, "g")], id="empty-group"),
    pytest.param(D(S(1, group="nope")), [("unknown_group", 1, "nope")], id="unknown-group"),
    pytest.param(D(S(1, deps=[2]), S(2, deps=[1])), [("cycle", 1, None)], id="cycle"),
    # the unknown edge is ignored, the cycle beside it still found
    pytest.param(D(S(1, deps=[2, 42]), S(2, deps=[1])),
                 [("unknown_dependency", 1, None), ("cycle", 1, None)], id="unknown-and-cycle"),
    # a cycle closed by the stage rule: 2 and 3 never set deps, 1 depends on 3
    pytest.param(D(S(1, deps=[3]), S(2), S(3)), [("cycle", 1, None)], id="implicit-cycle"),
    # two separate cycles, one problem each
    pytest.param(D(S(1, deps=[2]), S(2, deps=[1]), S(3, deps=[4]), S(4, deps=[3])),
                 [("cycle", 1, None), ("cycle", 3, None)], id="two-cycles"),
    # "" from a form is no group at all
    pytest.param(D(S(1, group="")), [], id="empty-string-group"),
])
def test_validate_table(defn, expected):
    assert codes(defn) == expected


def test_problems_name_their_step_and_read_as_sentences():
    defn = D(S(1, "build"), S(2, "test", deps=[7]), S(3, "lint", deps=[3]), S(4, "build"))
    by_code = {p.code: p for p in graph.validate(defn)}
    assert by_code["unknown_dependency"] == Problem(
        "unknown_dependency",
        "Step 'test' depends on step id 7, which is not a step of this pipeline.", 2, "test")
    assert by_code["self_dependency"].step_name == "lint"
    assert by_code["duplicate_name"].message == (
        "Step name 'build' is used by more than one step (ids 1 and 4).")


def test_cycle_message_names_the_cycle_in_order():
    defn = D(S(1, "build", deps=[2]), S(2, "test", deps=[1]), S(3, "deploy", deps=[2]))
    [problem] = graph.validate(defn)
    assert problem.message == "Dependency cycle: build -> test -> build"
    assert graph.find_cycle(defn) == ["build", "test", "build"]


def test_shortest_cycle_through_first_step_is_reported():
    # a -> b -> c -> a and a -> c -> a: the short one is named
    defn = D(S(1, "a", deps=[3]), S(2, "b", deps=[1]), S(3, "c", deps=[1, 2]))
    assert graph.find_cycle(defn) == ["a", "c", "a"]


def test_cycle_through_a_group_barrier_is_a_cycle():
    # x depends on member a1, so it waits for the whole group, including a2; a2 depends on x.
    defn = D(S(1, "a1", group="g", deps=[]), S(2, "a2", group="g", deps=[3]), S(3, "x", deps=[1]),
             groups=("g",))
    assert graph.effective_dependencies(defn) == {1: (), 2: (3,), 3: (1,)}  # no plain cycle
    [problem] = graph.validate(defn)
    assert (problem.code, problem.group_id) == ("cycle", "g")
    assert problem.message.startswith("Dependency cycle: a2 -> x -> a2 (through parallel group 'g'")
    with pytest.raises(CycleError):
        graph.layers(defn)


def test_find_cycle_none_when_acyclic():
    assert graph.find_cycle(D(S(1), S(2), S(3, deps=[1]))) is None


# --------------------------------------------------------------------------- stage rule


@pytest.mark.parametrize("defn, expected", [
    pytest.param(D(S(1), S(2), S(3)), {1: (), 2: (1,), 3: (2,)}, id="chain"),
    # a group is one stage: members depend on the stage before, the next stage on all members
    pytest.param(D(S(1), S(2, group="g"), S(3, group="g"), S(4), groups=("g",)),
                 {1: (), 2: (1,), 3: (1,), 4: (2, 3)}, id="group-stage"),
    # the group sits at its lowest order; a step ordered between its members still comes after it
    pytest.param(D(S(1), S(2, group="g"), S(3), S(4, order=5, group="g"), groups=("g",)),
                 {1: (), 2: (1,), 4: (1,), 3: (2, 4)}, id="group-at-lowest-order"),
    pytest.param(D(S(1, group="a"), S(2, group="a"), S(3, group="b"), S(4, group="b"),
                   groups=("a", "b")),
                 {1: (), 2: (), 3: (1, 2), 4: (1, 2)}, id="group-after-group"),
    # explicit [] is a root and replaces the implicit edge; the next stage depends on it
    pytest.param(D(S(1), S(2, deps=[]), S(3)), {1: (), 2: (), 3: (2,)}, id="explicit-root"),
    pytest.param(D(S(1), S(2), S(3, deps=[1]), S(4)), {1: (), 2: (1,), 3: (1,), 4: (3,)}, id="mix"),
    # equal order: (order, id) decides
    pytest.param(D(S(5, order=1), S(2, order=1), S(9, order=0)), {9: (), 2: (9,), 5: (2,)}, id="ties"),
    # explicit deps come back sorted and deduplicated
    pytest.param(D(S(1), S(2), S(3, deps=[2, 1, 2])), {1: (), 2: (1,), 3: (1, 2)}, id="sorted"),
])
def test_stage_rule_table(defn, expected):
    assert graph.effective_dependencies(defn) == expected


def test_implicit_steps_and_group_members():
    defn = D(S(1), S(4, order=2, group="g"), S(3, order=2, group="g", deps=[1]), S(5, deps=[3]),
             groups=("g",))
    assert graph.implicit_steps(defn) == {1, 4}
    assert graph.group_members(defn) == {"g": (3, 4)}  # by (order, id)


def test_barrier_widens_only_from_outside_the_group():
    defn = D(S(1, "a1", group="g", deps=[]), S(2, "a2", group="g", deps=[]),
             S(3, "x", deps=[1]), S(4, "y"), groups=("g",))
    assert graph.barrier_dependencies(defn) == {1: (), 2: (), 3: (1, 2), 4: (3,)}
    assert graph.effective_dependencies(defn)[3] == (1,)


def test_results_are_copies():
    defn = D(S(1), S(2))
    graph.effective_dependencies(defn)[2] = (99,)
    graph.implicit_steps(defn).add(99)
    assert graph.effective_dependencies(defn) == {1: (), 2: (1,)}
    assert graph.implicit_steps(defn) == {1, 2}


def test_cache_never_mixes_up_definitions():
    # Definitions die and their ids get reused: every fresh one must still get its own answer.
    for n in range(1, 60):
        defn = D(*(S(i) for i in range(1, n + 1)))
        assert graph.topological_order(defn) == list(range(1, n + 1))


# --------------------------------------------------------------------------- ordering


def test_layers_and_topological_order():
    defn = D(S(1, order=3, deps=[]), S(2, order=1, deps=[]), S(3, deps=[1, 2]), S(4, order=0, deps=[2]))
    assert graph.layers(defn) == [[1, 2], [3, 4]]
    assert graph.topological_order(defn) == [2, 1, 4, 3]  # by layer, then order, then id


def test_layers_raise_on_cycle_with_the_cycle():
    with pytest.raises(CycleError) as info:
        graph.topological_order(D(S(1, "a", deps=[2]), S(2, "b", deps=[1])))
    assert info.value.cycle == ["a", "b", "a"]


def test_layers_ignore_unknown_dependencies():
    assert graph.layers(D(S(1, deps=[77]), S(2))) == [[1], [2]]


# --------------------------------------------------------------------------- analysis


def small() -> PipelineDef:
    # a(10) -> b(20) -> d(15); a -> c(5) -> d; c -> e(1)
    return D(S(1, "a", deps=[], dur=10), S(2, "b", deps=[1], dur=20), S(3, "c", deps=[1], dur=5),
             S(4, "d", deps=[2, 3], dur=15), S(5, "e", deps=[3], dur=1))


def test_critical_path_and_slack_by_hand():
    result = graph.analyze(small())
    assert result["critical_path"] == {"steps": ["a", "b", "d"], "step_ids": [1, 2, 4], "total_seconds": 45.0}
    table = {name: (s["earliest_start"], s["earliest_finish"], s["latest_start"], s["latest_finish"],
                    s["slack"], s["critical"]) for name, s in result["steps"].items()}
    assert table == {
        "a": (0, 10, 0, 10, 0, True),
        "b": (10, 30, 10, 30, 0, True),
        "c": (10, 15, 25, 30, 15, False),
        "d": (30, 45, 30, 45, 0, True),
        "e": (15, 16, 44, 45, 29, False),
    }
    assert result["roots"] == ["a"] and result["sinks"] == ["d", "e"]
    assert result["layers"] == [["a"], ["b", "c"], ["d", "e"]] and result["layer_count"] == 3
    assert result["max_parallelism"] == 2  # b with c, then b with e
    assert result["valid"] and result["problems"] == [] and result["total_steps"] == 5
    assert result["unreachable"] == [] and result["redundant_edges"] == []
    json.dumps(result)


def test_critical_path_goes_through_the_group_barrier():
    # deploy names only `unit`, but waits for the slower member `e2e`
    defn = D(S(1, "build", dur=10), S(2, "unit", group="t", dur=5), S(3, "e2e", group="t", dur=50),
             S(4, "deploy", deps=[2], dur=1), groups=("t",))
    assert graph.analyze(defn)["critical_path"]["steps"] == ["build", "e2e", "deploy"]
    assert graph.analyze(defn)["critical_path"]["total_seconds"] == 61.0


@pytest.mark.parametrize("durations, deps, expected", [
    # widest layer is 2 ({a, b} then {c, d}), but a runs on while c and d run: 3 at once
    ({"a": 100, "b": 1, "c": 10, "d": 10}, {"a": [], "b": [], "c": ["b"], "d": ["b"]}, 3),
    # a step finishing as the next starts does not overlap it
    ({"a": 10, "b": 10}, {"a": [], "b": ["a"]}, 1),
    # widest layer 3, but they never overlap
    ({"r": 1, "x": 5, "y": 5, "z": 5}, {"r": [], "x": ["r"], "y": ["x"], "z": ["y"]}, 1),
    # zero-duration steps count at their instant
    ({"a": 0, "b": 0, "c": 5}, {"a": [], "b": [], "c": []}, 3),
    ({}, {}, 0),
])
def test_max_parallelism(durations, deps, expected):
    ids = {name: i for i, name in enumerate(durations, start=1)}
    defn = D(*(S(ids[n], n, deps=[ids[d] for d in deps[n]], dur=durations[n]) for n in durations))
    assert graph.analyze(defn)["max_parallelism"] == expected


def test_redundant_edges_only_explicit_ones_implied_by_a_longer_path():
    defn = D(S(1, "a", deps=[]), S(2, "b", deps=[1]), S(3, "c", deps=[1, 2]),
             S(4, "d", deps=[1]), S(5, "e"))  # e is implicit on d: never reported
    assert graph.analyze(defn)["redundant_edges"] == [{"from": "a", "to": "c"}]


def test_suggestions_savings_by_hand_chain():
    # checkout(10) -> build(60, stage rule) -> test(30) -> deploy(5): 105 s
    defn = D(S(1, "checkout", deps=[], dur=10), S(2, "build", dur=60),
             S(3, "test", deps=[2], dur=30), S(4, "deploy", deps=[3], dur=5))
    got = [(s["step"], s["drop_dependency"], s["kind"], s["suggested_dependencies"], s["saves_seconds"])
           for s in graph.analyze(defn)["suggestions"]]
    assert got == [
        # test beside build (still after checkout): build ends at 70 = the new total
        ("test", "build", "explicit", ["checkout"], 35.0),
        # build from the start: 60 + 30 + 5
        ("build", "checkout", "implicit", [], 10.0),
        # deploy beside test: test ends at 100
        ("deploy", "test", "explicit", ["build"], 5.0),
    ]
    first = graph.analyze(defn)["suggestions"][0]
    assert first["message"] == (
        "'test' waits for 'build' on the critical path. If 'test' does not need 'build', let it "
        "depend on 'checkout' so it runs alongside: the pipeline would take 70s instead of 105s "
        "(saves 35s).")


def test_suggestions_by_hand_with_a_group():
    # checkout(10) -> build(20) -> {unit(30), e2e(50)} -> deploy(5, names unit only): 85 s
    defn = D(S(1, "checkout", deps=[], dur=10), S(2, "build", deps=[1], dur=20),
             S(3, "unit", group="tests", dur=30), S(4, "e2e", group="tests", dur=50),
             S(5, "deploy", deps=[3], dur=5), groups=("tests",))
    result = graph.analyze(defn)
    assert result["critical_path"]["steps"] == ["checkout", "build", "e2e", "deploy"]
    got = [(s["step"], s["drop_dependencies"], s["group"], s["saves_seconds"]) for s in result["suggestions"]]
    assert got == [
        # e2e right after checkout: 10 + 50, then deploy: 65
        ("e2e", ["build"], None, 20.0),
        # build from the start: 20 + 50 + 5 = 75
        ("build", ["checkout"], None, 10.0),
        # deploy no longer waits for the group, only for what it waited for: e2e ends at 80
        ("deploy", ["unit"], "tests", 5.0),
    ]
    assert "parallel group 'tests'" in result["suggestions"][2]["message"]


def test_no_suggestion_when_nothing_is_saved():
    # c needs a and b, both 10 s: dropping either saves nothing
    defn = D(S(1, "a", deps=[], dur=10), S(2, "b", deps=[], dur=10), S(3, "c", deps=[1, 2], dur=1))
    assert graph.analyze(defn)["suggestions"] == []


def test_analysis_of_an_invalid_definition_covers_the_valid_part():
    defn = D(S(1, "ok", deps=[], dur=5), S(2, "ghost", deps=[1, 99]), S(3, "after-ghost", deps=[2]),
             S(4, "loop1", deps=[5]), S(5, "loop2", deps=[4]), S(6, "selfish", deps=[6]),
             S(7, "fine", deps=[1], dur=7))
    result = graph.analyze(defn)
    assert not result["valid"]
    assert {p["code"] for p in result["problems"]} == {"unknown_dependency", "cycle", "self_dependency"}
    assert result["unreachable"] == ["ghost", "after-ghost", "loop1", "loop2", "selfish"]
    assert set(result["steps"]) == {"ok", "fine"}
    assert result["critical_path"]["steps"] == ["ok", "fine"]
    assert result["total_steps"] == 7
    json.dumps(result)


def test_duplicate_names_stay_apart_in_the_analysis():
    result = graph.analyze(D(S(1, "x", deps=[]), S(2, "x")))
    assert set(result["steps"]) == {"x#1", "x#2"}


def test_empty_definition():
    result = graph.analyze(D())
    assert result["critical_path"] == {"steps": [], "step_ids": [], "total_seconds": 0.0}
    assert result["max_parallelism"] == 0 and result["layers"] == [] and result["valid"]


# --------------------------------------------------------------------------- properties


@st.composite
def dags(draw, max_steps: int = 200):
    """Random valid definitions: ids ascend with (order, id), explicit deps point back, some
    steps use the stage rule, and contiguous runs form groups whose members only depend on
    steps before the group (so barriers can't close a cycle)."""
    n = draw(st.integers(1, max_steps))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    ids = sorted(rnd.sample(range(1, 10 * n + 1), n))
    steps, groups, order, pos = [], [], 0, 0
    while pos < n:
        order += rnd.choice((0, 1, 1, 3))
        size = rnd.choice((1, 1, 1, 2, 3)) if pos else 1
        size = min(size, n - pos)
        group = f"g{pos}" if size > 1 else None
        if group:
            groups.append(group)
        for k in range(size):
            i = ids[pos + k]
            if rnd.random() < 0.3:
                deps = None
            else:
                earlier = ids[:pos]
                deps = tuple(rnd.sample(earlier, min(len(earlier), rnd.randint(0, 4))))
            steps.append(StepDef(id=i, name=f"s{i}", order=order, dependencies=deps,
                                 parallel_group=group, estimated_duration=rnd.choice((0, 1, 5, 10, 30, 60.5))))
        pos += size
    rnd.shuffle(steps)  # definition order must not matter
    return PipelineDef(steps=tuple(steps), groups=tuple(GroupDef(id=g) for g in groups))


PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def longest_path(deps: dict[int, tuple[int, ...]], dur: dict[int, float]) -> float:
    finish: dict[int, float] = {}
    for v in nx.topological_sort(nx.DiGraph([(d, s) for s, ds in deps.items() for d in ds])):
        finish[v] = max((finish[d] for d in deps.get(v, ())), default=0.0) + dur[v]
    return max([dur[v] for v in deps] + list(finish.values()), default=0.0)


@PROPS
@given(dags())
def test_property_layers_and_order_respect_every_dependency(defn):
    assert graph.validate(defn) == []
    layer_of = {v: k for k, layer in enumerate(graph.layers(defn)) for v in layer}
    order = graph.topological_order(defn)
    position = {v: i for i, v in enumerate(order)}
    assert sorted(order) == sorted(s.id for s in defn.steps)
    for step, deps in graph.barrier_dependencies(defn).items():
        for d in deps:
            assert layer_of[d] < layer_of[step]
            assert position[d] < position[step]


@PROPS
@given(dags())
def test_property_critical_path_and_slack(defn):
    result = graph.analyze(defn)
    steps = result["steps"]
    total = result["critical_path"]["total_seconds"]
    assert total == max(s["earliest_finish"] for s in steps.values())
    assert all(total >= s["duration"] for s in steps.values())
    assert all(s["slack"] >= 0 for s in steps.values())
    for name in result["critical_path"]["steps"]:
        assert steps[name]["slack"] == 0 and steps[name]["critical"]
    barrier = graph.barrier_dependencies(defn)
    ids = result["critical_path"]["step_ids"]
    assert all(a in barrier[b] for a, b in zip(ids, ids[1:]))
    assert ids and barrier[ids[0]] == ()
    dur = {s.id: s.estimated_duration for s in defn.steps}
    assert total == pytest.approx(longest_path(barrier, dur))


@PROPS
@given(dags(max_steps=80))
def test_property_max_parallelism_matches_brute_force(defn):
    result = graph.analyze(defn)
    spans = [(s["earliest_start"], s["earliest_finish"]) for s in result["steps"].values()]
    best = max(sum(1 for a, b in spans if a <= t < b or a == b == t) for t, _ in spans)
    assert result["max_parallelism"] == best


@PROPS
@given(dags(max_steps=80))
def test_property_redundant_edges_match_networkx(defn):
    barrier = graph.barrier_dependencies(defn)
    g = nx.DiGraph([(d, s) for s, ds in barrier.items() for d in ds])
    g.add_nodes_from(barrier)
    reduced = nx.transitive_reduction(g)
    name = {s.id: s.name for s in defn.steps}
    expected = {(name[d], name[s.id]) for s in defn.steps if s.dependencies is not None
                for d in set(s.dependencies) if not reduced.has_edge(d, s.id)}
    got = {(e["from"], e["to"]) for e in graph.analyze(defn)["redundant_edges"]}
    assert got == expected


@PROPS
@given(dags(max_steps=120))
def test_property_suggestion_savings_match_recomputation(defn):
    """Each saving equals a full recomputation with b depending on what a depended on (the
    whole group when a is a member of another group), and none is missed on short paths."""
    result = graph.analyze(defn)
    total = result["critical_path"]["total_seconds"]
    dur = {s.id: s.estimated_duration for s in defn.steps}
    effective = graph.effective_dependencies(defn)
    members = graph.group_members(defn)
    group_of = {s.id: s.parallel_group for s in defn.steps}

    def saving(a: int, b: int) -> float:
        ga = group_of[a]
        unit = members[ga] if ga and ga != group_of[b] else (a,)
        new_deps = {d for d in effective[b] if d not in unit}
        for u in unit:
            new_deps.update(effective[u])
        changed = replace(defn, steps=tuple(
            replace(s, dependencies=tuple(new_deps)) if s.id == b else s for s in defn.steps))
        return total - longest_path(graph.barrier_dependencies(changed), dur)

    ids = result["critical_path"]["step_ids"]
    expected = {b: saving(a, b) for a, b in zip(ids, ids[1:])}
    reported = {s["step_id"]: s["saves_seconds"] for s in result["suggestions"]}
    for b, saves in reported.items():
        assert saves > 0 and saves == pytest.approx(expected[b], abs=1e-6)
    savings = [s["saves_seconds"] for s in result["suggestions"]]
    assert savings == sorted(savings, reverse=True) and len(savings) <= 10
    if len(ids) <= 11:  # every edge of a short critical path is evaluated
        assert set(reported) == {b for b, saves in expected.items() if saves > 1e-6}


@PROPS
@given(dags(max_steps=120), st.randoms(use_true_random=False))
def test_property_back_edge_makes_a_reported_cycle(defn, rnd):
    effective = graph.effective_dependencies(defn)
    with_deps = [s for s, deps in effective.items() if deps]
    if not with_deps:
        return
    # walk up from a step to one of its ancestors, then make that ancestor depend on the step
    low = rnd.choice(with_deps)
    high = rnd.choice(effective[low])
    while effective[high] and rnd.random() < 0.7:
        high = rnd.choice(effective[high])
    steps = tuple(replace(s, dependencies=tuple(effective[high]) + (low,)) if s.id == high else s
                  for s in defn.steps)
    cyclic = replace(defn, steps=steps)
    cycles = [p for p in graph.validate(cyclic) if p.code == "cycle"]
    assert cycles
    names = cycles[0].message.removeprefix("Dependency cycle: ").split(" (")[0].split(" -> ")
    assert names[0] == names[-1] and len(names) >= 3
    assert graph.find_cycle(cyclic) == names
    new_effective = graph.effective_dependencies(cyclic)
    id_of = {s.name: s.id for s in cyclic.steps}
    for a, b in zip(names, names[1:]):
        assert id_of[a] in new_effective[id_of[b]]
    with pytest.raises(CycleError):
        graph.layers(cyclic)


@PROPS
@given(dags(max_steps=120), st.randoms(use_true_random=False))
def test_property_invalid_steps_and_their_downstream_are_unreachable(defn, rnd):
    broken = set(rnd.sample([s.id for s in defn.steps], min(len(defn.steps), rnd.randint(1, 3))))
    steps = tuple(replace(s, dependencies=(s.id,) if s.id % 2 else (-1,)) if s.id in broken else s
                  for s in defn.steps)
    bad = replace(defn, steps=steps)
    deps = graph.barrier_dependencies(bad)
    g = nx.DiGraph([(d, s) for s, ds in deps.items() for d in ds if d != s and d > 0])
    g.add_nodes_from(deps)
    expected = set(broken).union(*(nx.descendants(g, b) for b in broken))
    result = graph.analyze(bad)
    name = {s.id: s.name for s in bad.steps}
    assert set(result["unreachable"]) == {name[v] for v in expected}
    assert set(result["steps"]) == {name[v] for v in deps if v not in expected}
    assert not result["valid"]
    json.dumps(result)


# --------------------------------------------------------------------------- size


def test_a_5000_step_random_dag_analyses_correctly():
    rnd = random.Random(5000)
    steps = [StepDef(id=i, name=f"s{i}", order=i,
                     dependencies=tuple(rnd.sample(range(1, i), min(3, i - 1))) if i % 10 else None,
                     estimated_duration=rnd.uniform(1, 100)) for i in range(1, 5001)]
    defn = PipelineDef(steps=tuple(steps))
    result = graph.analyze(defn)
    assert result["valid"] and result["total_steps"] == 5000 and len(result["steps"]) == 5000
    assert sum(len(layer) for layer in result["layers"]) == 5000
    total = result["critical_path"]["total_seconds"]
    assert total == max(s["earliest_finish"] for s in result["steps"].values())
    assert all(s["slack"] >= 0 for s in result["steps"].values())
    assert all(result["steps"][n]["critical"] for n in result["critical_path"]["steps"])
    assert 1 <= len(result["suggestions"]) <= 10
    # spot-check redundant edges: without the edge, a path still leads there
    deps = graph.barrier_dependencies(defn)
    g = nx.DiGraph([(d, s) for s, ds in deps.items() for d in ds])
    for edge in rnd.sample(result["redundant_edges"], 20):
        a, b = int(edge["from"][1:]), int(edge["to"][1:])
        g.remove_edge(a, b)
        assert nx.has_path(g, a, b)
        g.add_edge(a, b)
    json.dumps(result)


def test_upstream_is_transitive_and_crosses_group_barriers():
    from webapp.engine.graph import upstream
    from webapp.engine.types import GroupDef, PipelineDef, StepDef

    defn = PipelineDef(steps=(
        StepDef(id=1, name="a", dependencies=()),
        StepDef(id=2, name="b", dependencies=(1,), parallel_group="g"),
        StepDef(id=3, name="c", dependencies=(1,), parallel_group="g"),
        StepDef(id=4, name="d", dependencies=(2,)),          # waits for the whole group
        StepDef(id=5, name="e", dependencies=()),
    ), groups=(GroupDef(id="g"),))
    assert upstream(defn, 4) == {1, 2, 3}
    assert upstream(defn, 2) == {1}
    assert upstream(defn, 5) == frozenset() and upstream(defn, 1) == frozenset()
