"""The `notification` step: send its message now, to every destination it names, and succeed only
if every one of them accepted it (a failure carries the receiver's own error).

parameters: {channels: [names], webhook_url, secret (signs a generic webhook_url), recipients:
[emails | usernames], message (a Jinja template; default: a summary of the execution), subject}.
The message sees execution, step, variables, url, and `steps.<name>.status|outputs|exit_code`.

Unlike the other runners this one uses the database (through the notifications service): it runs
inside the step job's app context and records one NotificationDelivery row per destination, so
the execution page shows what was sent. Retrying the step (its retry_policy, retry_on "error")
sends again.
"""
from __future__ import annotations

from .base import FAILED, SUCCESS, LogBuffer, StepContext, StepResult, error_result, mask


def run(ctx: StepContext) -> StepResult:
    from ..services import notifications as svc

    params = ctx.parameters or {}
    if not (params.get("channels") or params.get("webhook_url") or params.get("recipients")):
        return error_result("A notification step needs channels, recipients or a webhook_url.", ctx)
    try:
        rows = svc.run_step_notifications(ctx.execution_id, ctx.attempt_id, params)
    except Exception as e:  # noqa: BLE001 - becomes the step's error, never a crashed worker
        return error_result(f"notification step error: {type(e).__name__}: {e}", ctx)
    buf = LogBuffer(ctx.log_max_bytes, ctx.secrets)
    if rows:
        buf.line(f"subject: {rows[0].subject}")
    failures = []
    for row in rows:
        last_error = row.error.rsplit("\n", 1)[-1].split(": ", 1)[-1] if row.error else ""
        buf.line(f"{row.status}: {row.channel} -> {row.target or '(no target)'}" + (f" - {last_error}" if last_error else ""))
        if row.status != "delivered":
            failures.append(f"{row.channel}: {last_error or row.status}")
    if failures:
        message = mask("delivery failed - " + "; ".join(failures), ctx.secrets)
        return StepResult(status=FAILED, failure="error", error_message=message, logs=buf.text())
    return StepResult(status=SUCCESS, logs=buf.text(),
                      outputs={"NOTIFICATION_DELIVERIES": ",".join(str(r.id) for r in rows)})
