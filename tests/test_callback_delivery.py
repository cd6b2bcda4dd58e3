"""Callbacks out: a status change on an API invite reaches the client's callback_url
through the worker, signed, retried when worth it, and visible to admins."""
from __future__ import annotations

import re
from datetime import timedelta

import pycronofy
import pytest
from sqlalchemy import select

from smart_invites_ui.domain import InviteSource
from smart_invites_ui.extensions import db
from smart_invites_ui.models import NotificationSource, OutboxKind, OutboxMessage, OutboxState, Role, now_utc
from smart_invites_ui.services import api_clients, callbacks
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services.notifications import apply_notification
from tests.conftest import free_port, make_event


@pytest.fixture
def api_client(app):
    return api_clients.create_client("Booking website")


@pytest.fixture
def make_api_invite(api_client):
    record, _ = api_client

    def make(callback_url: str, reference: str = "BOOKING-1"):
        return invite_service.create_invite(
            event=make_event(), recipients=[invite_service.NewRecipient("ann@example.org")],
            smart_invite_id=reference, source=InviteSource.API, api_client=record, callback_url=callback_url,
            send_emails=False)

    return make


def reply(reference: str, status: str, email: str = "ann@example.org") -> None:
    apply_notification({"smart_invite": {"smart_invite_id": reference,
                                         "recipient": {"email": email, "status": status}}},
                       source=NotificationSource.EMAIL)


def callback_rows() -> list[OutboxMessage]:
    return db.session.scalars(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.CALLBACK)
                              .order_by(OutboxMessage.id)).all()


@pytest.fixture
def fixed_backoff(monkeypatch):
    """Make the wait before a retry known (it is random: full jitter)."""
    asked: list[int] = []

    def backoff(attempt: int) -> float:
        asked.append(attempt)
        return 120.0

    monkeypatch.setattr(callbacks, "backoff_seconds", backoff)
    return asked


def test_the_worker_posts_the_signed_callback(http_recorder, make_api_invite, api_client, deliver):
    _, secret = api_client
    make_api_invite(http_recorder.url + "/smart_invite/notifications")
    reply("BOOKING-1", "accepted")
    deliver()

    [request] = http_recorder.requests
    [row] = callback_rows()
    assert request["method"] == "POST" and request["path"] == "/smart_invite/notifications"
    assert request["body"] == row.payload
    assert request["headers"]["Content-Type"].startswith("application/json")
    signature = request["headers"]["Cronofy-HMAC-SHA256"]
    # The official client accepts it, with the API client's secret.
    assert pycronofy.Client(client_secret=secret).hmac_valid(signature, request["body"].decode())
    assert not pycronofy.Client(client_secret="another secret").hmac_valid(signature, request["body"].decode())
    assert (row.state, row.attempts, row.last_status_code, row.transport) == (OutboxState.SENT, 1, 200, "http")


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_429_are_retried_with_backoff(http_recorder, make_api_invite, deliver, fixed_backoff,
                                                        status):
    http_recorder.respond = lambda request: (status, b"{}")
    make_api_invite(http_recorder.url + "/cb")
    reply("BOOKING-1", "declined")
    before = now_utc()
    deliver()

    [row] = callback_rows()
    assert (row.state, row.attempts, row.last_status_code) == (OutboxState.QUEUED, 1, status)
    assert row.last_error == f"HTTP {status}"
    assert fixed_backoff == [1]
    assert before + timedelta(seconds=119) <= row.next_attempt_at <= now_utc() + timedelta(seconds=121)

    deliver()  # not due yet: nothing is sent
    assert len(http_recorder.requests) == 1

    http_recorder.respond = lambda request: (200, b"{}")
    row.next_attempt_at = now_utc()
    db.session.commit()
    deliver()
    [row] = callback_rows()
    assert (row.state, row.attempts, row.last_status_code, row.last_error) == (OutboxState.SENT, 2, 200, "")
    first, second = http_recorder.requests
    assert first["body"] == second["body"]
    assert first["headers"]["Cronofy-HMAC-SHA256"] == second["headers"]["Cronofy-HMAC-SHA256"]


