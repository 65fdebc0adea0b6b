"""Real receivers on loopback: an SMTP server (aiosmtpd) and an HTTP server that records posts,
answers as told (status/body per path, or a script of answers), and can redirect."""
from __future__ import annotations

import json
import socket
import threading
from collections import defaultdict, deque
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request.

    `script(path, [(status, body), ...])` answers the next requests to `path` in order (the last
    answer repeats); otherwise 200 with `default_body`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.default_body = "ok"
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path, _, query = self.path.partition("?")
                with receiver.lock:
                    receiver.requests.append({"path": path, "query": query, "headers": dict(self.headers),
                                              "body": body, "method": "POST"})
                    script = receiver.scripts.get(path)
                    answer = (script.popleft() if len(script) > 1 else script[0]) if script else (200, receiver.default_body)
                status, text = answer[0], answer[1]
                headers = answer[2] if len(answer) > 2 else {}
                data = text.encode() if isinstance(text, str) else json.dumps(text).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json" if not isinstance(text, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, path: str, answers: list) -> None:
        with self.lock:
            self.scripts[path] = deque(answers)

    def posts(self, path: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if path is None or r["path"] == path]

    def json(self, path: str) -> list[dict]:
        return [json.loads(r["body"]) for r in self.posts(path)]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


class Mailbox:
    def __init__(self):
        self.messages: list[dict] = []
        self.reject_rcpt: dict[str, str] = {}     # address -> SMTP reply
        self.reject_data: str | None = None
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.reject_rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.reject_data:
            return self.reject_data
        msg = message_from_bytes(envelope.content)
        with self.lock:
            self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": msg,
                                  "subject": str(msg["Subject"]), "body": msg.get_payload(decode=True).decode()})
        return "250 Message accepted for delivery"

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.messages)


@pytest.fixture(scope="session")
def _smtp_controller():
    from aiosmtpd.controller import Controller

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, box
    controller.stop()


@pytest.fixture
def mailbox(_smtp_controller):
    controller, box = _smtp_controller
    with box.lock:
        box.messages.clear()
    box.reject_rcpt.clear()
    box.reject_data = None
    box.port = controller.port
    return box


@pytest.fixture
def app_settings(app_settings, _smtp_controller):
    """Short retry backoff and the loopback SMTP server, for the app and its worker processes."""
    controller, _box = _smtp_controller
    settings = {**app_settings, "NOTIFY_RETRY_INTERVALS": [1, 1], "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": controller.port, "MAIL_FROM": "ansflow@example.test", "BASE_URL": "http://ansflow.test"}
    settings["EXTRA_ENV"] = {**app_settings.get("EXTRA_ENV", {}), "ANSFLOW_NOTIFY_RETRY_INTERVALS": "1,1",
                             "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(controller.port),
                             "MAIL_FROM": "ansflow@example.test", "ANSFLOW_BASE_URL": "http://ansflow.test"}
    return settings
