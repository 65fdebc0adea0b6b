"""`http` step: call a URL and check the response status (DESIGN §3).

parameters: url, method (GET), headers ({}), body (str sent as is; anything else sent as JSON),
expected_status ([200]; an int is accepted), timeout (seconds, 30).

Log: the request line, the response status and elapsed time, and the first 4 kB of the body
(masked). Outputs: status_code, elapsed_ms, body (first 4 kB, text).

Outcome: an expected status -> success (exit_code = HTTP status); any other status -> failed,
failure "exit", exit_code = the status; a connection/TLS/URL error -> failed, failure "error";
no complete response within `timeout` seconds -> failed, failure "timeout".

Address policy (webapp/netguard.py, the same as for notifications): the URL's host and every
redirect hop (at most 10) must resolve to public addresses unless ANSFLOW_OUTBOUND_ALLOWLIST
(or ANSFLOW_NOTIFY_ALLOWLIST) admits them; the connection checks the peer it actually reached.
A refused target fails the attempt with failure "error" and says why; nothing is sent to it.
Userinfo in the URL is sent as basic auth and is not logged; credentials never follow a redirect
to another host.

Stopping: the request runs in a helper thread while this thread polls should_stop() every
0.2 s and enforces both the request timeout (as a total deadline, not only per socket read)
and ctx.timeout_seconds. A stop returns at once (cancelled / timed_out); the abandoned request
thread ends by itself within its own socket timeout.
"""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit, urlunsplit

import requests

from .. import netguard
from .base import (
    FAILED, SUCCESS, TIMED_OUT, LogBuffer, StepContext, StepResult, error_result, mask, safe_on_log,
    safe_should_stop, stop_status,
)

BODY_LOG_BYTES = 4096
DEFAULT_TIMEOUT = 30.0
STOP_POLL = 0.2
MAX_REDIRECTS = 10


def run(ctx: StepContext) -> StepResult:
    params = ctx.parameters or {}
    url = params.get("url")
    if not isinstance(url, str) or not url.strip():
        return error_result("An http step needs a url.", ctx)
    method = str(params.get("method") or "GET").upper()
    headers = params.get("headers") or {}
    if not isinstance(headers, dict):
        return error_result("headers must be a mapping.", ctx)
    headers = {str(k): str(v) for k, v in headers.items()}
    expected = params.get("expected_status", [200])
    if isinstance(expected, int):
        expected = [expected]
    try:
        expected = [int(c) for c in expected]
        timeout = float(params.get("timeout", DEFAULT_TIMEOUT))
    except (TypeError, ValueError):
        return error_result("expected_status must be a list of status codes and timeout a number.", ctx)
    if timeout <= 0:
        timeout = DEFAULT_TIMEOUT
    kwargs = {}
    body = params.get("body")
    if isinstance(body, str):
        kwargs["data"] = body.encode("utf-8")
    elif body is not None:
        kwargs["json"] = body

    allowlist = ctx.allowlist if ctx.allowlist is not None else netguard.allowlist_from_env()
    log = LogBuffer(ctx.log_max_bytes, ctx.secrets)
    log.line(f"> {method} {_shown(url)}")
    try:
        netguard.check_url(url, allowlist)
    except netguard.Refused as e:
        return _refused(ctx, log, e.message)
    except netguard.Unresolved as e:
        message = mask(e.message, ctx.secrets)
        log.line(f"< error: {message}")
        return StepResult(status=FAILED, failure="error", error_message=message, logs=log.text())
    if headers:
        log.line("> headers: " + ", ".join(sorted(headers)))
    safe_on_log(ctx, log.text(final=False))
    stop = stop_status(safe_should_stop(ctx))
    if stop:
        return _stopped(ctx, log, stop, "stopped before the request was sent")

    call = _Call(method, url, headers, timeout, kwargs, allowlist)
    started = time.monotonic()
    call.start()
    request_deadline = started + timeout
    step_deadline = started + ctx.timeout_seconds if ctx.timeout_seconds and ctx.timeout_seconds > 0 else None
    error = None
    while not call.done.wait(STOP_POLL):
        now = time.monotonic()
        stop = stop_status(safe_should_stop(ctx))
        if stop:
            why = "stopped: the attempt timed out" if stop[0] == TIMED_OUT else "step cancelled"
            return _stopped(ctx, log, stop, why)
        if step_deadline is not None and now >= step_deadline:
            return _stopped(ctx, log, (TIMED_OUT, "timeout"), f"step timed out after {ctx.timeout_seconds:g} s")
        if now >= request_deadline:
            error = requests.Timeout(f"no complete response within {timeout:g} s")
            break
    else:
        error = call.error
    elapsed_ms = int((time.monotonic() - started) * 1000)

    if isinstance(error, netguard.Refused):
        return _refused(ctx, log, error.message)
    if error is not None:
        failure = "timeout" if isinstance(error, requests.Timeout) else "error"
        message = mask(f"{type(error).__name__}: {error}", ctx.secrets)
        log.line(f"< {'timeout' if failure == 'timeout' else 'error'} after {elapsed_ms} ms: {message}")
        return StepResult(status=FAILED, failure=failure, error_message=message, logs=log.text())

    status = call.status
    log.line(f"< {status} {call.reason} ({elapsed_ms} ms)")
    if call.body:
        log.line(call.body)
    if call.truncated:
        log.line(f"[body truncated after {BODY_LOG_BYTES} bytes]")
    outputs = {"status_code": str(status), "elapsed_ms": str(elapsed_ms), "body": mask(call.body, ctx.secrets)}
    if status in expected:
        return StepResult(status=SUCCESS, exit_code=status, logs=log.text(), outputs=outputs)
    message = f"unexpected HTTP status {status} (expected {', '.join(map(str, expected))})"
    log.line(f"[ansflow] {message}")
    return StepResult(status=FAILED, exit_code=status, failure="exit", error_message=message, logs=log.text(),
                      outputs=outputs)


