"""Retry policy value object (DESIGN §3 "Retries").

``retry_policy`` is ``{max_retries, delay_seconds, backoff: fixed|exponential,
max_delay_seconds, jitter, retry_on: [exit codes | "timeout" | "error" | "any" |
"log:REGEX"]}``. The planner asks :meth:`RetryPolicy.should_retry` after a failed attempt
and schedules the new attempt :meth:`RetryPolicy.delay` seconds later; every attempt is
its own history row.

Semantics:

* ``attempt`` is the number of attempts already made (1 after the first failure);
  a retry is allowed while ``1 <= attempt <= max_retries``. ``max_retries`` is capped
  (default 10, ``ExecutionSnapshot.max_retries_cap``). Empty/None policy: no retries.
* Failures of kind ``rejected``, ``approval_timeout`` and ``cancelled`` never retry:
  they are decisions by people or by the engine, not faults.
* ``retry_on`` entries: exit codes (ints 0..255, or numeric strings such as ``"2"``)
  match ``kind == "exit"`` with that code; ``"timeout"``; ``"error"`` (runner error or
  worker lost); ``"any"`` (every retryable failure, the default; ``[]`` means the
  default too); ``"log:REGEX"`` searched in the last ``LOG_WINDOW`` characters of the
  log tail. Regexes must compile with Python ``re``; when google-re2 is importable (it
  comes with cel-python) they are matched with RE2, in linear time, and patterns RE2
  cannot run (backreferences, lookaround) are refused so no log line can trigger
  catastrophic backtracking. Without RE2, ``re`` runs on the bounded window.
* Backoff follows Argo's ``retryStrategy.backoff`` with factor 2: ``fixed`` waits
  ``delay_seconds``; ``exponential`` waits ``delay_seconds * 2**(attempt-1)`` before
  retry number ``attempt``; both capped at ``max_delay_seconds`` (``HARD_MAX_DELAY``,
  one week, when unset, so the arithmetic never overflows). ``jitter`` j spreads the
  delay to ``delay * (1 + j*u)`` with u in [-1, 1) derived from sha256(seed, attempt):
  the same snapshot always gives the same delay. Never negative, still capped; delays
  are rounded to milliseconds (never above the cap).
"""
from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

try:  # linear-time regex engine; a dependency of cel-python
    import re2 as _re2
except ImportError:  # pragma: no cover - exercised only where re2 is missing
    _re2 = None

__all__ = [
    "PolicyError", "Failure", "RetryPolicy", "validate_policy",
    "FAILURE_KINDS", "NEVER_RETRY", "LOG_WINDOW", "HARD_MAX_DELAY",
]

FAILURE_KINDS = ("exit", "timeout", "error", "worker_lost", "rejected", "approval_timeout", "cancelled")
NEVER_RETRY = frozenset({"rejected", "approval_timeout", "cancelled"})
BACKOFFS = ("fixed", "exponential")
CLASSES = ("timeout", "error", "any")
FIELDS = ("max_retries", "delay_seconds", "backoff", "max_delay_seconds", "jitter", "retry_on")
LOG_WINDOW = 8192
HARD_MAX_DELAY = 7 * 24 * 3600.0
MAX_DELAY_SECONDS = 24 * 3600.0      # limit for delay_seconds and max_delay_seconds
MAX_REGEX_LENGTH = 500
MAX_RETRY_ON = 50
DEFAULT_CAP = 10

_UNKNOWN_ENTRY = "unknown retry_on entry {!r}: use exit codes, timeout, error, any or log:REGEX"


class PolicyError(ValueError):
    """An invalid retry policy; ``fields`` maps each bad field to its message."""

    def __init__(self, fields: dict[str, str]):
        self.fields = dict(fields)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.fields.items()))


@dataclass(frozen=True)
class Failure:
    kind: str                 # "exit" | "timeout" | "error" | "worker_lost" | "rejected" | "approval_timeout" | "cancelled"
    exit_code: int | None = None
    log_tail: str = ""


