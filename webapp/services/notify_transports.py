"""One small interface over every channel: `send(destination, message, allowlist) -> detail`.

It returns a short receipt ("HTTP 200", "250 accepted ...") or raises `Refused` (never retried) or
`DeliveryFailed` (with `retryable`). Messages carry the receiver's own error and have every secret
of the destination masked.

Which client does the sending:
* email: the standard library's smtplib (none | starttls | ssl), so SMTP replies come back verbatim.
* webhook: a JSON POST signed with HMAC-SHA256 of "<timestamp>.<body>" under the channel secret
  (headers X-AnsFlow-Timestamp and X-AnsFlow-Signature: sha256=<hex>).
* slack, dingtalk, wecom, feishu given a webhook URL: their documented JSON bodies, DingTalk's and
  Feishu's signing, and their JSON error codes (DingTalk and WeCom answer HTTP 200 with an errcode
  when they refuse a message), through the SSRF-guarded session of notify_net.
* slack, dingtalk, wecom, feishu given an Apprise URL (slack://, dingtalk://, wecombot://,
  feishu://): Apprise, for what a webhook URL cannot do (Slack bot tokens, DingTalk @mentions).
  Apprise talks only to the services' fixed public hosts, with redirects off; it reports
  success as a boolean, so its warning log lines become the error text.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

from .. import netguard
from .notify_net import DeliveryFailed, Refused, mask_secret, mask_url, post, scrub, url_secrets

CHAT_KINDS = ("slack", "dingtalk", "wecom", "feishu")
APPRISE_SCHEMES = {"slack": ("slack",), "dingtalk": ("dingtalk",), "wecom": ("wecombot",), "feishu": ("feishu",)}
SERVICE_HOSTS = {
    "hooks.slack.com": "slack",
    "oapi.dingtalk.com": "dingtalk",
    "qyapi.weixin.qq.com": "wecom",
    "open.feishu.cn": "feishu",
    "open.larksuite.com": "feishu",
}
SIGNATURE_HEADER = "X-AnsFlow-Signature"
TIMESTAMP_HEADER = "X-AnsFlow-Timestamp"


@dataclass
class Destination:
    kind: str                                   # email | webhook | slack | dingtalk | wecom | feishu
    label: str                                  # channel name, or "pipeline webhook" ...
    url: str = ""
    secret: str = ""                            # webhook HMAC key / DingTalk or Feishu signing secret
    apprise_url: str = ""
    to: list[str] = field(default_factory=list)
    smtp: dict[str, Any] = field(default_factory=dict)   # host, port, user, password, tls, from
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """Where it goes, with secrets masked (stored in NotificationDelivery.target)."""
        if self.kind == "email":
            host = self.smtp.get("host") or ""
            via = f" via {host}:{self.smtp.get('port')}" if host else ""
            return (", ".join(self.to) or "(no recipients)") + via
        if self.apprise_url:
            scheme = self.apprise_url.split("://", 1)[0]
            return f"{scheme}://{mask_secret(self.apprise_url.split('://', 1)[-1])}"
        return mask_url(self.url)

    @property
    def secrets(self) -> list[str]:
        found = [self.secret, self.smtp.get("password") or ""] + url_secrets(self.url)
        if self.apprise_url:
            found += [self.apprise_url, self.apprise_url.split("://", 1)[-1]]
            found += [p for p in self.apprise_url.split("://", 1)[-1].replace("@", "/").split("/") if len(p) >= 8]
        found += [v for v in self.headers.values() if len(str(v)) >= 8]
        return [s for s in found if s]


@dataclass
class Message:
    subject: str
    text: str
    event: str
    payload: dict[str, Any] = field(default_factory=dict)   # structured data for the generic webhook
    delivery_id: int | None = None


def kind_for_url(url: str) -> str:
    """A bare webhook URL of a known chat service gets that service's body shape."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return "webhook"
    return SERVICE_HOSTS.get(host, "webhook")


def send(dest: Destination, message: Message, allowlist, timeout: float = 10.0) -> str:
    try:
        if dest.kind == "email":
            return _send_email(dest, message, allowlist, timeout)
        if dest.apprise_url:
            return _send_apprise(dest, message)
        if dest.kind == "webhook":
            return _send_webhook(dest, message, allowlist, timeout)
        if dest.kind in CHAT_KINDS:
            return _send_chat(dest, message, allowlist, timeout)
        raise DeliveryFailed(f"Unknown channel type '{dest.kind}'.")
    except Refused as e:
        raise Refused(scrub(e.message, dest.secrets)) from None
    except DeliveryFailed as e:
        raise DeliveryFailed(scrub(e.message, dest.secrets), e.retryable) from None


# ---------- HTTP helpers ----------

