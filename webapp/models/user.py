from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import Boolean, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from .base import enum_check, utcnow

ROLES = ("admin", "maintainer", "approver", "viewer")
# Higher rank includes the rights of the lower ones (approver may decide, maintainer may edit/run).
ROLE_RANK = {"viewer": 0, "approver": 1, "maintainer": 2, "admin": 3}


def new_session_nonce() -> str:
    return secrets.token_hex(16)


def hash_token(token: str) -> str:
    # API tokens are random 32-byte values, so a fast hash is enough (no need for a slow KDF).
    return hashlib.sha256(token.encode()).hexdigest()


class User(UserMixin, db.Model):
    __tablename__ = "users"
    __table_args__ = (enum_check("role", ROLES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(120), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    api_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    api_token_created_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Part of every session and remember-me cookie (get_id): a new nonce ends every copy of them.
    session_nonce: Mapped[str] = mapped_column(String(32), default=new_session_nonce)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return bool(self.active)

    def get_id(self) -> str:
        # Flask-Login's "alternative token": the cookies name the user *and* the nonce, so they are
        # only as good as the nonce in the database (logout and password change replace it).
        return f"{self.id}:{self.session_nonce}"

    @classmethod
    def from_session_id(cls, session_id: str) -> "User | None":
        """The active user a session or remember-me cookie names, if its nonce is still current."""
        user_id, _, nonce = (session_id or "").partition(":")
        if not user_id.isdigit() or not nonce:
            return None   # also a cookie from before session nonces: signed in again
        user = db.session.get(cls, int(user_id))
        if user is None or not user.active or not secrets.compare_digest(user.session_nonce or "", nonce):
            return None
        return user

    def end_sessions(self) -> None:
        """Every session and remember-me cookie of this user stops working (the caller commits)."""
        self.session_nonce = new_session_nonce()

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def has_role(self, role: str) -> bool:
        return ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]

    def new_api_token(self) -> str:
        """Create a token; only its hash is stored, so the caller shows it once."""
        token = "af_" + secrets.token_urlsafe(32)
        self.api_token_hash = hash_token(token)
        self.api_token_created_at = utcnow()
        return token

    @property
    def label(self) -> str:
        return self.display_name or self.username

    def __repr__(self) -> str:
        return f"<User {self.username} ({self.role})>"
