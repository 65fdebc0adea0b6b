"""The generated OpenAPI document (api/spec.py); this name is where older callers import it from."""
from .spec import document  # noqa: F401
