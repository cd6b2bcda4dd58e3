"""Acceptance: the official ``pycronofy`` client, unmodified, against a running
instance (gunicorn and the worker, as the Procfile starts them)."""
from __future__ import annotations

import datetime as dt
import json

import pycronofy
import pytest
import requests
from pycronofy.exceptions import PyCronofyRequestError

from smart_invites_ui.services import api_clients
from smart_invites_ui.services.callbacks import sign
from tests.conftest import start_live_server

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def live_server(database_url, _schema):
    """One server for the module; each test still starts from an empty database (``app`` clears it)."""
    server = start_live_server(database_url)
    yield server
    server.stop()


@pytest.fixture
def api_key(app, live_server) -> str:
    """An API client made in the server's database, encrypted with the server's SECRET_KEY."""
    ours = app.config["SECRET_KEY"]
    app.config["SECRET_KEY"] = live_server.env["SECRET_KEY"]
    try:
        _, secret = api_clients.create_client("pycronofy acceptance")
    finally:
        app.config["SECRET_KEY"] = ours
    return secret


@pytest.fixture
def cronofy(live_server, api_key) -> pycronofy.Client:
    client = pycronofy.Client(client_secret=api_key)
    client.request_handler.base_url = live_server.url  # the client adds /v1/smart_invites
    return client


def event(summary="Board meeting", start=dt.datetime(2031, 10, 14, 9, 30, tzinfo=UTC), end=None):
    return {"summary": summary, "description": "Discuss plans for the next quarter.",
            "start": start, "end": end or start + dt.timedelta(minutes=30), "tzid": "Europe/London",
            "location": {"description": "Board room"}}


def ics_line(ics: str, name: str) -> str:
    return next(line for line in ics.splitlines() if line.startswith(name + ":")).split(":", 1)[1]


def test_single_recipient_upsert_get_update_and_cancel(cronofy):
    created = cronofy.upsert_smart_invite(
        smart_invite_id="board-2031-10", recipient={"email": "cronofy@example.com"}, event=event(),
        organizer={"name": "Smart invite application"})
    assert created["recipient"] == {"email": "cronofy@example.com", "status": "pending"}
    assert created["event"]["start"] == {"time": "2031-10-14T09:30:00Z", "tzid": "Europe/London"}
    assert ics_line(created["attachments"]["icalendar"], "METHOD") == "REQUEST"
    assert ics_line(created["attachments"]["icalendar"], "SEQUENCE") == "0"

    # pycronofy sends "{}" as the body of this GET.
    status = cronofy.get_smart_invite("board-2031-10", "cronofy@example.com")
    assert status["recipient"] == {"email": "cronofy@example.com", "status": "pending"}
    assert status["replies"] == []
    assert status["smart_invite_id"] == "board-2031-10"

    same = cronofy.upsert_smart_invite(smart_invite_id="board-2031-10", recipient={"email": "cronofy@example.com"},
                                       event=event(), organizer={"name": "Smart invite application"})
    assert ics_line(same["attachments"]["icalendar"], "SEQUENCE") == "0"
    moved = cronofy.upsert_smart_invite(
        smart_invite_id="board-2031-10", recipient={"email": "cronofy@example.com"},
        event=event(start={"time": "2031-10-14T11:00:00+01:00", "tzid": "Europe/London"},
                    end={"time": "2031-10-14T11:30:00+01:00", "tzid": "Europe/London"}))
    assert moved["event"]["start"] == {"time": "2031-10-14T10:00:00Z", "tzid": "Europe/London"}
    assert ics_line(moved["attachments"]["icalendar"], "SEQUENCE") == "1"

    cancelled = cronofy.cancel_smart_invite("board-2031-10", {"email": "cronofy@example.com"})
    ics = cancelled["attachments"]["icalendar"]
    assert ics_line(ics, "METHOD") == "CANCEL" and ics_line(ics, "STATUS") == "CANCELLED"
    assert ics_line(ics, "SEQUENCE") == "2"


