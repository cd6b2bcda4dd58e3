"""Request validation and JSON shapes for /v1/smart_invites (smart_invites_ui.api.schema)."""
from __future__ import annotations

import copy
import datetime as dt
import json

import pycronofy
import pytest
import requests

from smart_invites_ui.api.schema import (
    ApiRequest,
    ApiValidationError,
    event_time_json,
    parse_api_request,
    parse_event_time,
    proposal_json,
)
from smart_invites_ui.domain import EventData, Proposal

UTC = dt.timezone.utc

# The seed documents' request bodies, verbatim apart from JSON syntax fixes.
SEED_SINGLE = {
    "recipient": {"email": "cronofy@example.com"},
    "smart_invite_id": "your-unique-identifier-for-invite",
    "event": {
        "summary": "Board meeting",
        "description": "Discuss plans for the next quarter.",
        "start": "2017-10-05T09:30:00Z",
        "end": "2017-10-05T10:00:00Z",
        "tzid": "Europe/London",
        "location": {"description": "Board room"},
    },
    "callback_url": "https://yourapp.com/smart_invite/notifications",
}

SEED_MULTI = {
    "method": "request",
    "recipients": [{"email": "cronofy@example.com"}, {"email": "cronofy@example.org"}],
    "smart_invite_id": "your-unique-id-for-invite",
    "callback_url": "https://yourapp.example.com/cronofy/smart_invite/notifications",
    "event": {
        "summary": "Board meeting",
        "description": "Discuss plans for the next quarter.",
        "start": "2024-10-14T09:30:00Z",
        "end": "2024-10-14T10:00:00Z",
        "tzid": "Europe/London",
        "location": {"description": "Board room"},
    },
    "organizer": {"name": "Smart invite application"},
}

SEED_CANCEL = {
    "method": "cancel",
    "recipients": [{"email": "cronofy@example.com"}, {"email": "cronofy@example.org"}],
    "smart_invite_id": "your-unique-id-for-invite",
}

SEED_REMOVE = {
    "method": "remove",
    "recipient": {"email": "cronofy@example.org"},
    "smart_invite_id": "your-unique-id-for-invite",
}


def body(**changes):
    """SEED_MULTI with top-level changes; a value of ... deletes the key."""
    b = copy.deepcopy(SEED_MULTI)
    for k, v in changes.items():
        if v is ...:
            b.pop(k, None)
        else:
            b[k] = v
    return b


def with_event(**changes):
    b = copy.deepcopy(SEED_MULTI)
    for k, v in changes.items():
        if v is ...:
            b["event"].pop(k, None)
        else:
            b["event"][k] = v
    return b


def errors_of(b) -> dict:
    with pytest.raises(ApiValidationError) as info:
        parse_api_request(b)
    errors = info.value.errors
    # 422 shape: every value a non-empty list of {"key": "errors.*", "description": str}
    assert errors
    for field, items in errors.items():
        assert isinstance(field, str) and items
        for item in items:
            assert set(item) == {"key", "description"}
            assert item["key"].startswith("errors.")
            assert isinstance(item["description"], str) and item["description"]
    assert info.value.as_json() == {"errors": errors}
    json.dumps(info.value.as_json())
    return errors


def keys(errors: dict, field: str) -> list[str]:
    return [e["key"] for e in errors[field]]


# --------------------------------------------------------------------------- seeds


def test_seed_single_recipient_request():
    r = parse_api_request(copy.deepcopy(SEED_SINGLE))
    assert r == ApiRequest(
        method="request",
        smart_invite_id="your-unique-identifier-for-invite",
        callback_url="https://yourapp.com/smart_invite/notifications",
        event=EventData(
            summary="Board meeting",
            description="Discuss plans for the next quarter.",
            start=dt.datetime(2017, 10, 5, 9, 30, tzinfo=UTC),
            end=dt.datetime(2017, 10, 5, 10, 0, tzinfo=UTC),
            tzid="Europe/London",
            location="Board room",
        ),
        recipients=("cronofy@example.com",),
        single=True,
        organizer_name="",
    )


