"""Secret variables at rest (issue 13): encrypted in the database, decrypted only where they are used.

An execution's secret variables are one Fernet token (a JSON object name -> value, encrypted and
authenticated) in `workflow_executions.secret_values`; `context_variables` keeps each secret name
with PLACEHOLDER for its value. So whatever reads the variables (pages, API, notifications, the
approval context, the planner's conditions, whose skip reasons are stored) sees only the
placeholder, and none of them can leak what it never had.

Keys: ANSFLOW_SECRETS_KEY, comma-separated Fernet keys; the first encrypts, any decrypts
(MultiFernet). To rotate, put a new key first, run `flask rotate-secrets-key`, then drop the old
one. Unset: a key in instance/secrets_key (0600), made on first use.

Decrypted: by a worker building a step's environment (once per execution per process, cached by
token), by a resume (its child gets its parent's secrets, sealed again), and by the approval
context (to scrub secret values out of the other variables it shows).
"""
from __future__ import annotations

import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PLACEHOLDER = "***"   # what context_variables holds for a secret (the API's mask too)
KEY_HINT = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


class SecretsUnavailable(Exception):
    """The configured keys cannot serve: malformed, or none of them sealed this value."""


def parse_keys(raw: str) -> list[bytes]:
    keys = [k.strip() for k in (raw or "").split(",") if k.strip()]
    for n, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError:  # binascii.Error is one
            raise SecretsUnavailable(
                f"ANSFLOW_SECRETS_KEY: key {n} is not a Fernet key (32 url-safe base64-encoded bytes); "
                f"make one with: {KEY_HINT}") from None
    return [k.encode("ascii") for k in keys]


@lru_cache(maxsize=4)
def _file_key(path: str) -> str:
    """The key of instance/secrets_key, made on first use. Two processes making it at once agree:
    each writes its own temporary file and links it into place, and the loser reads the winner's."""
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # the worker's alone (step sandbox)
        with os.fdopen(fd, "w") as fh:
            fh.write(Fernet.generate_key().decode("ascii"))
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return target.read_text().strip()


@lru_cache(maxsize=8)
def _multi(raw: str) -> MultiFernet:
    keys = parse_keys(raw)
    if not keys:
        raise SecretsUnavailable(f"ANSFLOW_SECRETS_KEY names no key; make one with: {KEY_HINT}")
    return MultiFernet([Fernet(k) for k in keys])


def _raw_keys() -> str:
    from flask import current_app

    raw = (current_app.config.get("SECRETS_KEY") or "").strip()
    return raw or _file_key(str(current_app.config["SECRETS_KEY_FILE"]))


def seal(values: Mapping[str, Any]) -> str | None:
    """The token of these secret values (None: no secrets)."""
    if not values:
        return None
    return _multi(_raw_keys()).encrypt(json.dumps(dict(values), sort_keys=True).encode("utf-8")).decode("ascii")


_OPENED: dict[tuple[str, str], dict[str, Any]] = {}


def unseal(token: str | None) -> dict[str, Any]:
    """The secret values of a token ({} for none). Cached by (keys, token): a worker decrypts an
    execution's secrets once, however many of its steps it runs."""
    if not token:
        return {}
    raw = _raw_keys()
    found = _OPENED.get((raw, token))
    if found is None:
        try:
            found = json.loads(_multi(raw).decrypt(token.encode("ascii")))
        except InvalidToken:
            raise SecretsUnavailable(
                "The secret variables of this execution cannot be decrypted: none of the keys in "
                "ANSFLOW_SECRETS_KEY (or instance/secrets_key when it is unset) is the one they were "
                "encrypted with. Put that key back (after the current one) and try again.") from None
        if len(_OPENED) > 1024:
            _OPENED.clear()
        _OPENED[(raw, token)] = found
    return dict(found)


def split(variables: Mapping[str, Any], secret_names: Iterable[str]) -> tuple[dict[str, Any], str | None]:
    """(the variables to store, each secret's value replaced by PLACEHOLDER; the token of the secrets)."""
    names = set(secret_names)
    stored = {k: (PLACEHOLDER if k in names else v) for k, v in variables.items()}
    return stored, seal({k: v for k, v in variables.items() if k in names})


def clear_variables(context_variables: Mapping[str, Any] | None, token: str | None) -> dict[str, Any]:
    """Every variable with its real value (rows sealed before this existed hold theirs in clear)."""
    return {**(context_variables or {}), **unseal(token)}


def secret_values_of(execution) -> list[str]:
    """The clear values of an execution's secret variables, for scrubbing other text ([] when no
    key opens them: the page showing the context still renders, that text unscrubbed)."""
    names = set(execution.secret_variables or [])
    try:
        variables = clear_variables(execution.context_variables, execution.secret_values)
    except SecretsUnavailable:
        return []
    return [str(v) for k, v in variables.items() if k in names and str(v) != PLACEHOLDER]


def rotate_all(batch: int = 200) -> tuple[int, list[str]]:
    """Seal every stored secret again with the current (first) key. Returns (how many rows were
    rotated, the execution ids whose token no key opens, left as they were)."""
    from sqlalchemy import select, update

    from ..extensions import db
    from ..models import WorkflowExecution as W

    fernet = _multi(_raw_keys())
    rotated, unreadable, last = 0, [], 0
    while True:
        rows = db.session.execute(
            select(W.id, W.execution_id, W.secret_values)
            .where(W.secret_values.is_not(None), W.id > last).order_by(W.id).limit(batch)).all()
        if not rows:
            return rotated, unreadable
        for pk, execution_id, token in rows:
            try:
                new = fernet.rotate(token.encode("ascii")).decode("ascii")
            except InvalidToken:
                unreadable.append(execution_id)
                continue
            rotated += db.session.execute(
                update(W).where(W.id == pk, W.secret_values == token).values(secret_values=new)).rowcount
        db.session.commit()
        last = rows[-1].id
