"""database.begin_locked on SQLite: writers take turns on a lock file, across threads and processes.

The lock file is SQLite's (PostgreSQL locks the execution's row), so these tests build their own
SQLite app whatever database the rest of the suite runs on.
"""
import fcntl
import os
import threading

import pytest

from webapp import create_app
from webapp.database import begin_locked
from webapp.extensions import db


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _write_in_thread(app, results, index):
    with app.app_context():
        begin_locked()
        db.session.commit()
        results[index] = True
        db.session.remove()


@pytest.fixture
def sqlite_app(app_settings, tmp_path):
    app = create_app({"TESTING": True, "SECRET_KEY": "test-secret", **app_settings,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'lock.db'}"})
    with app.app_context():
        db.create_all()
        yield app
        db.session.remove()
        db.engine.dispose()


def test_writer_threads_take_turns_and_leave_no_descriptor_behind(sqlite_app):
    app = sqlite_app
    results = [False] * 20
    before = _open_fds()
    threads = [threading.Thread(target=_write_in_thread, args=(app, results, i)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(results)
    assert _open_fds() <= before + 2  # each thread's lock file closed with the thread


def test_the_lock_is_held_for_the_transaction_only(sqlite_app):
    path = os.path.abspath(db.engine.url.database) + ".writelock"
    begin_locked()
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # another descriptor (another writer) must wait
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        db.session.commit()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the transaction ended
        fcntl.flock(fd, fcntl.LOCK_UN)
        begin_locked()
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        db.session.rollback()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a rollback frees it too
    finally:
        os.close(fd)
