"""The approvals inbox (HTMX), the audit page, the gate partial and the navigation badge."""
from __future__ import annotations

import re

from webapp.extensions import db
from webapp.models import ApprovalDecision, ApprovalRequest
from webapp.services import approvals as svc

from ..conftest import AppClient

HX = {"HX-Request": "true"}


def badge_count(html: str) -> str:
    m = re.search(r'<span id="approvals-badge"[^>]*>([^<]*)</span>', html)
    assert m, html[:500]
    return m.group(1).strip()


def test_inbox_lists_what_waits_for_me(client_as, make_gate):
    req = make_gate()
    html = client_as("approver").get("/approvals/").get_data(as_text=True)
    assert f'id="approval-{req.id}"' in html
    assert "release 1" in html and "gate" in html and "maintainer1" in html and "Ship it?" in html
    assert "0 of 2" in html and "23h 59m left" in html
    assert 'value="approve"' in html and 'value="reject"' in html
    assert f'action="/approvals/{req.id}/decide"' in html and f'hx-post="/approvals/{req.id}/decide"' in html
    assert badge_count(html) == "1"


def test_empty_states_say_what_to_do(client_as, make_gate):
    c = client_as("approver")
    assert "all caught up" in c.get("/approvals/").get_data(as_text=True)
    assert "No approval requests from your executions" in c.get("/approvals/?tab=requested").get_data(as_text=True)
    assert "No decided approvals" in c.get("/approvals/?tab=history").get_data(as_text=True)
    make_gate()
    viewer = client_as("viewer").get("/approvals/").get_data(as_text=True)
    assert "viewers can follow approvals but not decide" in viewer


def test_requested_by_me_and_history_with_filters(client_as, make_gate, users):
    a = make_gate()
    b = make_gate(approval={"users": ["approver2"], "required_approvals": 1})
    svc.decide(b.id, users["approver2"], "reject", "nope")
    c = client_as("maintainer")
    mine = c.get("/approvals/?tab=requested").get_data(as_text=True)
    assert f'id="approval-{a.id}"' in mine and f'id="approval-{b.id}"' in mine
    filtered = c.get(f"/approvals/?tab=requested&pipeline={a.pipeline_id}").get_data(as_text=True)
    assert f'id="approval-{a.id}"' in filtered and f'id="approval-{b.id}"' not in filtered
    history = c.get("/approvals/?tab=history").get_data(as_text=True)
    assert f'id="approval-{b.id}"' in history and f'id="approval-{a.id}"' not in history
    assert "rejected by approver2: nope" in history
    only_pending = c.get("/approvals/?tab=requested&status=pending", headers=HX)
    body = only_pending.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="approval-list"') and "<html" not in body
    assert f'id="approval-{a.id}"' in body and f'id="approval-{b.id}"' not in body
    assert "HX-Request" in only_pending.headers["Vary"]


def test_htmx_approve_updates_the_row_and_fires_the_event(client_as, make_gate):
    req = make_gate()
    c = client_as("approver")
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "approve", "comment": "lgtm", "view": "row"}, headers=HX)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert html.lstrip().startswith(f'<article class="card approval-item approval-row status-pending" id="approval-{req.id}"')
    assert "1 of 2" in html and "You approved. 1 of 2 approvals so far." in html and "lgtm" in html
    assert 'value="approve"' not in html  # decided: no buttons any more
    assert "approvalsChanged" in resp.headers["HX-Trigger"]
    # the badge follows
    assert badge_count(c.get("/approvals/badge", headers=HX).get_data(as_text=True)) == ""


def test_rejection_asks_for_a_comment(client_as, make_gate):
    req = make_gate()
    c = client_as("approver")
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "reject", "comment": "  ", "view": "row"}, headers=HX)
    html = resp.get_data(as_text=True)
    assert 'class="field-error"' in html and "Say why you reject" in html and 'aria-invalid="true"' in html
    assert db.session.query(ApprovalDecision).count() == 0
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "reject", "comment": "tests are red", "view": "row"},
                  headers=HX)
    html = resp.get_data(as_text=True)
    assert "status-rejected" in html and "rejected by approver1: tests are red" in html


