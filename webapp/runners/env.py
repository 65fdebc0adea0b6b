"""The environment a step runs with: how context values reach a command (DESIGN §3).

Context values are passed ONLY as environment variables, never spliced into command text.
The environment starts from an allow-listed base (base_env: PATH, HOME, LANG, TMPDIR and the
names in ANSFLOW_STEP_ENV) rather than the worker's own environment, so DATABASE_URL,
SECRET_KEY, REDIS_URL, SMTP_PASSWORD... never reach user commands.

    ANSFLOW_EXECUTION_ID, ANSFLOW_ATTEMPT, ANSFLOW_STEP, ANSFLOW_OUTPUT, ANSFLOW_WORKSPACE
    <NAME>                   each variable, uppercased, when that is a valid identifier and not
                             a protected name (PATH, BASH_ENV, LD_*, ANSFLOW_* ... see PROTECTED)
    ANSFLOW_VAR_<NAME>       each variable, always (NAME uppercased, non-alphanumerics -> _)
    TRIGGER_<KEY>            each trigger value
    STEP_<STEP>_<KEY>        outputs of earlier steps (STEP uppercased, non-alphanumerics -> _);
                             KEY as written and, when different, uppercased too
Non-string values are JSON-encoded; NUL characters (which no environment can hold) are dropped.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Names a context variable may not set through its plain uppercased form: the base environment,
# the AnsFlow namespaces, and variables that make bash or the dynamic linker run other code.
# (They still arrive as ANSFLOW_VAR_<NAME>.) A step's own parameters["env"] is written by a
# maintainer and may set anything except ANSFLOW_OUTPUT / ANSFLOW_WORKSPACE (see shell.py).
PROTECTED = frozenset({
    "PATH", "HOME", "LANG", "TMPDIR", "SHELL", "USER", "PWD", "OLDPWD", "IFS", "PS4",
    "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PROMPT_COMMAND", "CDPATH", "GLOBIGNORE", "BASH_XTRACEFD",
    "HISTFILE", "PYTHONPATH", "PYTHONSTARTUP", "PERL5OPT", "PERL5LIB", "RUBYOPT", "NODE_OPTIONS",
})
PROTECTED_PREFIXES = ("ANSFLOW_", "TRIGGER_", "STEP_", "LD_", "BASH_FUNC_")
# The server's settings (README "Configuration"): ANSFLOW_STEP_ENV cannot hand them to steps.
SERVER_ONLY = frozenset({
    "DATABASE_URL", "SECRET_KEY", "REDIS_URL", "SMTP_HOST", "SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_TLS",
    "MAIL_FROM", "TEST_DATABASE_URL",
})


def env_value(value: Any) -> str:
    """A context value as environment text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = str(value)
    return text.replace("\x00", "")


def env_suffix(name: Any) -> str:
    """A name made safe to follow a prefix: uppercased, every non-alphanumeric -> _."""
    return re.sub(r"[^A-Z0-9]", "_", str(name).upper())


def passed_through() -> list[str]:
    """The worker's variables a deployment lets steps see (ANSFLOW_STEP_ENV, comma separated:
    e.g. HTTP_PROXY,NO_PROXY); never the server's own settings."""
    names = (n.strip() for n in os.environ.get("ANSFLOW_STEP_ENV", "").split(","))
    return [n for n in names if IDENTIFIER.match(n) and n not in SERVER_ONLY and not n.startswith(PROTECTED_PREFIXES)]


def base_env() -> dict[str, str]:
    """The allow-listed start of every step's environment: a fixed PATH, a home and a temporary
    directory (the shell runner's sandbox replaces both), the locale, and ANSFLOW_STEP_ENV."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": os.environ.get("HOME") or tempfile.gettempdir(),
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "TMPDIR": tempfile.gettempdir(),
    }
    for name in passed_through():
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def is_protected(name: str) -> bool:
    return name in PROTECTED or name.startswith(PROTECTED_PREFIXES)


def build_env(*, execution_id: str, attempt_number: int, step_name: str, variables: dict | None,
              trigger: dict | None, outputs: dict[str, dict[str, str]] | None, output_file: Path | None,
              workspace: Path | None = None) -> dict[str, str]:
    """The context environment of one attempt. `workspace` defaults to output_file's directory;
    the shell runner always sets ANSFLOW_WORKSPACE and ANSFLOW_OUTPUT for the step it runs."""
    env = base_env()
    for name, value in (variables or {}).items():
        text = env_value(value)
        upper = str(name).upper()
        if IDENTIFIER.match(upper) and not is_protected(upper):
            env[upper] = text
    for name, value in (variables or {}).items():
        env["ANSFLOW_VAR_" + env_suffix(name)] = env_value(value)
    for key, value in (trigger or {}).items():
        env["TRIGGER_" + env_suffix(key)] = env_value(value)
    for step, values in (outputs or {}).items():
        prefix = "STEP_" + env_suffix(step) + "_"
        for key, value in (values or {}).items():
            text = env_value(value)
            exact = re.sub(r"[^A-Za-z0-9_]", "_", str(key))
            env[prefix + exact] = text
            env[prefix + exact.upper()] = text
    env["ANSFLOW_EXECUTION_ID"] = env_value(execution_id)
    env["ANSFLOW_ATTEMPT"] = str(attempt_number)
    env["ANSFLOW_STEP"] = env_value(step_name)
    if output_file is not None:
        env["ANSFLOW_OUTPUT"] = str(output_file)
    if workspace is None and output_file is not None:
        workspace = Path(output_file).parent
    if workspace is not None:
        env["ANSFLOW_WORKSPACE"] = str(workspace)
    return env
