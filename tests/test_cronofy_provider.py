"""SMART_INVITES_PROVIDER=cronofy: the dashboard tells a Cronofy-compatible API about
every change and emails the ICS it returns; when the API fails, staff see why and
nothing is queued. The API here is a fake on loopback that records what it gets."""
from __future__ import annotations

import json
import time
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from sqlalchemy import func, select

from smart_invites_ui.extensions import db
from smart_invites_ui.models import Invite, OutboxKind, OutboxMessage
from tests.conftest import free_port

FAKE_UID = "provider-made-uid@api.example.org"


def fake_ics(method: str, marker: str) -> str:
    status = "CANCELLED" if method == "CANCEL" else "CONFIRMED"
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Fake provider//EN\r\n"
            f"METHOD:{method}\r\nBEGIN:VEVENT\r\nUID:{FAKE_UID}\r\nSEQUENCE:0\r\n"
            "DTSTAMP:20300101T000000Z\r\nDTSTART:20310304T100000Z\r\nDTEND:20310304T104500Z\r\n"
            f"SUMMARY:{marker}\r\nSTATUS:{status}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


class FakeApi:
    """Answers like /v1/smart_invites; each ICS names the call that made it (its SUMMARY)."""

    def __init__(self, recorder):
        self.recorder = recorder
        self.calls = 0
        self.failure = None  # (status, body) or "timeout"
        recorder.respond = self.respond

    def respond(self, request):
        if self.failure == "timeout":
            time.sleep(2)
            return 200, b"{}"
        if self.failure:
            return self.failure
        self.calls += 1
        body = json.loads(request["body"])
        marker = f"call-{self.calls}-{body['method']}"
        if body["method"] == "cancel":
            return 200, {"attachments": {"icalendar": fake_ics("CANCEL", marker)}}
        data = {"attachments": {"icalendar": fake_ics("REQUEST", marker)}}
        if body["method"] == "remove":
            data["attachments"]["removed"] = {"recipient": body["recipient"],
                                              "icalendar": fake_ics("CANCEL", marker + "-removed")}
        return 200, data

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.recorder.requests]


@pytest.fixture
def provider(app, http_recorder):
    app.config.update(SMART_INVITES_PROVIDER="cronofy", CRONOFY_API_URL=http_recorder.url,
                      CRONOFY_CLIENT_SECRETS=("first-key", "second-key"),
                      PUBLIC_BASE_URL="https://dash.example.org", CRONOFY_TIMEOUT_SECONDS=1)
    return FakeApi(http_recorder)


@pytest.fixture
def staff(auth, fast_passwords):
    auth.login("reception@example.org")
    return auth


NEW_INVITE = {"summary": "Physio assessment", "start": "2031-03-04T10:00", "end": "2031-03-04T10:45",
              "tzid": "Europe/London", "location": "Room 2", "description": "Wear loose clothes",
              "organizer_name": "Riverside Clinic", "recipients": "ann@example.org\nbob@example.org",
              "smart_invite_id": "PHYSIO-1"}


def create(staff, **changes):
    return staff.post("/invites/new", {**NEW_INVITE, **changes})


def emails() -> list[OutboxMessage]:
    return db.session.scalars(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.EMAIL)
                              .order_by(OutboxMessage.id)).all()


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def calendar_part(rendered: bytes) -> str:
    message = message_from_bytes(rendered, policy=default_policy)
    return next(p.get_content() for p in message.walk() if p.get_content_type() == "text/calendar")


def test_create_goes_through_the_provider_and_emails_the_ics_it_returns(provider, staff, deliver):
    response = create(staff)
    assert response.status_code == 302, response.get_data(as_text=True)

    [request] = provider.recorder.requests
    assert request["path"] == "/v1/smart_invites"
    assert request["headers"]["Authorization"] == "Bearer first-key"  # the first of CRONOFY_CLIENT_SECRET
    body = json.loads(request["body"])
    assert body == {
        "method": "request",
        "smart_invite_id": "PHYSIO-1",
        "recipients": [{"email": "ann@example.org"}, {"email": "bob@example.org"}],
        "event": {"summary": "Physio assessment", "description": "Wear loose clothes",
                  "start": {"time": "2031-03-04T10:00:00Z", "tzid": "Europe/London"},
                  "end": {"time": "2031-03-04T10:45:00Z", "tzid": "Europe/London"},
                  "tzid": "Europe/London", "location": {"description": "Room 2"}},
        "callback_url": "https://dash.example.org/webhooks/smart-invites",
        "organizer": {"name": "Riverside Clinic"},
    }

    invite = db.session.scalar(select(Invite))
    returned = fake_ics("REQUEST", "call-1-request").encode()
    assert invite.provider_ics == returned
    assert invite.uid == FAKE_UID  # what we build ourselves (a download) is the same event
    assert [(m.target, m.method, m.payload) for m in emails()] == [
        ("ann@example.org", "REQUEST", returned), ("bob@example.org", "REQUEST", returned)]

    deliver()
    for message in emails():
        assert "SUMMARY:call-1-request" in calendar_part(message.rendered)