def test_seed_multi_recipient_request():
    r = parse_api_request(copy.deepcopy(SEED_MULTI))
    assert r.method == "request"
    assert r.single is False
    assert r.recipients == ("cronofy@example.com", "cronofy@example.org")
    assert r.organizer_name == "Smart invite application"
    assert r.callback_url == "https://yourapp.example.com/cronofy/smart_invite/notifications"
    assert r.event.start == dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC)
    assert r.event.end == dt.datetime(2024, 10, 14, 10, 0, tzinfo=UTC)
    assert r.event.tzid == "Europe/London"
    assert r.event.all_day is False


def test_seed_cancel_and_remove():
    c = parse_api_request(copy.deepcopy(SEED_CANCEL))
    assert (c.method, c.event, c.single) == ("cancel", None, False)
    assert c.recipients == ("cronofy@example.com", "cronofy@example.org")
    r = parse_api_request(copy.deepcopy(SEED_REMOVE))
    assert (r.method, r.event, r.single, r.recipients) == ("remove", None, True, ("cronofy@example.org",))
    assert r.callback_url is None


def test_cancel_ignores_event_even_if_invalid():
    b = dict(SEED_CANCEL, event={"summary": ""})
    assert parse_api_request(b).event is None


def test_method_defaults_to_request():
    b = body(method=...)
    assert parse_api_request(b).method == "request"
    assert parse_api_request(body(method=None)).method == "request"


def test_recipients_lowercased_deduplicated_in_order():
    b = body(recipients=[
        {"email": "B@Example.org"},
        {"email": " a@example.com "},
        {"email": "b@example.ORG"},
    ])
    assert parse_api_request(b).recipients == ("b@example.org", "a@example.com")


def test_optional_event_fields_mapped():
    b = with_event(
        url="https://example.com/meeting",
        location={"description": "HQ", "lat": "51.5", "long": -0.12},
        reminders=[{"minutes": 10}, {"minutes": 0}, {"minutes": 40320}],
        transparency="transparent",
        color="#49BED8",
    )
    e = parse_api_request(b).event
    assert e.url == "https://example.com/meeting"
    assert (e.location, e.location_lat, e.location_long) == ("HQ", "51.5", "-0.12")
    assert e.reminders == (10, 0, 40320)
    assert e.transparency == "transparent"
    assert e.color == "#49BED8"


# --------------------------------------------------------------------------- validation


def test_body_not_an_object():
    for bad in (None, [], "x", 3):
        assert "body" in errors_of(bad)


def test_bad_method():
    errors = errors_of(body(method="delete"))
    assert keys(errors, "method") == ["errors.invalid"]


@pytest.mark.parametrize("value, key", [
    (..., "errors.required"),
    ("", "errors.required"),
    ("   ", "errors.required"),
    (None, "errors.required"),
    (123, "errors.invalid"),
    ("x" * 257, "errors.too_long"),
    ("abc\ndef", "errors.invalid"),
    ("abc\x00", "errors.invalid"),
    ("tab\there", "errors.invalid"),
])
def test_smart_invite_id_rules(value, key):
    assert keys(errors_of(body(smart_invite_id=value)), "smart_invite_id") == [key]


def test_smart_invite_id_limits_ok():
    assert parse_api_request(body(smart_invite_id="x" * 256)).smart_invite_id == "x" * 256
    assert parse_api_request(body(smart_invite_id="ünïcode id/42")).smart_invite_id == "ünïcode id/42"


@pytest.mark.parametrize("missing", ["summary", "start", "end"])
def test_event_required_fields(missing):
    errors = errors_of(with_event(**{missing: ...}))
    assert keys(errors, f"event.{missing}") == ["errors.required"]


def test_event_required_and_type():
    assert keys(errors_of(body(event=...)), "event") == ["errors.required"]
    assert keys(errors_of(body(event="x")), "event") == ["errors.invalid"]
    assert keys(errors_of(with_event(summary="  ")), "event.summary") == ["errors.required"]
    assert keys(errors_of(with_event(summary=5)), "event.summary") == ["errors.invalid"]


