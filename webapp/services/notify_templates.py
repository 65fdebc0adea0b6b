"""Notification messages: sandboxed Jinja templates with sensible defaults per event.

Templates are plain text (no HTML escaping: chat and email bodies are text). The sandbox blocks
attribute access to Python internals; on top of it we cap the template size, the output size,
`range()`, string/list multiplication and the number of calls, so a template cannot tie a worker up.
Templates are written by maintainers, who may already run shell steps; the limits are about
accidents as much as abuse.
"""
from __future__ import annotations

import functools
import operator
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 4000
MAX_OUTPUT_CHARS = 8000
MAX_SUBJECT_CHARS = 250
MAX_RANGE = 1000
MAX_SEQUENCE = 20000
MAX_CALLS = 5000

EVENT_LABELS = {
    "started": "Execution started",
    "success": "Execution succeeded",
    "failed": "Execution failed",
    "cancelled": "Execution cancelled",
    "fixed": "Fixed (failed last time, succeeded now)",
    "regression": "Regression (succeeded last time, failed now)",
    "step_success": "Step succeeded",
    "step_failed": "Step failed",
    "retrying": "Step will retry",
    "timed_out": "Step timed out",
    "approval_required": "Approval required",
    "approval_decided": "Approval decided",
    "approval_reminder": "Approval reminder",
    "approval_cancelled": "Approval cancelled",
    "step": "Notification step",
    "test": "Test message",
}

DEFAULT_SUBJECTS = {
    "started": "[AnsFlow] {{ pipeline }} started",
    "success": "[AnsFlow] {{ pipeline }} succeeded",
    "failed": "[AnsFlow] {{ pipeline }} failed",
    "cancelled": "[AnsFlow] {{ pipeline }} was cancelled",
    "fixed": "[AnsFlow] {{ pipeline }} is fixed",
    "regression": "[AnsFlow] {{ pipeline }} is broken (it passed last time)",
    "step_success": "[AnsFlow] {{ pipeline }}: step {{ step.name }} succeeded",
    "step_failed": "[AnsFlow] {{ pipeline }}: step {{ step.name }} failed",
    "retrying": "[AnsFlow] {{ pipeline }}: step {{ step.name }} failed, retrying",
    "timed_out": "[AnsFlow] {{ pipeline }}: step {{ step.name }} timed out",
    # reminders and cancellations are routed (and so rendered) as approval_required: `event` tells them apart
    "approval_required": "[AnsFlow] {% if event == 'approval_cancelled' %}Approval cancelled{% elif event == "
                         "'approval_reminder' %}Reminder: approval needed{% else %}Approval needed{% endif %}: "
                         "{{ step.name }} in {{ pipeline }}"
                         "{% if approval.context.failed_count %} ({{ approval.context.failed_count }} failed){% endif %}",
    "approval_decided": "[AnsFlow] {{ step.name }} in {{ pipeline }} was {{ approval.decision or status }}",
    "step": "[AnsFlow] {{ pipeline }}: {{ step.name }}",
    "test": "[AnsFlow] Test message",
}

DEFAULT_BODY = """{{ subject }}

Pipeline:  {{ pipeline }}{% if execution.pipeline_version %} (v{{ execution.pipeline_version }}){% endif %}
Execution: {{ execution.execution_id }} - {{ execution.status }}
{%- if step.name %}
Step:      {{ step.name }}{% if step.attempt %} (attempt {{ step.attempt }}{% if step.max_attempts %} of {{ step.max_attempts }}{% endif %}){% endif %} - {{ step.status or status }}
{%- endif %}
{%- if previous.execution_id %}
Previous:  {{ previous.execution_id }} - {{ previous.status }}
{%- endif %}
{%- if approval.message %}
Request:   {{ approval.message }}
{%- endif %}
{%- if approval.approvers %}
Approvers: {{ approval.approvers | join(', ') }}
{%- endif %}
{%- if event == 'approval_cancelled' %}
Cancelled: {{ approval.reason }} (nothing left to decide)
{%- elif approval.decided_by %}
Decided by {{ approval.decided_by }}{% if approval.comment or approval.reason %}: {{ approval.comment or approval.reason }}{% endif %}
{%- endif %}
{%- if approval.context.available %}{% set c = approval.context %}
Started:   {{ c.execution.started_at_text }} by {{ c.execution.started_by or 'system' }} ({{ c.execution.trigger_type }})
Run:       {{ c.run.summary }}
{%- if c.upstream %}
Upstream:
{%- for s in c.upstream %}
  - {{ s.name }}: {{ s.status_label }}{% if s.reason %} ({{ s.reason }}){% endif %}
{%- endfor %}
{%- endif %}
{%- for s in c.elsewhere_failed %}
Failed elsewhere: {{ s.name }}{% if s.reason %} ({{ s.reason }}){% endif %}
{%- endfor %}
{%- if c.variables %}
Variables: {% for v in c.variables %}{{ v.name }}={{ v.value }}{% if not loop.last %}, {% endif %}{% endfor %}
{%- endif %}
{%- if c.trigger %}
Trigger:   {% for v in c.trigger %}{{ v.name }}={{ v.value }}{% if not loop.last %}, {% endif %}{% endfor %}
{%- endif %}
{%- if c.warning %}
WARNING:   {{ c.warning }} Approving asks you to confirm it.
{%- endif %}
{%- endif %}
{%- if duration %}
Duration:  {{ duration }}
{%- endif %}
{%- if step.next_attempt_at %}
Next try:  {{ step.next_attempt_at }} UTC
{%- endif %}
{%- if error %}
Error:     {{ error }}
{%- endif %}
{%- if url %}

{{ url }}
{%- endif %}
"""

