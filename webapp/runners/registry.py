"""Step type -> runner. Modules are imported when first asked for (so `notification` and its
dependencies load only in the processes that send notifications)."""
from __future__ import annotations

import importlib
from typing import Callable

from .base import FAILED, StepContext, StepResult, error_result, mask

STEP_TYPES = ("shell", "http", "wait", "approval", "notification")

Runner = Callable[[StepContext], StepResult]


class UnknownStepType(ValueError):
    pass


def get(step_type: str) -> Runner:
    """The `run` function of the runner module for `step_type` (UnknownStepType otherwise)."""
    if step_type not in STEP_TYPES:
        raise UnknownStepType(f"Unknown step type {step_type!r}: use {', '.join(STEP_TYPES)}.")
    module = importlib.import_module(f".{step_type}", __package__)
    return module.run


def run_step(ctx: StepContext) -> StepResult:
    """Run ctx's step with its runner; an unknown type or a runner crash becomes a failed result
    (failure "error", message masked) instead of an exception."""
    try:
        result = get(ctx.step_type)(ctx)
    except Exception as exc:  # noqa: BLE001 - any runner bug must end as a recorded failure
        return error_result(f"{ctx.step_type} runner error: {type(exc).__name__}: {exc}", ctx)
    if not isinstance(result, StepResult):
        return StepResult(status=FAILED, failure="error",
                          error_message=mask(f"{ctx.step_type} runner returned {type(result).__name__}", ctx.secrets))
    return result
