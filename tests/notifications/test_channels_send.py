"""Every channel type delivers for real to a loopback receiver, which checks shapes and signatures;
receiver errors come back verbatim; private destinations are refused; secrets never show."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs

import pytest

from webapp.services import notifications as svc
from webapp.services.accounts import ValidationError
from webapp.services.notify_net import Refused, guarded_session


def make_channel(**data):
    return svc.save_channel(data)


def test_webhook_is_signed_with_the_channel_secret(app, receiver):
    make_channel(name="ops-hook", channel_type="webhook", url=f"{receiver.url}/hook", secret="s3cret-signing-key")
    row = svc.send_test({"channel": "ops-hook"})
    assert row.status == "delivered", row.error
    (post,) = receiver.posts("/hook")
    body, headers = post["body"], post["headers"]
    ts = headers["X-AnsFlow-Timestamp"]
    expected = "sha256=" + hmac.new(b"s3cret-signing-key", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-AnsFlow-Signature"] == expected
    assert abs(int(ts) - time.time()) < 60
    data = json.loads(body)
    assert data["event"] == "test" and "works" in data["text"] and data["delivery_id"] == row.id
    assert headers["Content-Type"].startswith("application/json")


def test_slack_shaped_post(app, receiver):
    url = f"{receiver.url}/services/T0001/B0002/abcdefghijklmnopqrstuvwx"
    make_channel(name="team-slack", channel_type="slack", url=url)
    row = svc.send_test({"channel": "team-slack", "message": "Hello {{ user }} from {{ channel }}"})
    assert row.status == "delivered", row.error
    (data,) = receiver.json("/services/T0001/B0002/abcdefghijklmnopqrstuvwx")
    assert set(data) == {"text"} and "Hello  from team-slack" in data["text"]
    assert "abcdefghijklmnopqrstuvwx" not in row.target and row.target.endswith("uvwx")


def dingtalk_expected_sign(secret: str, ts: str) -> str:
    mac = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def test_dingtalk_shaped_post_is_signed(app, receiver):
    secret = "SECa1b2c3d4e5f6a7b8c9d0"
    token = "tok0123456789abcdef0123"
    make_channel(name="dt", channel_type="dingtalk", url=f"{receiver.url}/robot/send?access_token={token}", secret=secret)
    receiver.script("/robot/send", [(200, {"errcode": 0, "errmsg": "ok"})])
    row = svc.send_test({"channel": "dt"})
    assert row.status == "delivered", row.error
    (post,) = receiver.posts("/robot/send")
    query = parse_qs(post["query"])
    assert query["access_token"] == [token]
    ts = query["timestamp"][0]
    assert query["sign"] == [dingtalk_expected_sign(secret, ts)]
    assert abs(int(ts) / 1000 - time.time()) < 60
    data = json.loads(post["body"])
    assert data["msgtype"] == "text" and "AnsFlow" in data["text"]["content"]
    assert token not in row.target and secret not in json.dumps(svc.channel_json(svc.list_channels()[0]))


def test_dingtalk_refusal_in_a_200_answer_is_a_failure_with_its_message(app, receiver):
    token = "tok0123456789abcdef0123"
    make_channel(name="dt", channel_type="dingtalk", url=f"{receiver.url}/robot/send?access_token={token}")
    receiver.script("/robot/send", [(200, {"errcode": 310000, "errmsg": "sign not match"})])
    row = svc.send_test({"channel": "dt"})
    assert row.status == "failed"
    assert "errcode 310000: sign not match" in row.error


def test_wecom_and_feishu_shapes(app, receiver):
    make_channel(name="wc", channel_type="wecom", url=f"{receiver.url}/cgi-bin/webhook/send?key=k-0123456789abcdef")
    make_channel(name="fs", channel_type="feishu", url=f"{receiver.url}/open-apis/bot/v2/hook/0123456789abcdef",
                 secret="feishu-secret-1234")
    receiver.script("/cgi-bin/webhook/send", [(200, {"errcode": 0, "errmsg": "ok"})])
    receiver.script("/open-apis/bot/v2/hook/0123456789abcdef", [(200, {"code": 0, "msg": "success"})])
    assert svc.send_test({"channel": "wc"}).status == "delivered"
    assert svc.send_test({"channel": "fs"}).status == "delivered"
    (wc,) = receiver.json("/cgi-bin/webhook/send")
    assert wc["msgtype"] == "text" and wc["text"]["content"]
    (fs,) = receiver.json("/open-apis/bot/v2/hook/0123456789abcdef")
    assert fs["msg_type"] == "text" and fs["content"]["text"]
    expected = base64.b64encode(hmac.new(f"{fs['timestamp']}\nfeishu-secret-1234".encode(), b"", hashlib.sha256).digest()).decode()
    assert fs["sign"] == expected


def test_feishu_error_code_is_reported(app, receiver):
    make_channel(name="fs", channel_type="feishu", url=f"{receiver.url}/open-apis/bot/v2/hook/0123456789abcdef")
    receiver.script("/open-apis/bot/v2/hook/0123456789abcdef", [(200, {"code": 19021, "msg": "sign match fail"})])
    row = svc.send_test({"channel": "fs"})
    assert row.status == "failed" and "code 19021: sign match fail" in row.error


def test_receiver_error_text_comes_back(app, receiver):
    receiver.script("/hook", [(403, "invalid_token")])
    row = svc.send_test({"webhook_url": f"{receiver.url}/hook"})
    assert row.status == "failed"
    assert "HTTP 403: invalid_token" in row.error


def test_email_reaches_the_smtp_server(app, users, mailbox):
    users["approver"].email = "approver1@example.test"
    from webapp.extensions import db

    db.session.commit()
    row = svc.send_test({"recipients": ["dev@example.test", "approver1"]})
    assert row.status == "delivered", row.error
    (mail,) = mailbox.received()
    assert sorted(mail["to"]) == ["approver1@example.test", "dev@example.test"]
    assert mail["from"] == "ansflow@example.test"
    assert mail["subject"] == "[AnsFlow] Test message"
    assert "test message from AnsFlow" in mail["body"]


def test_email_channel_and_smtp_rejection(app, mailbox):
    make_channel(name="oncall", channel_type="email", to="oncall@example.test, lead@example.test",
                 smtp_host="127.0.0.1", smtp_port=str(mailbox.port), smtp_tls="none", smtp_password="pw-should-not-show")
    mailbox.reject_rcpt["lead@example.test"] = "550 5.1.1 <lead@example.test>: mailbox unavailable"
    row = svc.send_test({"channel": "oncall"})
    assert row.status == "delivered"  # one recipient was accepted
    assert [m["to"] for m in mailbox.received()] == [["oncall@example.test"]]
    mailbox.reject_rcpt["oncall@example.test"] = "550 5.1.1 no such user"
    row = svc.send_test({"channel": "oncall"})
    assert row.status == "failed" and "550" in row.error and "no such user" in row.error
    assert "pw-should-not-show" not in json.dumps(svc.channel_json(svc.list_channels()[0]))


def test_starttls_against_a_plain_server_is_a_clear_failure(app, mailbox):
    make_channel(name="tls", channel_type="email", to="x@example.test", smtp_host="127.0.0.1",
                 smtp_port=str(mailbox.port), smtp_tls="starttls")
    row = svc.send_test({"channel": "tls"})
    assert row.status == "failed" and "STARTTLS" in row.error


# ---------- safety ----------

def test_private_address_is_refused_with_a_clear_message(app, receiver):
    app.config["NOTIFY_ALLOWLIST"] = []
    row = svc.send_test({"webhook_url": f"http://localhost:{receiver.port}/hook"})
    assert row.status == "refused"
    assert "a loopback address" in row.error and "NOTIFY_ALLOWLIST" in row.error
    assert receiver.posts() == []


def test_literal_private_urls_are_refused_when_saved(app):
    with pytest.raises(ValidationError) as e:
        svc.save_channel({"name": "lan", "channel_type": "webhook", "url": "http://10.1.2.3/hook"})
    assert "10.1.2.3, a private address" in e.value.fields["url"]
    errors = svc.validate_notification_config({"on_failure": True, "webhook_url": "http://192.168.0.10/x"})
    assert "private address" in errors["webhook_url"]


def test_metadata_address_needs_an_exact_allowlist_entry(app):
    app.config["NOTIFY_ALLOWLIST"] = ["169.254.0.0/16", "127.0.0.1"]
    row = svc.send_test({"webhook_url": "http://169.254.169.254/latest/meta-data/"})
    assert row.status == "refused" and "cloud metadata" in row.error


def test_redirects_are_rechecked(app, receiver):
    receiver.script("/hop", [(302, "", {"Location": "http://169.254.169.254/latest/meta-data/"})])
    row = svc.send_test({"webhook_url": f"{receiver.url}/hop"})
    assert row.status == "refused" and "169.254.169.254" in row.error
    receiver.script("/moved", [(307, "", {"Location": "/new-home"})])
    row = svc.send_test({"webhook_url": f"{receiver.url}/moved"})
    assert row.status == "delivered"
    assert len(receiver.posts("/new-home")) == 1  # the same POST, re-sent to the checked target


def test_the_connection_itself_is_checked(app, receiver):
    """Even without the pre-check (a DNS answer that changed), the socket's peer is verified."""
    with guarded_session([]) as session, pytest.raises(Refused) as e:
        session.post(f"{receiver.url}/hook", data=b"{}", timeout=5)
    assert "127.0.0.1, a loopback address" in e.value.message
    assert receiver.posts() == []
    with guarded_session(["127.0.0.0/8"]) as session:
        assert session.post(f"{receiver.url}/hook", data=b"{}", timeout=5).status_code == 200


