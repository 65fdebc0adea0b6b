"""Parameter validation at save time (the runners never discover bad parameters at run time)."""
from __future__ import annotations

import pytest

from webapp.runners.params import validate_parameters


@pytest.mark.parametrize("step_type,params", [
    ("shell", {"command": "make test", "env": {"A_1": "x"}}),
    ("http", {"url": "https://example.test/health"}),
    ("http", {"url": "http://h:8080/x", "method": "post", "expected_status": [200, 201], "timeout": 2.5,
              "headers": {"X-N": 1}, "body": {"a": 1}}),
    ("wait", {"seconds": 0}),
    ("approval", {}),
])
def test_valid(step_type, params):
    assert validate_parameters(step_type, params) == {}


@pytest.mark.parametrize("step_type,params,field", [
    ("shell", {}, "command"),
    ("shell", {"command": "x", "env": {"1BAD": "x"}}, "env"),
    ("shell", {"command": "x", "env": "A=1"}, "env"),
    ("http", {"url": "ftp://x"}, "url"),
    ("http", {"url": "http://x", "method": "FETCH"}, "method"),
    ("http", {"url": "http://x", "expected_status": [True]}, "expected_status"),
    ("http", {"url": "http://x", "expected_status": []}, "expected_status"),
    ("http", {"url": "http://x", "expected_status": [99]}, "expected_status"),
    ("http", {"url": "http://x", "timeout": True}, "timeout"),
    ("http", {"url": "http://x", "timeout": 0}, "timeout"),
    ("http", {"url": "http://x", "headers": {"A": {"nested": 1}}}, "headers"),
    ("wait", {}, "seconds"),
    ("wait", {"seconds": True}, "seconds"),
    ("ftp", {}, "step_type"),
])
def test_invalid_names_the_field(step_type, params, field):
    errors = validate_parameters(step_type, params)
    assert field in errors and errors[field]