def test_every_invalid_field_reported_at_once():
    b = {
        "smart_invite_id": "",
        "callback_url": "ftp://example.com/x",
        "recipients": [{"email": "ok@example.com"}, {"email": "not-an-email"}, {}],
        "event": {
            "summary": "",
            "start": "yesterday",
            "end": "2024-10-14T10:00:00Z",
            "tzid": "Mars/Olympus",
            "reminders": [{"minutes": -1}, {"minutes": "5"}],
            "transparency": "see-through",
        },
        "organizer": "me",
    }
    errors = errors_of(b)
    assert set(errors) >= {
        "smart_invite_id",
        "callback_url",
        "recipients[1].email",
        "recipients[2].email",
        "event.summary",
        "event.start",
        "event.tzid",
        "event.reminders[0].minutes",
        "event.reminders[1].minutes",
        "event.transparency",
        "organizer",
    }
    assert keys(errors, "recipients[2].email") == ["errors.required"]
    assert keys(errors, "recipients[1].email") == ["errors.invalid"]


def test_end_not_after_start():
    errors = errors_of(with_event(start="2024-10-14T10:00:00Z", end="2024-10-14T10:00:00Z"))
    assert keys(errors, "event.end") == ["errors.invalid"]
    errors = errors_of(with_event(start="2024-10-14T10:00:00Z", end="2024-10-14T09:00:00Z"))
    assert "after start" in errors["event.end"][0]["description"]
    errors = errors_of(with_event(start="2024-10-14", end="2024-10-14"))
    assert keys(errors, "event.end") == ["errors.invalid"]


def test_all_day_and_timed_cannot_mix():
    errors = errors_of(with_event(start="2024-10-14", end="2024-10-15T10:00:00Z"))
    assert keys(errors, "event.end") == ["errors.invalid"]


def test_unknown_tzids():
    assert keys(errors_of(with_event(tzid="Nowhere/City")), "event.tzid") == ["errors.invalid"]
    assert "event.tzid" in errors_of(with_event(tzid="../../etc/passwd"))
    errors = errors_of(with_event(start={"time": "2024-10-14T09:30:00", "tzid": "Bogus/Zone"}))
    assert keys(errors, "event.start.tzid") == ["errors.invalid"]
    errors = errors_of(with_event(end={"time": "2024-10-14T11:30:00", "tzid": 7}))
    assert keys(errors, "event.end.tzid") == ["errors.invalid"]


def test_start_object_without_time():
    errors = errors_of(with_event(start={"tzid": "Europe/London"}))
    assert keys(errors, "event.start.time") == ["errors.required"]


@pytest.mark.parametrize("value", [
    "2024-13-01", "2024-02-30", "tomorrow", "2024-10-14T25:00:00Z", 1728898200, ["2024-10-14"],
    "14/10/2024 09:30",
])
def test_bad_start_values(value):
    assert keys(errors_of(with_event(start=value)), "event.start") == ["errors.invalid"]


def test_recipient_required_when_neither_form():
    errors = errors_of(body(recipients=...))
    assert keys(errors, "recipient") == ["errors.required"]


def test_recipient_forms_errors():
    b = body(recipients=..., recipient={"email": "nope"})
    assert keys(errors_of(b), "recipient.email") == ["errors.invalid"]
    b = body(recipients=..., recipient={})
    assert keys(errors_of(b), "recipient.email") == ["errors.required"]
    b = body(recipients=..., recipient="a@example.com")
    assert keys(errors_of(b), "recipient") == ["errors.invalid"]
    assert keys(errors_of(body(recipients=[])), "recipients") == ["errors.required"]
    assert keys(errors_of(body(recipients={"email": "a@example.com"})), "recipients") == ["errors.invalid"]
    assert keys(errors_of(body(recipients=["a@example.com"])), "recipients[0]") == ["errors.invalid"]


def test_both_recipient_forms_rejected():
    b = body(recipient={"email": "a@example.com"})
    assert "recipients" in errors_of(b)


def test_email_with_display_name_rejected():
    b = body(recipients=[{"email": "Alice <alice@example.com>"}])
    assert "recipients[0].email" in errors_of(b)


