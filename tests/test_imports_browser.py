"""The bookings import in a real browser: Debian's chromium driven by Playwright, against
gunicorn; the worker is started once the import waits for it, so the page is seen
going from the waiting progress bar to done without a reload."""
from __future__ import annotations

import codecs
import subprocess
import sys
from pathlib import Path

import pytest

from smart_invites_ui.models import Role
from smart_invites_ui.services import users as user_service
from tests.conftest import BROWSER_TESTS, PASSWORD, log_in, new_page, start_live_server

pytestmark = BROWSER_TESTS

BOOKINGS = (
    "booking_ref,email,name,summary,location,start,end,timezone\r\n"
    "PHY-1,ann@example.org,Ann,Physio,Room 2,2031-03-04 10:00,2031-03-04 10:45,Europe/London\r\n"
    "PHY-1,bob@example.org,Bob,Physio,Room 2,2031-03-04 10:00,2031-03-04 10:45,Europe/London\r\n"
    "PHY-2,cat@example.org,Cat,Massage,Room 5,2031-03-05 11:00,2031-03-05 12:00,Europe/London\r\n"
    "PHY-3,not-an-address,Dan,Scan,Room 1,2031-03-06 09:00,2031-03-06 09:20,Europe/London\r\n"
)


@pytest.fixture
def server(app, database_url):
    """gunicorn alone: the test starts the worker when it wants the import to run."""
    server = start_live_server(database_url, worker=False)
    yield server
    server.stop()


def start_worker(server) -> None:
    root = Path(__file__).resolve().parent.parent
    server.processes.append(subprocess.Popen(
        [str(Path(sys.executable).parent / "flask"), "--app", "app", "worker"], cwd=root, env=server.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server.url, accept_downloads=True)
    yield new_page(context)
    context.close()


def test_upload_preview_confirm_and_watch_the_import_finish(app, server, page):
    user_service.create_user("reception@example.org", PASSWORD, Role.STAFF, timezone="Europe/London")
    log_in(page, "reception@example.org", "/imports")
    assert page.locator("nav a[aria-current=page]").inner_text() == "Import"

    page.set_input_files("input[type=file]", files=[{"name": "physio.csv", "mimeType": "text/csv",
                                                     "buffer": BOOKINGS.encode()}])
    page.click("button:has-text('Upload and preview')")
    page.wait_for_url("**/imports/*")

    # The preview: counts, the bookings as they will be made, the rejected row and why.
    assert page.locator("#count-create").inner_text() == "2"
    assert page.locator("#count-rejected").inner_text() == "1"
    assert page.locator("table.preview tr[data-action=create]").count() == 2
    rejected = page.locator("table.rejected tr[data-row='5']")
    assert "not a valid email address" in rejected.inner_text()

    page.click("button:has-text('Import 2 bookings')")
    page.wait_for_selector("#import-progress[data-state=queued] progress")
    page.evaluate("window.__same_document = true")
    start_worker(server)

    # The poll swaps in the result without a reload once the worker is done.
    page.wait_for_selector("#import-progress[data-state=done]")
    assert page.evaluate("window.__same_document") is True
    bar = page.locator("#import-progress progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "4"
    assert page.locator("#import-progress[hx-get]").count() == 0  # polling stopped
    assert page.locator("#count-create").inner_text() == "2"
    assert page.locator("table.created a").count() == 2

    link = page.locator("#rejected-download")
    assert "1 rejected row" in link.inner_text()
    with page.expect_download() as download:
        link.click()
    body = Path(download.value.path()).read_bytes()
    assert body.startswith(codecs.BOM_UTF8) and b"not-an-address" in body and b",error" in body

    page.click("table.created a:has-text('Physio')")
    page.wait_for_selector("table.recipients tr[data-email='bob@example.org']")
    assert not [e for e in page.console_errors if "Content Security Policy" in e]
