"""Who may do what: login loading, bearer tokens for the API, role checks for every route."""
from __future__ import annotations

from functools import wraps
from typing import Callable

from flask import Flask, abort, g, jsonify, request
from flask_login import current_user

from .extensions import db, login_manager
from .models import User
from .models.user import ROLE_RANK, hash_token


def init_app(app: Flask) -> None:
    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        return db.session.get(User, int(user_id))

    @login_manager.request_loader
    def load_from_token(req) -> User | None:
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