def test_remove_requires_single_recipient():
    b = dict(SEED_REMOVE)
    del b["recipient"]
    b["recipients"] = [{"email": "a@example.com"}, {"email": "b@example.com"}]
    assert keys(errors_of(b), "recipients") == ["errors.invalid"]
    b["recipients"] = [{"email": "a@example.com"}]
    r = parse_api_request(b)
    assert r.recipients == ("a@example.com",)
    b = dict(SEED_REMOVE)
    del b["recipient"]
    assert "recipient" in errors_of(b)


@pytest.mark.parametrize("url", [
    "ftp://example.com/cb", "javascript:alert(1)", "/relative/path", "example.com/cb",
    "https://", "https://exa mple.com/", "http://example.com:99999/", 42,
])
def test_callback_url_must_be_absolute_http(url):
    assert keys(errors_of(body(callback_url=url)), "callback_url") == ["errors.invalid"]


def test_callback_url_ok_and_absent():
    assert parse_api_request(body(callback_url="http://10.0.0.5:8080/x?y=1")).callback_url == "http://10.0.0.5:8080/x?y=1"
    assert parse_api_request(body(callback_url=...)).callback_url is None
    assert parse_api_request(body(callback_url=None)).callback_url is None
    assert keys(errors_of(body(callback_url="https://e.com/" + "a" * 3000)), "callback_url") == ["errors.too_long"]


@pytest.mark.parametrize("reminders, field", [
    ("10", "event.reminders"),
    ([{"minutes": -1}], "event.reminders[0].minutes"),
    ([{"minutes": 40321}], "event.reminders[0].minutes"),
    ([{"minutes": 1.5}], "event.reminders[0].minutes"),
    ([{"minutes": True}], "event.reminders[0].minutes"),
    ([{"minutes": 5}, {}], "event.reminders[1].minutes"),
    ([5], "event.reminders[0]"),
])
def test_reminder_rules(reminders, field):
    assert field in errors_of(with_event(reminders=reminders))


def test_other_optional_field_rules():
    assert "event.transparency" in errors_of(with_event(transparency="Opaque"))
    assert "event.color" in errors_of(with_event(color="red; x"))
    assert "event.url" in errors_of(with_event(url="javascript:alert(1)"))
    assert "event.description" in errors_of(with_event(description=["x"]))
    assert "event.location" in errors_of(with_event(location=5))
    assert "event.location.lat" in errors_of(with_event(location={"lat": "north"}))
    assert "event.location.long" in errors_of(with_event(location={"long": 200}))
    assert "organizer.name" in errors_of(body(organizer={"name": 5}))
    assert parse_api_request(with_event(transparency="opaque")).event.transparency == "opaque"


# --------------------------------------------------------------------------- start/end forms


