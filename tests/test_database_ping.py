"""database._ping_when_idle: a pooled connection that died while it sat idle is replaced."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, exc, text

from webapp.database import _ping_when_idle


def _engine_with_dead_pooled_connection(tmp_path, after: float):
    engine = create_engine(f"sqlite:///{tmp_path / 'ping.db'}")
    _ping_when_idle(engine, after)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        dead = conn.connection.dbapi_connection
    dead.close()  # as a server restart would, behind the pool's back
    return engine, dead


def test_a_connection_idle_long_enough_is_pinged_and_replaced_when_dead(tmp_path):
    engine, dead = _engine_with_dead_pooled_connection(tmp_path, after=0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert conn.connection.dbapi_connection is not dead


def test_a_connection_back_a_moment_ago_is_used_without_a_ping(tmp_path):
    engine, dead = _engine_with_dead_pooled_connection(tmp_path, after=3600)
    with pytest.raises(exc.DBAPIError):  # not pinged: the dead connection is handed out as is
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
