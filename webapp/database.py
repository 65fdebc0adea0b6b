"""Engine tuning per backend, and the per-execution write lock used by services."""
from __future__ import annotations

from flask import Flask
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from .extensions import db


def configure(app: Flask) -> None:
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            _tune_sqlite(db.engine)


def _tune_sqlite(engine: Engine) -> None:
    # Several worker processes write the same file: WAL lets readers go on during a write,
    # busy_timeout makes a writer wait instead of failing, NORMAL sync is safe with WAL.
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        # We issue BEGIN ourselves: pysqlite's deferred BEGIN cannot take the write lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite() -> bool:
    return db.engine.dialect.name == "sqlite"


def begin_locked(execution_pk: int | None = None) -> None:
    """Start a write transaction that serialises writers of one execution.

    Every service function that writes begins with this. On SQLite (WAL) a transaction that
    read first cannot be upgraded to a write once another process has committed (it fails at
    once with "database is locked", whatever the busy timeout), so writers take the lock first.

    SQLite: BEGIN IMMEDIATE takes the database write lock before we read the snapshot.
    PostgreSQL: a row lock on the execution (other executions proceed in parallel).
    """
    session = db.session()  # the Session behind the scoped proxy
    if session.in_transaction():
        session.commit()
    if is_sqlite():
        session.connection(execution_options={"sqlite_immediate": True})
    elif execution_pk is not None:
        session.execute(text("SELECT id FROM workflow_executions WHERE id = :id FOR UPDATE"), {"id": execution_pk})