def test_errors_reach_the_client_as_cronofy_would_send_them(cronofy, live_server):
    with pytest.raises(PyCronofyRequestError) as invalid:
        cronofy.upsert_smart_invite(smart_invite_id="bad", recipient={"email": "not an address"},
                                    event={"summary": "", "start": "2031-10-14T10:00:00Z",
                                           "end": "2031-10-14T09:00:00Z"})
    assert invalid.value.response.status_code == 422
    assert {"recipient.email", "event.summary", "event.end"} <= set(invalid.value.response.json()["errors"])

    with pytest.raises(PyCronofyRequestError) as missing:
        cronofy.get_smart_invite("no-such-invite", "cronofy@example.com")
    assert missing.value.response.status_code == 404

    stranger = pycronofy.Client(client_secret="not-a-key")
    stranger.request_handler.base_url = live_server.url
    with pytest.raises(PyCronofyRequestError) as refused:
        stranger.get_smart_invite("anything", "cronofy@example.com")
    assert refused.value.response.status_code == 401


def test_multiple_recipients_and_remove_with_requests(cronofy, live_server, api_key):
    created = cronofy.upsert_smart_invite(
        smart_invite_id="viewing-17", event=event("Flat viewing"),
        recipient=[{"email": "cronofy@example.com"}, {"email": "cronofy@example.org"}])
    assert created["recipients"] == [{"email": "cronofy@example.com", "status": "pending"},
                                     {"email": "cronofy@example.org", "status": "pending"}]

    response = requests.post(live_server.url + "/v1/smart_invites", timeout=10,
                             headers={"Authorization": f"Bearer {api_key}"},
                             json={"method": "remove", "recipient": {"email": "cronofy@example.org"},
                                   "smart_invite_id": "viewing-17"})
    assert response.status_code == 200
    removed = response.json()
    assert removed["recipients"][1] == {"email": "cronofy@example.org", "status": "removed"}
    assert removed["attachments"]["removed"]["recipient"] == {"email": "cronofy@example.org"}
    assert ics_line(removed["attachments"]["removed"]["icalendar"], "METHOD") == "CANCEL"
    assert "cronofy@example.org" not in removed["attachments"]["icalendar"]

    assert cronofy.get_smart_invite("viewing-17", "cronofy@example.org")["recipient"]["status"] == "removed"
    everyone = requests.get(live_server.url + "/v1/smart_invites", timeout=10,
                            params={"smart_invite_id": "viewing-17", "include_ics": "true"},
                            headers={"Authorization": f"Bearer {api_key}"}).json()
    assert [r["status"] for r in everyone["recipients"]] == ["pending", "removed"]
    assert ics_line(everyone["attachments"]["icalendar"], "SEQUENCE") == "1"


def test_a_reply_reaches_the_callback_url_signed_with_the_clients_secret(cronofy, live_server, api_key,
                                                                          http_recorder):
    callback_url = http_recorder.url + "/smart_invite/notifications"
    cronofy.upsert_smart_invite(smart_invite_id="interview-9", recipient={"email": "cronofy@example.com"},
                                event=event("Interview"), callback_url=callback_url)

    # A reply arrives at the instance (here as a signed notification at its webhook route).
    notification = json.dumps({"notification": {"type": "smart_invite"}, "smart_invite": {
        "smart_invite_id": "interview-9",
        "recipient": {"email": "cronofy@example.com", "status": "accepted"}}}).encode()
    answer = requests.post(live_server.url + "/webhooks/smart-invites", data=notification, timeout=10, headers={
        "Content-Type": "application/json", "Cronofy-HMAC-SHA256": sign(notification, "test-cronofy-secret")})
    assert answer.status_code == 200

    [callback] = http_recorder.wait(1)  # the worker process delivers it
    body = callback["body"].decode()
    assert cronofy.hmac_valid(callback["headers"]["Cronofy-HMAC-SHA256"], body)
    assert json.loads(body) == {"notification": {"type": "smart_invite"}, "smart_invite": {
        "smart_invite_id": "interview-9", "callback_url": callback_url,
        "recipient": {"email": "cronofy@example.com", "status": "accepted"},
        "reply": {"email": "cronofy@example.com", "status": "accepted"}}}
    assert cronofy.get_smart_invite("interview-9", "cronofy@example.com")["recipient"]["status"] == "accepted"