def test_start_end_forms():
    cases = [
        # (start, end, tzid, expected start UTC, expected end UTC, all_day, expected tzid)
        ("2024-10-14T09:30:00Z", "2024-10-14T10:00:00Z", None,
         dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC), dt.datetime(2024, 10, 14, 10, tzinfo=UTC), False, "UTC"),
        ("2024-10-14T11:30:00+02:00", "2024-10-14T12:00:00+02:00", "Europe/Paris",
         dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC), dt.datetime(2024, 10, 14, 10, tzinfo=UTC), False, "Europe/Paris"),
        # naive -> in event.tzid (London is BST, UTC+1, in October)
        ("2024-10-14T10:30:00", "2024-10-14T11:00:00", "Europe/London",
         dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC), dt.datetime(2024, 10, 14, 10, tzinfo=UTC), False, "Europe/London"),
        # pycronofy documents a "UTC" suffix
        ("2016-01-31T12:33:00UTC", "2016-01-31T13:33:00UTC", None,
         dt.datetime(2016, 1, 31, 12, 33, tzinfo=UTC), dt.datetime(2016, 1, 31, 13, 33, tzinfo=UTC), False, "UTC"),
        # all-day: end exclusive, may be start + 1 day
        ("2024-10-14", "2024-10-15", "Europe/London",
         dt.datetime(2024, 10, 14, tzinfo=UTC), dt.datetime(2024, 10, 15, tzinfo=UTC), True, "Europe/London"),
        ("2024-10-14", "2024-10-17", None,
         dt.datetime(2024, 10, 14, tzinfo=UTC), dt.datetime(2024, 10, 17, tzinfo=UTC), True, "UTC"),
        # object form; tzid from the start object when event.tzid is absent
        ({"time": "2024-10-14T09:30:00", "tzid": "America/New_York"},
         {"time": "2024-10-14T10:30:00", "tzid": "America/New_York"}, None,
         dt.datetime(2024, 10, 14, 13, 30, tzinfo=UTC), dt.datetime(2024, 10, 14, 14, 30, tzinfo=UTC), False,
         "America/New_York"),
        ({"time": "2024-10-14T09:30:00Z", "tzid": "Europe/London"},
         {"time": "2024-10-14T10:00:00Z"}, "Europe/Berlin",
         dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC), dt.datetime(2024, 10, 14, 10, tzinfo=UTC), False,
         "Europe/Berlin"),
        ({"time": "2024-10-14", "tzid": "Europe/London"}, {"time": "2024-10-15", "tzid": "Europe/London"}, None,
         dt.datetime(2024, 10, 14, tzinfo=UTC), dt.datetime(2024, 10, 15, tzinfo=UTC), True, "Europe/London"),
    ]
    for start, end, tzid, exp_start, exp_end, all_day, exp_tzid in cases:
        b = with_event(start=start, end=end, tzid=tzid if tzid else ...)
        e = parse_api_request(b).event
        assert (e.start, e.end, e.all_day, e.tzid) == (exp_start, exp_end, all_day, exp_tzid), (start, end)
        assert e.start.tzinfo is not None and e.start.utcoffset() == dt.timedelta(0)


def test_parse_event_time_directly():
    assert parse_event_time("2024-10-14T09:30:00Z", "UTC") == (dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC), "UTC", False)
    assert parse_event_time("2024-10-14", "Asia/Tokyo") == (dt.datetime(2024, 10, 14, tzinfo=UTC), "Asia/Tokyo", True)
    assert parse_event_time({"time": "2024-01-15T09:00:00", "tzid": "Europe/London"}, "UTC") == (
        dt.datetime(2024, 1, 15, 9, 0, tzinfo=UTC), "Europe/London", False)
    with pytest.raises(ValueError):
        parse_event_time("2024-10-14T09:30:00Z", "Not/AZone")  # tz needed only for naive, but still validated
    with pytest.raises(ValueError):
        parse_event_time({"time": "x", "tzid": "UTC"}, "UTC")
    with pytest.raises(ValueError):
        parse_event_time(None, "UTC")


# --------------------------------------------------------------------------- JSON shapes


def test_event_time_json():
    t = dt.datetime(2024, 10, 14, 9, 30, 15, 123456, tzinfo=UTC)
    assert event_time_json(t, "Europe/London", False) == {"time": "2024-10-14T09:30:15Z", "tzid": "Europe/London"}
    assert event_time_json(dt.datetime(2024, 10, 14, tzinfo=UTC), "Europe/London", True) == {
        "time": "2024-10-14", "tzid": "Europe/London"}
    paris = dt.timezone(dt.timedelta(hours=2))
    assert event_time_json(dt.datetime(2024, 10, 14, 11, 30, tzinfo=paris), "Europe/Paris", False)["time"] == (
        "2024-10-14T09:30:00Z")


def test_event_time_json_round_trips_through_parser():
    e = parse_api_request(copy.deepcopy(SEED_MULTI)).event
    start = event_time_json(e.start, e.tzid, e.all_day)
    end = event_time_json(e.end, e.tzid, e.all_day)
    # matches the seed's example response
    assert start == {"time": "2024-10-14T09:30:00Z", "tzid": "Europe/London"}
    assert end == {"time": "2024-10-14T10:00:00Z", "tzid": "Europe/London"}
    again = parse_api_request(with_event(start=start, end=end, tzid=...)).event
    assert again == e
    day = parse_api_request(with_event(start="2024-10-14", end="2024-10-15")).event
    s, en = event_time_json(day.start, day.tzid, True), event_time_json(day.end, day.tzid, True)
    assert parse_api_request(with_event(start=s, end=en)).event == day