def _snippet(resp, limit: int = 300) -> str:
    try:
        text = resp.text or ""
    except Exception:  # noqa: BLE001
        text = ""
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _check_status(resp, service: str) -> None:
    if 200 <= resp.status_code < 300:
        return
    retryable = resp.status_code in (408, 425, 429) or resp.status_code >= 500
    body = _snippet(resp)
    raise DeliveryFailed(f"{service} answered HTTP {resp.status_code}{': ' + body if body else ''}", retryable)


def _json_answer(resp, service: str) -> dict:
    try:
        data = resp.json()
    except ValueError:
        raise DeliveryFailed(f"{service} answered HTTP {resp.status_code} with something that is not JSON: {_snippet(resp)}")
    return data if isinstance(data, dict) else {}


def _body(data: dict) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">: what receivers recompute to verify."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _send_webhook(dest: Destination, message: Message, allowlist, timeout: float) -> str:
    payload = {"event": message.event, "subject": message.subject, "text": message.text, **message.payload}
    if message.delivery_id is not None:
        payload["delivery_id"] = message.delivery_id
    body = _body(payload)
    timestamp = str(int(time.time()))
    headers = {
        **{str(k): str(v) for k, v in dest.headers.items()},
        "Content-Type": "application/json; charset=utf-8",
        "X-AnsFlow-Event": message.event,
        TIMESTAMP_HEADER: timestamp,
    }
    if message.delivery_id is not None:
        headers["X-AnsFlow-Delivery"] = str(message.delivery_id)
    if dest.secret:
        headers[SIGNATURE_HEADER] = webhook_signature(dest.secret, timestamp, body)
    resp = post(dest.url, body=body, headers=headers, allowlist=allowlist, timeout=timeout)
    _check_status(resp, "The webhook")
    return f"HTTP {resp.status_code}"


# ---------- chat services ----------

def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def feishu_sign(secret: str, timestamp_s: str) -> str:
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode("utf-8"), b"", hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def chat_text(message: Message) -> str:
    return message.text if message.text.startswith(message.subject) else f"{message.subject}\n\n{message.text}"


def _send_chat(dest: Destination, message: Message, allowlist, timeout: float) -> str:
    text = chat_text(message)
    params = None
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if dest.kind == "slack":
        data: dict[str, Any] = {"text": text}
        service = "Slack"
    elif dest.kind == "dingtalk":
        data = {"msgtype": "text", "text": {"content": text}}
        service = "DingTalk"
        if dest.secret:
            ts = str(int(time.time() * 1000))
            params = {"timestamp": ts, "sign": dingtalk_sign(dest.secret, ts)}
    elif dest.kind == "wecom":
        data = {"msgtype": "text", "text": {"content": text}}
        service = "WeCom"
    else:
        data = {"msg_type": "text", "content": {"text": text}}
        service = "Feishu"
        if dest.secret:
            ts = str(int(time.time()))
            data = {"timestamp": ts, "sign": feishu_sign(dest.secret, ts), **data}
    resp = post(dest.url, body=_body(data), headers=headers, allowlist=allowlist, timeout=timeout, params=params)
    _check_status(resp, service)
    if dest.kind == "slack":
        return f"HTTP {resp.status_code}"
    answer = _json_answer(resp, service)
    if dest.kind in ("dingtalk", "wecom"):
        code = answer.get("errcode", 0)
        if code not in (0, "0"):
            # 130101: DingTalk "sending too fast"; 45009 / -1: WeCom rate limit / system busy.
            retryable = code in (130101, 45009, -1)
            raise DeliveryFailed(f"{service} refused the message: errcode {code}: {answer.get('errmsg', '')}", retryable)
    else:
        code = answer.get("code", answer.get("StatusCode", 0))
        if code not in (0, "0", None):
            retryable = code in (11232, 9499)
            raise DeliveryFailed(f"{service} refused the message: code {code}: {answer.get('msg') or answer.get('StatusMessage', '')}",
                                 retryable)
    return f"HTTP {resp.status_code}"


def apprise_url_error(kind: str, url: str) -> str | None:
    """Why Apprise cannot use `url` for a channel of this kind (None when it can)."""
    import apprise

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    allowed = APPRISE_SCHEMES.get(kind, ())
    if scheme not in allowed:
        return f"An Apprise URL for {kind} starts with {' or '.join(s + '://' for s in allowed) or '(none)'}."
    a = apprise.Apprise(asset=_apprise_asset())
    if not a.add(url):
        return "Apprise could not understand that URL; see https://appriseit.com/services/ for its format."
    return None


def _apprise_asset():
    import apprise

    return apprise.AppriseAsset(http_redirects=False, storage_mode="memory")


