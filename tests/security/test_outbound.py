"""One outbound guard for every request AnsFlow makes (issue 13): the address policy itself, then
the http step, every notification channel and SMTP through it. Refusals are asserted on the
policy and on requests that never leave the machine: the only traffic here is to loopback
receivers, allow-listed (with their port) where a test needs a happy path."""
from __future__ import annotations

import ipaddress
import smtplib
import socket
import threading

import pytest
import urllib3.connection

from webapp import netguard
from webapp.runners import http
from webapp.services import notifications as svc
from webapp.services.notify_transports import smtp_client

SSRF_HOSTS = {
    # spelling in the URL: the address it reaches
    "127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "[::1]": "::1", "[::ffff:127.0.0.1]": "127.0.0.1",
    "[::ffff:7f00:1]": "127.0.0.1", "2130706433": "127.0.0.1", "0177.0.0.1": "127.0.0.1", "0x7f.1": "127.0.0.1",
    "127.1": "127.0.0.1", "0x7f000001": "127.0.0.1", "017700000001": "127.0.0.1", "127.0.0.1.": "127.0.0.1",
    "10.1.2.3": "10.1.2.3", "172.16.0.1": "172.16.0.1", "192.168.1.1": "192.168.1.1", "100.64.0.1": "100.64.0.1",
    "169.254.169.254": "169.254.169.254", "[fd00:ec2::254]": "fd00:ec2::254", "[fe80::1]": "fe80::1",
    "224.0.0.1": "224.0.0.1", "240.0.0.1": "240.0.0.1", "0.0.0.0": "0.0.0.0", "0": "0.0.0.0", "[::]": "::",
    "[fc00::1]": "fc00::1",
}
TRICKS = ["http://public.example@127.0.0.1/", "http://user:pw@0x7f.1:80/", "http://127.0.0.1#@public.example/",
          "http://public.example\\@127.0.0.1/", "http://a@b@127.0.0.1/", "http://127.0.0.1%2f.public.example/",
          "http://metadata.google.internal/computeMetadata/v1/", "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO"]


@pytest.mark.parametrize("spelling,address", SSRF_HOSTS.items(), ids=list(SSRF_HOSTS))
def test_every_spelling_of_a_non_public_address_is_refused(spelling, address):
    host = spelling.strip("[]")
    if host != "localhost":
        assert netguard.ip_literal(host) == ipaddress.ip_address(address)
    with pytest.raises(netguard.Refused) as e:
        netguard.check_url(f"http://{spelling}/x", [])
    assert address in e.value.message or "metadata" in e.value.message


@pytest.mark.parametrize("url", TRICKS)
def test_userinfo_and_parser_tricks_are_refused(url):
    with pytest.raises(netguard.Refused):
        netguard.check_url(url, [])


def test_names_are_not_mistaken_for_numbers():
    for name in ("example.com", "0x7g.1", "1.2.3.4.5", "256.1.1.1", "08.0.0.1", "127.0.0.1x"):
        assert netguard.ip_literal(name) is None, name
    assert netguard.address_problem(ipaddress.ip_address("93.184.216.34")) is None


def test_a_checked_url_is_rebuilt_from_what_was_checked():
    target = netguard.check_url("http://us%40er:p%3Ass@0x7f.1:8080/a?b=1#frag", ["127.0.0.1"])
    assert target.url == "http://127.0.0.1:8080/a?b=1" and target.auth == ("us@er", "p:ss")
    assert target.addresses == ("127.0.0.1",)


def test_allowlist_entries_with_and_without_ports():
    r = netguard.refusal
    assert r("127.0.0.1", "127.0.0.1", ["127.0.0.1:8025"], 8025) is None
    refused = r("127.0.0.1", "127.0.0.1", ["127.0.0.1:8025"], 8026)
    assert refused and "only on port 8025" in refused
    assert r("::1", "::1", ["[::1]:8080"], 8080) is None and r("::1", "::1", ["[::1]:8080"], 80)
    assert r("10.9.8.7", "10.9.8.7", ["10.0.0.0/8"], 443) is None
    assert r("10.9.8.7", "10.9.8.7", ["10.0.0.0/8:443"], 444)
    assert r("hooks.lan", "192.168.3.4", ["hooks.lan:443"], 443) is None
    assert r("other.lan", "192.168.3.4", ["hooks.lan"], 443)
    # a mapped address is checked as the IPv4 address it reaches, against IPv4 entries too
    assert r("::ffff:10.1.1.1", "::ffff:10.1.1.1", ["10.0.0.0/8"], 80) is None
    # metadata: never by a range or a name, only by its exact address
    assert r("169.254.169.254", "169.254.169.254", ["169.254.0.0/16", "0.0.0.0/0"], 80)
    assert r("metadata.lan", "169.254.169.254", ["metadata.lan"], 80)
    assert r("169.254.169.254", "169.254.169.254", ["169.254.169.254"], 80) is None


