"""Approvals JSON API: list with filters, read with audit, respond, approve a step, open a request."""
from __future__ import annotations

from webapp.extensions import db
from webapp.models import ApprovalRequest, WorkflowExecution
from webapp.services import approvals as svc


def test_list_and_filters(api_as, make_gate, users):
    a = make_gate()
    b = make_gate(approval={"users": ["approver2"], "required_approvals": 1})
    svc.decide(b.id, users["approver2"], "reject", "no")
    api = api_as("approver")
    resp = api.get("/api/v1/approval-requests/")
    assert resp.status_code == 200 and resp.json["count"] == 2
    assert {r["id"] for r in resp.json["results"]} == {a.id, b.id}
    assert [r["id"] for r in api.get("/api/v1/approval-requests/?status=rejected").json["results"]] == [b.id]
    assert [r["id"] for r in api.get(f"/api/v1/approval-requests/?pipeline={a.pipeline_id}").json["results"]] == [a.id]
    assert [r["id"] for r in api.get("/api/v1/approval-requests/?pipeline=release 1").json["results"]] == [a.id]
    mine = api.get("/api/v1/approval-requests/?mine=true").json["results"]
    assert [r["id"] for r in mine] == [a.id] and mine[0]["can_approve"] is True
    ex = db.session.get(WorkflowExecution, a.execution_id).execution_id
    assert [r["id"] for r in api.get(f"/api/v1/approval-requests/?execution={ex}").json["results"]] == [a.id]
    bad = api.get("/api/v1/approval-requests/?status=maybe")
    assert bad.status_code == 422 and "status" in bad.json["fields"]


def test_read_one_with_audit(api_as, make_gate, users):
    req = make_gate()
    svc.decide(req.id, users["approver"], "approve", "fine by me")
    resp = api_as("viewer").get(f"/api/v1/approval-requests/{req.id}/")
    assert resp.status_code == 200
    body = resp.json
    assert body["approvals"] == 1 and body["required_approvals"] == 2 and body["status"] == "pending"
    assert body["decisions"][0]["username"] == "approver1" and body["decisions"][0]["comment"] == "fine by me"
    assert body["can_approve"] is False and body["seconds_left"] > 0
    assert api_as("viewer").get("/api/v1/approval-requests/424242/").status_code == 404


def test_respond_approve_reject_and_refusals(api_as, make_gate):
    req = make_gate()
    a1, a2, a3 = api_as("approver"), api_as("approver2"), api_as("approver3")
    resp = a1.post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "approve", "comment": "ok"})
    assert resp.status_code == 200 and resp.json["approvals"] == 1 and resp.json["settled"] is False
    # a replayed request is refused and changes nothing
    again = a1.post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "approve"})
    assert again.status_code == 409 and "already decided" in again.json["error"]
    resp = a2.post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "reject", "comment": "no"})
    assert resp.status_code == 200 and resp.json["status"] == "rejected" and resp.json["settled"] is True
    late = a3.post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "approve"})
    assert late.status_code == 409 and late.json == {"error": "This request is already rejected.", "fields": {}}
    assert len(db.session.get(ApprovalRequest, req.id).decisions) == 2


def test_respond_validation_and_roles(api_as, make_gate):
    req = make_gate()
    api = api_as("approver")
    resp = api.post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "perhaps"})
    assert resp.status_code == 422 and "action" in resp.json["fields"]
    assert api.post(f"/api/v1/approval-requests/{req.id}/respond/", data="x").status_code == 422
    assert api_as("viewer").post(f"/api/v1/approval-requests/{req.id}/respond/",
                                 json={"action": "approve"}).status_code == 403
    resp = api_as("maintainer").post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "approve"})
    assert resp.status_code == 403 and "not one of the approvers" in resp.json["error"]
    assert api.post("/api/v1/approval-requests/99999/respond/", json={"action": "approve"}).status_code == 404


def test_requester_gets_403_on_own_request(api_as, make_gate):
    req = make_gate(approval={"users": ["approver1", "approver2"], "required_approvals": 1}, requester="approver")
    resp = api_as("approver").post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "approve"})
    assert resp.status_code == 403 and "own request" in resp.json["error"]


def test_approve_step_endpoint(api_as, make_gate):
    req = make_gate(approval={"users": ["approver1"], "required_approvals": 1})
    ex = db.session.get(WorkflowExecution, req.execution_id).execution_id
    url = f"/api/v1/pipelines/executions/{ex}/steps/{req.step_id}/approve/"
    api = api_as("approver")
    assert api.post(url, json={"comment": "x"}).status_code == 422
    resp = api.post(url, json={"approved": True, "comment": "go"})
    assert resp.status_code == 200 and resp.json["status"] == "approved"
    assert api.post(url, json={"approved": False}).status_code == 409
    assert api.post(f"/api/v1/pipelines/executions/nope/steps/{req.step_id}/approve/",
                    json={"approved": True}).status_code == 404
    assert api.post(f"/api/v1/pipelines/executions/{ex}/steps/1234567/approve/",
                    json={"approved": True}).status_code == 404


def test_cancelled_execution_is_409(api_as, make_gate):
    req = make_gate()
    execution = db.session.get(WorkflowExecution, req.execution_id)
    execution.status = "cancelled"
    svc.cancel_for_execution(execution.id)
    db.session.commit()
    resp = api_as("approver").post(f"/api/v1/approval-requests/{req.id}/respond/", json={"action": "approve"})
    assert resp.status_code == 409 and "cancelled" in resp.json["error"]


def test_open_a_request_for_a_waiting_step(api_as, make_gate):
    execution, attempt, step = make_gate(open_it=False)
    api = api_as("maintainer")
    body = {"execution_id": execution.execution_id, "step_id": step["id"], "approvers": ["approver3"],
            "required_approvals": 1, "message": "please"}
    assert api_as("approver").post("/api/v1/pipelines/approval-requests/", json=body).status_code == 403
    resp = api.post("/api/v1/pipelines/approval-requests/", json=body)
    assert resp.status_code == 201, resp.json
    assert resp.json["approvers"] == ["approver3"] and resp.json["required_approvals"] == 1
    assert resp.json["requester"] == "maintainer1" and resp.json["message"] == "please"
    assert resp.json["expires_at"] is not None  # timeout from the step's configuration
    again = api.post("/api/v1/pipelines/approval-requests/", json=body)
    assert again.status_code == 409 and "already has an approval request" in again.json["error"]
    bad = api.post("/api/v1/pipelines/approval-requests/", json={"step_id": "x", "required_approvals": 0})
    assert bad.status_code == 422 and {"execution_id", "step_id", "required_approvals"} <= set(bad.json["fields"])
    other = api.post("/api/v1/pipelines/approval-requests/",
                     json={"execution_id": execution.execution_id, "step_id": step["id"] + 1})
    assert other.status_code in (404, 409)


def test_openapi_documents_the_approval_routes(app):
    from webapp.api.openapi import document

    paths = document()["paths"]
    for path in ("/api/v1/approval-requests/", "/api/v1/approval-requests/{id}/respond/",
                 "/api/v1/pipelines/executions/{execution_id}/steps/{step_id}/approve/",
                 "/api/v1/pipelines/approval-requests/"):
        assert path in paths
    assert "409" in paths["/api/v1/approval-requests/{id}/respond/"]["post"]["responses"]
