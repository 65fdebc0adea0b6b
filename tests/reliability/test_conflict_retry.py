"""On PostgreSQL a request that loses a deadlock (or a serialization failure) is run again instead
of answering 500 (issue 14, "serialisation failures and deadlocks are retried"). Two real requests
update two rows in opposite orders on the suite's own PostgreSQL server, so the server really
detects the deadlock and aborts one of them."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from webapp.app_class import is_conflict
from webapp.extensions import db

from ..tasks.helpers import make_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(own_postgres):
    return own_postgres.url


def _crossing_writes(app):
    """A route that updates pipeline `first`, waits (on its first run only) until the other request
    holds its own first row, then updates `second`: two of them in opposite orders deadlock."""
    barrier = threading.Barrier(2, timeout=30)
    runs: dict[str, int] = {}

    def cross(first: int, second: int):
        key = f"{first}-{second}"
        runs[key] = runs.get(key, 0) + 1
        db.session.execute(text("UPDATE pipelines SET description = description || 'a' WHERE id = :id"), {"id": first})
        if runs[key] == 1:
            barrier.wait()
        db.session.execute(text("UPDATE pipelines SET description = description || 'b' WHERE id = :id"), {"id": second})
        db.session.commit()
        return "ok"

    app.add_url_rule("/_test/cross/<int:first>/<int:second>", "cross", cross, methods=["GET"])
    return runs


def _race(app, a: int, b: int) -> dict:
    outcome: dict = {}

    def call(first, second):
        try:
            with app.test_client() as client:
                outcome[(first, second)] = client.get(f"/_test/cross/{first}/{second}").status_code
        except Exception as exc:  # noqa: BLE001 - TESTING propagates what would be a 500
            outcome[(first, second)] = exc
    threads = [threading.Thread(target=call, args=pair) for pair in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcome


def _two_pipelines(app):
    a, b = make_pipeline([{"name": "s", "parameters": {"command": "true"}}], name="a"), make_pipeline([{"name": "s", "parameters": {"command": "true"}}], name="b")
    db.session.commit()
    return a.id, b.id


def test_a_request_that_loses_a_deadlock_is_run_again(app):
    runs = _crossing_writes(app)
    a, b = _two_pipelines(app)
    outcome = _race(app, a, b)
    assert outcome == {(a, b): 200, (b, a): 200}
    assert sorted(runs.values()) == [1, 2]   # the deadlock's loser ran once more, the winner once
    db.session.expire_all()
    descriptions = db.session.execute(text("SELECT description FROM pipelines ORDER BY id")).scalars().all()
    assert all(sorted(d) == ["a", "b"] for d in descriptions)   # both requests' writes, once each


def test_without_retries_the_loser_fails_with_the_deadlock(app):
    app.config["DB_CONFLICT_RETRIES"] = 0
    _crossing_writes(app)
    a, b = _two_pipelines(app)
    outcome = _race(app, a, b)
    failures = [v for v in outcome.values() if isinstance(v, Exception)]
    assert len(failures) == 1 and is_conflict(failures[0]), outcome
    assert isinstance(failures[0], DBAPIError)
