"""Read-only views of a pipeline's definition: dependency analysis, the graph layout, the
dependencies each step really has (explicit or by the stage rule), and trying a step's
condition against a sample context before anything runs."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..engine import graph
from ..engine.conditions import OUTCOMES, evaluate_rule
from ..engine.types import PipelineDef, StepDef
from ..models import Pipeline, PipelineStep
from ..models.snapshots import pipeline_def
from . import graph_svg
from .accounts import ValidationError
from .pipelines import freeze

_UNSET: Any = object()


def definition(pipeline: Pipeline) -> PipelineDef:
    """The saved definition as engine values, with the real step ids."""
    return pipeline_def(freeze(pipeline))


def _analysis(pipeline: Pipeline, defn: PipelineDef) -> dict[str, Any]:
    out = graph.analyze(defn)
    # the engine names groups by their global key ("tests-3fa2c1"); people know them by name
    names = {g.id: g.name for g in pipeline.groups if g.name}
    for item in out["suggestions"]:
        for gid, name in names.items():
            item["message"] = item["message"].replace(f"'{gid}'", f"'{name}'")
        if item.get("group") in names:
            item["group_name"] = names[item["group"]]
    for problem in out["problems"]:
        for gid, name in names.items():
            problem["message"] = problem["message"].replace(f"'{gid}'", f"'{name}'")
    return {"pipeline_id": pipeline.id, "pipeline": pipeline.name, "version": pipeline.version, **out}


def analyze_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    """engine.graph.analyze of the saved definition, with the pipeline's id, name and version."""
    return _analysis(pipeline, definition(pipeline))


def graph_view(pipeline: Pipeline) -> tuple[dict[str, Any], dict[str, Any]]:
    """(layout for templates/_graph.html, analysis) of the saved definition."""
    defn = definition(pipeline)
    analysis = _analysis(pipeline, defn)
    return graph_svg.layout(defn, analysis), analysis


def snapshot_layout(frozen: dict[str, Any]) -> dict[str, Any]:
    """Layout of a frozen definition (WorkflowExecution.pipeline_snapshot), for execution pages."""
    return graph_svg.layout(pipeline_def(frozen))


def dependency_view(pipeline: Pipeline) -> dict[int, dict[str, Any]]:
    """step id -> {"names": effective dependency names, "implicit": from the stage rule?}."""
    defn = definition(pipeline)
    names = {s.id: s.name for s in defn.steps}
    effective = graph.effective_dependencies(defn)
    implicit = graph.implicit_steps(defn)
    return {sid: {"names": [names[d] for d in deps if d in names], "implicit": sid in implicit}
            for sid, deps in effective.items()}


# --------------------------------------------------------------------------- trying a condition


def _with_draft(defn: PipelineDef, depends_on: list[int] | None) -> tuple[PipelineDef, int]:
    """The definition plus a not-yet-saved step placed last (for a new step's form)."""
    sid = max((s.id for s in defn.steps), default=0) + 1
    order = max((s.order for s in defn.steps), default=0) + 1
    draft = StepDef(id=sid, name="(new step)", order=order,
                    dependencies=None if depends_on is None else tuple(sorted(depends_on)))
    return replace(defn, steps=defn.steps + (draft,)), sid


