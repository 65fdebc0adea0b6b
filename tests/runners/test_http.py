"""The http runner against a real loopback HTTP server."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webapp.runners import http

from ..conftest import wait_for


class Handler(BaseHTTPRequestHandler):
    release: threading.Event       # set by the fixture: the /slow handler waits on it
    seen: list

    def log_message(self, *args):   # keep the test output quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                          "body": body.decode()})
        path = self.path.split("?")[0]
        if path == "/ok":
            self._send(200, b"all good")
        elif path == "/created":
            self._send(201, b"")
        elif path == "/fail":
            self._send(500, b"boom: database unavailable")
        elif path == "/big":
            self._send(200, b"A" * 5000 + b"THE-END")
        elif path == "/secret":
            self._send(200, b"token=sk-live-123456 ok")
        elif path == "/slow":
            self.release.wait(30)
            self._send(200, b"late")
        else:
            self._send(404, b"not found")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


@pytest.fixture
def make_ctx(make_ctx):
    """The receivers of these tests are on loopback: allow-list it, as an operator would for a
    local service (tests/security/test_outbound.py covers what is refused without it)."""
    def make(*a, allowlist=("127.0.0.1",), **kw):
        ctx = make_ctx(*a, **kw)
        ctx.allowlist = list(allowlist)
        return ctx
    return make


@pytest.fixture
def server():
    release = threading.Event()
    seen: list = []
    handler = type("H", (Handler,), {"release": release, "seen": seen})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.seen = seen
    yield srv
    release.set()
    srv.shutdown()
    srv.server_close()


def test_200_is_a_success_with_a_readable_log(server, make_ctx):
    r = http.run(make_ctx("http", {"url": server.base + "/ok"}))
    assert (r.status, r.exit_code, r.failure) == ("success", 200, None)
    lines = r.logs.splitlines()
    assert lines[0] == f"> GET {server.base}/ok"
    assert lines[1].startswith("< 200 OK (") and lines[1].endswith(" ms)")
    assert lines[2] == "all good"
    assert r.outputs["status_code"] == "200" and r.outputs["body"] == "all good" and int(r.outputs["elapsed_ms"]) >= 0


def test_500_is_a_failure_with_the_status_as_exit_code(server, make_ctx):
    r = http.run(make_ctx("http", {"url": server.base + "/fail"}))
    assert (r.status, r.exit_code, r.failure) == ("failed", 500, "exit")
    assert "unexpected HTTP status 500" in r.error_message
    assert "boom: database unavailable" in r.logs


@pytest.mark.parametrize("expected", [[500], 500, [200, 500]])
def test_expected_status_decides(server, make_ctx, expected):
    r = http.run(make_ctx("http", {"url": server.base + "/fail", "expected_status": expected}))
    assert (r.status, r.exit_code) == ("success", 500)


def test_200_is_unexpected_when_201_is_required(server, make_ctx):
    r = http.run(make_ctx("http", {"url": server.base + "/ok", "expected_status": [201]}))
    assert (r.status, r.exit_code, r.failure) == ("failed", 200, "exit")


def test_method_headers_and_json_body_are_sent(server, make_ctx):
    params = {"url": server.base + "/created", "method": "post", "headers": {"X-Token": "abc", "X-N": 5},
              "body": {"name": "deploy", "replicas": 3}, "expected_status": [201]}
    r = http.run(make_ctx("http", params))
    assert r.status == "success"
    req = server.seen[-1]
    assert req["method"] == "POST" and req["headers"]["X-Token"] == "abc" and req["headers"]["X-N"] == "5"
    assert req["headers"]["Content-Type"] == "application/json"
    assert json.loads(req["body"]) == {"name": "deploy", "replicas": 3}
    assert "> headers: X-N, X-Token" in r.logs and "abc" not in r.logs   # header names only, never values


def test_a_string_body_is_sent_as_is(server, make_ctx):
    r = http.run(make_ctx("http", {"url": server.base + "/ok", "method": "PUT", "body": "plain text"}))
    assert r.status == "success" and server.seen[-1]["body"] == "plain text"


def test_the_logged_body_is_capped_to_4kb(server, make_ctx):
    r = http.run(make_ctx("http", {"url": server.base + "/big"}))
    assert r.status == "success"
    assert "A" * 4096 in r.logs and "A" * 4097 not in r.logs and "THE-END" not in r.logs
    assert "[body truncated after 4096 bytes]" in r.logs
    assert len(r.outputs["body"]) == 4096


def test_a_slow_server_is_a_timeout_failure(server, make_ctx):
    started = time.monotonic()
    r = http.run(make_ctx("http", {"url": server.base + "/slow", "timeout": 0.5}))
    assert time.monotonic() - started < 5
    assert (r.status, r.failure, r.exit_code) == ("failed", "timeout", None)
    assert "timeout" in r.logs


def test_connection_refused_is_an_error(make_ctx):
    with socket.socket() as s:   # a port that was free a moment ago and has nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = http.run(make_ctx("http", {"url": f"http://127.0.0.1:{port}/", "timeout": 5}))
    assert (r.status, r.failure, r.exit_code) == ("failed", "error", None)
    assert "ConnectionError" in r.error_message


@pytest.mark.parametrize("params", [{}, {"url": "not a url"}, {"url": "http://x", "headers": ["a"]},
                                    {"url": "http://x", "expected_status": ["abc"]}])
def test_bad_parameters_are_an_error(make_ctx, params):
    r = http.run(make_ctx("http", params))
    assert (r.status, r.failure) == ("failed", "error")


def test_cancel_while_waiting_for_the_response(server, make_ctx, recorder):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", http.run(make_ctx("http", {"url": server.base + "/slow"}))))
    thread.start()
    wait_for(lambda: any(s["path"] == "/slow" for s in server.seen), timeout=10, message="the request to arrive")
    recorder.stop_with = "cancelled"
    thread.join(10)
    assert not thread.is_alive()
    r = box["r"]
    assert (r.status, r.failure) == ("cancelled", "cancelled") and "step cancelled" in r.logs


def test_the_step_timeout_gives_timed_out(server, make_ctx):
    r = http.run(make_ctx("http", {"url": server.base + "/slow", "timeout": 30}, timeout=0.5))
    assert (r.status, r.failure) == ("timed_out", "timeout")


def test_already_stopped_sends_nothing(server, make_ctx, recorder):
    recorder.stop_with = "cancelled"
    r = http.run(make_ctx("http", {"url": server.base + "/ok"}))
    assert r.status == "cancelled" and server.seen == []


def test_secrets_are_masked_in_url_body_and_outputs(server, make_ctx, recorder):
    r = http.run(make_ctx("http", {"url": server.base + "/secret?key=sk-live-123456"}, secrets=["sk-live-123456"]))
    assert r.status == "success"
    assert "sk-live-123456" not in r.logs and "sk-live-123456" not in r.outputs["body"]
    assert f"> GET {server.base}/secret?key=***" in r.logs and "token=*** ok" in r.logs
    assert all("sk-live" not in t for t in recorder.logs)
