"""Login, logout and the personal API token."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..extensions import db
from ..services.accounts import authenticate
from .render import render

bp = Blueprint("auth", __name__)


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
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"), code=303)


@bp.route("/account", methods=["GET"])
@login_required
def account():
    return render("auth/account.html", new_token=None)


@bp.route("/account/token", methods=["POST"])
@login_required
def new_token():
    token = current_user.new_api_token()
    db.session.commit()
    # Shown once: only its hash is kept.
    return render("auth/account.html", new_token=token)
