"""Sessions end when their user says so (issue 13): logout and a password change end every copy of
the session cookie and of the remember-me cookie; CSRF tokens have a lifetime and say so when they
expire; an unknown or inactive username costs the same single password check as a known one."""
import re
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from webapp.config import Config
from webapp.extensions import db
from webapp.models import User
from webapp.services import accounts

from ..conftest import PASSWORD, AppClient

NEW_PASSWORD = "a-brand-new-password"


def _cookie(client, name: str) -> str:
    cookie = client.get_cookie(name)
    assert cookie is not None, f"no {name} cookie"
    return cookie.value


def _browser_with(app, **cookies):
    """Another browser that holds copies of someone's cookies (and nothing else)."""
    other = app.test_client()
    for name, value in cookies.items():
        other.set_cookie(name, value)
    return other


def _signed_in(client) -> bool:
    resp = client.get("/account")
    if resp.status_code == 302:
        assert "/login" in resp.headers["Location"]
        return False
    assert resp.status_code == 200
    return True


def _user(username: str) -> User:
    user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one()
    db.session.refresh(user)
    return user


# --------------------------------------------------------------------------- logout

def test_a_copied_session_cookie_stops_working_after_logout(app, client_as):
    victim = client_as("viewer")
    thief = _browser_with(app, session=_cookie(victim.c, "session"))
    assert _signed_in(thief), "the copy should work before logout (else this test shows nothing)"
    assert thief.get("/api/v1/me/").json["username"] == "viewer1"

    assert victim.post("/logout").status_code == 303
    assert not _signed_in(thief)
    assert thief.get("/api/v1/me/").status_code == 401
    assert not _signed_in(victim.c)


def test_logout_signs_out_the_users_other_browsers_too(client_as):
    laptop, phone, someone_else = client_as("viewer"), client_as("viewer"), client_as("maintainer")
    laptop.post("/logout")
    assert not _signed_in(phone.c)
    assert _signed_in(someone_else.c)


def test_the_remember_me_cookie_lasts_14_days_and_is_revoked_by_logout(app, users):
    c = AppClient(app.test_client())
    c.refresh_token()
    resp = c.c.post("/login", data={"username": "viewer1", "password": PASSWORD, "remember": "1",
                                    "csrf_token": c.token})
    assert resp.status_code == 303
    header = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("remember_token="))
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", header).group(1))
    days = (expires - datetime.now(timezone.utc)).total_seconds() / 86400
    assert 13.9 < days <= 14.01 and "HttpOnly" in header
    remembered = _cookie(c.c, "remember_token")

    returning = _browser_with(app, remember_token=remembered)   # no session: only the remember-me cookie
    assert _signed_in(returning), "the remember-me cookie should sign in before logout"

    c.refresh_token("/account")
    c.post("/logout")
    assert not _signed_in(_browser_with(app, remember_token=remembered))
    assert not _signed_in(returning)   # and the session it had made from the cookie ended too


def test_cookies_naming_a_user_without_the_current_nonce_are_refused(app, users):
    """A session from before nonces existed (the id alone) or with an old nonce signs nobody in,
    although it is signed with the server's key."""
    viewer = users["viewer"]

    def session_naming(value: str):
        browser = AppClient(app.test_client()).login("viewer1").c   # a real session (its strong-protection id too)
        with browser.session_transaction() as sess:
            sess["_user_id"] = value
        return browser

    for value in (str(viewer.id), f"{viewer.id}:", f"{viewer.id}:{'0' * 32}", f"x:{viewer.session_nonce}"):
        assert not _signed_in(session_naming(value)), value
    assert _signed_in(session_naming(f"{viewer.id}:{viewer.session_nonce}")), "the rewrite itself should keep a good session"


def test_a_deactivated_users_sessions_end(client_as):
    viewer = client_as("viewer")
    accounts.deactivate_user("viewer1")
    assert not _signed_in(viewer.c)


# --------------------------------------------------------------------------- password change

def _change(client: AppClient, current=PASSWORD, new=NEW_PASSWORD, confirm=None):
    return client.post("/account/password", data={"current_password": current, "new_password": new,
                                                  "confirm_password": new if confirm is None else confirm})


def test_a_password_change_ends_every_other_session_and_keeps_this_one(app, client_as):
    me, other_browser = client_as("viewer"), client_as("viewer")
    stolen = _browser_with(app, session=_cookie(me.c, "session"))
    assert _signed_in(stolen)

    resp = _change(me)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/account")
    page = me.get("/account").get_data(as_text=True)
    assert "Your password was changed" in page
    assert not _signed_in(stolen)
    assert not _signed_in(other_browser.c)

    fresh = AppClient(app.test_client())
    fresh.refresh_token()
    old = fresh.c.post("/login", data={"username": "viewer1", "password": PASSWORD, "csrf_token": fresh.token})
    assert old.status_code == 422
    assert _signed_in(AppClient(app.test_client()).login("viewer1", NEW_PASSWORD).c)


