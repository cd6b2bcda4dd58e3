"""The whole reply loop without a mail server, in a real browser (issue 4): Debian's
chromium driven by Playwright against gunicorn and the worker, as ``make run`` serves them.

Staff watch an invite's live page in one tab; in another, the mail catcher's "Reply as
attendee" buttons send a real iTIP REPLY, then a COUNTER; the live page shows each answer
without a reload, and the admin sees both on "Inbound mail".
"""
from __future__ import annotations

import pytest

from smart_invites_ui.models import Role
from smart_invites_ui.services import users as user_service
from tests.conftest import BROWSER_TESTS, PASSWORD, log_in, new_page

pytestmark = BROWSER_TESTS


@pytest.fixture
def context(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(15000)
    yield context
    context.close()


def test_a_reply_from_the_mail_catcher_arrives_on_the_live_page(app, live_server, context):
    user_service.create_user("admin@example.org", PASSWORD, Role.ADMIN, timezone="Europe/London")
    staff = new_page(context)
    errors = staff.console_errors
    log_in(staff, "admin@example.org")

    staff.goto("/invites/new")
    staff.fill("input[name=summary]", "Physio assessment")
    staff.fill("input[name=start]", "2031-03-04T10:00")
    staff.fill("input[name=end]", "2031-03-04T10:45")
    staff.fill("textarea[name=recipients]", "ann@example.org")
    staff.click("button:has-text('Send invite')")
    staff.wait_for_url("**/invites/*")
    staff.locator("table.emails tr[data-state=sent]").wait_for()  # the worker delivered it to the catcher
    staff.evaluate("window.__same_document = true")

    # Ann, in another tab, answers from the mail catcher as Outlook would.
    ann = context.new_page()
    ann.goto("/mail")
    ann.locator("a:has-text('Physio assessment')").first.click()
    ann.select_option("select[name=shape]", "outlook")
    ann.fill("input[name=comment]", "See you there")
    ann.click("button:has-text('Accept')")
    ann.wait_for_url("**/invites/*")

    staff.wait_for_selector("tr[data-email='ann@example.org'][data-status=accepted]")
    assert "See you there" in staff.locator("tr[data-email='ann@example.org'] td.comment").inner_text()

    # Then she proposes another time, as Google Calendar would.
    ann.go_back()
    ann.select_option("select[name=shape]", "google")
    ann.fill("input[name=comment]", "Could we do the afternoon?")
    ann.fill("input[name=proposed_start]", "2031-03-04T15:00")
    ann.fill("input[name=proposed_end]", "2031-03-04T15:45")
    ann.click("button:has-text('Propose new time')")
    ann.wait_for_url("**/invites/*")

    staff.wait_for_selector("tr[data-email='ann@example.org'][data-status=tentative]")
    row = staff.locator("tr[data-email='ann@example.org']")
    assert "Could we do the afternoon?" in row.locator("td.comment").inner_text()
    assert "15:00" in row.locator("td.proposal").inner_text()
    assert row.locator("button:has-text('Accept proposed time')").count() == 1
    assert staff.evaluate("window.__same_document") is True  # no reload

    staff.goto("/admin/inbound")
    assert staff.locator("tr[data-outcome=applied]").count() == 2
    assert "ann@example.org proposed a new time" in staff.locator("table.inbound").inner_text()
    assert not [e for e in errors if "Content Security Policy" in e]
