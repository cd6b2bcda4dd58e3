"""The ICS we send (INTEROP §1): what calendar clients read out of it.

Every ICS generated here is parsed by two independent readers, icalendar and
vobject, and both must see the same values; the assertions then look at what a
calendar client would show or do with it.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import pytest
import vobject
from icalendar import Calendar

from smart_invites_ui.domain import Attendee, EventData, ITipMethod, RecipientStatus
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services.ics import build_ics
from smart_invites_ui.services.invite_mail import invite_ics
from tests.conftest import future, make_event, make_invite


def _utc(value):
    return value.astimezone(timezone.utc) if isinstance(value, datetime) else value


def read(ics: bytes) -> dict:
    """Parse with icalendar (from bytes, INTEROP §1.9) and vobject; return what both agree on."""
    assert isinstance(ics, bytes)
    cal = Calendar.from_ical(ics)
    events = cal.walk("VEVENT")
    assert len(events) == 1
    ev = events[0]
    seen = {
        "method": str(cal["METHOD"]),
        "uid": str(ev["UID"]),
        "sequence": int(ev["SEQUENCE"]),
        "status": str(ev["STATUS"]),
        "summary": str(ev["SUMMARY"]),
        "description": str(ev.get("DESCRIPTION", "")),
        "location": str(ev.get("LOCATION", "")),
        "start": _utc(ev.decoded("DTSTART")),
        "end": _utc(ev.decoded("DTEND")),
        "dtstamp": ev.decoded("DTSTAMP"),
        "organizer": str(ev["ORGANIZER"]),
        "organizer_cn": str(ev["ORGANIZER"].params.get("CN", "")),
        "attendees": sorted(str(a) for a in _as_list(ev.get("ATTENDEE"))),
        "attendee_params": {str(a): dict(a.params) for a in _as_list(ev.get("ATTENDEE"))},
        "attendee_flags": sorted((str(a), a.params.get("PARTSTAT"), a.params.get("ROLE"), a.params.get("RSVP"))
                                 for a in _as_list(ev.get("ATTENDEE"))),
        "timezones": [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")],
    }

    v = vobject.readOne(ics.decode("utf-8"))
    vev = v.vevent
    other = {
        "method": v.method.value,
        "uid": vev.uid.value,
        "sequence": int(vev.sequence.value),
        "status": vev.status.value,
        "summary": vev.summary.value,
        "description": vev.description.value if hasattr(vev, "description") else "",
        "location": vev.location.value if hasattr(vev, "location") else "",
        "start": _utc(vev.dtstart.value),
        "end": _utc(vev.dtend.value),
        "dtstamp": vev.dtstamp.value,
        "organizer": vev.organizer.value,
        "attendees": sorted(a.value for a in getattr(vev, "attendee_list", [])),
        "attendee_flags": sorted((a.value, *(a.params.get(p, [None])[0] for p in ("PARTSTAT", "ROLE", "RSVP")))
                                 for a in getattr(vev, "attendee_list", [])),
        "timezones": [tz.tzid.value for tz in getattr(v, "vtimezone_list", [])],
    }
    for key, value in other.items():
        assert seen[key] == value, f"icalendar and vobject disagree on {key}: {seen[key]!r} != {value!r}"
    return seen


def _as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def physical_lines(ics: bytes) -> list[bytes]:
    assert ics.endswith(b"\r\n")
    return ics[:-2].split(b"\r\n")


def mailto(email: str) -> str:
    return f"mailto:{email}"


# --- what one REQUEST says ---------------------------------------------------------------


def test_request_carries_everything_a_calendar_client_needs(app):
    invite = make_invite(emails=("ann@example.org", "bob@example.org"))
    seen = read(invite_ics(invite))

    assert seen["method"] == "REQUEST"
    assert seen["uid"] == invite.uid
    assert seen["sequence"] == 0
    assert seen["status"] == "CONFIRMED"
    assert seen["summary"] == "Dental check-up"
    assert seen["location"] == "Room 3"
    assert seen["description"] == "Bring your forms."
    assert seen["start"] == invite.start and seen["end"] == invite.end
    assert seen["dtstamp"].utcoffset() == timedelta(0)
    assert abs(seen["dtstamp"] - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert seen["organizer"] == f"mailto:invites+{invite.reply_token}@localhost"
    assert seen["organizer_cn"] == "Riverside Clinic"
    assert seen["attendees"] == [mailto("ann@example.org"), mailto("bob@example.org")]
    for params in seen["attendee_params"].values():
        assert params["RSVP"] == "TRUE"
        assert params["ROLE"] == "REQ-PARTICIPANT"
        assert params["PARTSTAT"] == "NEEDS-ACTION"


def test_dtstamp_is_written_in_utc(app):
    invite = make_invite()
    lines = [line for line in physical_lines(invite_ics(invite)) if line.startswith(b"DTSTAMP")]
    assert len(lines) == 1
    assert re.fullmatch(rb"DTSTAMP:\d{8}T\d{6}Z", lines[0])


def test_organizer_is_a_per_invite_reply_mailbox_with_an_unguessable_token(app):
    first, second = make_invite(), make_invite()
    organizers = [read(invite_ics(i))["organizer"] for i in (first, second)]

    tokens = []
    for organizer in organizers:
        match = re.fullmatch(r"mailto:invites\+([^@]+)@localhost", organizer)
        assert match, organizer
        tokens.append(match.group(1))
    assert tokens[0] != tokens[1]
    for token in tokens:
        # 128 bits at least: 32 hex digits (or 22 base64 characters) of randomness.
        assert re.fullmatch(r"[0-9a-f]{32,}", token) or re.fullmatch(r"[A-Za-z0-9_-]{22,}", token), token


def test_uid_and_organizer_stay_while_sequence_follows_the_changes(app):
    invite = make_invite(emails=("ann@example.org", "bob@example.org"))
    created = read(invite_ics(invite))

    invite_service.update_event(invite, make_event(start=future(days=9)))
    moved = read(invite_ics(invite))
    assert (moved["uid"], moved["organizer"]) == (created["uid"], created["organizer"])
    assert moved["sequence"] == 1
    assert moved["start"] == future(days=9)
    assert moved["dtstamp"] >= created["dtstamp"]

    bob = invite.recipient("bob@example.org")
    invite_service.resend(invite, bob)
    assert read(invite_ics(invite))["sequence"] == 1  # re-sending unchanged keeps SEQUENCE

    invite_service.remove_recipient(invite, bob)
    removed = read(invite_ics(invite, ITipMethod.CANCEL, [bob]))
    remaining = read(invite_ics(invite))
    assert removed["sequence"] == remaining["sequence"] == 2
    assert removed["uid"] == remaining["uid"] == created["uid"]

    invite_service.cancel_invite(invite)
    cancelled = read(invite_ics(invite, ITipMethod.CANCEL))
    assert cancelled["sequence"] == 3
    assert cancelled["uid"] == created["uid"]


def test_cancel_keeps_the_times_and_says_cancelled_for_those_it_cancels(app):
    invite = make_invite(emails=("ann@example.org", "bob@example.org"))
    before = read(invite_ics(invite))
    invite_service.cancel_invite(invite)
    seen = read(invite_ics(invite, ITipMethod.CANCEL))

    assert seen["method"] == "CANCEL"
    assert seen["status"] == "CANCELLED"
    assert (seen["start"], seen["end"]) == (before["start"], before["end"])
    assert seen["sequence"] == before["sequence"] + 1
    assert seen["attendees"] == [mailto("ann@example.org"), mailto("bob@example.org")]


def test_cancel_for_a_removed_recipient_names_only_them(app):
    invite = make_invite(emails=("ann@example.org", "bob@example.org", "cat@example.org"))
    bob = invite.recipient("bob@example.org")
    invite_service.remove_recipient(invite, bob)

    to_bob = read(invite_ics(invite, ITipMethod.CANCEL, [bob]))
    to_rest = read(invite_ics(invite))
    assert to_bob["method"] == "CANCEL" and to_bob["status"] == "CANCELLED"
    assert to_bob["attendees"] == [mailto("bob@example.org")]
    assert to_rest["method"] == "REQUEST" and to_rest["status"] == "CONFIRMED"
    assert to_rest["attendees"] == [mailto("ann@example.org"), mailto("cat@example.org")]


def test_attendee_partstat_reflects_the_answers_so_far(app):
    invite = make_invite(emails=("ann@example.org", "bob@example.org"))
    invite.recipient("ann@example.org").status = RecipientStatus.ACCEPTED
    invite.recipient("bob@example.org").status = RecipientStatus.DECLINED
    params = read(invite_ics(invite))["attendee_params"]
    assert params[mailto("ann@example.org")]["PARTSTAT"] == "ACCEPTED"
    assert params[mailto("bob@example.org")]["PARTSTAT"] == "DECLINED"


# --- time zones and all-day events --------------------------------------------------------


def test_non_utc_zone_comes_with_a_narrow_vtimezone(app):
    start = datetime(2031, 7, 14, 8, 0, tzinfo=timezone.utc)  # 10:00 in Berlin (CEST)
    invite = make_invite(start=start, end=start + timedelta(hours=1), tzid="Europe/Berlin")
    ics = invite_ics(invite)
    seen = read(ics)

    assert seen["timezones"] == ["Europe/Berlin"]
    assert b"DTSTART;TZID=Europe/Berlin:20310714T100000\r\n" in ics
    assert seen["start"] == start
    vtimezone = ics[ics.index(b"BEGIN:VTIMEZONE"):ics.index(b"END:VTIMEZONE")]
    assert len(vtimezone) < 800, len(vtimezone)  # not every transition from 1970 to 2038
    onsets = re.findall(rb"\r\nDTSTART:(\d{4})", vtimezone)
    assert onsets and {int(year) for year in onsets} <= {2030, 2031, 2032}


def test_utc_event_needs_no_vtimezone(app):
    start = datetime(2031, 1, 10, 15, 30, tzinfo=timezone.utc)
    invite = make_invite(start=start, end=start + timedelta(minutes=45), tzid="UTC")
    ics = invite_ics(invite)
    assert read(ics)["timezones"] == []
    assert b"DTSTART:20310110T153000Z\r\n" in ics


def test_all_day_event_uses_dates(app):
    start = datetime(2031, 5, 2, tzinfo=timezone.utc)
    invite = make_invite(start=start, end=start + timedelta(days=2), all_day=True, tzid="Europe/London")
    ics = invite_ics(invite)
    seen = read(ics)

    assert b"DTSTART;VALUE=DATE:20310502\r\n" in ics
    assert b"DTEND;VALUE=DATE:20310504\r\n" in ics  # exclusive: the day after the last
    assert (seen["start"], seen["end"]) == (date(2031, 5, 2), date(2031, 5, 4))


# --- text: line endings, folding, escaping -------------------------------------------------


def test_lines_end_in_crlf(app):
    invite = make_invite(description="First line\nsecond line")
    ics = invite_ics(invite)
    assert ics.count(b"\n") == ics.count(b"\r\n")  # no bare LF
    assert ics.count(b"\r") == ics.count(b"\r\n")  # no bare CR
    assert read(ics)["description"] == "First line\nsecond line"


def test_long_multibyte_summary_is_folded_without_splitting_a_character(app):
    summary = "Zahnärztliche Kontrolle für Jürgen – 歯科検診の予約です 😀 " * 6
    invite = make_invite(summary=summary.strip(), description="Ünïcödé " * 40)
    ics = invite_ics(invite)

    lines = physical_lines(ics)
    summary_lines = [i for i, line in enumerate(lines) if line.startswith(b"SUMMARY:")]
    assert summary_lines and lines[summary_lines[0] + 1].startswith(b" ")  # it was folded
    for line in lines:
        assert len(line) <= 75, line
        line.decode("utf-8")  # strict: no character cut in half at a fold
    seen = read(ics)
    assert seen["summary"] == summary.strip()
    assert seen["description"] == "Ünïcödé " * 40


@pytest.mark.parametrize("text", [
    "Smith, Jones; and partners",
    "Path C:\\Clinic\\Room 3",
    "Line one\nLine two\n\nafter an empty line",
    "All of them: a,b;c\\d\ne \\n is not a newline \\, nor \\; this",
])
def test_text_is_escaped_and_comes_back_exactly(app, text):
    invite = make_invite(summary=text, description=text, location=text)
    ics = invite_ics(invite)

    unfolded = ics.replace(b"\r\n ", b"")
    summary_line = next(line for line in unfolded.split(b"\r\n") if line.startswith(b"SUMMARY:"))
    assert b"\n" not in summary_line
    value = summary_line[len(b"SUMMARY:"):]
    assert re.search(rb"(?<!\\)(\\\\)*[,;]", value) is None, "unescaped , or ;"
    seen = read(ics)
    assert (seen["summary"], seen["description"], seen["location"]) == (text, text, text)


def test_names_with_line_breaks_cannot_add_properties(app):
    invite = invite_service.create_invite(
        event=make_event(),
        recipients=[invite_service.NewRecipient("ann@example.org", "Ann, O'Neil")],
        organizer_name='Clinic "North"\r\nX-EVIL:1\r\nATTENDEE:mailto:evil@example.org',
    )
    ics = invite_ics(invite)
    for line in physical_lines(ics):
        assert not line.startswith((b"X-EVIL", b"ATTENDEE:mailto:evil")), line
    seen = read(ics)
    assert seen["attendees"] == [mailto("ann@example.org")]
    assert "evil" not in "".join(seen["attendees"]) and seen["organizer"].startswith("mailto:invites+")


# --- the builder itself ---------------------------------------------------------------------


def test_build_ics_with_everything_round_trips(app):
    start = datetime(2032, 2, 29, 23, 30, tzinfo=timezone.utc)
    event = EventData(summary="Viewing: 12 Rue de la Paix", start=start, end=start + timedelta(hours=1),
                      tzid="America/New_York", description="Keys at the desk; ask for Zoë.",
                      location="12 Rue de la Paix, Paris", url="https://example.org/listing/12",
                      location_lat="48.8686", location_long="2.3314", reminders=(15, 60),
                      transparency="opaque")
    stamp = datetime(2032, 1, 1, 12, 0, tzinfo=timezone.utc)
    ics = build_ics(uid="uid-1@example.org", sequence=4, event=event, method=ITipMethod.REQUEST,
                    organizer_email="invites+t@example.org", organizer_name="Agency",
                    attendees=[Attendee("zoe@example.org", "Zoë"), Attendee("max@example.org")],
                    dtstamp=stamp)
    seen = read(ics)
    assert seen["sequence"] == 4 and seen["dtstamp"] == stamp
    assert seen["start"] == start and seen["timezones"] == ["America/New_York"]
    assert b"DTSTART;TZID=America/New_York:20320229T183000\r\n" in ics
    cal = Calendar.from_ical(ics)
    alarms = cal.walk("VALARM")
    assert sorted(a.decoded("TRIGGER") for a in alarms) == [timedelta(minutes=-60), timedelta(minutes=-15)]
    assert seen["attendee_params"][mailto("zoe@example.org")]["CN"] == "Zoë"
