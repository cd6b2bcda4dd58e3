"""``/v1/smart_invites`` as an API client sees it: shapes from the seed documents,
errors in Cronofy's form, one set of invites shared with the dashboard."""
from __future__ import annotations

import copy
import json

import pytest
from icalendar import Calendar
from sqlalchemy import func, select

from smart_invites_ui.domain import InviteSource
from smart_invites_ui.extensions import db
from smart_invites_ui.models import (ApiClient, Invite, NotificationSource, OutboxKind, OutboxMessage, Role)
from smart_invites_ui.services import api_clients, providers
from smart_invites_ui.services.notifications import apply_notification
from tests.conftest import make_invite

SINGLE = {
    "recipient": {"email": "cronofy@example.com"},
    "smart_invite_id": "your-unique-identifier-for-invite",
    "event": {
        "summary": "Board meeting",
        "description": "Discuss plans for the next quarter.",
        "start": "2030-10-05T09:30:00Z",
        "end": "2030-10-05T10:00:00Z",
        "tzid": "Europe/London",
        "location": {"description": "Board room"},
    },
    "callback_url": "https://yourapp.example.com/smart_invite/notifications",
}

MULTI = {
    "method": "request",
    "recipients": [{"email": "cronofy@example.com"}, {"email": "cronofy@example.org"}],
    "smart_invite_id": "your-unique-id-for-invite",
    "callback_url": "https://yourapp.example.com/cronofy/smart_invite/notifications",
    "event": {
        "summary": "Board meeting",
        "description": "Discuss plans for the next quarter.",
        "start": "2030-10-14T09:30:00Z",
        "end": "2030-10-14T10:00:00Z",
        "tzid": "Europe/London",
        "location": {"description": "Board room"},
    },
    "organizer": {"name": "Smart invite application"},
}

LONDON = "Europe/London"


class Api:
    """An API client of the app under test."""

    def __init__(self, http, secret: str, record: ApiClient):
        self.http = http
        self.secret = secret
        self.record = record

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.secret}"}

    def post(self, body, **kwargs):
        return self.http.post("/v1/smart_invites", json=body, headers=self.headers(), **kwargs)

    def get(self, **params):
        return self.http.get("/v1/smart_invites", query_string=params, headers=self.headers())


@pytest.fixture
def api(app, client):
    record, secret = api_clients.create_client("Booking website")
    return Api(client, secret, record)


def vevent(ics: str):
    calendar = Calendar.from_ical(ics.encode())
    [event] = calendar.walk("VEVENT")
    return calendar, event


def attendees(event) -> set[str]:
    values = event.get("ATTENDEE")
    values = values if isinstance(values, list) else [values] if values else []
    return {str(v).lower().removeprefix("mailto:") for v in values}


def emails_queued() -> int:
    return db.session.scalar(select(func.count()).select_from(OutboxMessage)
                             .where(OutboxMessage.kind == OutboxKind.EMAIL))


def error_fields(response) -> set[str]:
    body = response.get_json()
    for field, items in body["errors"].items():
        assert items and all(set(i) == {"key", "description"} and i["key"].startswith("errors.") for i in items), field
    return set(body["errors"])


# --------------------------------------------------------------------------- authentication


