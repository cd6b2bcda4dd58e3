"""The main flow in a real browser: Debian's chromium driven by Playwright, against
gunicorn and the worker started as the Procfile starts them."""
from __future__ import annotations

import json
import pytest
import requests

from smart_invites_ui.models import Invite, Role
from smart_invites_ui.services import users as user_service
from smart_invites_ui.services.callbacks import sign
from tests.conftest import BROWSER_TESTS, PASSWORD, log_in, new_page

pytestmark = BROWSER_TESTS


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    yield new_page(context)
    context.close()


def notify(live_server, reference: str, email: str, status: str, comment: str = "") -> requests.Response:
    body = json.dumps({"notification": {"type": "smart_invite"},
                       "smart_invite": {"smart_invite_id": reference,
                                        "recipient": {"email": email, "status": status, "comment": comment}}}).encode()
    return requests.post(live_server.url + "/webhooks/smart-invites", data=body, timeout=10, headers={
        "Content-Type": "application/json", "Cronofy-HMAC-SHA256": sign(body, "test-cronofy-secret")})


def test_create_watch_live_remove_and_cancel(app, live_server, page):
    user_service.create_user("reception@example.org", PASSWORD, Role.STAFF, timezone="Europe/London")

    page.goto("/invites")
    assert "/login" in page.url  # every page needs a login
    log_in(page, "reception@example.org")

    page.goto("/invites/new")
    assert page.input_value("select[name=tzid]") == "Europe/London"  # the user's zone by default
    page.fill("input[name=summary]", "Physio assessment")
    page.fill("input[name=start]", "2031-03-04T10:00")
    page.fill("input[name=end]", "2031-03-04T10:45")
    page.fill("input[name=location]", "Room 2")
    page.fill("textarea[name=recipients]", "ann@example.org\nbob@example.org, cat@example.org")
    page.fill("input[name=smart_invite_id]", "PHYSIO-42")
    page.click("button:has-text('Send invite')")
    page.wait_for_url("**/invites/*")
    assert page.locator("h1").inner_text().startswith("Physio assessment")
    rows = page.locator("table.recipients tbody tr")
    assert rows.count() == 3

    # The worker sends the three emails; the page shows them as sent without a reload.
    page.evaluate("window.__loaded_once = true")
    page.locator("table.emails tr[data-state=sent]").nth(2).wait_for()
    assert page.locator("table.emails tbody tr").count() == 3

    # A signed webhook notification appears on the open page, no reload.
    assert notify(live_server, "PHYSIO-42", "bob@example.org", "accepted", "See you then").status_code == 200
    page.wait_for_selector("tr[data-email='bob@example.org'][data-status=accepted]")
    assert "See you then" in page.locator("tr[data-email='bob@example.org'] td.comment").inner_text()
    assert page.evaluate("window.__loaded_once") is True  # still the same document

    # Remove a recipient (confirmation dialog accepted).
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr[data-email='cat@example.org'] button:has-text('Remove')").click()
    page.wait_for_selector("tr[data-email='cat@example.org'][data-status=removed]")
    assert page.locator("tr[data-email='cat@example.org'] button:has-text('Remove')").count() == 0

    # Cancel the invite; dismissing the dialog first changes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("button:has-text('Cancel invite')")
    assert page.locator("h1 .badge-cancelled").count() == 0
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel invite')")
    page.wait_for_selector("h1 .badge-cancelled")
    # Polling stops for a cancelled invite.
    assert page.locator("#live[hx-get]").count() == 0
    assert not [e for e in page.console_errors if "Content Security Policy" in e]

    invite = app.extensions["sqlalchemy"].session.query(Invite).filter_by(smart_invite_id="PHYSIO-42").one()
    assert invite.is_cancelled and invite.sequence == 2  # removal +1, cancel +1
