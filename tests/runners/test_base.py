"""Masking and the capped log buffer: no secret survives a cut, the tail is kept, the cut is counted."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webapp.runners.base import LogBuffer, mask, stop_status


def test_mask_replaces_every_secret_longest_first():
    assert mask("a=abc123 b=abc123xyz", ["abc123", "abc123xyz"]) == "a=*** b=***"
    assert mask("nothing here", ["", "  ", None]) == "nothing here"
    assert mask("multi\nline secret", ["multi\nline"]) == "*** secret"


def test_small_logs_are_returned_as_they_are():
    log = LogBuffer(1024, [])
    log.append(b"hello ")
    log.append("w\u00f6rld\n")
    assert log.text() == "hello w\u00f6rld\n"


def test_line_adds_a_newline_before_when_needed():
    log = LogBuffer(1024, [])
    log.append("partial")
    log.line("[ansflow] note")
    log.line("next")
    assert log.text() == "partial\n[ansflow] note\nnext\n"


def test_cap_keeps_the_tail_and_counts_exactly():
    log = LogBuffer(300, [])
    data = "".join(f"line {i}\n" for i in range(1000))
    for i in range(0, len(data), 37):
        log.append(data[i:i + 37])
    text = log.text()
    assert len(text.encode()) <= 300
    marker, tail = text.split("\n", 1)
    assert marker == f"[... {len(data) - len(tail)} bytes cut ...]"
    assert data.endswith(tail) and tail.endswith("line 999\n")


def test_cap_never_splits_a_utf8_character():
    log = LogBuffer(300, [])
    log.append("\u00e9" * 1000)
    text = log.text()
    assert "\ufffd" not in text and text.endswith("\u00e9")


SECRET = "S3cr3t-V4lue"


@settings(max_examples=200, deadline=None)
@given(prefix=st.integers(0, 900), gap=st.integers(0, 300), chunk=st.integers(1, 97), final=st.booleans())
def test_no_piece_of_a_secret_survives_cuts_or_chunking(prefix, gap, chunk, final):
    # Many secrets after the first one make the masked text much shorter than the raw bytes kept,
    # so the raw cut (which can land inside a secret) is not always hidden by the final cap.
    data = "p" * prefix + SECRET + "g" * gap + (SECRET + "\n") * 40 + "q" * gap + SECRET[:7]
    log = LogBuffer(256, [SECRET])
    for i in range(0, len(data), chunk):
        log.append(data[i:i + chunk])
    text = log.text(final=final)
    assert len(text.encode()) <= 256
    if final:   # the process really printed only a partial secret last: the final log shows what it printed
        assert text.endswith(SECRET[:7])
        text = text[: -7]
    else:
        assert text.endswith("***")
    for k in range(4, len(SECRET) + 1):
        for start in range(len(SECRET) - k + 1):
            piece = SECRET[start:start + k]
            assert piece not in text, (piece, text[:60])


def test_streaming_text_hides_a_secret_whose_end_is_not_read_yet():
    log = LogBuffer(1024, ["password123"])
    log.append("login with passw")
    assert log.text(final=False) == "login with ***"
    log.append("ord123 ok\n")
    assert log.text(final=False) == "login with *** ok\n"


def test_version_tells_whether_anything_changed():
    log = LogBuffer(1024, [])
    v = log.version
    log.append(b"")
    assert log.version == v
    log.append(b"x")
    assert log.version > v


@pytest.mark.parametrize("reason,expected", [(None, None), ("", None), ("cancelled", ("cancelled", "cancelled")),
                                             ("timed_out", ("timed_out", "timeout")),
                                             ("something-else", ("cancelled", "cancelled"))])
def test_stop_status(reason, expected):
    assert stop_status(reason) == expected
