import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTMX_PIN = "2.0.11"


def test_htmx_is_vendored_at_the_pinned_version():
    path = ROOT / "static" / "vendor" / f"htmx-{HTMX_PIN}.min.js"
    assert path.exists()
    m = re.search(r'version:"([0-9.]+)"', path.read_text())
    assert m and m.group(1) == HTMX_PIN
    # htmx 2.x only: 4.x changed headers and attribute inheritance.
    assert HTMX_PIN.startswith("2.")


def test_base_layout_loads_the_pinned_htmx_and_sends_csrf_in_hx_headers():
    base = (ROOT / "templates" / "base.html").read_text()
    assert f"vendor/htmx-{HTMX_PIN}.min.js" in base
    assert 'hx-headers=\'{"X-CSRFToken": "{{ csrf_token() }}"}\'' in base
