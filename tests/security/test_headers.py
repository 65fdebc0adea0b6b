"""Security headers and no inline code (issue 13): a crawl over every page a signed-in admin can
reach by following links, plus the anonymous, error and API responses. Under the CSP
(`script-src 'self'`) an inline <script>, an on* attribute, an htmx trigger filter or hx-on
(both evaluated code) would silently stop working, so finding one is a failure."""
from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from webapp.extensions import db
from webapp.services import executions as executions_svc
from webapp.services.notifications import save_channel
from webapp.services.pipelines import save_definition

MAX_PAGES = 120


class PageScan(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.problems: list[str] = []
        self._in_inline_script = False
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs_d = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...> (an inline event handler)")
            if name.startswith("hx-on"):
                self.problems.append(f"<{tag} {name}=...> (htmx evaluates it)")
            if name == "hx-trigger" and value and "[" in value:
                self.problems.append(f"<{tag} hx-trigger={value!r}> (a trigger filter is evaluated code)")
            if name in ("href", "action", "src") and value and value.strip().lower().startswith("javascript:"):
                self.problems.append(f"<{tag} {name}=javascript:...>")
            if name in ("hx-vals", "hx-vars") and value and "js:" in value:
                self.problems.append(f"<{tag} {name}=js:...>")
        if tag == "script" and not attrs_d.get("src"):
            self.problems.append("an inline <script> without src")
        if tag == "meta" and attrs_d.get("name"):
            self.meta[attrs_d["name"]] = attrs_d.get("content") or ""
        if tag == "a" and attrs_d.get("href"):
            self.links.append(attrs_d["href"])


def assert_security_headers(resp, where):
    h = resp.headers
    csp = h.get("Content-Security-Policy", "")
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";") if d.strip()}
    assert directives.get("script-src") == "script-src 'self'", (where, csp)
    assert directives.get("frame-ancestors") == "frame-ancestors 'none'", (where, csp)
    assert "unsafe-eval" not in csp and "unsafe-inline" not in directives.get("script-src", ""), (where, csp)
    assert h.get("X-Frame-Options") == "DENY", where
    assert h.get("X-Content-Type-Options") == "nosniff", where
    assert h.get("Referrer-Policy") in ("same-origin", "strict-origin-when-cross-origin", "no-referrer"), where


@pytest.fixture
def populated(app, users):
    p = save_definition({"name": "release", "groups": [{"id": "checks", "name": "checks", "sync_policy": "wait_all"}],
                         "steps": [
        {"name": "lint", "parameters": {"command": "echo lint"}, "parallel_group": "checks"},
        {"name": "test", "parameters": {"command": "echo test"}, "parallel_group": "checks"},
        {"name": "gate", "type": "approval", "approval": {"users": ["approver1"], "message": "Ship?"}, "depends_on": []},
        {"name": "deploy", "parameters": {"command": "echo deploy"}},
    ]}, owner=users["maintainer"])
    executions_svc.start(p, user=users["maintainer"], variables={"ENV": "prod"})
    save_channel({"name": "ops-hook", "channel_type": "webhook", "config": {"url": "https://hooks.example.com/x"}})
    db.session.commit()
    return p


def crawl(client, start="/"):
    seen, queue, pages = set(), [start], {}
    while queue and len(pages) < MAX_PAGES:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        resp = client.get(path)
        if resp.status_code in (301, 302, 303):
            queue.append(urlsplit(urljoin(path, resp.headers["Location"]))._replace(scheme="", netloc="").geturl())
            continue
        pages[path] = resp
        if "text/html" not in resp.content_type:
            continue
        scan = PageScan()
        scan.feed(resp.get_data(as_text=True))
        for href in scan.links:
            parts = urlsplit(urljoin(path, href))
            if parts.netloc and parts.netloc != "localhost":
                continue
            target = parts._replace(scheme="", netloc="", fragment="").geturl()
            if target.startswith("/static/") or target.startswith("/api/"):
                continue
            if target not in seen:
                queue.append(target)
    return pages


def test_every_page_has_the_headers_and_no_inline_code(app, client_as, populated):
    pages = crawl(client_as("admin").c)
    html_pages = {p: r for p, r in pages.items() if "text/html" in r.content_type}
    # the crawl reached the app's main pages (if a link broke, it would silently check less)
    for must in ("/pipelines/", "/executions/", "/approvals/", "/notifications/deliveries", "/dashboard/", "/account"):
        assert any(p.split("?")[0].rstrip("/") == must.rstrip("/") for p in html_pages), (must, sorted(html_pages))
    assert len(html_pages) >= 20, sorted(html_pages)
    for path, resp in pages.items():
        assert resp.status_code < 500, (path, resp.status_code)
        assert_security_headers(resp, path)
    for path, resp in html_pages.items():
        scan = PageScan()
        scan.feed(resp.get_data(as_text=True))
        assert not scan.problems, (path, scan.problems)
        if "<body" in resp.get_data(as_text=True):
            config = scan.meta.get("htmx-config", "")
            assert '"allowEval": false' in config and '"includeIndicatorStyles": false' in config, path


def test_anonymous_error_static_and_api_responses_have_the_headers(app, users):
    c = app.test_client()
    for path in ("/login", "/no-such-page", "/static/js/app.js", "/api/v1/me/", "/api/v1/openapi.json"):
        resp = c.get(path)
        assert_security_headers(resp, path)
    scan = PageScan()
    scan.feed(c.get("/login").get_data(as_text=True))
    assert not scan.problems


def test_the_scanner_sees_inline_code():
    """Guard against a scan that passes everything."""
    scan = PageScan()
    scan.feed('<script>x()</script><form onsubmit="return confirm(1)"></form>'
              '<div hx-trigger="every 1s [ok()]" hx-on:click="y()"></div><script src="/static/a.js"></script>')
    assert len(scan.problems) == 4, scan.problems
