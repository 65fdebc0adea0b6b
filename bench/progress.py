"""Progress lines on stderr while the bench runs (the table and JSON come at the end)."""
from __future__ import annotations

import sys
import time

_T0 = time.monotonic()


def say(text: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - _T0:6.1f}s] {text}\n")
    sys.stderr.flush()