# --------------------------------------------------------------------------- validation

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d{1,6}\s*", v):
        return int(v)
    return None


@functools.lru_cache(maxsize=256)
def _compile_log_regex(pattern: str) -> tuple[Any, str | None]:
    """(matcher, error). The matcher has ``.search``."""
    if not pattern:
        return None, "log: needs a regular expression after the colon"
    if len(pattern) > MAX_REGEX_LENGTH:
        return None, f"log regex is too long (limit {MAX_REGEX_LENGTH} characters)"
    try:
        compiled = re.compile(pattern)
    except re.error as ex:
        return None, f"log regex {pattern!r} does not compile: {ex}"
    except (RecursionError, OverflowError, ValueError):
        return None, f"log regex {pattern!r} does not compile"
    if _re2 is None:
        return compiled, None
    try:
        options = _re2.Options()
        options.log_errors = False
        return _re2.compile(pattern, options=options), None
    except Exception:
        return None, (f"log regex {pattern!r} uses backreferences or lookaround, which are not"
                      " supported (log matching must run in linear time)")


def _entry(raw: Any) -> tuple[int | str | None, str | None]:
    """Normalised retry_on entry, or an error message."""
    code = _as_int(raw)
    if code is not None:
        if code < 0:
            return None, f"exit code {code} in retry_on must not be negative"
        if code > 255:
            return None, f"exit code {code} in retry_on must be at most 255"
        return code, None
    if isinstance(raw, str):
        word = raw.strip()
        if word in CLASSES:
            return word, None
        if word.startswith("log:"):
            _, error = _compile_log_regex(raw.split(":", 1)[1])
            return (None, error) if error else ("log:" + raw.split(":", 1)[1], None)
    return None, _UNKNOWN_ENTRY.format(raw)


