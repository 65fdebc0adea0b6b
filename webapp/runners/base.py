"""The one interface every step runner implements (DESIGN §3 "Step runners").

Runners are plain Python: no Flask, no database, no Redis. The runtime (an RQ job) builds a
`StepContext`, calls `run(ctx)` of the runner for the step type (see registry.py) and stores
the returned `StepResult`. Everything a runner lets out (the streamed log, the final log, the
error message, outputs) has the secrets masked first.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MASK = "***"
DEFAULT_LOG_MAX_BYTES = 256 * 1024
MIN_LOG_MAX_BYTES = 256

SUCCESS, FAILED, TIMED_OUT, CANCELLED = "success", "failed", "timed_out", "cancelled"
STOP_REASONS = (CANCELLED, TIMED_OUT)


@dataclass
class StepContext:
    execution_id: str
    attempt_id: int
    attempt_number: int            # 1 for the first attempt
    step_name: str
    step_type: str
    parameters: dict
    env: dict[str, str]            # built by env.build_env(...); runners merge parameters["env"]
    workspace: Path                # per-execution directory
    timeout_seconds: float | None
    secrets: list[str]             # values to mask in logs
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    on_log: Callable[[str], None] = lambda text: None     # full current (masked, capped) log, <= every ~0.5 s
    should_stop: Callable[[], str | None] = lambda: None  # "cancelled" | "timed_out" | None, polled ~every 0.2 s
    allowlist: list[str] | None = None  # outbound allow-list (netguard); None: the one in the environment


@dataclass
class StepResult:
    status: str                    # "success" | "failed" | "timed_out" | "cancelled"
    exit_code: int | None = None
    failure: str | None = None     # None | "exit" | "timeout" | "error" | "cancelled"
    error_message: str = ""
    logs: str = ""                 # final full log, masked, capped
    outputs: dict[str, str] = field(default_factory=dict)


# Literal, JSON-escaped, URL-encoded, base64 and hex forms, in one cached regex (masking.py).
from .masking import longest_form, mask  # noqa: E402,F401  (runners import mask from here)
from .masking import secret_values as _secret_values  # noqa: E402


def mask_partial_head(text: str, secrets: list[str]) -> str:
    """Mask the END of a secret sitting at the start of `text` (the head was cut off mid-secret)."""
    for secret in _secret_values(secrets):
        for k in range(len(secret) - 1, 0, -1):
            if text.startswith(secret[-k:]):
                return MASK + text[k:]
    return text


def mask_partial_tail(text: str, secrets: list[str]) -> str:
    """Mask the START of a secret at the end of `text` (the rest of it may not have been read yet)."""
    for secret in _secret_values(secrets):
        for k in range(len(secret) - 1, 0, -1):
            if text.endswith(secret[:k]):
                return text[: len(text) - k] + MASK
    return text


def cut_marker(n: int) -> str:
    return f"[... {n} bytes cut ...]\n"


class LogBuffer:
    """A thread-safe log accumulator that keeps the tail.

    Raw bytes are kept up to twice (cap + longest secret); `text()` masks secrets first and caps
    afterwards, so a cut can never expose a secret, and prefixes the kept tail with a line saying
    how many bytes were cut. While streaming (`final=False`), a trailing partial secret is masked
    too (its end may still be in the pipe).
    """

    def __init__(self, max_bytes: int = DEFAULT_LOG_MAX_BYTES, secrets: list[str] | None = None):
        self.max_bytes = max(int(max_bytes or DEFAULT_LOG_MAX_BYTES), MIN_LOG_MAX_BYTES)
        self.secrets = _secret_values(secrets)
        margin = longest_form(self.secrets)
        self._keep = self.max_bytes + margin + 8
        self._buf = bytearray()
        self._dropped = 0
        self._lock = threading.Lock()
        self.version = 0               # bumps on every append: "has anything changed since?"

    def append(self, data: bytes | str) -> None:
        if not data:
            return
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        with self._lock:
            self._buf += data
            if len(self._buf) > 2 * self._keep:
                drop = len(self._buf) - self._keep
                del self._buf[:drop]
                self._dropped += drop
            self.version += 1

    def line(self, text: str) -> None:
        """Append one line (adds the newline, and one before it if the log doesn't end with one)."""
        with self._lock:
            needs_nl = bool(self._buf) and not self._buf.endswith(b"\n")
        self.append(("\n" if needs_nl else "") + text + "\n")

    def text(self, final: bool = True) -> str:
        with self._lock:
            raw = bytes(self._buf)
            dropped = self._dropped
        text = mask(raw.decode("utf-8", "replace"), self.secrets)
        if dropped:
            text = mask_partial_head(text, self.secrets)
        if not final:
            text = mask_partial_tail(text, self.secrets)
        body = text.encode("utf-8")
        if not dropped and len(body) <= self.max_bytes:
            return text
        # The marker is sized with an upper bound of the number, so the result stays within max_bytes.
        room = self.max_bytes - len(cut_marker(dropped + len(body)))
        tail = body[len(body) - room:] if room < len(body) else body
        cut = dropped + len(body) - len(tail)
        while tail and (tail[0] & 0xC0) == 0x80:   # don't start in the middle of a UTF-8 character
            tail = tail[1:]
            cut += 1
        return cut_marker(cut) + tail.decode("utf-8", "replace")


def stop_status(reason: str | None) -> tuple[str, str] | None:
    """should_stop() value -> (status, failure); any other truthy value counts as a cancel."""
    if not reason:
        return None
    if reason == TIMED_OUT:
        return TIMED_OUT, "timeout"
    return CANCELLED, "cancelled"


def safe_should_stop(ctx: StepContext) -> str | None:
    """should_stop() that never breaks the step (a database hiccup just means "keep going")."""
    try:
        return ctx.should_stop()
    except Exception:  # noqa: BLE001 - the runtime's callback must not crash the runner
        return None


def safe_on_log(ctx: StepContext, text: str) -> None:
    try:
        ctx.on_log(text)
    except Exception:  # noqa: BLE001 - a failed log update must not fail the step
        pass


def error_result(message: str, ctx: StepContext, logs: str = "") -> StepResult:
    """A step that could not even start (bad parameters, missing workspace...)."""
    message = mask(message, ctx.secrets)
    buf = LogBuffer(ctx.log_max_bytes, ctx.secrets)
    if logs:
        buf.append(logs)
    buf.line(f"[ansflow] error: {message}")
    return StepResult(status=FAILED, failure="error", error_message=message, logs=buf.text())
