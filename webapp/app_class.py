"""The Flask class AnsFlow serves with: a request that lost to a concurrent transaction is run again."""
from __future__ import annotations

import logging
import random
import time

from flask import Flask
from sqlalchemy.exc import DBAPIError

# PostgreSQL's serialization_failure and deadlock_detected: the transaction was rolled back as a
# whole and running it again is the documented remedy (SQLite queues writers instead: database.py).
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})

log = logging.getLogger("webapp.db")


def is_conflict(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in CONFLICT_SQLSTATES


class AnsFlowFlask(Flask):
    """Flask whose view call is retried, after a rollback, when the database reports a
    serialization failure or a deadlock (``DB_CONFLICT_RETRIES`` times, with jittered backoff).
    A view's transaction either committed or was rolled back whole, so running it again is safe
    for a view that commits once (every service does: DESIGN "Services")."""

    def dispatch_request(self):
        from .extensions import db

        retries = self.config.get("DB_CONFLICT_RETRIES", 3)
        attempt = 0
        while True:
            try:
                return super().dispatch_request()
            except DBAPIError as exc:
                if attempt >= retries or not is_conflict(exc):
                    raise
                attempt += 1
                db.session.rollback()
                log.info("request lost to a concurrent transaction (%s); running it again (%d of %d)",
                         getattr(exc.orig, "sqlstate", "?"), attempt, retries)
                time.sleep(random.uniform(0.01, 0.05) * 2 ** attempt)
