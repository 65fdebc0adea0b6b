"""Engine tuning per backend, and the per-execution write lock used by services."""
from __future__ import annotations

import contextvars
import fcntl
import os
import threading

from flask import Flask
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .extensions import db


def configure(app: Flask) -> None:
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            _tune_sqlite(db.engine)
            _queue_web_writers(app)
        else:
            _ping_when_idle(db.engine, app.config["DB_PING_AFTER_SECONDS"])


# Set for the length of a web request that may write (any method but GET/HEAD/OPTIONS): on SQLite
# its transactions begin IMMEDIATE after a turn on the writers' lock file, as begin_locked's do.
_write_request: contextvars.ContextVar[bool] = contextvars.ContextVar("ansflow_write_request", default=False)


def _queue_web_writers(app: Flask) -> None:
    """A web request's transaction reads (validation, uniqueness) before it writes; under WAL a read
    transaction cannot become a write once another connection has committed (SQLITE_BUSY at once,
    whatever the busy timeout: 42 of 60 concurrent creates answered 500 "database is locked").
    So a request that may write takes the write lock when its transaction begins: writers of the
    web queue behind each other and behind the workers, readers (GET) never wait."""
    from flask import request

    @app.before_request
    def _mark_writer() -> None:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            request.environ["ansflow.write_token"] = _write_request.set(True)

    @app.teardown_request
    def _unmark_writer(_exc=None) -> None:
        token = request.environ.pop("ansflow.write_token", None)
        if token is not None:
            _write_request.reset(token)


def _ping_when_idle(engine: Engine, after: float) -> None:
    """Pessimistic disconnect handling, only for connections that sat in the pool `after`
    seconds or more (a database restart, a proxy's idle timeout). A connection back from a
    transaction a moment ago is not pinged: pool_pre_ping's ping before every checkout was one
    round trip in four of a step's bookkeeping on PostgreSQL."""
    import time

    from sqlalchemy import exc

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, proxy) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < after:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception:  # noqa: BLE001 - any failure means the connection is gone
            alive = False
        if not alive:
            # the pool discards this connection and checks out a fresh one
            raise exc.DisconnectionError("the pooled connection did not answer a ping")


class _WriterQueue(threading.local):
    """SQLite writers wait their turn on a lock file (flock) beside the database.

    SQLite's own busy handler makes a waiting writer sleep 1, 2, 5, 10 ... 100 ms between tries,
    so with two workers finishing steps every few milliseconds most of a step went to sleeping
    while the lock was already free. flock wakes the next writer when the lock is released.
    One descriptor per thread and database, so threads of one process exclude each other too.
    """

    def __init__(self):
        self.files: dict[str, _LockFile] = {}
        self.held: str | None = None

    def acquire(self, path: str) -> None:
        if self.held == path:
            return
        lock = self.files.get(path)
        if lock is None:
            lock = self.files[path] = _LockFile(path + ".writelock")
        fcntl.flock(lock.fd, fcntl.LOCK_EX)
        self.held = path

    def release(self) -> None:
        if self.held is not None:
            fcntl.flock(self.files[self.held].fd, fcntl.LOCK_UN)
            self.held = None


class _LockFile:
    """An open lock file, closed when its thread's _WriterQueue goes (a web server may start a
    thread per request: their descriptors must not pile up)."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __del__(self):
        try:
            os.close(self.fd)  # closing also drops a lock still held
        except OSError:
            pass


_writers = _WriterQueue()


@event.listens_for(Session, "after_transaction_end")
def _release_writer_lock(session, transaction) -> None:
    if transaction.parent is None:  # the session's outermost transaction committed, rolled back or closed
        _writers.release()


def _sqlite_file(engine: Engine) -> str | None:
    name = engine.url.database
    return None if not name or name == ":memory:" or name.startswith("file:") else os.path.abspath(name)


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
        if not immediate and _write_request.get():
            path = _sqlite_file(engine)
            if path is not None:
                _writers.acquire(path)  # released when the session's transaction ends
            immediate = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        except BaseException:
            _writers.release()  # no transaction began, so its end would never release it
            raise


def is_sqlite() -> bool:
    return db.engine.dialect.name == "sqlite"


def begin_locked(execution_pk: int | None = None, read=None):
    """Start a write transaction that serialises writers of one execution.

    Every service function that writes begins with this. On SQLite (WAL) a transaction that
    read first cannot be upgraded to a write once another process has committed (it fails at
    once with "database is locked", whatever the busy timeout), so writers take the lock first.

    SQLite: BEGIN IMMEDIATE takes the database write lock before we read the snapshot, after a
    turn on the writers' lock file (see _WriterQueue).
    PostgreSQL: a row lock on the execution (other executions proceed in parallel).

    `read` (a SELECT ... FOR UPDATE of the execution's row, with a :pk parameter; SQLite ignores
    FOR UPDATE) is run as part of taking the lock, and its row returned.
    """
    session = db.session()  # the Session behind the scoped proxy
    if session.in_transaction():
        session.commit()
    if is_sqlite():
        path = _sqlite_file(db.engine)
        if path is not None:
            _writers.acquire(path)  # released when this transaction ends
        try:
            session.connection(execution_options={"sqlite_immediate": True})
        except BaseException:
            _writers.release()  # no transaction began, so its end would never release it
            raise
        if read is not None:
            return session.connection().execute(read, {"pk": execution_pk}).first()
    elif execution_pk is not None:
        if read is not None:  # the read is the lock (it says FOR UPDATE): one round trip, not two
            return session.connection().execute(read, {"pk": execution_pk}).first()
        session.execute(text("SELECT id FROM workflow_executions WHERE id = :id FOR UPDATE"), {"id": execution_pk})
    return None


def insert_many(table, rows: list[dict]) -> None:
    """INSERT many rows (all naming the same columns) in the session's transaction.

    PostgreSQL: one COPY, which for 500 attempt rows costs a fifth of an executemany of
    INSERTs (16 ms on this machine). Elsewhere: one executemany.
    """
    if not rows:
        return
    conn = db.session.connection()
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        conn.execute(table.insert(), rows)
        return
    import json

    from psycopg import sql as pgsql
    from sqlalchemy import JSON

    names = list(rows[0])
    as_json = [isinstance(table.c[n].type, JSON) for n in names]
    statement = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
        pgsql.Identifier(table.name), pgsql.SQL(", ").join(pgsql.Identifier(n) for n in names))
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([json.dumps(row[n]) if j and row[n] is not None else row[n]
                            for n, j in zip(names, as_json)])


def allocate_ids(table, n: int) -> list[int]:
    """n new primary keys of `table`, for rows the caller inserts in this write transaction
    (begin_locked): PostgreSQL draws them from the column's sequence; on SQLite the write lock
    that begin_locked holds makes max(id) + 1 .. + n safe."""
    conn = db.session.connection()
    if conn.dialect.name == "postgresql":
        return list(conn.execute(text(
            f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) FROM generate_series(1, :n)"),
            {"n": n}).scalars())
    # past sqlite_sequence too: an AUTOINCREMENT table's deleted top ids are never handed out again
    top = conn.execute(text(
        f"SELECT max(coalesce((SELECT max(id) FROM {table.name}), 0), "
        f"coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table.name}'), 0))")).scalar_one()
    return list(range(top + 1, top + 1 + n))