@pytest.mark.parametrize("status", [400, 404, 410])
def test_other_client_errors_are_not_retried(http_recorder, make_api_invite, deliver, status):
    http_recorder.respond = lambda request: (status, b"{}")
    make_api_invite(http_recorder.url + "/cb")
    reply("BOOKING-1", "accepted")
    deliver()
    [row] = callback_rows()
    assert (row.state, row.attempts, row.last_status_code) == (OutboxState.FAILED, 1, status)
    row.next_attempt_at = now_utc() - timedelta(hours=1)
    db.session.commit()
    deliver()
    assert len(http_recorder.requests) == 1


def test_a_network_error_is_retried(make_api_invite, deliver, fixed_backoff):
    make_api_invite(f"http://127.0.0.1:{free_port()}/cb")  # nothing listens there
    reply("BOOKING-1", "accepted")
    deliver()
    [row] = callback_rows()
    assert row.state == OutboxState.QUEUED and row.last_status_code is None
    assert row.last_error == "connection refused"


def test_retries_stop_after_about_a_day(http_recorder, make_api_invite, deliver, fixed_backoff):
    http_recorder.respond = lambda request: (502, b"{}")
    make_api_invite(http_recorder.url + "/cb")
    reply("BOOKING-1", "accepted")
    [row] = callback_rows()
    # First queued nearly a day ago: the next wait would end past MAX_CALLBACK_AGE.
    row.created_at = now_utc() - callbacks.MAX_CALLBACK_AGE + timedelta(seconds=60)
    db.session.commit()
    deliver()
    [row] = callback_rows()
    assert (row.state, row.last_status_code) == (OutboxState.FAILED, 502)


def test_private_addresses_are_refused_unless_allowed(app, http_recorder, make_api_invite, deliver):
    app.config["ALLOW_PRIVATE_CALLBACK_URLS"] = False
    make_api_invite(http_recorder.url + "/cb")
    reply("BOOKING-1", "accepted")
    deliver()
    [row] = callback_rows()
    assert row.state == OutboxState.FAILED and row.attempts == 1
    assert row.last_error.startswith("refused:") and "loopback" in row.last_error
    assert http_recorder.requests == []


def test_admins_see_each_deliverys_state(http_recorder, make_api_invite, deliver, fixed_backoff, auth, client,
                                         fast_passwords):
    outcomes = {"/ok": 200, "/busy": 503, "/gone": 410}
    http_recorder.respond = lambda request: (outcomes[request["path"]], b"{}")
    for number, path in enumerate(outcomes):
        make_api_invite(http_recorder.url + path, reference=f"BOOKING-{number}")
        reply(f"BOOKING-{number}", "accepted")
    deliver()

    auth.login("admin@example.org", role=Role.ADMIN)
    page = client.get("/admin/callbacks").get_data(as_text=True)
    sent, waiting, failed = callback_rows()
    assert f'data-id="{sent.id}" data-state="sent"' in page
    assert f'data-id="{waiting.id}" data-state="queued"' in page
    assert f'data-id="{failed.id}" data-state="failed"' in page
    assert "HTTP 503" in page and "HTTP 410" in page and http_recorder.url + "/busy" in page
    assert "BOOKING-1" in page and "Booking website" in page

    only_failed = client.get("/admin/callbacks?state=failed").get_data(as_text=True)
    assert f'data-id="{failed.id}"' in only_failed and f'data-id="{sent.id}"' not in only_failed
    # The filter tabs: each state with its count, the one shown marked.
    assert re.search(r'<a href="/admin/callbacks\?state=failed" class="active">Failed \(1\)</a>', only_failed)
    assert re.search(r'<a href="/admin/callbacks\?state=sent" class="">Delivered \(1\)</a>', only_failed)


def test_a_revoked_clients_callbacks_are_not_sent(http_recorder, make_api_invite, api_client, deliver):
    """Revoking an API client cuts it off: callbacks queued for it are not posted (they
    would be signed with the revoked secret), and the row says why."""
    record, _ = api_client
    make_api_invite(http_recorder.url + "/smart_invite/notifications")
    reply("BOOKING-1", "accepted")
    api_clients.revoke(record)
    deliver()

    assert http_recorder.requests == []
    [row] = callback_rows()
    assert row.state == OutboxState.FAILED
    assert "revoked" in row.last_error


def test_a_page_number_past_any_list_shows_an_empty_page(auth, client, fast_passwords):
    """A huge ?page= (a typo, a crawler) is an empty page, not a database error."""
    auth.login("admin@example.org", role=Role.ADMIN)
    assert client.get("/admin/callbacks?page=99999999999999999999").status_code == 200
