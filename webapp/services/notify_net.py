"""Outbound HTTP for notifications, safe against SSRF, and secret masking.

* `check_url(url, allowlist)` refuses URLs whose host resolves to a loopback, private, link-local,
  shared, reserved, multicast or cloud-metadata address, unless the allow-list (hostnames, IPs or
  CIDRs) permits it. The message says what was refused and why.
* `post(...)` sends through a session whose connections check the address they actually connected
  to (so a DNS answer that changes between the check and the connect - DNS rebinding - is caught
  too), never uses environment proxies, and follows redirects by hand, re-checking every hop.
* `mask_secret`, `mask_url` and `scrub` keep secrets out of targets, errors and logs.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

DOT = "\u2022"
USER_AGENT = "AnsFlow-Notify/1.0"
MAX_REDIRECTS = 3

# Cloud metadata endpoints (AWS/GCP/Azure/OpenStack, ECS task metadata, Alibaba, AWS IPv6).
METADATA = {
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
}
METADATA_HOSTS = {"metadata.google.internal", "metadata", "metadata.azure.internal"}


class Refused(Exception):
    """The destination is not allowed (private address, bad scheme...). Never retried."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class DeliveryFailed(Exception):
    """The receiver or the network failed. `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


# ---------- address policy ----------

def _allow_entries(allowlist: Iterable[str] | None):
    hosts, nets, ips = set(), [], set()
    for raw in allowlist or ():
        entry = str(raw).strip().lower().strip("[]")
        if not entry:
            continue
        try:
            if "/" in entry:
                nets.append(ipaddress.ip_network(entry, strict=False))
            else:
                ips.add(ipaddress.ip_address(entry))
        except ValueError:
            hosts.add(entry.rstrip("."))
    return hosts, nets, ips


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why this address is not a public one (None when it is)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-public address"
    return None


def refusal(host: str, ip_text: str, allowlist: Iterable[str] | None) -> str | None:
    """The reason to refuse connecting to `ip_text` for `host`, or None when allowed."""
    try:
        ip = ipaddress.ip_address(ip_text.split("%", 1)[0])
    except ValueError:
        return f"'{ip_text}' is not an IP address"
    problem = address_problem(ip)
    if problem is None:
        return None
    hosts, nets, ips = _allow_entries(allowlist)
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if ip in METADATA or plain in METADATA:
        # Metadata endpoints only when listed exactly (a broad CIDR is not enough).
        if ip in ips or plain in ips:
            return None
    elif (host or "").lower().rstrip(".") in hosts or ip in ips or plain in ips or any(
        plain in n for n in nets if n.version == plain.version
    ):
        return None
    shown = f"{host} resolves to {ip}" if host and host != str(ip) else str(ip)
    return f"{shown}, {problem}; notifications may only go to public addresses unless NOTIFY_ALLOWLIST permits it"


def check_url(url: str, allowlist: Iterable[str] | None) -> list[str]:
    """Refuse a URL we must not call; returns the addresses it resolves to."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise Refused("Refused: that is not a valid URL.")
    if parts.scheme not in ("http", "https"):
        raise Refused(f"Refused: only http:// and https:// URLs can receive notifications (got '{parts.scheme}:').")
    host = (parts.hostname or "").lower()
    if not host:
        raise Refused("Refused: the URL has no host.")
    if host.rstrip(".") in METADATA_HOSTS and host.rstrip(".") not in _allow_entries(allowlist)[0]:
        raise Refused(f"Refused: {host} is a cloud metadata host.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("Refused: the URL has an invalid port.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise DeliveryFailed(f"Could not resolve {host}: {getattr(e, 'strerror', None) or e}", retryable=True)
    addresses = sorted({info[4][0] for info in infos})
    for address in addresses:
        reason = refusal(host, address, allowlist)
        if reason:
            raise Refused(f"Refused: {reason}.")
    return addresses


# ---------- a session that re-checks the address it connected to ----------

def _guarded_classes(allowlist):
    allow = list(allowlist or ())

    class _Guard:
        def _new_conn(self):  # type: ignore[override]
            sock = super()._new_conn()
            try:
                peer = sock.getpeername()[0]
            except OSError:
                peer = ""
            reason = refusal(self.host, peer, allow)  # type: ignore[attr-defined]
            if reason:
                sock.close()
                raise Refused(f"Refused: {reason}.")
            return sock

    class GuardedHTTPConnection(_Guard, HTTPConnection):
        pass

    class GuardedHTTPSConnection(_Guard, HTTPSConnection):
        pass

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, allowlist):
        self._pools = _guarded_classes(allowlist)
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools


def guarded_session(allowlist) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment: we connect where we checked
    adapter = _GuardedAdapter(allowlist)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def post(url: str, *, body: bytes, headers: dict[str, str], allowlist, timeout: float = 10.0,
         params: dict[str, str] | None = None) -> requests.Response:
    """POST `body` to `url`; redirects are followed by hand (same method and body), each hop re-checked."""
    if params:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
        url = urlunsplit(parts._replace(query=urlencode(query)))
    with guarded_session(allowlist) as session:
        for _hop in range(MAX_REDIRECTS + 1):
            check_url(url, allowlist)
            try:
                resp = session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
            except Refused:
                raise
            except requests.Timeout:
                raise DeliveryFailed(f"No answer from {urlsplit(url).hostname} within {timeout:g}s.", retryable=True)
            except requests.ConnectionError as e:
                raise DeliveryFailed(f"Could not connect to {urlsplit(url).hostname}: {_root_cause(e)}", retryable=True)
            except requests.RequestException as e:
                raise DeliveryFailed(f"HTTP request failed: {_root_cause(e)}", retryable=True)
            if resp.is_redirect and resp.headers.get("location"):
                url = urljoin(url, resp.headers["location"])
                continue
            return resp
    raise DeliveryFailed(f"Too many redirects (more than {MAX_REDIRECTS}).")


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
    """Replace every secret value (longest first) with its masked form."""
    if not text:
        return text
    for secret in sorted({str(s) for s in secrets if s and len(str(s)) >= 4}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, mask_secret(secret))
    return text
