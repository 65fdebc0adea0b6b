"""`approval` step: a pure gate (DESIGN §3).

The waiting happens before the step runs (the planner holds it in `waiting_approval` until
the ApprovalRequest is approved); by the time the runner is called the gate has been passed.
"""
from __future__ import annotations

from .base import SUCCESS, LogBuffer, StepContext, StepResult


def run(ctx: StepContext) -> StepResult:
    log = LogBuffer(ctx.log_max_bytes, ctx.secrets)
    log.line("approved gate passed")
    return StepResult(status=SUCCESS, logs=log.text())