def _normalise(d: Any, cap: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    if d is None:
        return values, errors
    if not isinstance(d, dict):
        return values, {"retry_policy": "retry_policy must be an object"}
    for key in d:
        if key not in FIELDS:
            errors[str(key)] = f"unknown field {key!r}: use {', '.join(FIELDS)}"

    if d.get("max_retries") is not None:
        n = _as_int(d["max_retries"])
        if n is None:
            errors["max_retries"] = "max_retries must be a whole number"
        elif n < 0:
            errors["max_retries"] = "max_retries must not be negative"
        elif cap is not None and n > cap:
            errors["max_retries"] = f"max_retries must be at most {cap}"
        else:
            values["max_retries"] = n

    for key in ("delay_seconds", "max_delay_seconds"):
        v = d.get(key)
        if v is None:
            continue
        if not _is_number(v):
            errors[key] = f"{key} must be a number of seconds"
        elif v < 0:
            errors[key] = f"{key} must not be negative"
        elif v > MAX_DELAY_SECONDS:
            errors[key] = f"{key} must be at most {int(MAX_DELAY_SECONDS)} (one day)"
        else:
            values[key] = v
    if ("delay_seconds" in values and "max_delay_seconds" in values
            and values["max_delay_seconds"] < values["delay_seconds"]):
        errors["max_delay_seconds"] = "max_delay_seconds must be at least delay_seconds"

    if d.get("backoff") is not None:
        if d["backoff"] in BACKOFFS:
            values["backoff"] = d["backoff"]
        else:
            errors["backoff"] = f"unknown backoff {d['backoff']!r}: use fixed or exponential"

    if d.get("jitter") is not None:
        j = d["jitter"]
        if not _is_number(j) or not 0 <= j <= 1:
            errors["jitter"] = "jitter must be a fraction between 0 and 1"
        else:
            values["jitter"] = float(j)

    retry_on = d.get("retry_on")
    if retry_on is not None:
        if isinstance(retry_on, (str, int)) and not isinstance(retry_on, bool):
            retry_on = [retry_on]
        if not isinstance(retry_on, (list, tuple)):
            errors["retry_on"] = "retry_on must be a list of exit codes, timeout, error, any or log:REGEX"
        elif len(retry_on) > MAX_RETRY_ON:
            errors["retry_on"] = f"retry_on may list at most {MAX_RETRY_ON} entries"
        else:
            entries: list[int | str] = []
            messages: list[str] = []
            for raw in retry_on:
                entry, message = _entry(raw)
                if message:
                    messages.append(message)
                elif entry not in entries:
                    entries.append(entry)
            if messages:
                errors["retry_on"] = "; ".join(messages)
            elif entries:
                values["retry_on"] = tuple(entries)
    return values, errors


def validate_policy(d: dict | None, *, cap: int = DEFAULT_CAP) -> dict[str, str]:
    """Field -> message; {} when the policy is valid."""
    return _normalise(d, cap)[1]


# --------------------------------------------------------------------------- the policy

def _unit(seed: str, attempt: int) -> float:
    """Deterministic u in [-1, 1) from (seed, attempt)."""
    digest = hashlib.sha256(f"{seed}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 63 - 1.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 0
    delay_seconds: float = 0
    backoff: str = "fixed"              # fixed | exponential
    max_delay_seconds: float | None = None
    jitter: float = 0.0                 # fraction 0..1
    retry_on: tuple[str, ...] = ("any",)

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as from_dict (except the cap).
        values, errors = _normalise(self.to_dict(), cap=None)
        if errors:
            raise PolicyError(errors)
        for key, value in values.items():
            object.__setattr__(self, key, value)
        if "retry_on" not in values:
            object.__setattr__(self, "retry_on", ("any",))

    @classmethod
    def from_dict(cls, d: dict | None, *, cap: int = DEFAULT_CAP) -> "RetryPolicy":
        values, errors = _normalise(d, cap)
        if errors:
            raise PolicyError(errors)
        return cls(**values)

    def to_dict(self) -> dict:
        return {
            "max_retries": self.max_retries,
            "delay_seconds": self.delay_seconds,
            "backoff": self.backoff,
            "max_delay_seconds": self.max_delay_seconds,
            "jitter": self.jitter,
            "retry_on": list(self.retry_on),
        }

    def matches(self, failure: Failure) -> bool:
        """Whether ``retry_on`` covers this failure (ignoring the attempt count)."""
        if failure.kind in NEVER_RETRY:
            return False
        for entry in self.retry_on:
            if entry == "any":
                return True
            if isinstance(entry, int):
                if failure.kind == "exit" and failure.exit_code == entry:
                    return True
            elif entry == "timeout":
                if failure.kind == "timeout":
                    return True
            elif entry == "error":
                if failure.kind in ("error", "worker_lost"):
                    return True
            elif entry.startswith("log:"):
                matcher, error = _compile_log_regex(entry[4:])
                if matcher is not None and matcher.search((failure.log_tail or "")[-LOG_WINDOW:]):
                    return True
        return False

    def should_retry(self, attempt: int, failure: Failure) -> bool:
        """attempt = attempts already made (1 after the first failure)."""
        return 1 <= attempt <= self.max_retries and self.matches(failure)

    def delay(self, attempt: int, seed: str = "") -> float:
        """Seconds to wait before retry number ``attempt`` (1 = first retry)."""
        attempt = max(1, int(attempt))
        cap = self.max_delay_seconds if self.max_delay_seconds is not None else HARD_MAX_DELAY
        base = float(self.delay_seconds)
        if self.backoff == "exponential" and base > 0:
            exponent = attempt - 1
            # 2**64 already exceeds any cap; avoids float overflow for silly attempts.
            base = cap if exponent >= 64 else base * 2.0 ** exponent
        d = min(base, cap)
        if self.jitter:
            d = d * (1.0 + self.jitter * _unit(seed, attempt))
            d = min(max(d, 0.0), cap)
        return min(round(float(d), 3), float(cap))   # rounding must not lift it above the cap
