"""Parameter validation per step type, run when a step is saved (never discovered at run time)."""
from __future__ import annotations

import re
from typing import Any

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_WAIT = 7 * 24 * 3600


def _env_errors(env: Any) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        return {"env": "env must be a mapping of NAME: value."}
    bad = [k for k in env if not isinstance(k, str) or not ENV_NAME.match(k)]
    if bad:
        return {"env": f"Invalid environment variable name: {bad[0]!r}."}
    return {}


def validate_parameters(step_type: str, params: dict[str, Any] | None) -> dict[str, str]:
    params = params or {}
    if not isinstance(params, dict):
        return {"parameters": "parameters must be a mapping."}
    errors: dict[str, str] = {}
    if step_type == "shell":
        command = params.get("command")
        if not isinstance(command, str) or not command.strip():
            errors["command"] = "A shell step needs a command."
        errors.update(_env_errors(params.get("env")))
    elif step_type == "http":
        url = params.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url or ""):
            errors["url"] = "An http step needs an http:// or https:// URL."
        method = str(params.get("method", "GET")).upper()
        if method not in HTTP_METHODS:
            errors["method"] = f"method must be one of {', '.join(HTTP_METHODS)}."
        expected = params.get("expected_status", [200])
        if isinstance(expected, int):
            expected = [expected]
        if not isinstance(expected, list) or not expected or not all(
                isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in expected):
            errors["expected_status"] = "expected_status must be a list of HTTP status codes (100-599)."
        headers = params.get("headers", {})
        if not isinstance(headers, dict):
            errors["headers"] = "headers must be a mapping."
        elif not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in headers.values()):
            errors["headers"] = "header values must be text or numbers."
        timeout = params.get("timeout", 30)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
            errors["timeout"] = "timeout must be a number of seconds between 0 and 3600."
    elif step_type == "wait":
        seconds = params.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= MAX_WAIT:
            errors["seconds"] = f"A wait step needs seconds between 0 and {MAX_WAIT}."
    elif step_type == "approval":
        pass
    elif step_type == "notification":
        if not (params.get("channels") or params.get("webhook_url") or params.get("recipients")):
            errors["channels"] = "A notification step needs channels, recipients or a webhook_url."
        if "message" in params and not isinstance(params["message"], str):
            errors["message"] = "message must be text."
    else:
        errors["step_type"] = f"Unknown step type {step_type!r}: use shell, http, wait, approval or notification."
    return errors
