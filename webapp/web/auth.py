"""Login, logout, password change, the personal API token, and the page for a refused CSRF token."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..extensions import db
from ..services.accounts import ValidationError, authenticate, change_password, end_all_sessions
from .render import is_partial_request, render

bp = Blueprint("auth", __name__)

CSRF_EXPIRED = "The CSRF token has expired."   # Flask-WTF's description of that one failure


def _safe_next(target: str | None) -> str:
    # Only same-site paths: an open redirect after login is a phishing aid.
    if target and urlsplit(target).netloc == "" and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("pages.home")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("pages.home"))
    errors: dict[str, str] = {}
    username = ""
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        if not username:
            errors["username"] = "Enter your username."
        if not password:
            errors["password"] = "Enter your password."
        if not errors:
            user = authenticate(username, password)
            if user is None:
                errors["form"] = "Unknown username or wrong password."
            else:
                login_user(user, remember=bool(request.form.get("remember")))
                return redirect(_safe_next(request.args.get("next")), code=303)
    status = 422 if errors else 200
    return render("auth/login.html", errors=errors, username=username, status=status)


@bp.route("/logout", methods=["POST"])
def logout():
    if current_user.is_authenticated:
        # Ends every copy of the session and the remember-me cookie, not just this browser's.
        end_all_sessions(current_user._get_current_object())
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"), code=303)


@bp.route("/account", methods=["GET"])
@login_required
def account():
    return render("auth/account.html", new_token=None, errors={})


@bp.route("/account/password", methods=["POST"])
@login_required
def password():
    user = current_user._get_current_object()
    try:
        change_password(user, request.form.get("current_password", ""), request.form.get("new_password", ""),
                        request.form.get("confirm_password", ""))
    except ValidationError as exc:
        return render("auth/account.html", new_token=None, errors=exc.fields, status=422)
    # The nonce changed: sign this browser in again under it (the old cookies, copies included, are dead).
    remembered = current_app.config.get("REMEMBER_COOKIE_NAME", "remember_token") in request.cookies
    login_user(user, remember=remembered)
    flash("Your password was changed. Every other browser signed in as you is signed out.", "success")
    return redirect(url_for("auth.account"), code=303)


@bp.route("/account/token", methods=["POST"])
@login_required
def new_token():
    token = current_user.new_api_token()
    db.session.commit()
    # Shown once: only its hash is kept.
    return render("auth/account.html", new_token=token, errors={})


def csrf_failure(error):
    """A refused CSRF token: say whether the page was open too long (the token's lifetime,
    WTF_CSRF_TIME_LIMIT) or the form did not come from AnsFlow."""
    if error.description == CSRF_EXPIRED:
        hours = (current_app.config.get("WTF_CSRF_TIME_LIMIT") or 0) / 3600
        message = (f"This page was open for more than {hours:g} hours, so its form expired. "
                   "Reload the page and try again.")
    else:
        message = "Your form expired or was not sent from AnsFlow. Reload the page and try again."
    if request.path.startswith("/api/") or is_partial_request():
        # HTMX shows a JSON error's message in its toast (static/js/app.js)
        return jsonify({"error": message, "fields": {}}), 400
    return render_template("error.html", code=400, message=message), 400
