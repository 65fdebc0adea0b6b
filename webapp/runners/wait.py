"""`wait` step: sleep parameters["seconds"], cancellable (DESIGN §3).

should_stop() is checked every 0.2 s: "cancelled" -> cancelled, "timed_out" -> timed_out. A step
timeout (ctx.timeout_seconds) shorter than the wait ends it as timed_out.
"""
from __future__ import annotations

import time

from .base import (
    SUCCESS, TIMED_OUT, LogBuffer, StepContext, StepResult, error_result, safe_on_log, safe_should_stop,
    stop_status,
)

STOP_POLL = 0.2


def run(ctx: StepContext) -> StepResult:
    seconds = (ctx.parameters or {}).get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        return error_result("A wait step needs a number of seconds (0 or more).", ctx)
    log = LogBuffer(ctx.log_max_bytes, ctx.secrets)
    log.line(f"waiting {seconds:g} s")
    safe_on_log(ctx, log.text(final=False))
    started = time.monotonic()
    end = started + seconds
    timeout = ctx.timeout_seconds
    step_deadline = started + timeout if timeout is not None and timeout > 0 else None
    while True:
        stop = stop_status(safe_should_stop(ctx))
        if stop:
            why = "stopped: the attempt timed out" if stop[0] == TIMED_OUT else "step cancelled"
            return _stopped(log, stop, f"{why} after {time.monotonic() - started:.1f} s")
        now = time.monotonic()
        if step_deadline is not None and step_deadline <= now and step_deadline < end:
            return _stopped(log, (TIMED_OUT, "timeout"), f"step timed out after {timeout:g} s")
        if now >= end:
            break
        limit = end if step_deadline is None else min(end, step_deadline)
        time.sleep(max(0.0, min(STOP_POLL, limit - now)))
    log.line(f"waited {seconds:g} s")
    return StepResult(status=SUCCESS, logs=log.text())


def _stopped(log: LogBuffer, stop: tuple[str, str], why: str) -> StepResult:
    status, failure = stop
    log.line(f"[ansflow] {why}")
    return StepResult(status=status, failure=failure, error_message=why, logs=log.text())