def test_second_click_and_late_decisions_are_refused_inline(client_as, make_gate, users):
    req = make_gate(approval={"users": ["approver1", "approver2"], "required_approvals": 1})
    a2 = client_as("approver2")
    a2.get("/approvals/")  # approver2 has the page open
    svc.decide(req.id, users["approver"], "approve")
    resp = a2.post(f"/approvals/{req.id}/decide", data={"action": "reject", "comment": "late", "view": "row"}, headers=HX)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "This request is already approved." in html and 'role="alert"' in html
    assert "approvalsChanged" in resp.headers["HX-Trigger"]
    db.session.expire_all()
    assert len(db.session.get(ApprovalRequest, req.id).decisions) == 1


def test_without_javascript_the_form_posts_and_redirects(client_as, make_gate):
    req = make_gate()
    c = client_as("approver")
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "approve", "next": "/approvals/?tab=mine"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/approvals/?tab=mine")
    page = c.get("/approvals/?tab=requested").get_data(as_text=True)
    assert "You approved" in page  # flashed
    evil = c.post(f"/approvals/{req.id}/decide", data={"action": "approve", "next": "//evil.example/"})
    assert evil.status_code == 303 and evil.headers["Location"].endswith(f"/approvals/{req.id}")


def test_roles_and_csrf(client_as, make_gate, app):
    req = make_gate()
    assert client_as("viewer").post(f"/approvals/{req.id}/decide", data={"action": "approve"}).status_code == 403
    assert AppClient(app.test_client()).get("/approvals/").status_code == 302  # to the login page
    c = client_as("approver")
    c.token = None  # no CSRF token
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "approve"})
    assert resp.status_code == 400
    assert db.session.query(ApprovalDecision).count() == 0


def test_the_requester_sees_why_they_cannot_approve(client_as, make_gate):
    req = make_gate(approval={"users": ["approver1", "role:maintainer"], "required_approvals": 1})
    html = client_as("maintainer").get(f"/approvals/{req.id}").get_data(as_text=True)
    assert "cannot approve your own request" in html
    assert 'value="approve"' not in html and 'value="reject"' in html


def test_gate_partial_replaces_itself(client_as, make_gate):
    req = make_gate()
    c = client_as("approver2")
    resp = c.post(f"/approvals/{req.id}/decide", data={"action": "approve", "view": "gate"}, headers=HX)
    html = resp.get_data(as_text=True)
    assert html.lstrip().startswith("<section")
    assert f'id="approval-gate-{req.id}"' in html and 'hx-target="this"' in html and 'hx-swap="outerHTML"' in html
    assert "1 of 2" in html and "approver2" in html
    assert "executionUpdated" in resp.headers["HX-Trigger"]


def test_gate_template_renders_for_the_execution_page(app, make_gate, users):
    from flask import render_template
    from flask_login import login_user

    req = make_gate()
    with app.test_request_context("/"):
        login_user(users["approver3"])
        html = render_template("approvals/_gate.html", request=req, current_user=users["approver3"])
    assert 'value="approve"' in html and 'value="reject"' in html and "0 of 2" in html
    assert f'hx-post="/approvals/{req.id}/decide"' in html and 'name="csrf_token"' in html
    # an including page may pass it as approval_request and keep Flask's request for itself
    with app.test_request_context("/"):
        login_user(users["approver3"])
        same = render_template("approvals/_gate.html", approval_request=req, current_user=users["approver3"])
    assert f'id="approval-gate-{req.id}"' in same and 'value="approve"' in same


def test_audit_page(client_as, make_gate, users):
    req = make_gate()
    svc.decide(req.id, users["approver"], "approve", "fine")
    svc.decide(req.id, users["admin"], "approve", "<b>urgent</b>")
    html = client_as("viewer").get(f"/approvals/{req.id}").get_data(as_text=True)
    assert "Asked by" in html and "maintainer1" in html and "approver1, approver2, approver3" in html
    assert "quorum reached: 2 of 2 approvals (approver1, admin1 (as admin))" in html
    assert 'aria-current="page">Approvals' in html  # the page's own context does not hide Flask's request
    assert "24h, until" in html
    assert "&lt;b&gt;urgent&lt;/b&gt;" in html and "<b>urgent</b>" not in html  # comments are text
    assert client_as("viewer").get("/approvals/999999").status_code == 404


def test_badge_matches_the_navigation_markup(client_as, make_gate):
    make_gate()
    c = client_as("approver")
    page = c.get("/pipelines/").get_data(as_text=True)
    nav = re.search(r'<span id="approvals-badge".*?</span>', page, re.S).group(0)
    resp = c.get("/approvals/badge", headers=HX)
    assert resp.get_data(as_text=True).strip() == nav
    assert badge_count(nav) == "1" and resp.headers["Cache-Control"] == "no-store"
