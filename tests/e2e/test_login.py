"""A real Chromium signs in and sees the pipelines page."""
import pytest

from ..conftest import PASSWORD

pytestmark = pytest.mark.e2e


def test_login_through_the_browser(page, users):
    page.goto("/login")
    page.fill("#username", "maintainer1")
    page.fill("#password", "wrong-password")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "Unknown username or wrong password."
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/pipelines/")
    assert page.locator("h1").first.inner_text() == "Pipelines"
    assert "Maintainer One" in page.locator(".userbox").inner_text()
