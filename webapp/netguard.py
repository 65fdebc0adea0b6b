"""The one address policy for every connection AnsFlow opens to somewhere a user named
(notification webhooks and chat services, SMTP servers of channels, `http` steps, every redirect).

* `refusal(host, ip, port, allowlist)` says why a destination is refused: loopback, private,
  link-local, shared, reserved, multicast, unspecified or cloud-metadata addresses, unless an
  allow-list entry admits it. Entries are a host name, an IP or a CIDR, each with an optional
  `:port` (`10.0.0.0/8`, `127.0.0.1:8025`, `[::1]:8080`, `hooks.internal:443`); an entry without a
  port admits every port. A metadata address is admitted only by an entry naming it exactly.
* `ip_literal(host)` reads the numeric spellings of an address the way the C resolver does
  (2130706433, 0177.0.0.1, 0x7f.1, 127.1) and unwraps IPv6-mapped IPv4 (::ffff:127.0.0.1), so
  no spelling hides a loopback address from the check.
* `check_url(url, allowlist)` parses the URL once, refuses userinfo tricks and non-http(s)
  schemes, resolves the host and checks every address; it returns the URL rebuilt from what was
  checked (without userinfo, which comes back separately as basic-auth credentials).
* `guarded_session(allowlist)` is a requests session whose connections check the peer they
  actually connected to (a DNS answer that changes between the check and the connect - DNS
  rebinding - is caught there), with no proxies from the environment; `request(...)` follows
  redirects by hand, checking every hop. `connect(host, port, ...)` opens a checked TCP socket
  (SMTP).

Pure: stdlib, requests and urllib3 only, so runners and services both use it.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWLIST_ENV = ("ANSFLOW_OUTBOUND_ALLOWLIST", "ANSFLOW_NOTIFY_ALLOWLIST")

# Cloud metadata endpoints (AWS/GCP/Azure/OpenStack, ECS task metadata, Alibaba, AWS IPv6).
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.azure.internal"})
# Characters no host name has, which URL parsers disagree about (the other parser's host wins).
_BAD_NETLOC = set("\\ \t\r\n\x00")


class Refused(Exception):
    """The destination is not allowed (private address, bad scheme...). Never retried."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def allowlist_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """ANSFLOW_OUTBOUND_ALLOWLIST plus ANSFLOW_NOTIFY_ALLOWLIST (its older name), comma separated."""
    environ = os.environ if environ is None else environ
    entries: list[str] = []
    for name in ALLOWLIST_ENV:
        entries += [e.strip() for e in (environ.get(name) or "").split(",") if e.strip()]
    return list(dict.fromkeys(entries))


# ---------- reading addresses ----------

def _ipv4_number(part: str) -> int | None:
    """One dotted part as inet_aton reads it: 0x.. hex, 0.. octal, else decimal."""
    text = part.lower()
    try:
        if text.startswith("0x"):
            return int(text[2:] or "0", 16)
        if len(text) > 1 and text.startswith("0"):
            return int(text[1:], 8)
        return int(text, 10) if text.isdigit() else None
    except ValueError:
        return None


def _ipv4_shorthand(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]  # a trailing dot
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (5 - len(numbers)) + last
    return ipaddress.IPv4Address(value)


def plain(ip: IPAddress) -> IPAddress:
    """An IPv6-mapped (::ffff:a.b.c.d) or IPv4-compatible address as the IPv4 address it reaches."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d (deprecated form; ::1 and :: stay IPv6)
            return ipaddress.IPv4Address(int(ip))
    return ip


def ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells numerically (any IPv4 shorthand, IPv6 with or without brackets
    or a zone), or None when it is a name to resolve."""
    text = (host or "").strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        return plain(ipaddress.ip_address(text))
    except ValueError:
        pass
    return _ipv4_shorthand(text)


def address_problem(ip: IPAddress) -> str | None:
    """Why this address is not a public one (None when it is)."""
    ip = plain(ip)
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


# ---------- the allow-list ----------

@dataclass(frozen=True)
class Entry:
    host: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None          # None: every port

    def covers(self, host: str, ip: IPAddress) -> bool:
        """This entry names the address (whatever port it allows)."""
        if ip in METADATA:  # a metadata address only by an exact IP entry: no name, no broad range
            return self.network is not None and self.network.num_addresses == 1 and ip in self.network
        if self.host is not None:
            return host == self.host
        assert self.network is not None
        return ip.version == self.network.version and ip in self.network

    def admits(self, host: str, ip: IPAddress, port: int | None) -> bool:
        return (self.port is None or port == self.port) and self.covers(host, ip)


def parse_entry(raw: str) -> Entry | None:
    """'host', 'host:port', IP, '[v6]:port', CIDR, 'CIDR:port' -> Entry (None for a blank one)."""
    text = str(raw).strip().lower()
    if not text:
        return None
    port = None
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        text = inside
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
        if port_text.isdigit():
            port = int(port_text)
        else:
            text = f"{text}:{port_text}"
    if "/" in text:
        try:
            return Entry(network=ipaddress.ip_network(text, strict=False), port=port)
        except ValueError:
            pass
    ip = ip_literal(text)
    if ip is not None:
        return Entry(network=ipaddress.ip_network(ip), port=port)
    return Entry(host=text.rstrip("."), port=port)


def parse_allowlist(allowlist: Iterable[str] | None) -> list[Entry]:
    return [e for e in (parse_entry(raw) for raw in (allowlist or ())) if e is not None]


def refusal(host: str, ip_text: str, allowlist: Iterable[str] | None, port: int | None = None) -> str | None:
    """The reason to refuse connecting to `ip_text` (resolved from `host`) on `port`, or None.
    `port=None` asks about the address alone (any entry naming it admits it)."""
    ip = ip_literal(ip_text)
    if ip is None:
        return f"'{ip_text}' is not an IP address"
    problem = address_problem(ip)
    if problem is None:
        return None
    name = (host or "").strip().lower().strip("[]").rstrip(".")
    covering = [e for e in parse_allowlist(allowlist) if e.covers(name, ip)]
    if any(port is None or e.port is None or e.port == port for e in covering):
        return None
    shown = f"{name} resolves to {ip}" if name and ip_literal(name) is None else (
        f"{name} is {ip}" if name and name != str(ip) else str(ip))
    if covering:  # listed, but for other ports
        ports = ", ".join(sorted({str(e.port) for e in covering}))
        return f"{shown} port {port}, {problem}; the allow-list admits it only on port {ports}"
    return (f"{shown}, {problem}; AnsFlow only connects to public addresses unless "
            f"ANSFLOW_OUTBOUND_ALLOWLIST (or ANSFLOW_NOTIFY_ALLOWLIST) admits it")


def check_host(host: str, port: int, allowlist: Iterable[str] | None) -> list[str]:
    """Resolve `host` and refuse it unless every address it resolves to is allowed on `port`.
    Returns the checked addresses (numeric hosts are read without asking DNS)."""
    name = (host or "").strip().lower().strip("[]")
    if not name:
        raise Refused("Refused: no host.")
    if name.rstrip(".") in METADATA_HOSTS and not any(
            e.host == name.rstrip(".") for e in parse_allowlist(allowlist)):
        raise Refused(f"Refused: {name} is a cloud metadata host.")
    literal = ip_literal(name)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise Unresolved(f"Could not resolve {name}: {getattr(e, 'strerror', None) or e}") from None
        addresses = sorted({info[4][0].split("%", 1)[0] for info in infos})
    for address in addresses:
        reason = refusal(name, address, allowlist, port)
        if reason:
            raise Refused(f"Refused: {reason}.")
    return addresses


class Unresolved(Exception):
    """The host name has no address (now): a network problem, maybe temporary."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Target:
    url: str                        # rebuilt from the checked parts, without userinfo
    host: str
    port: int
    addresses: tuple[str, ...]
    auth: tuple[str, str] | None    # userinfo of the URL, to send as basic auth


