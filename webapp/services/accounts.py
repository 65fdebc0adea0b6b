"""Accounts: creation with validation, authentication, password change and signing out everywhere."""
from __future__ import annotations

import re
import secrets
from functools import cache

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..models import ROLES, User
from .errors import ValidationError as _ServiceValidationError

USERNAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{2,64}$")
MIN_PASSWORD = 8


class ValidationError(_ServiceValidationError):
    """Bad input: `fields` maps each field to a message for the form or the JSON error (HTTP 422)."""


def validate_user(username: str, password: str, role: str, email: str = "") -> dict[str, str]:
    errors: dict[str, str] = {}
    if not USERNAME_RE.match(username or ""):
        errors["username"] = "Use 2-64 letters, digits, dots, dashes or underscores."
    elif db.session.execute(select(User.id).filter_by(username=username)).first():
        errors["username"] = f"The username '{username}' is taken."
    if len(password or "") < MIN_PASSWORD:
        errors["password"] = f"The password needs at least {MIN_PASSWORD} characters."
    if role not in ROLES:
        errors["role"] = f"Role must be one of: {', '.join(ROLES)}."
    if email and not re.match(r"^[^@\s]+@[^@\s]+$", email):
        errors["email"] = "That email address does not look right."
    return errors


def create_user(username: str, password: str, role: str = "viewer", display_name: str = "", email: str = "") -> User:
    errors = validate_user(username, password, role, email)
    if errors:
        raise ValidationError("The user was not created.", errors)
    user = User(username=username, role=role, display_name=display_name or username, email=email, active=True)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    return user


def verify_password(password_hash: str, password: str) -> bool:
    """The one place a password is checked against a hash (werkzeug's slow KDF)."""
    return check_password_hash(password_hash, password)


@cache
def _dummy_hash() -> str:
    # Made like a real user's hash (same method and cost), so checking it takes as long.
    return generate_password_hash(secrets.token_urlsafe(16))


def authenticate(username: str, password: str) -> User | None:
    """The active user with this password, or None. Exactly one hash check either way: an unknown
    or inactive username costs as long as a wrong password, so timing tells no usernames."""
    user = db.session.execute(select(User).filter_by(username=username or "")).scalar_one_or_none()
    usable = user is not None and user.active
    ok = verify_password(user.password_hash if usable else _dummy_hash(), password or "")
    return user if usable and ok else None


def change_password(user: User, current: str, new: str, confirm: str) -> None:
    """Set a new password after checking the current one; every other session and remember-me
    cookie of the user ends (the caller signs the current browser in again)."""
    errors: dict[str, str] = {}
    if not verify_password(user.password_hash, current or ""):
        errors["current_password"] = "That is not your current password."
    if len(new or "") < MIN_PASSWORD:
        errors["new_password"] = f"The password needs at least {MIN_PASSWORD} characters."
    elif new != confirm:
        errors["confirm_password"] = "The two new passwords differ."
    if errors:
        raise ValidationError("The password was not changed.", errors)
    user.set_password(new)
    user.end_sessions()
    db.session.commit()


def end_all_sessions(user: User) -> None:
    """Sign the user out everywhere: every copy of every session and remember-me cookie stops working."""
    user.end_sessions()
    db.session.commit()


class StillNeeded(ValidationError):
    """Deactivating this user would leave gates unable to reach their quorum (the CLI's --force overrides)."""

    def __init__(self, username: str, gates: list[str]):
        listing = "; ".join(gates)
        super().__init__(f"{username} is needed to approve: {listing}. Change those approver lists first, "
                         f"or deactivate anyway with --force (admins can still decide those gates).",
                         {"username": listing})
        self.gates = gates


def deactivate_user(username: str, force: bool = False) -> list[str]:
    """Deactivate an account: no sign-in, no API token, no approvals; its history keeps its name
    (AnsFlow never deletes users, as GitLab's admins deactivate or block rather than delete).

    Refused (StillNeeded, naming each pipeline and step) when some saved gate or pending request
    could no longer reach its quorum without this user, unless `force`. Returns those gates."""
    from .approver_check import gates_relying_on

    user = db.session.execute(select(User).filter_by(username=username or "")).scalar_one_or_none()
    if user is None:
        raise ValidationError("No such user.", {"username": f"There is no user named '{username}'."})
    if not user.active:
        return []
    gates = gates_relying_on(user.username)
    if gates and not force:
        db.session.rollback()
        raise StillNeeded(user.username, gates)
    user.active = False
    db.session.commit()
    return gates
