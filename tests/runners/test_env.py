"""env.build_env: what a step sees, and what it never sees."""
from __future__ import annotations

from pathlib import Path

from webapp.runners.env import build_env


def env(**kw):
    args = dict(execution_id="ex-9", attempt_number=2, step_name="deploy", variables={}, trigger={}, outputs={},
                output_file=None)
    args.update(kw)
    return build_env(**args)


def test_ansflow_variables(tmp_path):
    out = tmp_path / "o.env"
    e = env(output_file=out)
    assert e["ANSFLOW_EXECUTION_ID"] == "ex-9" and e["ANSFLOW_ATTEMPT"] == "2" and e["ANSFLOW_STEP"] == "deploy"
    assert e["ANSFLOW_OUTPUT"] == str(out) and e["ANSFLOW_WORKSPACE"] == str(tmp_path)
    assert env(workspace=Path("/w"))["ANSFLOW_WORKSPACE"] == "/w"
    assert "ANSFLOW_OUTPUT" not in env()


def test_starts_from_a_minimal_base_not_the_worker_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h/db")
    monkeypatch.setenv("SECRET_KEY", "k")
    monkeypatch.setenv("REDIS_URL", "redis://x")
    e = env()
    assert {"PATH", "HOME", "LANG", "TMPDIR"} <= set(e)
    assert not {"DATABASE_URL", "SECRET_KEY", "REDIS_URL"} & set(e)


def test_variables_as_uppercase_names_and_ansflow_var():
    e = env(variables={"env": "prod", "replicas": 3, "flags": {"a": [1, True]}, "my-var": "x", "9lives": "y"})
    assert e["ENV"] == "prod" and e["ANSFLOW_VAR_ENV"] == "prod"
    assert e["REPLICAS"] == "3" and e["FLAGS"] == '{"a": [1, true]}'
    assert "MY-VAR" not in e and e["ANSFLOW_VAR_MY_VAR"] == "x"        # not an identifier: prefixed form only
    assert "9LIVES" not in e and e["ANSFLOW_VAR_9LIVES"] == "y"


def test_variables_cannot_hijack_protected_names():
    e = env(variables={"path": "/evil", "bash_env": "/tmp/x.sh", "ld_preload": "/x.so", "ansflow_output": "/etc/x",
                       "home": "/h", "trigger_ref": "fake", "Shellopts": "xtrace"})
    assert e["PATH"] != "/evil" and "BASH_ENV" not in e and "LD_PRELOAD" not in e and "SHELLOPTS" not in e
    assert "ANSFLOW_OUTPUT" not in e and e["HOME"] != "/h" and "TRIGGER_REF" not in e
    assert e["ANSFLOW_VAR_PATH"] == "/evil" and e["ANSFLOW_VAR_BASH_ENV"] == "/tmp/x.sh"


def test_trigger_and_step_outputs():
    e = env(trigger={"ref": "main", "commit.sha": "abc", "payload": {"n": 1}, "none": None},
            outputs={"build-image": {"tag": "v1", "DIGEST": "sha256:x"}, "Unit Tests": {"passed": 12}})
    assert e["TRIGGER_REF"] == "main" and e["TRIGGER_COMMIT_SHA"] == "abc" and e["TRIGGER_PAYLOAD"] == '{"n": 1}'
    assert e["TRIGGER_NONE"] == "null"
    assert e["STEP_BUILD_IMAGE_tag"] == e["STEP_BUILD_IMAGE_TAG"] == "v1"
    assert e["STEP_BUILD_IMAGE_DIGEST"] == "sha256:x"
    assert e["STEP_UNIT_TESTS_passed"] == "12"


def test_nul_characters_are_dropped_so_the_process_can_start():
    e = env(variables={"v": "a\x00b"}, trigger={"t": "\x00"})
    assert e["V"] == "ab" and e["TRIGGER_T"] == ""
    assert all("\x00" not in k and "\x00" not in v for k, v in e.items())


def test_only_allow_listed_worker_variables_pass(monkeypatch):
    monkeypatch.setenv("PATH", "/work/main/.venv/bin:/usr/bin")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    monkeypatch.setenv("UNLISTED", "x")
    monkeypatch.setenv("ANSFLOW_STEP_ENV", "HTTP_PROXY, SMTP_PASSWORD,SECRET_KEY,ANSFLOW_QUEUE_PREFIX,not-a-name")
    monkeypatch.setenv("SECRET_KEY", "k")
    e = env()
    assert e["HTTP_PROXY"] == "http://proxy:3128"
    assert not {"SMTP_PASSWORD", "SECRET_KEY", "ANSFLOW_QUEUE_PREFIX", "UNLISTED"} & set(e)   # server settings never
    assert e["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"     # not the worker's