def check_url(url: str, allowlist: Iterable[str] | None) -> Target:
    """Refuse a URL AnsFlow must not call; see the module docstring."""
    try:
        parts = urlsplit(str(url).strip())
    except ValueError:
        raise Refused("Refused: that is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise Refused(f"Refused: only http:// and https:// URLs can be called (got '{parts.scheme}:').")
    hostport = parts.netloc.rpartition("@")[2]
    if any(c in _BAD_NETLOC for c in parts.netloc) or "%" in hostport or parts.netloc.count("@") > 1:
        raise Refused("Refused: the URL's host part has characters that URL parsers read differently.")
    try:
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("Refused: the URL has an invalid port.") from None
    if not host:
        raise Refused("Refused: the URL has no host.")
    addresses = check_host(host, port, allowlist)
    literal = ip_literal(host)
    shown = host if literal is None else (f"[{literal}]" if literal.version == 6 else str(literal))
    netloc = shown if parts.port is None else f"{shown}:{parts.port}"
    auth = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username or parts.password else None
    clean = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(url=clean, host=host, port=port, addresses=tuple(addresses), auth=auth)


# ---------- connections that re-check where they connected ----------

def _peer_refusal(host: str, sock: socket.socket, allowlist) -> str | None:
    try:
        peer = sock.getpeername()
    except OSError:
        return "the connection has no peer address"
    return refusal(host, peer[0], allowlist, peer[1])


def _guarded_classes(allowlist):
    allow = list(allowlist or ())

    class _Guard:
        # urllib3's HTTPConnection.connect() opens its socket through _new_conn(); a test
        # (tests/security/test_outbound.py) fails if a urllib3 upgrade stops calling it.
        def _new_conn(self):  # type: ignore[override]
            sock = super()._new_conn()
            reason = _peer_refusal(self.host, sock, allow)  # type: ignore[attr-defined]
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


def guarded_session(allowlist, user_agent: str | None = None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment: we connect where we checked
    adapter = _GuardedAdapter(allowlist)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if user_agent:
        session.headers["User-Agent"] = user_agent
    return session


class TooManyRedirects(Exception):
    pass


CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


def request(session: requests.Session, method: str, url: str, allowlist, *, max_redirects: int = 3,
            keep_method: bool = True, headers: dict[str, str] | None = None, **kwargs) -> requests.Response:
    """Send through a guarded session, following redirects by hand with every hop checked.

    keep_method: resend the same method and body on every redirect (a webhook POST); otherwise
    the browser rule (303, and 301/302 after a POST, continue as a body-less GET). Credentials
    (Authorization, Cookie, the URL's userinfo) never follow a redirect to another host."""
    headers = dict(headers or {})
    first_host = None
    for _hop in range(max_redirects + 1):
        target = check_url(url, allowlist)
        if first_host is None:
            first_host = target.host
        elif target.host != first_host:
            headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
        resp = session.request(method, target.url, headers=headers, allow_redirects=False,
                               auth=target.auth, **kwargs)
        location = resp.headers.get("location") if resp.is_redirect else None
        if not location:
            return resp
        resp.close()
        url = urljoin(target.url, location)
        if not keep_method and method != "HEAD" and (resp.status_code in (302, 303) or
                                                      (resp.status_code == 301 and method == "POST")):
            method = "GET"  # as requests and browsers do
            kwargs.pop("data", None)
            kwargs.pop("json", None)
    raise TooManyRedirects(f"Too many redirects (more than {max_redirects}).")


def connect(host: str, port: int, timeout: float | None, allowlist) -> socket.socket:
    """A TCP connection to `host`, opened to an address that was checked (no second lookup)."""
    errors = []
    for address in check_host(host, port, allowlist):
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as e:
            errors.append(e)
    raise errors[-1] if errors else OSError(f"no address for {host}")