def _shown(url: str) -> str:
    """The URL as logged: userinfo (credentials) left out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _refused(ctx: StepContext, log: LogBuffer, message: str) -> StepResult:
    message = mask(message, ctx.secrets)
    log.line(f"< not sent: {message}")
    return StepResult(status=FAILED, failure="error", error_message=message, logs=log.text())


def _stopped(ctx: StepContext, log: LogBuffer, stop: tuple[str, str], why: str) -> StepResult:
    status, failure = stop
    log.line(f"[ansflow] {why}")
    return StepResult(status=status, failure=failure, error_message=why, logs=log.text())


def _decode(data: bytes, resp: requests.Response) -> str:
    """The body as text: the charset the server declared, else UTF-8 (never a guess, never a crash)."""
    encoding = "utf-8"
    if "charset" in resp.headers.get("content-type", "").lower() and resp.encoding:
        encoding = resp.encoding
    try:
        return data.decode(encoding, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


class _Call(threading.Thread):
    """One request in a daemon thread; the result lands in attributes, then `done` is set."""

    def __init__(self, method: str, url: str, headers: dict, timeout: float, kwargs: dict, allowlist: list[str]):
        super().__init__(name="http-step", daemon=True)
        self.method, self.url, self.headers, self.timeout, self.kwargs = method, url, headers, timeout, kwargs
        self.allowlist = allowlist
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.status = 0
        self.reason = ""
        self.body = ""
        self.truncated = False

    def run(self) -> None:
        try:
            with netguard.guarded_session(self.allowlist) as session:
                with netguard.request(session, self.method, self.url, self.allowlist, max_redirects=MAX_REDIRECTS,
                                      keep_method=False, headers=self.headers, stream=True,
                                      timeout=(min(self.timeout, 10.0), self.timeout), **self.kwargs) as resp:
                    self.status, self.reason = resp.status_code, resp.reason or ""
                    chunk = b""
                    for part in resp.iter_content(1024):
                        chunk += part
                        if len(chunk) > BODY_LOG_BYTES:
                            self.truncated = True
                            break
                    self.body = _decode(chunk[:BODY_LOG_BYTES], resp)
        except BaseException as exc:  # noqa: BLE001 - reported as the step's error
            self.error = exc
        finally:
            self.done.set()
