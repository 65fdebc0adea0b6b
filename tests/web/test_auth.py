"""Accounts: login/logout, roles, CSRF, API tokens (issue: Foundation)."""
import re

from webapp.extensions import db
from webapp.models import User

from ..conftest import PASSWORD, AppClient


def test_login_page_renders_with_csrf_field(app):
    resp = app.test_client().get("/login")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'name="csrf_token"' in html and "Sign in" in html


def test_login_with_bad_password_shows_a_clear_error(app, users):
    c = AppClient(app.test_client())
    c.refresh_token()
    resp = c.c.post("/login", data={"username": "viewer1", "password": "nope", "csrf_token": c.token})
    assert resp.status_code == 422
    assert "Unknown username or wrong password." in resp.get_data(as_text=True)


def test_login_with_empty_fields_names_each_field(app, users):
    c = AppClient(app.test_client())
    c.refresh_token()
    html = c.c.post("/login", data={"username": "", "password": "", "csrf_token": c.token}).get_data(as_text=True)
    assert "Enter your username." in html and "Enter your password." in html


def test_login_without_csrf_token_is_refused(app, users):
    resp = app.test_client().post("/login", data={"username": "viewer1", "password": PASSWORD})
    assert resp.status_code == 400
    assert "expired" in resp.get_data(as_text=True)


def test_login_then_pipelines_then_logout(client_as):
    c = client_as("viewer")
    assert c.get("/pipelines/").status_code == 200
    resp = c.post("/logout")
    assert resp.status_code == 303
    assert c.get("/pipelines/").status_code == 302  # back to the login page


def test_inactive_user_cannot_log_in(app, users):
    users["viewer"].active = False
    db.session.commit()
    c = AppClient(app.test_client())
    c.refresh_token()
    resp = c.c.post("/login", data={"username": "viewer1", "password": PASSWORD, "csrf_token": c.token})
    assert resp.status_code == 422


def test_open_redirect_after_login_is_refused(app, users):
    c = AppClient(app.test_client())
    c.refresh_token()
    resp = c.c.post("/login?next=https://evil.example/x",
                    data={"username": "viewer1", "password": PASSWORD, "csrf_token": c.token})
    assert resp.status_code == 303 and "evil.example" not in resp.headers["Location"]


def test_session_cookie_flags(app, users):
    c = AppClient(app.test_client())
    c.refresh_token()
    resp = c.c.post("/login", data={"username": "viewer1", "password": PASSWORD, "csrf_token": c.token})
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if c.startswith("session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_api_token_is_shown_once_and_stored_hashed(client_as, app):
    c = client_as("maintainer")
    html = c.post("/account/token").get_data(as_text=True)
    token = re.search(r'<pre class="token" id="new-token">([^<]+)</pre>', html).group(1)
    user = db.session.execute(db.select(User).filter_by(username="maintainer1")).scalar_one()
    db.session.refresh(user)
    assert user.api_token_hash and token not in user.api_token_hash
    assert token not in c.get("/account").get_data(as_text=True)
    api = app.test_client()
    me = api.get("/api/v1/me/", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json["username"] == "maintainer1"


def test_create_user_validation_saves_nothing(app):
    from webapp.services.accounts import ValidationError, create_user

    try:
        create_user("x", "short", "wizard", email="not-an-email")
    except ValidationError as e:
        assert set(e.fields) == {"username", "password", "role", "email"}
    else:
        raise AssertionError("bad input was accepted")
    assert db.session.execute(db.select(User)).first() is None


def test_two_clients_in_one_test_keep_their_own_identity(client_as, api_as):
    """Guards the harness: a viewer is not mistaken for the maintainer who made the previous request."""
    maintainer, viewer = client_as("maintainer"), client_as("viewer")
    assert maintainer.get("/account").status_code == 200
    assert "Viewer One" in viewer.get("/account").get_data(as_text=True)
    m_api, v_api = api_as("maintainer"), api_as("viewer")
    assert m_api.get("/api/v1/me/").json["username"] == "maintainer1"
    assert v_api.get("/api/v1/me/").json["username"] == "viewer1"
    assert v_api.post("/api/v1/pipelines/", json={"name": "x", "steps": []}).status_code == 403


def test_login_page_says_how_long_keep_me_signed_in_lasts(app):
    html = app.test_client().get("/login").get_data(as_text=True)
    assert "Keep me signed in" in html and "(14 days, until you sign out)" in html


def test_account_page_has_a_password_form(client_as):
    html = client_as("viewer").get("/account").get_data(as_text=True)
    form = html[html.index('action="/account/password"'):]
    form = form[:form.index("</form>")]
    assert 'name="csrf_token"' in form
    for name in ("current_password", "new_password", "confirm_password"):
        assert f'name="{name}" type="password"' in form


def test_logout_needs_the_csrf_token_and_keeps_the_session_without_it(client_as):
    c = client_as("viewer")
    assert c.c.post("/logout").status_code == 400
    assert c.get("/account").status_code == 200