def test_the_allowlist_reads_both_environment_names():
    env = {"ANSFLOW_OUTBOUND_ALLOWLIST": "10.0.0.0/8, hooks.lan:443", "ANSFLOW_NOTIFY_ALLOWLIST": "127.0.0.1"}
    assert netguard.allowlist_from_env(env) == ["10.0.0.0/8", "hooks.lan:443", "127.0.0.1"]


def test_urllib3_still_opens_connections_through_new_conn(receiver):
    """Contract: the guarded session overrides urllib3's private HTTPConnection._new_conn to check
    the peer it really connected to (DNS rebinding). If urllib3 stops calling it, this fails."""
    assert callable(getattr(urllib3.connection.HTTPConnection, "_new_conn", None))
    with netguard.guarded_session([]) as session, pytest.raises(netguard.Refused) as e:
        session.post(f"{receiver.url}/hook", data=b"{}", timeout=5)  # no pre-check: only the socket's
    assert "127.0.0.1, a loopback address" in e.value.message
    assert receiver.posts() == []
    port = receiver.port
    with netguard.guarded_session([f"127.0.0.1:{port + 1}"]) as session, pytest.raises(netguard.Refused):
        session.post(f"{receiver.url}/hook", data=b"{}", timeout=5)
    with netguard.guarded_session([f"127.0.0.1:{port}"]) as session:
        assert session.post(f"{receiver.url}/hook", data=b"{}", timeout=5).status_code == 200


# ---------- the http step ----------

def _step(make_ctx, url, allowlist, **params):
    ctx = make_ctx("http", {"url": url, "timeout": 5, **params})
    ctx.allowlist = allowlist
    return http.run(ctx)


@pytest.fixture
def make_ctx(tmp_path):
    from webapp.runners.base import StepContext
    from webapp.runners.env import build_env

    def make(step_type, parameters):
        return StepContext(
            execution_id="ex-1", attempt_id=1, attempt_number=1, step_name="call", step_type=step_type,
            parameters=parameters, env=build_env(execution_id="ex-1", attempt_number=1, step_name="call", variables={},
                                                 trigger={}, outputs={}, output_file=None),
            workspace=tmp_path, timeout_seconds=None, secrets=[])
    return make


@pytest.mark.parametrize("spelling", list(SSRF_HOSTS))
def test_the_http_step_refuses_private_targets_with_a_clear_error(make_ctx, spelling):
    r = _step(make_ctx, f"http://{spelling}/latest/meta-data/", [])
    assert (r.status, r.failure) == ("failed", "error")
    assert r.error_message.startswith("Refused:") and "ANSFLOW_OUTBOUND_ALLOWLIST" in r.error_message or \
        "metadata" in r.error_message
    assert "< not sent: Refused:" in r.logs


def test_the_http_step_reaches_an_allowlisted_loopback_port_only(make_ctx, receiver):
    receiver.script("/hook", [(200, "fine")])
    ok = _step(make_ctx, f"{receiver.url}/hook", [f"127.0.0.1:{receiver.port}"], method="POST", body="x")
    assert ok.status == "success" and ok.outputs["body"] == "fine"
    assert len(receiver.posts("/hook")) == 1
    other = _step(make_ctx, f"{receiver.url}/hook", [f"127.0.0.1:{receiver.port + 1}"], method="POST", body="x")
    assert other.status == "failed" and f"only on port {receiver.port + 1}" in other.error_message
    assert len(receiver.posts("/hook")) == 1  # nothing more arrived


def test_the_http_step_checks_every_redirect(make_ctx, receiver):
    receiver.script("/to-metadata", [(302, "", {"Location": "http://169.254.169.254/latest/meta-data/"})])
    receiver.script("/to-other-port", [(307, "", {"Location": "http://127.0.0.1:1/admin"})])
    receiver.script("/to-mapped", [(301, "", {"Location": "http://[::ffff:10.0.0.1]/"})])
    allow = [f"127.0.0.1:{receiver.port}"]
    for path, address in (("/to-metadata", "169.254.169.254"), ("/to-other-port", "127.0.0.1"), ("/to-mapped", "10.0.0.1")):
        r = _step(make_ctx, f"{receiver.url}{path}", allow, method="POST", body="x")
        assert (r.status, r.failure) == ("failed", "error"), (path, r.logs)
        assert address in r.error_message and r.error_message.startswith("Refused"), (path, r.error_message)
    receiver.script("/moved", [(303, "", {"Location": "/landed"})])
    r = _step(make_ctx, f"{receiver.url}/moved", allow, method="POST", body="x", expected_status=[501])
    assert r.status == "success"  # followed (303: as a GET) to the allowed receiver, which only has POST (501)
    assert receiver.posts("/landed") == []