def test_without_public_base_url_the_callback_goes_to_the_request_host(app, provider, staff):
    app.config["PUBLIC_BASE_URL"] = ""
    assert create(staff).status_code == 302
    assert provider.bodies()[0]["callback_url"] == "http://localhost/webhooks/smart-invites"


def test_edit_add_remove_and_cancel_go_through_the_provider(provider, staff):
    create(staff)
    invite = db.session.scalar(select(Invite))
    ann, bob = invite.recipients

    edit = {k: v for k, v in NEW_INVITE.items() if k not in ("recipients", "smart_invite_id")}
    assert staff.post(f"/invites/{invite.id}/edit", {**edit, "summary": "Physio review"}).status_code == 302
    assert staff.post(f"/invites/{invite.id}/recipients", {"recipients": "cat@example.org"}).status_code == 302
    assert staff.post(f"/invites/{invite.id}/recipients/{bob.id}/remove").status_code == 302
    assert staff.post(f"/invites/{invite.id}/cancel").status_code == 302

    create_body, edit_body, add_body, remove_body, cancel_body = provider.bodies()
    assert edit_body["method"] == "request" and edit_body["event"]["summary"] == "Physio review"
    assert [r["email"] for r in add_body["recipients"]] == ["ann@example.org", "bob@example.org", "cat@example.org"]
    assert remove_body == {"method": "remove", "smart_invite_id": "PHYSIO-1", "recipient": {"email": "bob@example.org"}}
    assert cancel_body == {"method": "cancel", "smart_invite_id": "PHYSIO-1",
                           "recipients": [{"email": "ann@example.org"}, {"email": "cat@example.org"}]}

    sent = {(m.target, m.method): m.payload.decode() for m in emails() if m.state.value != "superseded"}
    assert "SUMMARY:call-4-remove-removed" in sent[("bob@example.org", "CANCEL")]
    assert "SUMMARY:call-5-cancel" in sent[("ann@example.org", "CANCEL")]
    assert "SUMMARY:call-5-cancel" in sent[("cat@example.org", "CANCEL")]
    db.session.expire_all()
    assert invite.is_cancelled


ERRORS_422 = {"errors": {"event.summary": [{"key": "errors.required", "description": "required"}],
                         "recipients[1].email": [{"key": "errors.invalid", "description": "not a valid email"}]}}


@pytest.mark.parametrize("failure, message", [
    ((422, json.dumps(ERRORS_422).encode()), "event.summary: required; recipients[1].email: not a valid email"),
    ((500, b"oops"), "failed (HTTP 500)"),
    ((503, b""), "failed (HTTP 503)"),
    ((401, b"{}"), "refused our API key"),
    ("timeout", "did not answer within 1 second;"),
])
def test_a_failing_provider_shows_staff_why_and_queues_nothing(provider, staff, failure, message):
    provider.failure = failure
    response = create(staff)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert message in page.replace("&#39;", "'")
    assert count(Invite) == 0 and count(OutboxMessage) == 0


def test_an_unreachable_provider_changes_nothing(app, provider, staff):
    app.config["CRONOFY_API_URL"] = f"http://127.0.0.1:{free_port()}"
    response = create(staff)
    assert response.status_code == 422 and "could not be reached" in response.get_data(as_text=True)
    assert count(Invite) == 0 and count(OutboxMessage) == 0


def test_refused_changes_leave_the_invite_as_it_was(provider, staff, client):
    create(staff)
    invite = db.session.scalar(select(Invite))
    before = (invite.summary, invite.sequence, invite.provider_ics, len(emails()))
    provider.failure = (503, b"")

    edit = {k: v for k, v in NEW_INVITE.items() if k not in ("recipients", "smart_invite_id")}
    response = staff.post(f"/invites/{invite.id}/edit", {**edit, "summary": "Physio review"})
    assert response.status_code == 422 and "HTTP 503" in response.get_data(as_text=True)

    response = staff.post(f"/invites/{invite.id}/cancel")
    assert response.status_code == 302
    assert "HTTP 503" in client.get(response.headers["Location"]).get_data(as_text=True)

    db.session.expire_all()
    assert (invite.summary, invite.sequence, invite.provider_ics, len(emails())) == before
    assert not invite.is_cancelled
