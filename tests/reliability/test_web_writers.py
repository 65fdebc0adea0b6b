"""Web writers on SQLite wait their turn like workers (issue 14): concurrent pipeline creates
through a real threaded HTTP server never answer "database is locked".

SQLite's single writer is what this is about (PostgreSQL has row locks), so the test builds its
own SQLite app whatever database the rest of the suite runs on."""
from __future__ import annotations

import threading

import pytest
import requests
import yaml
from werkzeug.serving import make_server

from webapp import create_app
from webapp.extensions import db
from webapp.models import Pipeline

WRITERS, EACH = 20, 3


@pytest.fixture
def sqlite_server(app_settings, tmp_path):
    from webapp.services.accounts import create_user

    app = create_app({"TESTING": True, "SECRET_KEY": "test-secret", **app_settings,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'writers.db'}"})
    with app.app_context():
        db.create_all()
        user = create_user("maintainer1", "a-long-password", "maintainer")
        token = user.new_api_token()
        db.session.commit()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_port}", token
        server.shutdown()
        db.session.remove()
        db.engine.dispose()


def test_concurrent_web_writers_all_succeed(sqlite_server):
    url, token = sqlite_server
    results: list[int] = []
    bodies: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        barrier.wait(timeout=30)
        for i in range(EACH):
            text = yaml.safe_dump({"name": f"p-{n}-{i}", "steps": [
                {"name": "a", "parameters": {"command": "true"}}, {"name": "b", "parameters": {"command": "true"}}]})
            r = s.post(f"{url}/api/v1/pipelines/import/", data=text, headers={"Content-Type": "text/yaml"},
                       timeout=60)
            with lock:
                results.append(r.status_code)
                if r.status_code != 201:
                    bodies.append(r.text[:300])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results.count(201) == WRITERS * EACH, (sorted(set(results)), bodies[:3])
    db.session.expire_all()
    assert db.session.scalar(db.select(db.func.count()).select_from(Pipeline)) == WRITERS * EACH
