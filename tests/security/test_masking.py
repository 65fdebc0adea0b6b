"""Secrets masked in every encoding the README promises (issue 13), in the masker itself and end to
end: a real worker runs a step that prints a secret in each form and writes it to its outputs;
the stored logs, outputs, the attempt API and the page show none of them. A secret shorter than
8 characters is refused when an execution starts."""
from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote, quote_plus

import pytest

from webapp.extensions import db
from webapp.models import WorkflowExecution
from webapp.runners.masking import MIN_SECRET_LENGTH, mask, secret_forms
from webapp.services import executions as svc
from webapp.services.accounts import ValidationError
from webapp.services.notify_net import scrub

from ..tasks.helpers import latest, make_pipeline, run, wait_finished

SECRET = 'Sk/live+9"x=y&z%'  # characters every encoding treats differently


def encodings(secret: str) -> dict[str, str]:
    raw = secret.encode()
    return {
        "literal": secret,
        "json": json.dumps(secret)[1:-1],
        "json in a document": json.dumps({"token": secret}),
        "url": quote(secret, safe=""),
        "url keeping /": quote(secret),
        "url plus": quote_plus(secret),
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "base64 url-safe": base64.urlsafe_b64encode(raw).decode(),
        "basic auth": base64.b64encode(b"deploy:" + raw).decode(),
        "base64 of a line": base64.b64encode(b"x" + raw + b"\n").decode(),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
    }


def secret_core_visible(text: str, secret: str) -> list[str]:
    """Which encodings of `secret` (or their secret-carrying core) are readable in `text`."""
    raw = secret.encode()
    cores = {"base64 core " + str(i): base64.b64encode(raw[i:i + (len(raw) - i) // 3 * 3]).decode() for i in range(3)}
    return [name for name, form in {**encodings(secret), **cores}.items() if form.strip('{}"') and form in text]


@pytest.mark.parametrize("name", list(encodings(SECRET)))
def test_each_encoding_is_masked(name):
    form = encodings(SECRET)[name]
    text = f"before {form} after"
    masked = mask(text, [SECRET])
    assert "***" in masked and masked.startswith("before ") and masked.endswith(" after")
    assert not secret_core_visible(masked, SECRET), masked


def test_ordinary_text_and_other_secrets_are_left_alone():
    text = "deploy to staging took 12 s; see https://example.com/x?a=b"
    assert mask(text, [SECRET, "another-secret-1"]) == text
    assert mask("", [SECRET]) == "" and mask(text, []) == text


def test_a_short_secret_is_masked_literally_only():
    """Its encodings would be a handful of characters that ordinary text contains."""
    assert secret_forms("abc") == {"abc"} and len(secret_forms("abcdefgh")) > 5
    assert MIN_SECRET_LENGTH == 8


def test_notification_errors_are_scrubbed_in_every_form():
    message = f"receiver said: bad token {quote(SECRET, safe='')} / {base64.b64encode(SECRET.encode()).decode()}"
    out = scrub(message, [SECRET])
    assert not secret_core_visible(out, SECRET) and "\u2022\u2022\u2022\u2022" in out


def test_a_short_secret_is_refused_when_an_execution_starts(app, users):
    p = make_pipeline([{"name": "s", "parameters": {"command": "true"}}], name="short-secret")
    with pytest.raises(ValidationError) as e:
        svc.start(p, variables={"KEY": "o"}, secret_variables=["KEY"], user=users["maintainer"])
    assert "at least 8 characters" in e.value.fields["variables"] and "KEY" in e.value.fields["variables"]
    db.session.rollback()
    assert db.session.execute(db.select(WorkflowExecution)).first() is None


def test_a_short_secret_is_a_field_error_in_the_api_and_the_form(app, api_as, client_as):
    p = make_pipeline([{"name": "s", "parameters": {"command": "true"}}], name="short-secret")
    resp = api_as("maintainer").post("/api/v1/workflow-executions/", json={
        "pipeline": p.id, "variables": {"PW": "hunter2"}, "secret_variables": ["PW"]})
    assert resp.status_code == 422 and "at least 8 characters" in resp.json["fields"]["variables"]
    page = client_as("maintainer").post("/executions/", data={"pipeline": p.id, "variables": "secret:PW=o"})
    assert page.status_code == 422 and "at least 8 characters" in page.get_data(as_text=True)
    assert db.session.execute(db.select(WorkflowExecution)).first() is None


@pytest.mark.integration
def test_logs_outputs_api_and_page_show_no_encoding(app, workers, api_as, client_as, users):
    workers(1)
    script = "\n".join([
        'echo "literal $TOKEN"',
        'python3 -c \'import json,os; print(json.dumps({"t": os.environ["TOKEN"]}))\'',
        'python3 -c \'import os,urllib.parse as u; print(u.quote(os.environ["TOKEN"], safe=""))\'',
        'printf %s "$TOKEN" | base64',
        'echo "$TOKEN" | base64',
        'printf %s "deploy:$TOKEN" | base64',
        'printf %s "$TOKEN" | od -An -tx1 | tr -d " \\n"; echo',
        'echo "ENCODED=$(printf %s "$TOKEN" | base64)" >> "$ANSFLOW_OUTPUT"',
        'echo "PLAIN=$TOKEN" >> "$ANSFLOW_OUTPUT"',
        'echo "done"',
    ])
    p = make_pipeline([{"name": "leak", "parameters": {"command": script}}], name="leaky")
    e = wait_finished(run(p, variables={"TOKEN": SECRET}, secret_variables=["TOKEN"], user=users["maintainer"]))
    attempt = latest(e, "leak")
    assert e.status == "success", attempt.logs
    assert "done" in attempt.logs and attempt.logs.count("***") >= 7, attempt.logs
    assert not secret_core_visible(attempt.logs, SECRET), attempt.logs
    assert set(attempt.output_data) == {"ENCODED", "PLAIN"}
    assert not secret_core_visible(json.dumps(attempt.output_data), SECRET), attempt.output_data
    texts, viewer_api = [], api_as("viewer")  # one token: a second api_as would replace it
    for client, path in ((viewer_api, f"/api/v1/pipelines/executions/{e.execution_id}/steps/"),
                         (viewer_api, f"/api/v1/workflow-executions/{e.execution_id}/"),
                         (client_as("viewer"), f"/executions/{e.execution_id}")):
        resp = client.get(path)
        assert resp.status_code == 200, path
        texts.append(resp.get_data(as_text=True))
    api, detail, page = texts
    assert html.escape(SECRET) not in page and html.escape(SECRET, quote=False) not in page
    for where, text in (("steps API", api), ("execution API", detail), ("page", page)):
        assert "done" in text or where == "execution API"
        assert not secret_core_visible(text, SECRET), where
        assert not secret_core_visible(text, json.dumps(SECRET)[1:-1]), where