def _send_apprise(dest: Destination, message: Message) -> str:
    import apprise

    problem = apprise_url_error(dest.kind, dest.apprise_url)
    if problem:
        raise DeliveryFailed(problem)
    a = apprise.Apprise(asset=_apprise_asset())
    a.add(dest.apprise_url)
    for server in a:
        server.redirects = False
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as logs:
        ok = a.notify(body=message.text, title=message.subject)
    if ok:
        return "sent through Apprise"
    lines = [line.strip() for line in logs.getvalue().splitlines() if line.strip()]
    raise DeliveryFailed("Apprise could not deliver: " + ("; ".join(lines[-3:]) or "no reason given"), retryable=True)


# ---------- email ----------

class _CheckedSocket:
    """smtplib opens its connection in _get_socket(host, port, timeout); here it goes to an address
    netguard checked (a test in tests/security/test_outbound.py fails if smtplib stops calling it).
    TLS still verifies the certificate against the host name (self._host)."""

    allowlist: list[str] = []

    def _get_socket(self, host, port, timeout):
        sock = netguard.connect(host, port, timeout, self.allowlist)
        if isinstance(self, smtplib.SMTP_SSL):
            sock = self.context.wrap_socket(sock, server_hostname=self._host)
        return sock


def smtp_client(host: str, port: int, tls: str, timeout: float, allowlist) -> smtplib.SMTP:
    """A connected SMTP client whose server address passed the outbound policy."""
    allow = list(allowlist or ()) + _own_smtp_server()
    if tls == "ssl":
        cls = type("CheckedSMTP_SSL", (_CheckedSocket, smtplib.SMTP_SSL), {"allowlist": allow})
        return cls(host, port, timeout=timeout, context=ssl.create_default_context())
    cls = type("CheckedSMTP", (_CheckedSocket, smtplib.SMTP), {"allowlist": allow})
    return cls(host, port, timeout=timeout)


def _own_smtp_server() -> list[str]:
    """The server of AnsFlow's own SMTP_* settings is the operator's choice, so it is admitted (on
    its port); an SMTP host a channel names is checked like any other destination."""
    from flask import current_app, has_app_context

    if not has_app_context():
        return []
    host, port = current_app.config.get("SMTP_HOST"), current_app.config.get("SMTP_PORT") or 25
    if not host:
        return []
    return [f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"]


def _send_email(dest: Destination, message: Message, allowlist, timeout: float) -> str:
    smtp = dest.smtp
    host, port = smtp.get("host") or "127.0.0.1", int(smtp.get("port") or 25)
    tls = (smtp.get("tls") or "none").lower()
    if not dest.to:
        raise DeliveryFailed("No email recipients.")
    msg = EmailMessage()
    msg["Subject"] = message.subject
    msg["From"] = smtp.get("from") or "ansflow@localhost"
    msg["To"] = ", ".join(dest.to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="ansflow")
    msg["X-AnsFlow-Event"] = message.event
    if message.delivery_id is not None:
        msg["X-AnsFlow-Delivery"] = str(message.delivery_id)
    msg.set_content(message.text)
    where = f"{host}:{port}"
    try:
        client = smtp_client(host, port, tls, timeout, allowlist)
        with client:
            client.ehlo()
            if tls == "starttls":
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if smtp.get("user"):
                client.login(smtp["user"], smtp.get("password") or "")
            refused = client.send_message(msg)
    except smtplib.SMTPNotSupportedError as e:
        raise DeliveryFailed(f"SMTP server {where} does not support that: {e}")
    except smtplib.SMTPAuthenticationError as e:
        raise DeliveryFailed(f"SMTP server {where} refused the login: {e.smtp_code} {_smtp_text(e.smtp_error)}")
    except smtplib.SMTPRecipientsRefused as e:
        codes = [code for code, _text in e.recipients.values()]
        detail = "; ".join(f"{rcpt}: {code} {_smtp_text(text)}" for rcpt, (code, text) in e.recipients.items())
        raise DeliveryFailed(f"SMTP server {where} refused the recipients: {detail}", all(400 <= c < 500 for c in codes))
    except smtplib.SMTPResponseException as e:
        raise DeliveryFailed(f"SMTP server {where} answered {e.smtp_code} {_smtp_text(e.smtp_error)}",
                             400 <= e.smtp_code < 500)
    except netguard.Unresolved as e:
        raise DeliveryFailed(f"SMTP server {where}: {e.message}", retryable=True)
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryFailed(f"Could not send through SMTP server {where}: {e or type(e).__name__}", retryable=True)
    if refused:
        return f"accepted by {where} except for {', '.join(refused)}"
    return f"accepted by {where} for {len(dest.to)} recipient(s)"


def _smtp_text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
