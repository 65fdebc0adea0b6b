"""In Chromium: an admin creates a channel with the keyboard, presses "Send test" and sees the true result."""
from __future__ import annotations

import pytest

from tests.conftest import browser_login

pytestmark = pytest.mark.e2e


def test_create_channel_and_send_test(page, users, receiver):
    browser_login(page, "admin1")
    page.goto("/notifications/channels")
    page.get_by_text("No channels yet").wait_for()
    page.get_by_role("link", name="New channel").first.click()
    page.get_by_role("link", name="Slack").click()
    page.fill("#c-name", "team-chat")
    page.fill("#c-url", f"{receiver.url}/services/T1/B1/abcdefghijklmnop1234")
    page.keyboard.press("Enter")  # submits the form
    page.get_by_text("Channel 'team-chat' created").wait_for()
    row = page.locator("tr", has_text="team-chat")
    assert "abcdefghijklmnop1234" not in row.inner_text()
    row.get_by_role("button", name="Send test").click()
    page.locator("#test-result-1 [data-status=delivered]").wait_for()
    assert "Delivered" in page.locator("#test-result-1").inner_text()
    assert receiver.json("/services/T1/B1/abcdefghijklmnop1234")[0]["text"].startswith("[AnsFlow] Test message")

    receiver.script("/services/T1/B1/abcdefghijklmnop1234", [(404, "no_service")])
    row.get_by_role("button", name="Send test").click()
    page.locator("#test-result-1 [data-status=failed]").wait_for()
    assert "Slack answered HTTP 404: no_service" in page.locator("#test-result-1").inner_text()

    page.get_by_role("link", name="Deliveries").click()
    page.get_by_text("2 deliveries").wait_for()
    page.select_option("#f-status", "failed")
    page.get_by_text("1 delivery matches the filters").wait_for()
    assert "status=failed" in page.url
    page.locator("details summary").first.click()
    assert "This is a test message from AnsFlow" in page.locator("details pre").first.inner_text()
