"""The demo webhook receiver takes posts from anyone into a list every viewer sees (issue 13): it
exists only in dev mode (`flask dev`, or ANSFLOW_DEMO_RECEIVER=1); anywhere else its routes are 404."""
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from webapp.config import Config
from webapp.embedded_redis import free_port
from webapp.services import notifications as svc

from ..conftest import ROOT, settings_env, wait_for

POST = json.dumps({"event": "failed", "subject": "planted by a stranger"}).encode()


def test_a_normal_app_has_no_demo_receiver(app, client_as):
    assert app.config["DEMO_RECEIVER"] is False
    assert app.test_client().post("/notifications/demo-webhook", data=POST).status_code == 404
    assert svc.demo_webhook_posts() == []
    viewer, admin = client_as("viewer"), client_as("admin")
    assert viewer.get("/notifications/demo-webhook").status_code == 404
    assert admin.post("/notifications/demo-webhook/clear").status_code == 404
    assert "Demo webhook receiver" not in viewer.get("/notifications/deliveries").get_data(as_text=True)


def test_in_dev_mode_the_receiver_takes_posts_and_shows_them(app, client_as):
    app.config["DEMO_RECEIVER"] = True
    resp = app.test_client().post("/notifications/demo-webhook", data=POST)
    assert resp.status_code == 200 and resp.json["signature"] == "unsigned"
    viewer = client_as("viewer")
    assert "planted by a stranger" in viewer.get("/notifications/demo-webhook").get_data(as_text=True)
    assert "Demo webhook receiver" in viewer.get("/notifications/deliveries").get_data(as_text=True)


def test_the_setting_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANSFLOW_DEMO_RECEIVER", "1")
    assert Config().DEMO_RECEIVER is True


def test_flask_dev_switches_the_receiver_on(app, app_settings, tmp_path):
    env = settings_env(app_settings)
    env.pop("ANSFLOW_DEMO_RECEIVER", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}/notifications/demo-webhook"
    log = open(tmp_path / "dev.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def post():
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=POST, method="POST"), timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None   # not serving yet

    try:
        status, body = wait_for(post, timeout=60, message="flask dev to serve")
        assert status == 200 and body["signature"] == "unsigned", (tmp_path / "dev.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
