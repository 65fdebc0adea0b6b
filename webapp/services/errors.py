"""The errors services raise: each carries the HTTP status the API answers with (api/errors.py maps
them in one handler) and `fields`, the field -> message map a form or a JSON client shows."""
from __future__ import annotations


class ServiceError(Exception):
    status = 400

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class NotFound(ServiceError):
    status = 404


class Forbidden(ServiceError):
    status = 403


class Conflict(ServiceError):
    status = 409


class ValidationError(ServiceError, ValueError):
    """Bad input (HTTP 422); a ValueError too, as callers that predate the hierarchy catch it."""
    status = 422