def rule_inputs(defn: PipelineDef, sid: int, conditions: dict | None) -> list[str]:
    """The names a trigger rule sees in dependency_outcomes, as the planner keys them: a step
    name per dependency, a group name for a dependency on another parallel group; restricted
    to conditions.depends_on (step ids) when that is set."""
    by_id = {s.id: s for s in defn.steps}
    rank = {s.id: i for i, s in enumerate(sorted(defn.steps, key=lambda s: (s.order, s.id)))}
    members = graph.group_members(defn)
    group_of = {m: g for g, ms in members.items() for m in ms}
    group_name = {g.id: g.name or g.id for g in defn.groups}
    deps = [d for d in graph.effective_dependencies(defn).get(sid, ()) if d in by_id and d != sid]
    restrict = None
    dep_on = (conditions or {}).get("depends_on") if isinstance(conditions, dict) else None
    if dep_on:
        restrict = {d for d in dep_on if isinstance(d, int) and d in by_id and d != sid}
        deps += [d for d in restrict if d not in deps and rank[d] < rank[sid]]
    own = group_of.get(sid)
    out: list[str] = []
    for d in sorted(set(deps), key=rank.__getitem__):
        g = group_of.get(d)
        if g is not None and g != own:
            key = group_name.get(g, g)
            if key not in out and (restrict is None or any(m in restrict for m in members[g])):
                out.append(key)
        elif restrict is None or d in restrict:
            out.append(by_id[d].name)
    return out


def sample_context(pipeline: Pipeline, step: PipelineStep | None = None, conditions: dict | None = _UNSET,
                   depends_on: list[int] | None = _UNSET) -> dict[str, Any]:
    """A context to try a condition against: every step succeeded, no variables.

    Besides the expression context (variables, trigger, steps, previous, execution) it has
    "dependency_outcomes" for trigger rules: every dependency the rule sees succeeded. For a
    step not saved yet (step None), `depends_on` (step ids, None: the stage rule) says where
    it would hang."""
    defn = definition(pipeline)
    if step is None:
        defn, sid = _with_draft(defn, None if depends_on is _UNSET else depends_on)
    else:
        sid = step.id
        if depends_on is not _UNSET:
            defn = replace(defn, steps=tuple(
                replace(s, dependencies=None if depends_on is None else tuple(sorted(depends_on)))
                if s.id == sid else s for s in defn.steps))
    if conditions is _UNSET:
        conditions = step.conditions if step is not None else None
    by_id = {s.id: s for s in defn.steps}
    effective = graph.effective_dependencies(defn).get(sid, ())
    real = [d for d in effective if d in by_id and d != sid]
    previous = max(real, key=lambda d: (by_id[d].order, d)) if real else None
    entry = {"status": "success", "outputs": {}, "exit_code": 0}
    return {
        "variables": {},
        "trigger": {"type": "manual"},
        "steps": {s.name: dict(entry) for s in defn.steps if s.id != sid},
        "previous": {"name": by_id[previous].name, **entry} if previous is not None else {},
        "execution": {"id": "sample", "status": "running"},
        "dependency_outcomes": {name: "success" for name in rule_inputs(defn, sid, conditions)},
    }


def evaluate_condition(pipeline: Pipeline, step: PipelineStep | None, conditions: Any = _UNSET,
                       context: Any = None, depends_on: list[int] | None = _UNSET) -> dict[str, Any]:
    """{result, error, explanation} for the step's saved conditions (or `conditions`, engine form:
    depends_on as step ids) against the sample context with `context`'s top-level keys laid
    over it. context["dependency_outcomes"] ({name: success|failed|skipped|cancelled|
    upstream_failed}) decides trigger rules. Condition problems come back as `error`; only a
    malformed context raises ValidationError."""
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise ValidationError("The context must be a JSON object.", {"context": "expected a JSON object"})
    outcomes = context.get("dependency_outcomes")
    if outcomes is not None and (not isinstance(outcomes, dict)
                                 or not all(isinstance(k, str) and isinstance(v, str) for k, v in outcomes.items())):
        raise ValidationError("dependency_outcomes must map dependency names to outcomes.",
                              {"context.dependency_outcomes": f"a JSON object of name: one of {', '.join(OUTCOMES)}"})
    if conditions is _UNSET:
        conditions = step.conditions if step is not None else None
    sample = sample_context(pipeline, step, conditions, depends_on)
    merged = {**sample, **context}
    dep_outcomes = merged.pop("dependency_outcomes")
    return evaluate_rule(conditions, dep_outcomes, merged).to_dict()
