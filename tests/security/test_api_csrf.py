"""Cross-site writes through the API with the browser session alone (issue 13): the forms a page
on another origin of the same site can make a signed-in browser submit. The API skips CSRF, so
it must not take the session as authority to write: 401 JSON and nothing changed."""
from __future__ import annotations

import pytest

from webapp.extensions import db
from webapp.models import Pipeline

from ..tasks.helpers import latest, refresh, run, wait_finished
from ..tasks.helpers import make_pipeline

pytestmark = pytest.mark.integration

YAML = "name: planted\nsteps:\n  - name: s\n    parameters: {command: echo pwned}\n"


def _cross_site(c, path, **kw):
    """The browser replays only its cookie: no CSRF header, no Authorization header."""
    return c.c.post(path, **kw)


def _refused(resp):
    assert resp.status_code in (401, 403), (resp.status_code, resp.get_data(as_text=True)[:300])
    assert set(resp.json) == {"error", "fields"} and "Bearer" in resp.json["error"]


def test_text_plain_import_with_the_session_creates_nothing(app, client_as):
    c = client_as("admin")
    resp = _cross_site(c, "/api/v1/pipelines/import/", data=YAML, content_type="text/plain")
    _refused(resp)
    db.session.expire_all()
    assert db.session.execute(db.select(Pipeline).filter_by(name="planted")).scalar_one_or_none() is None
    # the same session still reads the API
    me = c.get("/api/v1/me/")
    assert me.status_code == 200 and me.json["username"] == "admin1"


def test_empty_form_cancel_with_the_session_leaves_it_running(app, client_as, users):
    p = make_pipeline([{"name": "slow", "parameters": {"command": "sleep 60"}}], name="victim")
    e = run(p, user=users["maintainer"])
    db.session.commit()
    c = client_as("admin")
    resp = _cross_site(c, f"/api/v1/workflow-executions/{e.execution_id}/cancel/", data={},
                       content_type="application/x-www-form-urlencoded")
    _refused(resp)
    e = refresh(e)
    assert e.status == "running" and latest(e, "slow").status == "queued"


def test_resume_and_retry_step_with_the_session_change_nothing(app, workers, client_as, users):
    workers(1)
    p = make_pipeline([{"name": "boom", "parameters": {"command": "exit 3"}}], name="failing")
    e = wait_finished(run(p, user=users["maintainer"]))
    assert e.status == "failed"
    step_id = latest(e, "boom").step_id
    attempts_before = latest(e, "boom").id
    c = client_as("admin")
    _refused(_cross_site(c, f"/api/v1/pipelines/executions/{e.execution_id}/resume/", data={},
                         content_type="application/x-www-form-urlencoded"))
    _refused(_cross_site(c, f"/api/v1/pipelines/executions/{e.execution_id}/steps/{step_id}/retry/",
                         data="{}", content_type="text/plain"))
    e = refresh(e)
    from webapp.services import executions as svc

    assert e.status == "failed" and latest(e, "boom").id == attempts_before
    assert svc.children_of(e.id) == []


def test_a_page_csrf_token_does_not_unlock_api_writes(app, client_as):
    """Even a request that carries the page's CSRF header is not a bearer token."""
    c = client_as("admin")
    resp = c.post("/api/v1/pipelines/import/", data=YAML, content_type="text/plain")  # AppClient adds X-CSRFToken
    _refused(resp)


def test_the_token_decides_who_writes_even_beside_a_session(app, client_as, users):
    viewer = client_as("viewer")
    token = users["maintainer"].new_api_token()
    db.session.commit()
    resp = viewer.c.post("/api/v1/pipelines/import/", data=YAML, content_type="text/plain",
                         headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201, resp.get_data(as_text=True)[:300]
    db.session.expire_all()
    made = db.session.execute(db.select(Pipeline).filter_by(name="planted")).scalar_one()
    assert made.owner.username == "maintainer1"
    # and a wrong token with a valid session is refused, not quietly run as the session's user
    _refused(viewer.c.post("/api/v1/pipelines/import/", data=YAML, content_type="text/plain",
                           headers={"Authorization": "Bearer af_nope"}))
