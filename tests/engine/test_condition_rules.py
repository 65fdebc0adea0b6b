"""Every trigger rule x {expression absent, true, false, error} x the outcome of the dependency
(issue 12): an expression adds to the rule and never replaces it; status functions opt out."""
from __future__ import annotations

import pytest

from webapp.engine.conditions import (
    RULES, evaluate_rule, normalize_conditions, runs_on_cancel, uses_status_functions, validate_conditions,
)

CTX = {"variables": {"env": "production", "force": "yes"}}
OUTCOMES = ("success", "failed", "skipped", "upstream_failed", "cancelled")
EXPRESSIONS = {
    "absent": None,
    "true": 'variables.env == "production"',
    "false": 'variables.env == "staging"',
    "error": "variables.missing == 1",      # compiles, fails when evaluated (no such key)
}
FAILED = ("failed", "upstream_failed")

# what the rule alone says for one dependency with this outcome (DESIGN §3)
RULE_HOLDS = {
    "on_success": lambda o: o in ("success", "skipped"),
    "on_failure": lambda o: o in FAILED,
    "always": lambda o: True,
    "one_success": lambda o: o == "success",
    "none_failed": lambda o: o not in FAILED,
}
NEEDS_SUCCESS = ("on_success", "one_success", "none_failed")


def _cases():
    for rule in RULES:
        for kind in EXPRESSIONS:
            for outcome in OUTCOMES:
                yield rule, kind, outcome


@pytest.mark.parametrize("rule, kind, outcome", list(_cases()))
def test_rule_and_expression_table(rule, kind, outcome):
    cond = {"type": rule}
    if EXPRESSIONS[kind] is not None:
        cond["expression"] = EXPRESSIONS[kind]
    v = evaluate_rule(cond, {"build": outcome}, CTX)
    holds = RULE_HOLDS[rule](outcome)
    if not holds:
        # the rule decides first: the expression is never evaluated, so even a broken one cannot run the step
        assert v.error is None and v.result is False, v
        assert v.explanation.startswith("skipped: ")
        assert v.upstream_failed is (rule in NEEDS_SUCCESS and outcome in FAILED)
        if kind != "absent":
            assert v.explanation.endswith("the expression was not evaluated")
        return
    if kind == "error":
        assert v.result is None and "Unknown key 'missing'" in v.error
        return
    assert v.error is None
    assert v.result is (kind != "false"), v
    assert v.upstream_failed is False  # skipped by its own expression: nothing to propagate
    if kind == "false":
        assert v.explanation.startswith("skipped: expression is false") and "the rule held" in v.explanation


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("legacy", [{"type": "expression"}, {}])
def test_legacy_expression_type_is_on_success_and_the_expression(legacy, outcome):
    cond = {**legacy, "expression": EXPRESSIONS["true"]}
    new = evaluate_rule({"type": "on_success", "expression": EXPRESSIONS["true"]}, {"build": outcome}, CTX)
    assert evaluate_rule(cond, {"build": outcome}, CTX) == new
    assert new.result is RULE_HOLDS["on_success"](outcome)


STATUS_TABLE = [
    # expression, outcome, cancelled, runs
    ('always() && variables.force == "yes"', "failed", False, True),
    ('always() && variables.force == "no"', "failed", False, False),
    ("always()", "cancelled", True, True),
    ("failure()", "failed", False, True),
    ("failure()", "upstream_failed", False, True),
    ("failure()", "success", False, False),
    ("success()", "success", False, True),
    ("success()", "skipped", False, True),
    ("success()", "failed", False, False),
    ("success()", "success", True, False),          # cancelled: success() no longer holds
    ("cancelled()", "success", True, True),
    ("cancelled()", "success", False, False),
    ("!cancelled() && failure()", "failed", False, True),
    ("!cancelled() && failure()", "failed", True, False),
]


@pytest.mark.parametrize("expression, outcome, cancelled, runs", STATUS_TABLE)
def test_status_functions_opt_out_of_on_success(expression, outcome, cancelled, runs):
    v = evaluate_rule({"expression": expression}, {"build": outcome}, CTX, cancelled=cancelled)
    assert v.error is None and v.result is runs, v
    assert "in place of rule on_success" in v.explanation
    # a skip after a failure still propagates it: nothing on_success below runs
    assert v.upstream_failed is (not runs and outcome in FAILED)


def test_status_functions_under_another_rule_are_anded_with_it():
    # on_failure does not hold after a success, whatever the expression says
    v = evaluate_rule({"type": "on_failure", "expression": "always()"}, {"build": "success"}, CTX)
    assert v.result is False
    v = evaluate_rule({"type": "on_failure", "expression": "failure()"}, {"build": "failed"}, CTX)
    assert v.result is True


def test_the_issue_scenario_deploy_is_skipped_and_says_why():
    cond = {"type": "expression", "expression": '$variables.env === "production"'}
    v = evaluate_rule(cond, {"unit tests": "failed", "canary": "skipped"}, CTX)
    assert v.result is False and v.upstream_failed
    assert "unit tests failed" in v.explanation and "rule on_success" in v.explanation


@pytest.mark.parametrize("cond, expected", [
    ({"type": "expression", "expression": "true"}, {"type": "on_success", "expression": "true"}),
    ({"type": "on_failure", "expression": "  "}, {"type": "on_failure"}),
    ({"expression": None, "depends_on": [3]}, {"depends_on": [3]}),
    ({"type": "always"}, {"type": "always"}),
    ({"expression": "true"}, {"type": "on_success", "expression": "true"}),
    (None, None),
    ("always", "always"),
])
def test_normalize_conditions(cond, expected):
    before = dict(cond) if isinstance(cond, dict) else cond
    assert normalize_conditions(cond) == expected
    assert normalize_conditions(normalize_conditions(cond)) == expected
    assert cond == before  # never mutated


def test_runs_on_cancel_and_status_function_detection():
    assert runs_on_cancel({"type": "always"})
    assert runs_on_cancel({"expression": "always() && variables.force == 'yes'"})
    assert runs_on_cancel({"type": "expression", "expression": "cancelled()"})
    assert not runs_on_cancel({"expression": "failure()"})
    assert not runs_on_cancel({"type": "on_failure", "expression": "always()"})
    assert not runs_on_cancel(None)
    assert uses_status_functions('"always()" == variables.x') == frozenset()  # inside a string: not a call
    assert uses_status_functions("success() || failure()") == {"success", "failure"}
    assert uses_status_functions("not valid (") == frozenset()


def test_validation_accepts_rule_plus_expression_and_refuses_bad_status_calls():
    assert validate_conditions({"type": "none_failed", "expression": "always()"}) == {}
    assert validate_conditions({"expression": "failure(1)"}) == {
        "expression": "failure() takes no arguments (at position 0)"}
    assert validate_conditions({"type": "expression"}) == {
        "expression": "an expression is required when type is 'expression'"}