def test_secrets_are_masked_in_targets_errors_and_json(app, receiver):
    token = "tok0123456789abcdef0123"
    make_channel(name="dt", channel_type="dingtalk", url=f"{receiver.url}/robot/send?access_token={token}",
                 secret="SECsigning0123456789")
    receiver.script("/robot/send", [(500, f"internal error for token {token}")])
    row = svc.send_test({"channel": "dt"})
    assert row.status == "failed"
    for text in (row.error, row.target, json.dumps(svc.channel_json(svc.list_channels()[0]))):
        assert token not in text and "SECsigning0123456789" not in text
    assert "\u2022\u2022\u2022\u20220123" in row.error


def test_apprise_urls_are_validated_per_type(app):
    with pytest.raises(ValidationError) as e:
        svc.save_channel({"name": "s", "channel_type": "slack", "apprise_url": "json://127.0.0.1/x"})
    assert "slack://" in e.value.fields["apprise_url"]
    ch = svc.save_channel({"name": "s", "channel_type": "slack",
                           "apprise_url": "slack://T1234ABCD/B1234ABCD/abcdefghijklmnopqrstuvwx"})
    assert ch.config["apprise_url"].startswith("slack://")
    assert "abcdefghijklmnopqrstuvwx" not in json.dumps(svc.channel_json(ch))
