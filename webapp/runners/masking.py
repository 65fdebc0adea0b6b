"""Secret masking: every spelling of a secret that commonly ends up in a log, in one regex.

A secret is masked in these forms: literal; JSON-escaped (ASCII and not, and with `\\/`);
URL-encoded (`quote` with and without `/` kept, `quote_plus`); base64 (standard and URL-safe,
with and without padding, and the part of it that is the same wherever the secret sits inside
a longer encoded text, e.g. `Authorization: Basic base64(user:secret)`); hex (lower and upper
case). Not masked: other transformations (reversed, split over lines, a prefix or part of it,
base32, compressed or encrypted, values computed from it) - no masker can find those.

Speed matters (the shell runner masks its whole log every half second while a step streams):
the forms of a set of secrets become one compiled regex, built once per set and cached.
"""
from __future__ import annotations

import base64
import json
import re
from functools import lru_cache
from typing import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LENGTH = 8      # shorter secrets are refused when an execution starts (they'd mask too much)
_MIN_CORE_BYTES = 6        # a base64 fragment of fewer bytes would match unrelated text


def secret_values(secrets: Iterable | None) -> list[str]:
    """Distinct non-blank secret values, longest first (so a secret containing another is masked whole)."""
    values = {str(s) for s in (secrets or []) if s is not None and str(s).strip()}
    return sorted(values, key=len, reverse=True)


def _base64_forms(raw: bytes) -> set[str]:
    forms = set()
    whole = base64.b64encode(raw).decode("ascii")
    forms |= {whole, whole.rstrip("=")}
    # Inside a longer text the secret starts at some offset mod 3: from its first byte on a
    # 3-byte boundary, its whole 3-byte groups encode the same wherever it sits.
    for start in range(3):
        n = (len(raw) - start) // 3 * 3
        if n >= _MIN_CORE_BYTES:
            forms.add(base64.b64encode(raw[start:start + n]).decode("ascii"))
    return forms | {f.replace("+", "-").replace("/", "_") for f in forms}


def secret_forms(secret: str) -> set[str]:
    """The spellings of `secret` that are masked (see the module docstring). A secret shorter
    than MIN_SECRET_LENGTH is masked literally only: its encodings would match ordinary text."""
    forms = {secret}
    if len(secret) < MIN_SECRET_LENGTH:
        return forms
    raw = secret.encode("utf-8")
    escaped = json.dumps(secret)[1:-1]
    forms |= {escaped, escaped.replace("/", "\\/"), json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms |= {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    forms |= _base64_forms(raw)
    forms |= {raw.hex(), raw.hex().upper()}
    return forms


@lru_cache(maxsize=256)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern | None:
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret)
    return re.compile(_trie_regex(forms)) if forms else None


def _trie_regex(words: set[str]) -> str:
    """One alternation shaped as a trie (forms sharing a prefix share its test), about a third
    faster than a flat alternation; greedy, so where forms overlap the longest one is masked
    (no tail of a longer spelling left visible next to the mask)."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        kids = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not kids:
            return ""
        body = kids[0] if len(kids) == 1 else "(?:" + "|".join(kids) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


def longest_form(secrets: Iterable[str]) -> int:
    return max((len(f.encode("utf-8")) for s in secret_values(secrets) for f in secret_forms(s)), default=0)


def mask(text: str, secrets: Iterable | None, replacement: str = MASK) -> str:
    """Replace every form of every secret value with `replacement`."""
    if not text:
        return text
    values = tuple(secret_values(secrets))
    pattern = _pattern(values) if values else None
    return pattern.sub(replacement, text) if pattern is not None else text


def short_secrets(values: dict[str, object]) -> dict[str, str]:
    """Field errors for secret values shorter than MIN_SECRET_LENGTH (name -> message)."""
    return {name: f"A secret must have at least {MIN_SECRET_LENGTH} characters (masking a shorter one would "
                  f"hide ordinary text in every log); use a longer value or do not mark {name} as secret."
            for name, value in values.items()
            if value is not None and str(value).strip() and len(str(value)) < MIN_SECRET_LENGTH}