TEST_BODY = """This is a test message from AnsFlow{% if user %}, sent by {{ user }}{% endif %}.
If you can read it, the channel "{{ channel }}" works."""


def _limited_range(*args):
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE} items in notification templates")
    return r


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError("exponent too large in a notification template")
            return operator.pow(left, right)
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                if len(seq) * max(times, 0) > MAX_SEQUENCE:
                    raise SecurityError("sequence too long in a notification template")
        return operator.mul(left, right)

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
        counter = __context.parent.get("__calls__")
        if counter is not None:
            counter[0] += 1
            if counter[0] > MAX_CALLS:
                raise SecurityError("too many calls in a notification template")
        return super().call(__context, __obj, *args, **kwargs)


_env = _Env(autoescape=False, undefined=ChainableUndefined, trim_blocks=False, keep_trailing_newline=False)
_env.globals = {"range": _limited_range, "dict": dict}


@functools.lru_cache(maxsize=256)
def _compile(source: str):
    return _env.from_string(source)


def template_error(source: Any) -> str | None:
    """Why `source` cannot be used as a template (None when it can)."""
    if source is None:
        return None
    if not isinstance(source, str):
        return "A message template is text."
    if len(source) > MAX_TEMPLATE_CHARS:
        return f"A message template is limited to {MAX_TEMPLATE_CHARS} characters."
    try:
        _env.parse(source)
    except TemplateSyntaxError as e:
        return f"Template error on line {e.lineno}: {e.message}"
    return None


def render_text(source: str, context: dict[str, Any], limit: int = MAX_OUTPUT_CHARS) -> str:
    """Render with the sandbox limits; raises ValueError with a readable reason on failure."""
    error = template_error(source)
    if error:
        raise ValueError(error)
    template = _compile(source)
    out, size = [], 0
    try:
        for chunk in template.generate({**context, "__calls__": [0]}):
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                break
    except SecurityError as e:
        raise ValueError(f"the template was stopped: {e}") from None
    except Exception as e:  # noqa: BLE001 - any template runtime error becomes a message
        raise ValueError(f"the template failed: {type(e).__name__}: {e}") from None
    text = "".join(out)
    if len(text) > limit:
        text = text[: limit - 15].rstrip() + "\n[... cut ...]"
    return text


def render_message(event: str, context: dict[str, Any], message_template: str | None = None,
                   subject_template: str | None = None) -> tuple[str, str]:
    """(subject, body) for an event. A broken custom template falls back to the default, with a note."""
    notes = []
    subject_src = subject_template or DEFAULT_SUBJECTS.get(event, "[AnsFlow] {{ pipeline }}: {{ event }}")
    try:
        subject = render_text(subject_src, context, MAX_SUBJECT_CHARS)
    except ValueError as e:
        notes.append(f"(subject_template: {e})")
        subject = render_text(DEFAULT_SUBJECTS.get(event, "[AnsFlow] {{ event }}"), context, MAX_SUBJECT_CHARS)
    subject = " ".join(subject.split())[:MAX_SUBJECT_CHARS]
    body_src = message_template or (TEST_BODY if event == "test" else DEFAULT_BODY)
    ctx = {**context, "subject": subject}
    try:
        body = render_text(body_src, ctx)
    except ValueError as e:
        notes.append(f"(message_template: {e}; the default message was sent instead)")
        body = render_text(DEFAULT_BODY, ctx)
    body = body.strip("\n")
    if notes:
        body = body + "\n\n" + "\n".join(notes)
    return subject, body


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
