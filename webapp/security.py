"""Who may do what (login loading, bearer tokens for the API, role checks for every route), and the
security headers of every response."""
from __future__ import annotations

from functools import wraps
from typing import Callable

from flask import Flask, abort, g, jsonify, request
from flask_login import current_user

from .extensions import db, login_manager
from .models import User
from .models.user import ROLE_RANK, hash_token


# Scripts only from our own files (htmx and static/js: no inline code, no eval, so an injected
# <script> or on* attribute does nothing); inline style attributes stay (the Gantt bars and the
# graph's SVG are positioned and coloured with them). No framing (the Approve button).
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'", "img-src 'self' data:",
    "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def add_security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        return User.from_session_id(user_id)

    @login_manager.request_loader
    def load_from_token(req) -> User | None:
        return token_user(req)


def token_user(req) -> User | None:
    """The active user whose API token is in `Authorization: Bearer`, or None."""
    header = req.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    token = header[len("Bearer "):].strip()
    if not token:
        return None
    user = db.session.execute(
        db.select(User).filter_by(api_token_hash=hash_token(token))
    ).scalar_one_or_none()
    if user is not None and user.active:
        g.token_auth = True
        return user
    return None


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def require_token_for_writes():
    """Before every API request: a write is authenticated by its bearer token alone.

    A browser sends its session cookie with any form another site makes it submit (SameSite=Lax
    does not stop a same-site origin, e.g. another port of this host), and the API skips CSRF; so
    on the API the session may read but never write. When a request carries both, the token is
    who acts (Flask-Login would otherwise pick the session's user and never look at the header).
    """
    if request.method in SAFE_METHODS:
        return None
    user = token_user(request)
    if user is None:
        resp = jsonify({"error": "authentication required: API writes need 'Authorization: Bearer <token>' "
                                 "(a browser session can only read the API)", "fields": {}})
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = "Bearer"
        return resp
    login_manager._update_request_context_with_user(user)  # this request only; nothing goes into the session
    return None


def has_role(user, role: str) -> bool:
    return bool(user and user.is_authenticated and ROLE_RANK.get(user.role, -1) >= ROLE_RANK[role])


def role_required(role: str) -> Callable:
    """Page routes: anonymous -> login page; signed in without the role -> 403."""
    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not has_role(current_user, role):
                abort(403)
            return view(*args, **kwargs)
        return wrapped
    return decorator


def api_role_required(role: str) -> Callable:
    """JSON routes: 401 without credentials, 403 without the role, always as {error, fields}."""
    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                resp = jsonify({"error": "authentication required: send 'Authorization: Bearer <token>'", "fields": {}})
                resp.status_code = 401
                resp.headers["WWW-Authenticate"] = "Bearer"
                return resp
            if not has_role(current_user, role):
                return jsonify({"error": f"forbidden: this needs the {role} role", "fields": {}}), 403
            return view(*args, **kwargs)
        return wrapped
    return decorator


def is_api_request() -> bool:
    return request.path.startswith("/api/")