def test_a_bearer_key_is_required(api, client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {api.secret}"},
                    {"Authorization": "Bearer "}):
        response = client.post("/v1/smart_invites", json=SINGLE, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "authorization" in response.get_json()["errors"]
        response = client.get("/v1/smart_invites", query_string={"smart_invite_id": "x"}, headers=headers)
        assert response.status_code == 401
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 0


def test_a_revoked_key_stops_working(api):
    assert api.post(SINGLE).status_code == 200
    api_clients.revoke(api.record)
    assert api.post(SINGLE).status_code == 401
    assert api.get(smart_invite_id=SINGLE["smart_invite_id"]).status_code == 401


# --------------------------------------------------------------------------- create


def test_create_single_recipient_as_the_seed_shows(api):
    response = api.post(SINGLE)
    assert response.status_code == 200
    data = response.get_json()
    assert list(data) == ["recipient", "smart_invite_id", "callback_url", "event", "attachments"]
    assert data["recipient"] == {"email": "cronofy@example.com", "status": "pending"}
    assert data["smart_invite_id"] == SINGLE["smart_invite_id"]
    assert data["callback_url"] == SINGLE["callback_url"]
    assert data["event"] == {
        "summary": "Board meeting",
        "description": "Discuss plans for the next quarter.",
        "start": {"time": "2030-10-05T09:30:00Z", "tzid": LONDON},
        "end": {"time": "2030-10-05T10:00:00Z", "tzid": LONDON},
        "location": {"description": "Board room"},
    }
    calendar, event = vevent(data["attachments"]["icalendar"])
    assert str(calendar["METHOD"]) == "REQUEST"
    assert attendees(event) == {"cronofy@example.com"}
    assert int(event["SEQUENCE"]) == 0

    invite = db.session.scalar(select(Invite))
    assert invite.source == InviteSource.API and invite.api_client_id == api.record.id
    assert invite.single_recipient and invite.callback_url == SINGLE["callback_url"]
    assert str(event["UID"]) == invite.uid
    # The API client sends the ICS itself, as with Cronofy: nothing is emailed from here.
    assert emails_queued() == 0


def test_create_multiple_recipients_as_the_seed_shows(api):
    response = api.post(MULTI)
    assert response.status_code == 200
    data = response.get_json()
    assert list(data) == ["recipients", "smart_invite_id", "callback_url", "event", "organizer", "attachments"]
    assert data["recipients"] == [{"email": "cronofy@example.com", "status": "pending"},
                                  {"email": "cronofy@example.org", "status": "pending"}]
    assert data["event"]["start"] == {"time": "2030-10-14T09:30:00Z", "tzid": LONDON}
    assert data["organizer"] == {"name": "Smart invite application"}
    _, event = vevent(data["attachments"]["icalendar"])
    assert attendees(event) == {"cronofy@example.com", "cronofy@example.org"}
    assert event["ORGANIZER"].params["CN"] == "Smart invite application"
    assert emails_queued() == 0


@pytest.mark.parametrize("start, end, expected_start, expected_end", [
    ("2030-10-14T09:30:00+02:00", "2030-10-14T10:00:00+02:00",
     {"time": "2030-10-14T07:30:00Z", "tzid": LONDON}, {"time": "2030-10-14T08:00:00Z", "tzid": LONDON}),
    ("2030-10-14T09:30:00", "2030-10-14T10:00:00",  # no offset: in the event's tzid (BST)
     {"time": "2030-10-14T08:30:00Z", "tzid": LONDON}, {"time": "2030-10-14T09:00:00Z", "tzid": LONDON}),
    ({"time": "2030-10-14T09:30:00", "tzid": "Europe/Paris"}, {"time": "2030-10-14T10:00:00", "tzid": "Europe/Paris"},
     {"time": "2030-10-14T07:30:00Z", "tzid": LONDON}, {"time": "2030-10-14T08:00:00Z", "tzid": LONDON}),
    ("2030-10-14", "2030-10-15",
     {"time": "2030-10-14", "tzid": LONDON}, {"time": "2030-10-15", "tzid": LONDON}),
])
def test_start_and_end_in_every_accepted_form_come_back_as_time_and_tzid(api, start, end, expected_start,
                                                                          expected_end):
    body = copy.deepcopy(MULTI)
    body["event"].update(start=start, end=end)
    data = api.post(body).get_json()
    assert data["event"]["start"] == expected_start
    assert data["event"]["end"] == expected_end
    assert api.get(smart_invite_id=body["smart_invite_id"]).get_json()["event"]["start"] == expected_start


def test_an_object_start_without_an_event_tzid_keeps_its_own_zone(api):
    body = copy.deepcopy(MULTI)
    del body["event"]["tzid"]
    body["event"].update(start={"time": "2030-10-14T09:30:00+02:00", "tzid": "Europe/Paris"},
                         end={"time": "2030-10-14T10:00:00+02:00", "tzid": "Europe/Paris"})
    data = api.post(body).get_json()
    assert data["event"]["start"] == {"time": "2030-10-14T07:30:00Z", "tzid": "Europe/Paris"}
    _, event = vevent(data["attachments"]["icalendar"])
    assert str(event["DTSTART"].params["TZID"]) == "Europe/Paris"


def test_all_day_event_is_written_with_dates(api):
    body = copy.deepcopy(SINGLE)
    body["event"].update(start="2030-10-14", end="2030-10-15")
    _, event = vevent(api.post(body).get_json()["attachments"]["icalendar"])
    assert event["DTSTART"].to_ical() == b"20301014"


# --------------------------------------------------------------------------- update


def sequence_of(response) -> int:
    return int(vevent(response.get_json()["attachments"]["icalendar"])[1]["SEQUENCE"])


def test_an_update_bumps_sequence_only_when_something_changed(api):
    assert sequence_of(api.post(MULTI)) == 0
    assert sequence_of(api.post(MULTI)) == 0  # the same again: nothing changed
    version = db.session.scalar(select(Invite.version))

    moved = copy.deepcopy(MULTI)
    moved["event"].update(start="2030-10-14T11:00:00Z", end="2030-10-14T11:30:00Z", summary="Board meeting (moved)")
    response = api.post(moved)
    assert sequence_of(response) == 1
    assert response.get_json()["event"]["summary"] == "Board meeting (moved)"
    assert sequence_of(api.post(moved)) == 1
    db.session.expire_all()
    assert db.session.scalar(select(Invite.version)) > version  # the dashboard's live page updates
    assert emails_queued() == 0


def test_posting_again_with_another_recipient_invites_them_too(api):
    api.post(SINGLE)
    other = copy.deepcopy(SINGLE)
    other["recipient"] = {"email": "Second@Example.com"}
    response = api.post(other)
    assert response.status_code == 200
    assert response.get_json()["recipient"] == {"email": "second@example.com", "status": "pending"}
    assert attendees(vevent(response.get_json()["attachments"]["icalendar"])[1]) == {
        "cronofy@example.com", "second@example.com"}
    everyone = api.get(smart_invite_id=SINGLE["smart_invite_id"]).get_json()["recipients"]
    assert [r["email"] for r in everyone] == ["cronofy@example.com", "second@example.com"]


def test_a_cancelled_invite_cannot_be_updated(api):
    api.post(MULTI)
    api.post({"method": "cancel", "smart_invite_id": MULTI["smart_invite_id"], "recipients": MULTI["recipients"]})
    response = api.post(MULTI)
    assert response.status_code == 422
    assert error_fields(response) == {"smart_invite_id"}


# --------------------------------------------------------------------------- read


def test_get_single_recipient_form_has_status_and_replies(api):
    api.post(MULTI)
    reference = MULTI["smart_invite_id"]
    apply_notification({"smart_invite": {"smart_invite_id": reference, "recipient": {
        "email": "cronofy@example.com", "status": "tentative", "comment": "Maybe",
        "proposal": {"start": {"time": "2030-10-14T11:00:00Z", "tzid": LONDON},
                     "end": {"time": "2030-10-14T11:30:00Z", "tzid": LONDON}}}}}, source=NotificationSource.EMAIL)
    apply_notification({"smart_invite": {"smart_invite_id": reference, "recipient": {
        "email": "team@example.com", "status": "declined"}}}, source=NotificationSource.EMAIL)

    response = api.get(smart_invite_id=reference, recipient_email="Cronofy@Example.com")
    assert response.status_code == 200
    data = response.get_json()
    assert list(data)[:2] == ["recipient", "replies"] and "recipients" not in data and "attachments" not in data
    proposal = {"start": {"time": "2030-10-14T11:00:00Z", "tzid": LONDON},
                "end": {"time": "2030-10-14T11:30:00Z", "tzid": LONDON}}
    assert data["recipient"] == {"email": "cronofy@example.com", "status": "tentative", "comment": "Maybe",
                                 "proposal": proposal}
    # Replies include someone who was not invited (an alias or a shared mailbox, as the seed says).
    assert data["replies"] == [
        {"email": "cronofy@example.com", "status": "tentative", "comment": "Maybe", "proposal": proposal},
        {"email": "team@example.com", "status": "declined"},
    ]


def test_get_without_recipient_email_answers_in_the_recipients_form(api):
    api.post(MULTI)
    data = api.get(smart_invite_id=MULTI["smart_invite_id"]).get_json()
    assert list(data) == ["recipients", "smart_invite_id", "callback_url", "event", "organizer"]
    assert [r["status"] for r in data["recipients"]] == ["pending", "pending"]

    with_ics = api.get(smart_invite_id=MULTI["smart_invite_id"], include_ics="true").get_json()
    calendar, event = vevent(with_ics["attachments"]["icalendar"])
    assert str(calendar["METHOD"]) == "REQUEST" and int(event["SEQUENCE"]) == 0


def test_get_tolerates_the_empty_json_body_the_python_client_sends(api, client):
    api.post(SINGLE)
    response = client.get("/v1/smart_invites", query_string={"smart_invite_id": SINGLE["smart_invite_id"],
                                                             "recipient_email": "cronofy@example.com"},
                          data="{}", content_type="application/json", headers=api.headers())
    assert response.status_code == 200
    assert response.get_json()["recipient"]["status"] == "pending"


def test_get_unknown_invite_or_recipient_is_404(api):
    api.post(SINGLE)
    response = api.get(smart_invite_id="no-such-invite")
    assert response.status_code == 404 and error_fields(response) == {"smart_invite_id"}
    response = api.get(smart_invite_id=SINGLE["smart_invite_id"], recipient_email="stranger@example.com")
    assert response.status_code == 404 and error_fields(response) == {"recipient_email"}
    response = api.get()
    assert response.status_code == 422 and error_fields(response) == {"smart_invite_id"}


# --------------------------------------------------------------------------- remove and cancel


def test_remove_answers_with_both_attachments_and_the_removed_status(api):
    api.post(MULTI)
    response = api.post({"method": "remove", "recipient": {"email": "cronofy@example.org"},
                         "smart_invite_id": MULTI["smart_invite_id"]})
    assert response.status_code == 200
    data = response.get_json()
    assert data["recipients"] == [{"email": "cronofy@example.com", "status": "pending"},
                                  {"email": "cronofy@example.org", "status": "removed"}]
    calendar, event = vevent(data["attachments"]["icalendar"])
    assert str(calendar["METHOD"]) == "REQUEST" and attendees(event) == {"cronofy@example.com"}
    assert int(event["SEQUENCE"]) == 1
    removed = data["attachments"]["removed"]
    assert removed["recipient"] == {"email": "cronofy@example.org"}
    calendar, event = vevent(removed["icalendar"])
    assert str(calendar["METHOD"]) == "CANCEL" and attendees(event) == {"cronofy@example.org"}
    assert int(event["SEQUENCE"]) == 1

    again = api.post({"method": "remove", "recipient": {"email": "cronofy@example.org"},
                      "smart_invite_id": MULTI["smart_invite_id"]})
    assert again.status_code == 200 and sequence_of(again) == 1  # removing twice changes nothing

    single = api.get(smart_invite_id=MULTI["smart_invite_id"], recipient_email="cronofy@example.org",
                     include_ics="true").get_json()
    assert single["recipient"]["status"] == "removed"
    assert str(vevent(single["attachments"]["icalendar"])[0]["METHOD"]) == "CANCEL"
    assert emails_queued() == 0


def test_remove_someone_not_invited_or_from_an_unknown_invite(api):
    api.post(MULTI)
    response = api.post({"method": "remove", "recipient": {"email": "stranger@example.com"},
                         "smart_invite_id": MULTI["smart_invite_id"]})
    assert response.status_code == 422 and error_fields(response) == {"recipient.email"}
    response = api.post({"method": "remove", "recipient": {"email": "cronofy@example.com"},
                         "smart_invite_id": "unknown"})
    assert response.status_code == 404


def test_cancel_answers_with_the_cancellation(api):
    api.post(MULTI)
    cancel = {"method": "cancel", "recipients": MULTI["recipients"], "smart_invite_id": MULTI["smart_invite_id"]}
    response = api.post(cancel)
    assert response.status_code == 200
    data = response.get_json()
    assert [r["status"] for r in data["recipients"]] == ["pending", "pending"]
    calendar, event = vevent(data["attachments"]["icalendar"])
    assert str(calendar["METHOD"]) == "CANCEL" and str(event["STATUS"]) == "CANCELLED"
    assert int(event["SEQUENCE"]) == 1
    assert attendees(event) == {"cronofy@example.com", "cronofy@example.org"}
    assert sequence_of(api.post(cancel)) == 1  # cancelling twice changes nothing
    assert db.session.scalar(select(Invite)).is_cancelled
    assert emails_queued() == 0


# --------------------------------------------------------------------------- errors


def _without(path: str):
    def change(body):
        *parents, last = path.split(".")
        target = body
        for key in parents:
            target = target[key]
        del target[last]
    return change


def _set(path: str, value):
    def change(body):
        *parents, last = path.split(".")
        target = body
        for key in parents:
            target = target[key]
        target[last] = value
    return change


@pytest.mark.parametrize("change, field", [
    (_without("event"), "event"),
    (_without("event.summary"), "event.summary"),
    (_without("event.start"), "event.start"),
    (_without("event.end"), "event.end"),
    (_set("recipient", {"email": "not an address"}), "recipient.email"),
    (_set("event.end", "2030-10-05T09:00:00Z"), "event.end"),
    (_set("event.end", "2030-10-05T09:30:00Z"), "event.end"),
    (_set("event.tzid", "Mars/Olympus_Mons"), "event.tzid"),
    (_set("smart_invite_id", ""), "smart_invite_id"),
    (_set("smart_invite_id", "x" * 257), "smart_invite_id"),
    (_set("smart_invite_id", "line\nbreak"), "smart_invite_id"),
    (_set("smart_invite_id", "nul\x00"), "smart_invite_id"),
])
def test_invalid_fields_get_422_in_cronofys_shape(api, change, field):
    body = copy.deepcopy(SINGLE)
    change(body)
    response = api.post(body)
    assert response.status_code == 422
    assert error_fields(response) == {field}
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 0


def test_every_invalid_field_is_listed_at_once(api):
    body = {"recipients": [{"email": "ok@example.com"}, {"email": "bad"}], "smart_invite_id": "",
            "event": {"start": "2030-10-05T09:30:00Z", "end": "2030-10-05T09:00:00Z", "tzid": "Nowhere/Land"}}
    response = api.post(body)
    assert response.status_code == 422
    assert {"recipients[1].email", "smart_invite_id", "event.summary", "event.tzid"} <= error_fields(response)


def test_a_smart_invite_id_of_256_characters_is_fine(api):
    body = copy.deepcopy(SINGLE)
    body["smart_invite_id"] = "é" * 256
    assert api.post(body).status_code == 200
    assert api.get(smart_invite_id="é" * 256).status_code == 200


def test_bodies_over_one_megabyte_are_refused(api, client):
    body = copy.deepcopy(SINGLE)
    body["event"]["description"] = "x" * (1024 * 1024)
    response = api.post(body)
    assert response.status_code == 413
    assert "errors" in response.get_json()
    # Without a key the answer is 401, whatever the size.
    assert client.post("/v1/smart_invites", json=body).status_code == 401


def test_malformed_json_is_a_400(api, client):
    response = client.post("/v1/smart_invites", data=b"{not json", content_type="application/json",
                           headers=api.headers())
    assert response.status_code == 400
    assert "errors" in response.get_json()
    response = client.post("/v1/smart_invites", data=b"[1, 2]", content_type="application/json",
                           headers=api.headers())
    assert response.status_code == 422


def test_a_request_is_one_transaction(api, monkeypatch):
    api.post(MULTI)

    class Failing(providers.LocalProvider):
        def update(self, invite):
            raise providers.ProviderError("upstream down")

    monkeypatch.setattr(providers, "current", lambda: Failing())
    changed = copy.deepcopy(MULTI)
    changed["event"]["summary"] = "Changed"
    changed["recipients"].append({"email": "third@example.com"})
    response = api.post(changed)
    assert response.status_code == 502
    db.session.expire_all()
    invite = db.session.scalar(select(Invite))
    assert invite.summary == "Board meeting" and invite.sequence == 0
    assert [r.email for r in invite.recipients] == ["cronofy@example.com", "cronofy@example.org"]


# --------------------------------------------------------------------------- one set of invites


def test_api_invites_appear_on_the_dashboard_with_the_clients_name(api, auth, client, fast_passwords):
    api.post(MULTI)
    auth.login("staff@example.org")
    listing = client.get("/invites").get_data(as_text=True)
    assert "API: Booking website" in listing
    invite = db.session.scalar(select(Invite))
    page = client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert "Booking website" in page and 'data-email="cronofy@example.org"' in page


def test_dashboard_invites_can_be_read_through_the_api(api):
    invite = make_invite(emails=("ann@example.org", "bob@example.org"), reference="DASH-1")
    response = api.get(smart_invite_id="DASH-1", include_ics="true")
    assert response.status_code == 200
    data = response.get_json()
    assert [r["email"] for r in data["recipients"]] == ["ann@example.org", "bob@example.org"]
    assert "callback_url" not in data
    assert str(vevent(data["attachments"]["icalendar"])[1]["UID"]) == invite.uid
    single = api.get(smart_invite_id="DASH-1", recipient_email="ann@example.org").get_json()
    assert single["recipient"] == {"email": "ann@example.org", "status": "pending"} and single["replies"] == []


def test_another_clients_callback_url_cannot_be_taken_over(api):
    api.post(MULTI)
    _, other_secret = api_clients.create_client("Someone else")
    other = Api(api.http, other_secret, None)
    hijack = copy.deepcopy(MULTI)
    hijack["callback_url"] = "https://evil.example.com/cb"
    response = other.post(hijack)
    assert response.status_code == 422 and error_fields(response) == {"callback_url"}
    # Reading it is fine: one set of invites per instance.
    assert other.get(smart_invite_id=MULTI["smart_invite_id"]).status_code == 200


def test_status_changes_queue_signed_callbacks_in_the_seeds_shape(api):
    api.post(SINGLE)
    api.post(MULTI)
    for reference, email in ((SINGLE["smart_invite_id"], "cronofy@example.com"),
                             (MULTI["smart_invite_id"], "cronofy@example.org")):
        apply_notification({"smart_invite": {"smart_invite_id": reference,
                                             "recipient": {"email": email, "status": "accepted"}}},
                           source=NotificationSource.EMAIL)
    single, multi = db.session.scalars(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.CALLBACK)
                                       .order_by(OutboxMessage.id)).all()
    assert single.target == SINGLE["callback_url"] and single.api_client_id == api.record.id
    assert json.loads(single.payload) == {"notification": {"type": "smart_invite"}, "smart_invite": {
        "smart_invite_id": SINGLE["smart_invite_id"], "callback_url": SINGLE["callback_url"],
        "recipient": {"email": "cronofy@example.com", "status": "accepted"},
        "reply": {"email": "cronofy@example.com", "status": "accepted"}}}
    body = json.loads(multi.payload)["smart_invite"]
    assert body["recipients"] == [{"email": "cronofy@example.com", "status": "pending"},
                                  {"email": "cronofy@example.org", "status": "accepted"}]
    assert body["reply"] == {"email": "cronofy@example.org", "status": "accepted"}