def test_credentials_do_not_follow_a_redirect_to_another_host(make_ctx, receiver):
    receiver.script("/hop", [(307, "", {"Location": f"http://localhost:{receiver.port}/land"})])
    allow = [f"127.0.0.1:{receiver.port}", f"localhost:{receiver.port}", f"::1:{receiver.port}"]
    allow.append(f"[::1]:{receiver.port}")
    r = _step(make_ctx, f"http://user:pw@127.0.0.1:{receiver.port}/hop", allow, method="POST", body="x",
              headers={"Authorization": "Bearer keep-it-home"})
    landed = receiver.posts("/land")
    assert landed, r.logs
    assert "authorization" not in {k.lower() for k in landed[0]["headers"]}
    assert "user:pw" not in r.logs and "***@127.0.0.1" in r.logs


# ---------- notification channels and SMTP ----------

CHANNEL_KINDS = ("webhook", "slack", "dingtalk", "wecom", "feishu")


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
@pytest.mark.parametrize("spelling", ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "127.1",
                                      "169.254.169.254", "[fd00:ec2::254]", "10.0.0.1"])
def test_every_channel_kind_refuses_private_targets(app, receiver, kind, spelling):
    app.config["NOTIFY_ALLOWLIST"] = []
    port = f":{receiver.port}" if spelling.startswith(("127", "[::ffff", "2130", "0x7f")) else ""
    row = svc.send_test({"webhook_url": f"http://{spelling}{port}/hook", "channel_type": kind})
    assert row.status == "refused", (kind, spelling, row.error)
    assert receiver.posts() == []


def test_a_channel_redirect_to_a_refused_port_is_refused(app, receiver):
    app.config["NOTIFY_ALLOWLIST"] = [f"127.0.0.1:{receiver.port}"]
    receiver.script("/hop", [(307, "", {"Location": f"http://127.0.0.1:{receiver.port + 1}/x"})])
    row = svc.send_test({"webhook_url": f"{receiver.url}/hop"})
    assert row.status == "refused" and f"only on port {receiver.port}" in row.error
    row = svc.send_test({"webhook_url": f"{receiver.url}/direct"})
    assert row.status == "delivered", row.error


class _Listener:
    """A TCP listener on loopback that counts connections (an SMTP host that must not be reached)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_smtp_hosts_are_checked_before_connecting(app, mailbox):
    """Contract too: smtplib opens its socket through SMTP._get_socket, which the checked client
    overrides; if smtplib stopped calling it, the refused connection would be accepted here."""
    listener = _Listener()
    try:
        for tls in ("none", "ssl"):
            with pytest.raises(netguard.Refused) as e:
                smtp_client("127.0.0.1", listener.port, tls, 5, [])
            assert "a loopback address" in e.value.message
        with pytest.raises(netguard.Refused):
            smtp_client("169.254.169.254", 25, "none", 5, ["169.254.0.0/16"])
        assert listener.accepted == 0
    finally:
        listener.close()
    with smtp_client("127.0.0.1", mailbox.port, "none", 5, [f"127.0.0.1:{mailbox.port}"]) as client:
        assert client.noop()[0] == 250


def test_an_email_channel_with_a_private_smtp_host_is_refused(app, mailbox):
    app.config["NOTIFY_ALLOWLIST"] = []
    app.config["SMTP_HOST"], app.config["SMTP_PORT"] = "127.0.0.1", mailbox.port + 1  # the operator's server is elsewhere
    from webapp.services.notify_transports import Destination, Message, send

    dest = Destination(kind="email", label="lan mail", to=["a@example.test"],
                       smtp={"host": "127.0.0.1", "port": mailbox.port, "tls": "none"})
    with pytest.raises(netguard.Refused):
        send(dest, Message(subject="s", text="t", event="test"), [])
    assert mailbox.received() == []
    # AnsFlow's own SMTP_* server is the operator's choice: admitted on its port
    app.config["SMTP_PORT"] = mailbox.port
    assert "accepted" in send(dest, Message(subject="s", text="t", event="test"), [])
    assert len(mailbox.received()) == 1
    assert smtplib  # the module the checked client extends