def test_proposal_json():
    p = Proposal(
        start=dt.datetime(2014, 9, 13, 21, 0, tzinfo=UTC),
        end=dt.datetime(2014, 9, 13, 22, 0, tzinfo=UTC),
        tzid="Europe/Paris",
    )
    assert proposal_json(p) == {
        "start": {"time": "2014-09-13T21:00:00Z", "tzid": "Europe/Paris"},
        "end": {"time": "2014-09-13T22:00:00Z", "tzid": "Europe/Paris"},
    }


# --------------------------------------------------------------------------- pycronofy's shapes


class _Captured:
    status_code = 200

    def __init__(self, payload):
        self.payload = payload

    def json(self):
        return {"ok": True}


@pytest.fixture
def captured(monkeypatch):
    """Capture the JSON bodies pycronofy would POST (it calls requests.post(json=...))."""
    sent = []

    def fake(method):
        def call(url=None, json=None, **kwargs):
            sent.append((method, url, copy.deepcopy(json)))
            return _Captured(json)
        return call

    monkeypatch.setattr(requests, "post", fake("post"))
    monkeypatch.setattr(requests, "get", fake("get"))
    return sent


def test_pycronofy_upsert_single(captured):
    client = pycronofy.Client(client_secret="secret")
    event = {
        "summary": "Board meeting",
        "description": "Discuss plans for the next quarter.",
        "start": dt.datetime(2017, 10, 5, 9, 30, tzinfo=UTC),
        "end": dt.datetime(2017, 10, 5, 10, 0, tzinfo=UTC),
        "tzid": "Europe/London",
        "url": "https://example.com/board",
        "location": {"description": "Board room", "lat": "51.5", "long": "-0.1"},
        "reminders": [{"minutes": 30}],
        "transparency": "opaque",
        "color": "#49BED8",
    }
    client.upsert_smart_invite("inv-1", {"email": "Cronofy@Example.com"}, event,
                               callback_url="http://www.example.com", organizer={"name": "Org"})
    method, url, payload = captured[-1]
    assert url.endswith("/v1/smart_invites")
    r = parse_api_request(payload)
    assert r.single and r.recipients == ("cronofy@example.com",)
    assert r.organizer_name == "Org" and r.callback_url == "http://www.example.com"
    assert r.event.start == dt.datetime(2017, 10, 5, 9, 30, tzinfo=UTC)
    assert r.event.reminders == (30,) and r.event.color == "#49BED8"


def test_pycronofy_upsert_multi_and_date_and_object(captured):
    client = pycronofy.Client(client_secret="secret")
    recipients = [{"email": "example@example.com"}, {"email": "example_2@example.com"}]
    client.upsert_smart_invite("inv-2", recipients, {
        "summary": "Offsite", "start": dt.date(2024, 10, 14), "end": dt.date(2024, 10, 16),
    })
    r = parse_api_request(captured[-1][2])
    assert not r.single and r.recipients == ("example@example.com", "example_2@example.com")
    assert r.event.all_day and r.event.end - r.event.start == dt.timedelta(days=2)

    client.upsert_smart_invite("inv-3", recipients, {
        "summary": "Call",
        "start": {"time": dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC), "tzid": "Europe/Paris"},
        "end": {"time": dt.datetime(2024, 10, 14, 10, 0, tzinfo=UTC), "tzid": "Europe/Paris"},
    })
    r = parse_api_request(captured[-1][2])
    assert r.event.tzid == "Europe/Paris"
    assert r.event.start == dt.datetime(2024, 10, 14, 9, 30, tzinfo=UTC)


def test_pycronofy_cancel(captured):
    client = pycronofy.Client(client_secret="secret")
    client.cancel_smart_invite("inv-1", {"email": "a@example.com"})
    r = parse_api_request(captured[-1][2])
    assert (r.method, r.single, r.recipients, r.event) == ("cancel", True, ("a@example.com",), None)
    client.cancel_smart_invite("inv-1", [{"email": "a@example.com"}, {"email": "b@example.com"}])
    r = parse_api_request(captured[-1][2])
    assert (r.method, r.single, r.recipients) == ("cancel", False, ("a@example.com", "b@example.com"))
