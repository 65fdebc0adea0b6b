"""States and transitions (DESIGN §3): every allowed pair, and a selection of forbidden ones."""
import pytest

from webapp.engine.states import (
    APPROVAL_TERMINAL, APPROVAL_TRANSITIONS, EXECUTION_TERMINAL, EXECUTION_TRANSITIONS,
    STEP_ACTIVE, STEP_TERMINAL, STEP_TRANSITIONS, ApprovalState, ExecutionState, StepState,
    can_transition, is_terminal,
)

STEP_ALLOWED = [
    ("pending", "queued"), ("pending", "skipped"), ("pending", "cancelled"),
    ("pending", "waiting_approval"),
    ("waiting_approval", "queued"), ("waiting_approval", "failed"),
    ("waiting_approval", "cancelled"), ("waiting_approval", "timed_out"),
    ("queued", "running"), ("queued", "cancelled"), ("queued", "failed"), ("queued", "timed_out"),
    ("running", "success"), ("running", "failed"), ("running", "timed_out"),
    ("running", "cancelled"),
    ("retry_scheduled", "queued"), ("retry_scheduled", "cancelled"),
    ("failed", "skipped"), ("timed_out", "skipped"),
]
STEP_FORBIDDEN = [
    ("success", "running"), ("success", "queued"), ("success", "failed"),
    ("failed", "retry_scheduled"),   # a retry is a new attempt row
    ("failed", "queued"), ("failed", "success"), ("cancelled", "queued"),
    ("skipped", "queued"), ("skipped", "failed"), ("pending", "running"),
    ("pending", "success"), ("pending", "failed"), ("pending", "timed_out"),
    ("queued", "success"), ("queued", "skipped"), ("running", "queued"),
    ("running", "skipped"), ("retry_scheduled", "running"), ("retry_scheduled", "failed"),
    ("waiting_approval", "running"), ("waiting_approval", "success"),
    ("timed_out", "running"), ("pending", "pending"),
]
EXEC_ALLOWED = [
    ("pending", "running"), ("pending", "cancelled"),
    ("running", "waiting_approval"), ("running", "success"), ("running", "failed"),
    ("running", "cancelled"),
    ("waiting_approval", "running"), ("waiting_approval", "failed"),
    ("waiting_approval", "cancelled"), ("waiting_approval", "success"),
    ("success", "running"), ("failed", "running"), ("cancelled", "running"),
]
EXEC_FORBIDDEN = [
    ("pending", "success"), ("pending", "failed"), ("pending", "waiting_approval"),
    ("success", "failed"), ("failed", "success"), ("cancelled", "success"),
    ("success", "cancelled"), ("running", "pending"), ("failed", "waiting_approval"),
]
APPROVAL_ALLOWED = [
    ("pending", "approved"), ("pending", "rejected"), ("pending", "timed_out"),
    ("pending", "cancelled"),
]
APPROVAL_FORBIDDEN = [
    ("approved", "rejected"), ("rejected", "approved"), ("approved", "pending"),
    ("timed_out", "approved"), ("cancelled", "pending"), ("pending", "pending"),
]


@pytest.mark.parametrize("a,b", STEP_ALLOWED)
def test_step_allowed(a, b):
    assert can_transition("step", a, b)
    assert (StepState(a), StepState(b)) in STEP_TRANSITIONS


@pytest.mark.parametrize("a,b", STEP_FORBIDDEN)
def test_step_forbidden(a, b):
    assert not can_transition("step", a, b)


@pytest.mark.parametrize("a,b", EXEC_ALLOWED)
def test_execution_allowed(a, b):
    assert can_transition("execution", a, b)


@pytest.mark.parametrize("a,b", EXEC_FORBIDDEN)
def test_execution_forbidden(a, b):
    assert not can_transition("execution", a, b)


@pytest.mark.parametrize("a,b", APPROVAL_ALLOWED)
def test_approval_allowed(a, b):
    assert can_transition("approval", a, b)


@pytest.mark.parametrize("a,b", APPROVAL_FORBIDDEN)
def test_approval_forbidden(a, b):
    assert not can_transition("approval", a, b)


def test_tables_are_exactly_the_listed_rules():
    assert {(a.value, b.value) for a, b in STEP_TRANSITIONS} == set(STEP_ALLOWED)
    assert {(a.value, b.value) for a, b in EXECUTION_TRANSITIONS} == set(EXEC_ALLOWED)
    assert {(a.value, b.value) for a, b in APPROVAL_TRANSITIONS} == set(APPROVAL_ALLOWED)


def test_terminal_sets():
    assert {s.value for s in STEP_TERMINAL} == {
        "success", "failed", "skipped", "cancelled", "timed_out"}
    assert {s.value for s in EXECUTION_TERMINAL} == {"success", "failed", "cancelled"}
    assert {s.value for s in APPROVAL_TERMINAL} == {
        "approved", "rejected", "timed_out", "cancelled"}
    assert not STEP_ACTIVE & STEP_TERMINAL
    assert "success" in STEP_TERMINAL  # plain strings work with the str enums
    assert is_terminal("step", "timed_out") and not is_terminal("step", "retry_scheduled")
    assert is_terminal("execution", "cancelled") and not is_terminal("execution", "running")
    assert is_terminal("approval", "rejected") and not is_terminal("approval", "pending")


def test_non_terminal_step_states_have_an_exit_and_success_has_none():
    sources = {a for a, _ in STEP_TRANSITIONS}
    for s in StepState:
        if s not in STEP_TERMINAL:
            assert s in sources, s
    assert StepState.SUCCESS not in sources
    assert StepState.SKIPPED not in sources and StepState.CANCELLED not in sources
    # approvals never leave a terminal state
    assert {a for a, _ in APPROVAL_TRANSITIONS} == {ApprovalState.PENDING}


def test_enum_values_and_unknowns():
    assert str(StepState.RETRY_SCHEDULED) == "retry_scheduled"
    assert ExecutionState("waiting_approval") is ExecutionState.WAITING_APPROVAL
    assert StepState.SUCCESS == "success"
    assert not can_transition("step", "bogus", "queued")
    assert not can_transition("step", "pending", "bogus")
    assert not is_terminal("step", "bogus")
    with pytest.raises(ValueError):
        can_transition("pipeline", "pending", "running")
    with pytest.raises(ValueError):
        is_terminal("pipeline", "pending")
