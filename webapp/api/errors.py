"""Every error under /api/ is JSON {error, fields}: the ServiceError hierarchy mapped to its status
in one handler, Flask's HTTP errors (400, 405, 413, 429 ...) and a 500 that names a request id
(the traceback goes to the log only). Bodies are parsed here once, with a nesting limit, so
malformed or absurdly deep JSON is a 400 before any view or the json module's recursion sees it."""
from __future__ import annotations

import itertools
import logging
import re
import uuid

from flask import g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from ..services.errors import ServiceError, ValidationError

log = logging.getLogger("webapp.api")

MAX_JSON_DEPTH = 64
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_DEPTH = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def body(message: str, status: int, fields: dict | None = None, **extra):
    return jsonify({"error": message, "fields": fields or {}, **extra}), status


def json_depth(data: bytes) -> int:
    brackets = _STRINGS.sub(b"", data)
    steps = [_DEPTH[c] for c in brackets if c in _DEPTH]
    return max(itertools.accumulate(steps), default=0)


def parse_json_body() -> None:
    """Before every API request: a JSON body is parsed now (400 when it is not JSON or nests
    deeper than MAX_JSON_DEPTH); Flask caches it for spectree and the views."""
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE") or not request.is_json:
        return
    data = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413 here
    if not data.strip():
        return
    if json_depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        parsed = request.get_json()
    except BadRequest:
        raise BadRequest("The body is not valid JSON.") from None
    if not isinstance(parsed, dict):  # every body is an object; spectree would read [] or 0 as {}
        raise ValidationError("Invalid input: fix the fields below.", {"body": "expected a JSON object"})


def request_id() -> str:
    if "request_id" not in g:
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
    return g.request_id


def service_error(e: ServiceError):
    return body(e.message, e.status, e.fields)


def http_error(e: HTTPException):
    if not request.path.startswith("/api/"):
        return e  # the pages keep Flask's (or their own) HTML
    if e.code is not None and e.code >= 500:
        return server_error(e)
    resp, status = body(e.description or e.name, e.code or 400)
    if e.code == 405 and e.valid_methods:
        resp.headers["Allow"] = ", ".join(e.valid_methods)
    return resp, status


def server_error(e: Exception):
    rid = request_id()
    log.error("API request %s %s failed (request id %s)", request.method, request.path, rid, exc_info=e)
    resp, status = body("internal error: the server failed to answer this request; quote the request id "
                        "when you report it", 500, request_id=rid)
    resp.headers["X-Request-ID"] = rid
    return resp, status


def any_error(e: Exception):
    if isinstance(e, HTTPException):
        return http_error(e)
    return server_error(e)


def register(bp) -> None:
    bp.before_request(parse_json_body)
    bp.register_error_handler(ServiceError, service_error)
    bp.register_error_handler(Exception, any_error)

    @bp.record_once
    def _on_app(state):
        # unknown routes and methods under /api/ match no blueprint: the app's handler answers them
        state.app.register_error_handler(HTTPException, http_error)
