"""Step, execution and approval states, their terminal sets and allowed transitions (DESIGN §3).

The transitions are plain data (frozensets of ``(from, to)`` pairs) so that services can
guard every conditional update with them and tests can enumerate them.

A retry is a NEW attempt row: the failed attempt stays ``failed`` and the new attempt
starts in ``retry_scheduled``. That is why ``failed -> retry_scheduled`` is not a transition.
"""
from __future__ import annotations

from enum import Enum


class StepState(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    def __str__(self) -> str:  # "success", not "StepState.SUCCESS"
        return self.value


class ExecutionState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class ApprovalState(str, Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


S, E, A = StepState, ExecutionState, ApprovalState

STEP_TERMINAL: frozenset[StepState] = frozenset(
    {S.SUCCESS, S.FAILED, S.SKIPPED, S.CANCELLED, S.TIMED_OUT})
STEP_ACTIVE: frozenset[StepState] = frozenset(
    {S.QUEUED, S.RUNNING, S.WAITING_APPROVAL, S.RETRY_SCHEDULED})
EXECUTION_TERMINAL: frozenset[ExecutionState] = frozenset({E.SUCCESS, E.FAILED, E.CANCELLED})
APPROVAL_TERMINAL: frozenset[ApprovalState] = frozenset(
    {A.APPROVED, A.REJECTED, A.TIMED_OUT, A.CANCELLED})

STEP_TRANSITIONS: frozenset[tuple[StepState, StepState]] = frozenset({
    (S.PENDING, S.QUEUED),
    (S.PENDING, S.SKIPPED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.WAITING_APPROVAL),
    (S.WAITING_APPROVAL, S.QUEUED),
    (S.WAITING_APPROVAL, S.FAILED),        # rejected
    (S.WAITING_APPROVAL, S.CANCELLED),
    (S.WAITING_APPROVAL, S.TIMED_OUT),     # approval expired
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.QUEUED, S.FAILED),                  # worker lost / enqueue error
    (S.QUEUED, S.TIMED_OUT),
    (S.RUNNING, S.SUCCESS),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.CANCELLED),
    (S.RETRY_SCHEDULED, S.QUEUED),
    (S.RETRY_SCHEDULED, S.CANCELLED),
    (S.FAILED, S.SKIPPED),                 # a person's bypass
    (S.TIMED_OUT, S.SKIPPED),              # bypass
})

EXECUTION_TRANSITIONS: frozenset[tuple[ExecutionState, ExecutionState]] = frozenset({
    (E.PENDING, E.RUNNING),
    (E.PENDING, E.CANCELLED),
    (E.RUNNING, E.WAITING_APPROVAL),
    (E.RUNNING, E.SUCCESS),
    (E.RUNNING, E.FAILED),
    (E.RUNNING, E.CANCELLED),
    (E.WAITING_APPROVAL, E.RUNNING),
    (E.WAITING_APPROVAL, E.FAILED),
    (E.WAITING_APPROVAL, E.CANCELLED),
    (E.WAITING_APPROVAL, E.SUCCESS),
    # retry_step re-opens a finished execution in place
    (E.SUCCESS, E.RUNNING),
    (E.FAILED, E.RUNNING),
    (E.CANCELLED, E.RUNNING),
})

APPROVAL_TRANSITIONS: frozenset[tuple[ApprovalState, ApprovalState]] = frozenset({
    (A.PENDING, A.APPROVED),
    (A.PENDING, A.REJECTED),
    (A.PENDING, A.TIMED_OUT),
    (A.PENDING, A.CANCELLED),
})

_KINDS = {
    "step": (StepState, STEP_TRANSITIONS),
    "execution": (ExecutionState, EXECUTION_TRANSITIONS),
    "approval": (ApprovalState, APPROVAL_TRANSITIONS),
}


def can_transition(kind: str, a: str, b: str) -> bool:
    """True when ``a -> b`` is allowed for ``kind`` ("step", "execution" or "approval").

    ``a`` and ``b`` may be enum members or their string values; an unknown state
    is never allowed. An unknown kind raises ValueError.
    """
    try:
        enum, table = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown state kind {kind!r}") from None
    try:
        return (enum(a), enum(b)) in table
    except ValueError:
        return False


def is_terminal(kind: str, state: str) -> bool:
    """True when ``state`` is terminal for ``kind``."""
    terminal = {"step": STEP_TERMINAL, "execution": EXECUTION_TERMINAL,
                "approval": APPROVAL_TERMINAL}
    try:
        enum = _KINDS[kind][0]
    except KeyError:
        raise ValueError(f"unknown state kind {kind!r}") from None
    try:
        return enum(state) in terminal[kind]
    except ValueError:
        return False
