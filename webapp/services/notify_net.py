"""Outbound HTTP for notifications through the one address policy (webapp/netguard.py), and
secret masking for targets and errors.

* `check_url(url, allowlist)` refuses a URL whose host resolves to a non-public address unless the
  allow-list admits it (netguard.check_url); a name that does not resolve is a retryable failure.
* `post(...)` sends through netguard's guarded session (the peer of every connection is checked
  again, so DNS rebinding is caught; no environment proxies) and follows redirects by hand with
  the same method and body, re-checking every hop.
* `mask_secret`, `mask_url` and `scrub` keep secrets out of targets, errors and logs.
"""
from __future__ import annotations

from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from .. import netguard
from ..runners import masking
from ..netguard import METADATA, METADATA_HOSTS, Refused, address_problem, refusal  # noqa: F401 (re-exported)

DOT = "\u2022"
USER_AGENT = "AnsFlow-Notify/1.0"
MAX_REDIRECTS = 3


class DeliveryFailed(Exception):
    """The receiver or the network failed. `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def check_url(url: str, allowlist: Iterable[str] | None) -> list[str]:
    """Refuse a URL we must not call; returns the addresses it resolves to."""
    try:
        return list(netguard.check_url(url, allowlist).addresses)
    except netguard.Unresolved as e:
        raise DeliveryFailed(e.message, retryable=True) from None


def guarded_session(allowlist) -> requests.Session:
    return netguard.guarded_session(allowlist, USER_AGENT)


def post(url: str, *, body: bytes, headers: dict[str, str], allowlist, timeout: float = 10.0,
         params: dict[str, str] | None = None) -> requests.Response:
    """POST `body` to `url`; redirects are followed by hand (same method and body), each hop re-checked."""
    if params:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
        url = urlunsplit(parts._replace(query=urlencode(query)))
    with guarded_session(allowlist) as session:
        try:
            return netguard.request(session, "POST", url, allowlist, max_redirects=MAX_REDIRECTS, headers=headers,
                                    data=body, timeout=timeout)
        except Refused:
            raise
        except netguard.Unresolved as e:
            raise DeliveryFailed(e.message, retryable=True) from None
        except netguard.TooManyRedirects:
            raise DeliveryFailed(f"Too many redirects (more than {MAX_REDIRECTS}).") from None
        except requests.Timeout:
            raise DeliveryFailed(f"No answer from {urlsplit(url).hostname} within {timeout:g}s.", retryable=True)
        except requests.ConnectionError as e:
            raise DeliveryFailed(f"Could not connect to {urlsplit(url).hostname}: {_root_cause(e)}", retryable=True)
        except requests.RequestException as e:
            raise DeliveryFailed(f"HTTP request failed: {_root_cause(e)}", retryable=True)


def _root_cause(e: BaseException) -> str:
    seen = e
    while True:
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if inner is None or inner is seen or not isinstance(inner, BaseException):
            break
        seen = inner
    if isinstance(seen, Refused):
        return seen.message
    text = str(seen)
    # urllib3 prefixes messages with the connection object's repr
    if ">: " in text:
        text = text.split(">: ", 1)[1]
    return text or type(seen).__name__


# ---------- masking ----------

def mask_secret(value: str | None) -> str:
    """'••••1a2b' (the last 4 characters), or '••••' for short values."""
    if not value:
        return ""
    value = str(value)
    return DOT * 4 + (value[-4:] if len(value) >= 12 else "")


def _secretish(segment: str) -> bool:
    has_digit = any(c.isdigit() for c in segment)
    has_alpha = any(c.isalpha() for c in segment)
    return len(segment) >= 20 or (len(segment) >= 8 and has_digit and has_alpha)


def url_secrets(url: str | None) -> list[str]:
    """The parts of a URL that may be credentials: userinfo, token-like path segments, query values."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = []
    if parts.password:
        found.append(parts.password)
    if parts.username:
        found.append(parts.username)
    found += [seg for seg in parts.path.split("/") if seg and _secretish(seg)]
    found += [v for _k, v in parse_qsl(parts.query, keep_blank_values=True) if len(v) >= 4]
    return found


def mask_url(url: str | None) -> str:
    """The URL with credentials, token-like path segments and query values masked."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return mask_secret(url)
    if parts.username or parts.password:
        netloc = DOT * 4 + "@" + netloc
    path = "/".join(mask_secret(seg) if seg and _secretish(seg) else seg for seg in parts.path.split("/"))
    query = "&".join(f"{k}={mask_secret(v) if len(v) >= 4 else v}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value (longest first), in each form runners.masking knows (literal,
    JSON, URL-encoded, base64, hex), with its masked form."""
    if not text:
        return text
    for secret in sorted({str(s) for s in secrets if s and len(str(s)) >= 4}, key=len, reverse=True):
        text = masking.mask(text, [secret], mask_secret(secret))
    return text