def test_a_password_change_keeps_a_remembered_browser_remembered_under_the_new_nonce(app, users):
    c = AppClient(app.test_client())
    c.refresh_token()
    c.c.post("/login", data={"username": "viewer1", "password": PASSWORD, "remember": "1", "csrf_token": c.token})
    old_remember = _cookie(c.c, "remember_token")
    c.refresh_token("/account")
    assert _change(c).status_code == 303
    new_remember = _cookie(c.c, "remember_token")
    assert new_remember != old_remember
    assert not _signed_in(_browser_with(app, remember_token=old_remember))
    assert _signed_in(_browser_with(app, remember_token=new_remember))


def test_a_refused_password_change_changes_nothing(client_as):
    me, other_browser = client_as("viewer"), client_as("viewer")
    before = _user("viewer1")
    hash_before, nonce_before = before.password_hash, before.session_nonce
    cases = [
        ({"current": "not-my-password"}, "That is not your current password."),
        ({"new": "short"}, "The password needs at least 8 characters."),
        ({"confirm": "something-else-entirely"}, "The two new passwords differ."),
    ]
    for kwargs, message in cases:
        resp = _change(me, **kwargs)
        assert resp.status_code == 422, kwargs
        assert message in resp.get_data(as_text=True)
    after = _user("viewer1")
    assert (after.password_hash, after.session_nonce) == (hash_before, nonce_before)
    assert _signed_in(other_browser.c) and _signed_in(me.c)


def test_a_password_change_needs_a_session_and_a_csrf_token(app, client_as):
    form = {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    anonymous = AppClient(app.test_client())
    anonymous.refresh_token()
    resp = anonymous.post("/account/password", data=form)
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    me = client_as("viewer")
    hash_before = _user("viewer1").password_hash
    assert me.c.post("/account/password", data=form).status_code == 400   # no token
    assert _user("viewer1").password_hash == hash_before and _signed_in(me.c)


# --------------------------------------------------------------------------- CSRF lifetime

def _token_signed_ago(app, client, seconds: float) -> str:
    """The client's own CSRF token as a page rendered `seconds` ago would carry it."""
    with client.session_transaction() as sess:
        raw = sess["csrf_token"]

    class Past(TimestampSigner):
        def get_timestamp(self):
            return int(time.time() - seconds)

    return URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token", signer=Past).dumps(raw)


def test_csrf_tokens_live_a_working_day(app, client_as):
    assert app.config["WTF_CSRF_TIME_LIMIT"] == 12 * 3600
    me = client_as("maintainer")

    stale = _token_signed_ago(app, me.c, 13 * 3600)
    resp = me.c.post("/account/token", data={"csrf_token": stale})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "This page was open for more than 12 hours, so its form expired. Reload the page" in html
    assert _user("maintainer1").api_token_hash is None

    htmx = me.c.post("/account/token", headers={"X-CSRFToken": stale, "HX-Request": "true"})
    assert htmx.status_code == 400 and "open for more than 12 hours" in htmx.json["error"]
    assert _user("maintainer1").api_token_hash is None

    recent = _token_signed_ago(app, me.c, 11 * 3600)
    assert me.c.post("/account/token", data={"csrf_token": recent}).status_code == 200
    assert _user("maintainer1").api_token_hash is not None


def test_a_forged_csrf_token_is_not_called_expired(app, client_as):
    me = client_as("maintainer")
    resp = me.c.post("/account/token", data={"csrf_token": "forged"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "was not sent from AnsFlow" in html and "open for more than" not in html


def test_session_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANSFLOW_REMEMBER_DAYS", "3")
    monkeypatch.setenv("ANSFLOW_CSRF_TIME_LIMIT_SECONDS", "600")
    cfg = Config()
    assert cfg.REMEMBER_COOKIE_DURATION.days == 3 and cfg.WTF_CSRF_TIME_LIMIT == 600
    monkeypatch.setenv("ANSFLOW_CSRF_TIME_LIMIT_SECONDS", "0")
    assert Config().WTF_CSRF_TIME_LIMIT is None


# --------------------------------------------------------------------------- login timing

def test_unknown_and_inactive_usernames_cost_one_password_check_like_a_known_one(app, users, monkeypatch):
    checked: list[str] = []
    real = accounts.verify_password

    def counting(password_hash, password):
        checked.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(accounts, "verify_password", counting)
    users["approver3"].active = False
    db.session.commit()

    assert accounts.authenticate("nobody-by-this-name", PASSWORD) is None
    assert accounts.authenticate("approver3", PASSWORD) is None   # the right password, but inactive
    assert accounts.authenticate("viewer1", "wrong-password") is None
    assert accounts.authenticate("viewer1", PASSWORD).username == "viewer1"
    assert len(checked) == 4

    real_hash = users["viewer"].password_hash
    method = real_hash.split("$", 1)[0]   # e.g. scrypt:32768:8:1: the same method and cost, so the same time
    assert all(h.split("$", 1)[0] == method for h in checked)
    assert checked[0] not in (u.password_hash for u in users.values())

    # and through the login form
    checked.clear()
    c = AppClient(app.test_client())
    c.refresh_token()
    resp = c.c.post("/login", data={"username": "nobody-by-this-name", "password": "x" * 10, "csrf_token": c.token})
    assert resp.status_code == 422 and len(checked) == 1
