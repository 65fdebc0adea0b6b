"""Retry policy (DESIGN §3 "Retries"; backoff as Argo's retryStrategy with factor 2)."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webapp.engine.retry import (
    HARD_MAX_DELAY, LOG_WINDOW, Failure, PolicyError, RetryPolicy, validate_policy,
)

PROPS = settings(deadline=None, max_examples=150)

EXIT1 = Failure("exit", 1)
EXIT2 = Failure("exit", 2)
TIMEOUT = Failure("timeout")
ERROR = Failure("error")
LOST = Failure("worker_lost")
REJECTED = Failure("rejected")
APPROVAL_TIMEOUT = Failure("approval_timeout")
CANCELLED = Failure("cancelled")
ALL_FAILURES = [EXIT1, EXIT2, TIMEOUT, ERROR, LOST, REJECTED, APPROVAL_TIMEOUT, CANCELLED]


# ------------------------------------------------------------------ parsing and validation

@pytest.mark.parametrize("d", [None, {}])
def test_empty_policy_means_no_retries(d):
    p = RetryPolicy.from_dict(d)
    assert p == RetryPolicy()
    assert validate_policy(d) == {}
    assert not any(p.should_retry(1, f) for f in ALL_FAILURES)


def test_from_dict_normalises_and_round_trips():
    p = RetryPolicy.from_dict({"max_retries": 3, "delay_seconds": 5, "backoff": "exponential",
                               "max_delay_seconds": 60, "jitter": 0.2,
                               "retry_on": [2, "137", "timeout", "log:connection refused", 2]})
    assert p.retry_on == (2, 137, "timeout", "log:connection refused")
    assert p.to_dict() == {"max_retries": 3, "delay_seconds": 5, "backoff": "exponential",
                           "max_delay_seconds": 60, "jitter": 0.2,
                           "retry_on": [2, 137, "timeout", "log:connection refused"]}
    assert RetryPolicy.from_dict(p.to_dict()) == p
    assert RetryPolicy.from_dict({"retry_on": "timeout"}).retry_on == ("timeout",)
    assert RetryPolicy.from_dict({"retry_on": []}).retry_on == ("any",)


UNKNOWN = "unknown retry_on entry {!r}: use exit codes, timeout, error, any or log:REGEX"


@pytest.mark.parametrize("d, field, message", [
    ({"max_retries": -1}, "max_retries", "max_retries must not be negative"),
    ({"max_retries": 11}, "max_retries", "max_retries must be at most 10"),
    ({"max_retries": 2.5}, "max_retries", "max_retries must be a whole number"),
    ({"max_retries": True}, "max_retries", "max_retries must be a whole number"),
    ({"delay_seconds": -1}, "delay_seconds", "delay_seconds must not be negative"),
    ({"delay_seconds": "soon"}, "delay_seconds", "delay_seconds must be a number of seconds"),
    ({"delay_seconds": float("inf")}, "delay_seconds", "delay_seconds must be a number of seconds"),
    ({"delay_seconds": 100_000}, "delay_seconds", "delay_seconds must be at most 86400 (one day)"),
    ({"max_delay_seconds": -5}, "max_delay_seconds", "max_delay_seconds must not be negative"),
    ({"delay_seconds": 10, "max_delay_seconds": 5}, "max_delay_seconds",
     "max_delay_seconds must be at least delay_seconds"),
    ({"backoff": "linear"}, "backoff", "unknown backoff 'linear': use fixed or exponential"),
    ({"jitter": 1.5}, "jitter", "jitter must be a fraction between 0 and 1"),
    ({"jitter": -0.1}, "jitter", "jitter must be a fraction between 0 and 1"),
    ({"retry_on": ["foo"]}, "retry_on", UNKNOWN.format("foo")),
    ({"retry_on": [True]}, "retry_on", UNKNOWN.format(True)),
    ({"retry_on": [-1]}, "retry_on", "exit code -1 in retry_on must not be negative"),
    ({"retry_on": ["-3"]}, "retry_on", "exit code -3 in retry_on must not be negative"),
    ({"retry_on": [256]}, "retry_on", "exit code 256 in retry_on must be at most 255"),
    ({"retry_on": ["log:"]}, "retry_on", "log: needs a regular expression after the colon"),
    ({"retry_on": ["log:(unclosed"]}, "retry_on",
     "log regex '(unclosed' does not compile: missing ), unterminated subpattern at position 0"),
    ({"retry_on": [r"log:(a)\1"]}, "retry_on",
     r"log regex '(a)\\1' uses backreferences or lookaround, which are not supported"
     " (log matching must run in linear time)"),
    ({"retry_on": {"timeout": True}}, "retry_on",
     "retry_on must be a list of exit codes, timeout, error, any or log:REGEX"),
    ({"retries": 3}, "retries",
     "unknown field 'retries': use max_retries, delay_seconds, backoff, max_delay_seconds, jitter, retry_on"),
    ([1, 2], "retry_policy", "retry_policy must be an object"),
])
def test_validation_messages(d, field, message):
    errors = validate_policy(d)
    assert errors == {field: message}
    with pytest.raises(PolicyError) as info:
        RetryPolicy.from_dict(d)
    assert info.value.fields == errors
    assert isinstance(info.value, ValueError)


def test_cap_is_configurable_and_messages_accumulate():
    assert validate_policy({"max_retries": 12}, cap=20) == {}
    assert validate_policy({"max_retries": 4}, cap=3) == {"max_retries": "max_retries must be at most 3"}
    errors = validate_policy({"max_retries": -1, "backoff": "x", "jitter": 3, "retry_on": ["foo", -1]})
    assert set(errors) == {"max_retries", "backoff", "jitter", "retry_on"}
    assert errors["retry_on"] == UNKNOWN.format("foo") + "; exit code -1 in retry_on must not be negative"


def test_direct_construction_is_checked_too():
    with pytest.raises(PolicyError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(PolicyError):
        RetryPolicy(retry_on=("sometimes",))
    assert RetryPolicy(retry_on=["2", "timeout"]).retry_on == (2, "timeout")   # type: ignore[arg-type]


# ------------------------------------------------------------------ should_retry

RETRY_TABLE = [
    # retry_on, failures that retry (all others in ALL_FAILURES must not)
    (["any"], {EXIT1, EXIT2, TIMEOUT, ERROR, LOST}),
    (None, {EXIT1, EXIT2, TIMEOUT, ERROR, LOST}),
    ([2], {EXIT2}),
    (["2"], {EXIT2}),
    (["timeout"], {TIMEOUT}),
    (["error"], {ERROR, LOST}),
    ([1, "timeout"], {EXIT1, TIMEOUT}),
    ([0], set()),
]


@pytest.mark.parametrize("retry_on, retried", RETRY_TABLE)
def test_should_retry_table(retry_on, retried):
    d = {"max_retries": 2}
    if retry_on is not None:
        d["retry_on"] = retry_on
    p = RetryPolicy.from_dict(d)
    for f in ALL_FAILURES:
        assert p.should_retry(1, f) is (f in retried), f


@pytest.mark.parametrize("kind", ["rejected", "approval_timeout", "cancelled"])
def test_people_and_engine_decisions_never_retry(kind):
    p = RetryPolicy.from_dict({"max_retries": 5, "retry_on": ["any", "log:.*"]})
    assert not p.should_retry(1, Failure(kind, None, "anything"))


def test_attempt_counting():
    p = RetryPolicy.from_dict({"max_retries": 2})
    assert [p.should_retry(a, EXIT1) for a in (0, 1, 2, 3, 4)] == [False, True, True, False, False]
    assert not RetryPolicy().should_retry(1, EXIT1)


def test_log_regex_matches_the_log_tail_only():
    p = RetryPolicy.from_dict({"max_retries": 1, "retry_on": ["log:(?i)connection (refused|reset)"]})
    assert p.should_retry(1, Failure("exit", 1, "...\nERROR: Connection refused by host\n"))
    assert p.should_retry(1, Failure("error", None, "connection reset"))
    assert not p.should_retry(1, Failure("exit", 1, "disk full"))
    early = "connection refused\n" + "x" * (LOG_WINDOW + 100)
    assert not p.should_retry(1, Failure("exit", 1, early))       # only the last LOG_WINDOW characters
    late = "x" * 50_000 + "connection refused"
    assert p.should_retry(1, Failure("exit", 1, late))


def test_pathological_log_regex_is_harmless():
    p = RetryPolicy.from_dict({"max_retries": 1, "retry_on": ["log:^(a+)+$", "log:(x+x+)+y"]})
    log = "a" * 100_000 + "!"
    t = time.perf_counter()
    assert not p.should_retry(1, Failure("exit", 1, log))
    assert not p.should_retry(1, Failure("exit", 1, "x" * 20_000))
    assert time.perf_counter() - t < 1.0


# ------------------------------------------------------------------ delay

DELAY_TABLE = [
    # policy, seed, delays before retries 1..6
    ({"delay_seconds": 5}, "", [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
    ({"delay_seconds": 0, "backoff": "exponential"}, "", [0.0] * 6),
    ({"delay_seconds": 1, "backoff": "exponential"}, "", [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
    ({"delay_seconds": 10, "backoff": "exponential", "max_delay_seconds": 60}, "",
     [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]),
    # jitter: deterministic per (seed, attempt); never above max_delay_seconds
    ({"delay_seconds": 10, "backoff": "exponential", "max_delay_seconds": 60, "jitter": 0.5},
     "exec-1:step-7", [11.543, 25.935, 32.38, 49.997, 60.0]),
    ({"delay_seconds": 10, "backoff": "exponential", "max_delay_seconds": 60, "jitter": 0.5},
     "exec-2:step-7", [10.591, 27.875, 45.601, 60.0, 33.129]),
]


@pytest.mark.parametrize("d, seed, expected", DELAY_TABLE)
def test_delay_table(d, seed, expected):
    p = RetryPolicy.from_dict(d)
    assert [p.delay(a, seed=seed) for a in range(1, len(expected) + 1)] == expected


def test_delay_edges():
    p = RetryPolicy.from_dict({"delay_seconds": 3, "backoff": "exponential"})
    assert p.delay(0) == p.delay(1) == 3.0               # attempts below 1 count as the first retry
    assert p.delay(10_000) == HARD_MAX_DELAY             # no overflow without max_delay_seconds
    assert isinstance(RetryPolicy().delay(1), float)


# ------------------------------------------------------------------ properties

policies = st.builds(
    lambda max_retries, delay, backoff, extra, jitter: RetryPolicy.from_dict({
        "max_retries": max_retries, "delay_seconds": delay, "backoff": backoff,
        "max_delay_seconds": None if extra is None else delay + extra, "jitter": jitter,
    }),
    st.integers(0, 10),
    st.floats(0, 3600, allow_nan=False),
    st.sampled_from(["fixed", "exponential"]),
    st.none() | st.floats(0, 7200, allow_nan=False),
    st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0, 1),
)
seeds = st.text(max_size=20)
attempts = st.integers(1, 200)


@PROPS
@given(policies, seeds, attempts)
def test_delay_is_deterministic_bounded_and_never_negative(p, seed, attempt):
    d = p.delay(attempt, seed=seed)
    assert d == p.delay(attempt, seed=seed)
    assert d == RetryPolicy.from_dict(p.to_dict()).delay(attempt, seed=seed)
    assert 0 <= d
    cap = p.max_delay_seconds if p.max_delay_seconds is not None else HARD_MAX_DELAY
    assert d <= cap


@PROPS
@given(policies, seeds)
def test_exponential_without_jitter_is_monotone(p, seed):
    p = RetryPolicy.from_dict({**p.to_dict(), "backoff": "exponential", "jitter": 0})
    delays = [p.delay(a, seed=seed) for a in range(1, 40)]
    assert delays == sorted(delays)
    cap = p.max_delay_seconds if p.max_delay_seconds is not None else HARD_MAX_DELAY
    assert delays == [min(round(min(p.delay_seconds * 2 ** k, cap), 3), cap) for k in range(39)]


@PROPS
@given(policies, seeds, attempts)
def test_jitter_stays_within_its_fraction(p, seed, attempt):
    base = RetryPolicy.from_dict({**p.to_dict(), "jitter": 0}).delay(attempt)
    d = p.delay(attempt, seed=seed)
    assert base * (1 - p.jitter) - 0.001 <= d <= base * (1 + p.jitter) + 0.001


@PROPS
@given(policies, attempts, st.sampled_from(ALL_FAILURES))
def test_should_retry_never_past_max_retries(p, attempt, failure):
    if p.should_retry(attempt, failure):
        assert 1 <= attempt <= p.max_retries
        assert failure.kind not in ("rejected", "approval_timeout", "cancelled")
    if attempt > p.max_retries:
        assert not p.should_retry(attempt, failure)


@PROPS
@given(st.dictionaries(st.sampled_from(["max_retries", "delay_seconds", "backoff", "max_delay_seconds",
                                        "jitter", "retry_on", "bogus"]),
                       st.none() | st.integers(-5, 20) | st.floats(-2, 5000) | st.text(max_size=8)
                       | st.lists(st.integers(-2, 300) | st.text(max_size=8), max_size=4),
                       max_size=6))
def test_validation_and_from_dict_agree(d):
    errors = validate_policy(d)
    if errors:
        with pytest.raises(PolicyError) as info:
            RetryPolicy.from_dict(d)
        assert info.value.fields == errors
    else:
        p = RetryPolicy.from_dict(d)
        assert RetryPolicy.from_dict(p.to_dict()) == p