# --------------------------------------------------------------------------- keys: CLI and admin pages


def test_cli_prints_the_new_secret_alone_on_its_last_line(runner, client):
    result = runner.invoke(args=["api-keys", "create", "Clinic website"])
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    record = api_clients.authenticate(secret)
    assert record is not None and record.name == "Clinic website"
    assert secret.encode() not in record.secret_encrypted  # encrypted at rest
    assert Api(client, secret, record).get(smart_invite_id="x").status_code == 404

    failed = runner.invoke(args=["api-keys", "create", "   "])
    assert failed.exit_code == 1


def test_admin_creates_sees_the_secret_once_and_revokes(api, auth, client, fast_passwords):
    auth.login("admin@example.org", role=Role.ADMIN)
    response = auth.post("/admin/api-clients", {"name": "Front desk tablet"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    record = db.session.scalar(select(ApiClient).where(ApiClient.name == "Front desk tablet"))
    secret = api_clients.decrypt_secret(record)
    assert secret in page
    listing = client.get("/admin/api-clients").get_data(as_text=True)
    assert "Front desk tablet" in listing and "Booking website" in listing
    assert secret not in listing  # shown once only

    tablet = Api(client, secret, record)
    assert tablet.post(SINGLE).status_code == 200
    assert auth.post(f"/admin/api-clients/{record.id}/revoke").status_code == 302
    assert tablet.post(SINGLE).status_code == 401
    assert api.post(SINGLE).status_code == 200  # other clients are unaffected
    assert "Revoked" in client.get("/admin/api-clients").get_data(as_text=True)


def test_an_empty_name_is_refused(auth, fast_passwords):
    auth.login("admin@example.org", role=Role.ADMIN)
    response = auth.post("/admin/api-clients", {"name": ""})
    assert response.status_code == 422
    assert db.session.scalar(select(func.count()).select_from(ApiClient)) == 0


def test_staff_cannot_manage_api_clients_or_see_callbacks(auth, client, fast_passwords):
    auth.login("staff@example.org", role=Role.STAFF)
    assert client.get("/admin/api-clients").status_code == 403
    assert client.get("/admin/callbacks").status_code == 403
    assert auth.post("/admin/api-clients", {"name": "Sneaky"}).status_code == 403
    nav = client.get("/invites").get_data(as_text=True)
    assert "API clients" not in nav


def test_admins_find_the_pages_in_the_navigation(auth, client, fast_passwords):
    auth.login("admin@example.org", role=Role.ADMIN)
    nav = client.get("/invites").get_data(as_text=True)
    assert 'href="/admin/api-clients"' in nav and 'href="/admin/callbacks"' in nav
