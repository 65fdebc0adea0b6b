"""Fixtures of the reliability tests."""
from __future__ import annotations

import pytest

from .own_postgres import OwnPostgres, unavailable


@pytest.fixture
def own_postgres():
    why = unavailable()
    if why:
        pytest.fail(f"this test needs a PostgreSQL of its own: {why} (`make test` installs it)")
    pg = OwnPostgres().init()
    pg.start()
    yield pg
    try:
        pg.stop()
    except Exception:
        pass
    pg.remove()
