"""Reading attendees' reply emails and writing realistic ones (services/itip.py).

The fixtures in ``fixtures/replies/`` are hand-written from INTEROP.md §2, one per client
shape and one per oddity seen in the wild; every test asserts what staff would see.
"""
from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import random
import time
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smart_invites_ui.domain import Attendee, EventData, ITipMethod, Proposal, RecipientStatus
from smart_invites_ui.services.ics import build_ics
from smart_invites_ui.services.itip import (
    CLIENT_SHAPES,
    MAX_MIME_DEPTH,
    ParsedMessage,
    ParsedReply,
    ParseError,
    build_reply_email,
    parse_message,
)

FIXTURES = Path(__file__).parent / "fixtures" / "replies"
MAIL_FROM = "invites@example.org"
TO = "Example Clinic <invites+k7q2m9@example.org>"
UID = "20260301T100000Z-k7q2m9@example.org"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse(raw: bytes) -> ParsedMessage:
    return parse_message(raw, MAIL_FROM)


def only_reply(message: ParsedMessage) -> ParsedReply:
    assert len(message.replies) == 1, message.replies
    return message.replies[0]


def reply(**fields: object) -> ParsedReply:
    """The reply most fixtures carry (Dental check-up, SEQUENCE 1, a plain REPLY), with ``fields`` changed."""
    defaults: dict[str, object] = dict(
        method="REPLY", uid=UID, attendee_email="", attendee_name="", partstat="", status=None,
        comment="", proposal=None, dtstamp=None, sequence=1, recurrence_id=None,
    )
    return ParsedReply(**{**defaults, **fields})  # type: ignore[arg-type]


def calendar_email(ics: str, *, content_type: str = "text/calendar; charset=utf-8; method=REPLY") -> bytes:
    """A one-part message around hand-written iCalendar text (LF line ends, as typed)."""
    head = f"From: someone@example.org\nTo: invites+k7q2m9@example.org\nSubject: t\nContent-Type: {content_type}\n\n"
    return (head + ics).encode("utf-8")


# --- one fixture per client shape (INTEROP.md §2) ------------------------------------------

EXPECTED = {
    "google_accepted.eml": reply(
        attendee_email="jane.doe@example.org", attendee_name="Jane Doe", partstat="ACCEPTED",
        status=RecipientStatus.ACCEPTED, comment="I'll be 5 minutes early; see you then & thanks!",
        dtstamp=at(2026, 3, 2, 8, 15, 12),
    ),
    "outlook_accepted.eml": reply(
        attendee_email="bob@example.org", attendee_name="Bob Example", partstat="ACCEPTED",
        status=RecipientStatus.ACCEPTED, comment="See you there. I might bring my daughter, if that's OK.",
        dtstamp=at(2026, 3, 2, 9, 17, 44),
    ),
    "apple_declined.eml": reply(
        attendee_email="carol@example.org", attendee_name="Carol Example", partstat="DECLINED",
        status=RecipientStatus.DECLINED, dtstamp=at(2026, 3, 2, 10, 14, 22),
    ),
    "icloud_relay_accepted.eml": reply(
        attendee_email="dave@example.org", attendee_name="Dave Example", partstat="ACCEPTED",
        status=RecipientStatus.ACCEPTED, dtstamp=at(2026, 3, 2, 11, 15, 1),
    ),
    "thunderbird_tentative_8bit.eml": reply(
        attendee_email="zoe.mueller@example.org", attendee_name="Zoë Müller", partstat="TENTATIVE",
        status=RecipientStatus.TENTATIVE, dtstamp=at(2026, 3, 2, 12, 5, 1),
    ),
    "nextcloud_declined.eml": reply(
        attendee_email="erin@example.org", attendee_name="Erin Example", partstat="DECLINED",
        status=RecipientStatus.DECLINED, comment="Sorry, I have moved away.", dtstamp=at(2026, 3, 4, 16, 0, 0),
    ),
    "google_counter.eml": reply(
        method="COUNTER", attendee_email="jane.doe@example.org", attendee_name="Jane Doe", partstat="TENTATIVE",
        status=RecipientStatus.TENTATIVE, comment="Could we do Thursday afternoon instead?",
        proposal=Proposal(start=at(2026, 3, 12, 13, 0), end=at(2026, 3, 12, 13, 30), tzid="UTC"),
        dtstamp=at(2026, 3, 2, 8, 20, 40),
    ),
    # 14:00 in "W. Europe Standard Time" on 2 July is summer time (+02:00), read through the VTIMEZONE.
    "outlook_counter.eml": reply(
        method="COUNTER", attendee_email="bob@example.org", attendee_name="Bob Example", partstat="TENTATIVE",
        status=RecipientStatus.TENTATIVE, comment="Early July works better for me.",
        proposal=Proposal(start=at(2026, 7, 2, 12, 0), end=at(2026, 7, 2, 12, 30), tzid="Europe/Berlin"),
        dtstamp=at(2026, 3, 2, 9, 30, 12),
    ),
    # Bare LF; METHOD, UID and DTSTAMP folded mid-word; folded between MAILTO and ":"; CN="Last, First".
    "lf_folded_mailto.eml": reply(
        attendee_email="bob.example@example.org", attendee_name="Example, Bob", partstat="ACCEPTED",
        status=RecipientStatus.ACCEPTED, dtstamp=at(2026, 3, 2, 10, 15, 0),
    ),
    "arabic_windows1256.eml": reply(
        attendee_email="sara@example.org", attendee_name="سارة الأحمد", partstat="ACCEPTED",
        status=RecipientStatus.ACCEPTED, comment="شكراً، سأحضر", dtstamp=at(2026, 3, 2, 14, 0, 0),
    ),
    "mutt_quoted_method.eml": reply(
        attendee_email="grace@example.org", attendee_name="Grace Example", partstat="ACCEPTED",
        status=RecipientStatus.ACCEPTED, dtstamp=at(2026, 3, 2, 15, 0, 0),
    ),
    # Google's non-standard PARTSTAT: kept as written, no status to apply.
    "google_deleted.eml": reply(
        attendee_email="jane.doe@example.org", attendee_name="Jane Doe", partstat="DELETED", status=None,
        dtstamp=at(2026, 3, 5, 17, 1, 2),
    ),
    "recurrence_declined.eml": reply(
        uid="weekly-physio-k7q2m9@example.org", attendee_email="heidi@example.org", attendee_name="Heidi Example",
        partstat="DECLINED", status=RecipientStatus.DECLINED, dtstamp=at(2026, 3, 3, 8, 0, 0), sequence=2,
        recurrence_id="2026-04-07T08:00:00+00:00",
    ),
    # An invite sent to the reply mailbox by a ProtonMail user: method=request in lower case.
    "protonmail_request_lowercase.eml": reply(
        method="REQUEST", uid="q7Xy3P0aRk2m9Lw8vB1n@proton.me", attendee_email="invites+k7q2m9@example.org",
        attendee_name="invites+k7q2m9@example.org", partstat="NEEDS-ACTION", status=RecipientStatus.PENDING,
        dtstamp=at(2026, 3, 3, 9, 0, 0), sequence=0,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_client_shape_yields_the_attendees_answer(name: str) -> None:
    assert only_reply(parse(fixture(name))) == EXPECTED[name]


@pytest.mark.parametrize(
    ("name", "from_address", "subject"),
    [
        ("google_accepted.eml", "jane.doe@example.org",
         "Accepted: Dental check-up @ Tue 10 Mar 2026 10am - 10:30am (CET) (jane.doe@example.org)"),
        ("thunderbird_tentative_8bit.eml", "zoe.mueller@example.org", "Vorläufig zugesagt: Dental check-up"),
        ("arabic_windows1256.eml", "sara@example.org", "تم القبول: Dental check-up"),
        # iCloud may answer from another account than the invited one (INTEROP.md §2).
        ("icloud_relay_accepted.eml", "dave.personal@example.net",
         "Invitation: Dental check-up @ Tue 10 Mar 2026 10:00 - 10:30"),
        ("nextcloud_declined.eml", "cloud@example.net", "Invitation declined: Dental check-up"),
    ],
)
def test_message_headers_are_decoded(name: str, from_address: str, subject: str) -> None:
    message = parse(fixture(name))
    assert (message.from_address, message.subject, message.tokens) == (from_address, subject, ("k7q2m9",))


def test_message_id_is_kept_as_written() -> None:
    assert parse(fixture("google_accepted.eml")).message_id == "<0000000000009a1c0612f0c2d3@google.com>"


def test_a_forwarded_invite_parses_as_request_for_every_attendee() -> None:
    message = parse(fixture("forwarded_request.eml"))
    assert message.subject == "Fwd: Invitation: Dental check-up"
    assert [(r.method, r.attendee_email, r.partstat, r.status) for r in message.replies] == [
        ("REQUEST", "ivan@example.org", "NEEDS-ACTION", RecipientStatus.PENDING),
        ("REQUEST", "judy@example.org", "NEEDS-ACTION", RecipientStatus.PENDING),
    ]


def test_the_same_calendar_inline_and_attached_counts_once() -> None:
    raw = fixture("google_accepted.eml")
    assert raw.count(b"Content-Type: text/calendar") == 1 and raw.count(b"application/ics") == 1
    assert len(parse(raw).replies) == 1


# --- tokens ---------------------------------------------------------------------------------


def test_tokens_come_from_plus_addresses_of_the_reply_mailbox_only() -> None:
    raw = (
        b"From: a@example.org\n"
        b'To: "Clinic" <Invites+Tok1@Example.ORG>, other+nope@example.org, invites+nope@elsewhere.example\n'
        b"Cc: invites+tok2@example.org, invites@example.org\n"
        b"Delivered-To: invites+tok3@example.org\n"
        b"X-Original-To: invites+Tok1@example.org\n"
        b"Content-Type: text/calendar\n\n"
        b"BEGIN:VCALENDAR\nMETHOD:REPLY\nBEGIN:VEVENT\nUID:u\nATTENDEE;PARTSTAT=ACCEPTED:mailto:a@example.org\n"
        b"END:VEVENT\nEND:VCALENDAR\n"
    )
    # Matching ignores case; the token is returned as written.
    assert parse(raw).tokens == ("Tok1", "tok2", "tok3")
    assert parse_message(raw, "Clinic <INVITES@example.org>").tokens == ("Tok1", "tok2", "tok3")
    assert parse_message(raw, "not an address").tokens == ()


# --- time zones -----------------------------------------------------------------------------

CUSTOM_EASTERN = """BEGIN:VTIMEZONE
TZID:Custom Eastern
BEGIN:STANDARD
DTSTART:19671029T020000
RRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=SU;BYMONTHDAY=1,2,3,4,5,6,7
TZOFFSETFROM:-0400
TZOFFSETTO:-0500
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19870405T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=SU;BYMONTHDAY=8,9,10,11,12,13,14
TZOFFSETFROM:-0500
TZOFFSETTO:-0400
END:DAYLIGHT
END:VTIMEZONE
"""
FIXED_INDIA = """BEGIN:VTIMEZONE
TZID:Customized Time Zone
BEGIN:STANDARD
DTSTART:16010101T000000
TZOFFSETFROM:+0530
TZOFFSETTO:+0530
END:STANDARD
END:VTIMEZONE
"""
# A rule shape no time zone uses is not evaluated (it would run for ever from 1601).
SECONDLY = """BEGIN:VTIMEZONE
TZID:Odd
BEGIN:STANDARD
DTSTART:16010101T000000
RRULE:FREQ=SECONDLY
TZOFFSETFROM:+0300
TZOFFSETTO:+0300
END:STANDARD
END:VTIMEZONE
"""


def counter(tzid: str, vtimezone: str = "", *, start: str = "20260702T140000", end: str = "20260702T150000") -> bytes:
    return calendar_email(
        "BEGIN:VCALENDAR\nMETHOD:COUNTER\n" + vtimezone + "BEGIN:VEVENT\nUID:u\n"
        f"DTSTART;TZID={tzid}:{start}\nDTEND;TZID={tzid}:{end}\n"
        "ATTENDEE;PARTSTAT=TENTATIVE:mailto:a@example.org\nEND:VEVENT\nEND:VCALENDAR\n"
    )


@pytest.mark.parametrize(
    ("raw", "start", "tzid"),
    [
        (counter("Europe/Berlin"), at(2026, 7, 2, 12), "Europe/Berlin"),
        (counter('"W. Europe Standard Time"'), at(2026, 7, 2, 12), "Europe/Berlin"),  # Windows->IANA map
        (counter("W. Europe Standard Time", start="20260115T140000", end="20260115T150000"),
         at(2026, 1, 15, 13), "Europe/Berlin"),
        (counter("/freeassociation.sourceforge.net/Europe/Berlin"), at(2026, 7, 2, 12), "Europe/Berlin"),
        (counter("Custom Eastern", CUSTOM_EASTERN), at(2026, 7, 2, 18), "UTC"),
        (counter("Custom Eastern", CUSTOM_EASTERN, start="20260115T140000", end="20260115T150000"),
         at(2026, 1, 15, 19), "UTC"),
        (counter("Customized Time Zone", FIXED_INDIA), at(2026, 7, 2, 8, 30), "UTC"),
        (counter("Odd", SECONDLY), at(2026, 7, 2, 11), "UTC"),
        (counter("Nowhere/Special"), at(2026, 7, 2, 14), "UTC"),  # unknown and undefined: read as UTC
        (counter("../../../etc/passwd"), at(2026, 7, 2, 14), "UTC"),
    ],
)
def test_counter_times_resolve_their_tzid(raw: bytes, start: datetime, tzid: str) -> None:
    proposal = only_reply(parse(raw)).proposal
    assert proposal == Proposal(start=start, end=start.replace(hour=start.hour + 1), tzid=tzid)


def test_one_messages_vtimezone_does_not_change_how_another_is_read() -> None:
    # icalendar caches the first VTIMEZONE it sees for a name process-wide; a stranger's
    # definition must not leak into later messages.
    def custom(offset: str) -> bytes:
        zone = (f"BEGIN:VTIMEZONE\nTZID:Clinic Time\nBEGIN:STANDARD\nDTSTART:16010101T000000\n"
                f"TZOFFSETFROM:{offset}\nTZOFFSETTO:{offset}\nEND:STANDARD\nEND:VTIMEZONE\n")
        return counter("Clinic Time", zone)

    assert only_reply(parse(custom("+1000"))).proposal.start == at(2026, 7, 2, 4)  # type: ignore[union-attr]
    assert only_reply(parse(custom("-0300"))).proposal.start == at(2026, 7, 2, 17)  # type: ignore[union-attr]


def test_counter_with_duration_and_date_values() -> None:
    raw = calendar_email(
        "BEGIN:VCALENDAR\nMETHOD:COUNTER\nBEGIN:VEVENT\nUID:u\nDTSTART:20260702T140000Z\nDURATION:PT45M\n"
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:a@example.org\nEND:VEVENT\n"
        "BEGIN:VEVENT\nUID:v\nDTSTART;VALUE=DATE:20260703\nDTEND;VALUE=DATE:20260704\n"
        "ATTENDEE:mailto:a@example.org\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    first, second = parse(raw).replies
    # A counter is a proposal, a maybe: tentative whatever PARTSTAT says.
    assert (first.status, first.proposal) == (
        RecipientStatus.TENTATIVE, Proposal(at(2026, 7, 2, 14), at(2026, 7, 2, 14, 45), "UTC"))
    assert second.proposal == Proposal(at(2026, 7, 3), at(2026, 7, 4), "UTC")


def test_a_counter_is_read_whatever_the_case_and_quoting_of_its_method() -> None:
    """Event times are only read for a COUNTER; a METHOD spelt oddly is still one."""
    for method in ("counter", '"Counter"', " COUNTER "):
        raw = calendar_email(
            f"BEGIN:VCALENDAR\nMETHOD:{method}\nBEGIN:VEVENT\nUID:u\nDTSTART:20260702T140000Z\n"
            "DTEND:20260702T150000Z\nATTENDEE;PARTSTAT=TENTATIVE:mailto:a@example.org\nEND:VEVENT\nEND:VCALENDAR\n"
        )
        reply = only_reply(parse(raw))
        assert (reply.method, reply.proposal) == (
            "COUNTER", Proposal(at(2026, 7, 2, 14), at(2026, 7, 2, 15), "UTC")), method


def test_a_reply_keeps_no_proposal_and_missing_values_have_defaults() -> None:
    raw = calendar_email(
        "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:u\nDTSTART:20260702T140000Z\nSEQUENCE:not-a-number\n"
        "DTSTAMP:garbage\nATTENDEE;CN=A:mailto:A@Example.org\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    assert only_reply(parse(raw)) == reply(
        method="", uid="u", attendee_email="a@example.org", attendee_name="A", sequence=0,
    )


# --- what cannot be read ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b" \r\n\t", "empty message"),
        (random.Random(7).randbytes(5000), "no calendar part"),
        (b"From: a@example.org\nSubject: hello\n\nJust text.\n", "no calendar part"),
        (calendar_email("not a calendar at all\n"), "calendar part has no BEGIN:VCALENDAR"),
        (calendar_email("BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:u\n"), "calendar part is not valid iCalendar"),
        (calendar_email("BEGIN:VCALENDAR\nMETHOD:CANCEL\nBEGIN:VEVENT\nUID:u\nEND:VEVENT\nEND:VCALENDAR\n"),
         "calendar has no VEVENT with an ATTENDEE"),
        (calendar_email("BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:u\nATTENDEE;PARTSTAT=ACCEPTED:urn:uuid:5f1b\n"
                        "END:VEVENT\nEND:VCALENDAR\n"), "calendar has no VEVENT with an ATTENDEE"),
        (calendar_email("BEGIN:VCALENDAR\nBEGIN:VEVENT\n" + "ATTENDEE:mailto:a@example.org\n" * 3000
                        + "END:VEVENT\nEND:VCALENDAR\n"), "calendar parts hold more than 2000 lines"),
    ],
)
def test_unusable_messages_raise_parse_error_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as error:
        parse(raw)
    assert str(error.value).startswith(reason)


def test_bytes_are_required() -> None:
    with pytest.raises(ParseError, match="must be bytes"):
        parse_message("BEGIN:VCALENDAR", MAIL_FROM)  # type: ignore[arg-type]


def test_a_one_line_calendar_body_is_never_read_as_a_file_path(tmp_path: Path) -> None:
    # icalendar reads a one-line *str* as a file path. Were that to happen here, this file's
    # valid reply would be parsed instead of the error below.
    stolen = tmp_path / "reply.ics"
    stolen.write_bytes(
        b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\nUID:u\r\n"
        b"ATTENDEE;PARTSTAT=ACCEPTED:mailto:thief@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    for path in (str(stolen), "/etc/passwd"):
        for encoding in ("7bit", "base64"):
            body = base64.b64encode(path.encode()).decode() if encoding == "base64" else path
            raw = calendar_email(body, content_type="text/calendar").replace(
                b"\n\n", f"\nContent-Transfer-Encoding: {encoding}\n\n".encode(), 1)
            with pytest.raises(ParseError) as error:
                parse(raw)
            assert str(error.value) == "calendar part has no BEGIN:VCALENDAR"


def nested(depth: int, inner: bytes) -> bytes:
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"From: a@example.org\r\n" + opening + inner + closing


CALENDAR_PART = (
    b"Content-Type: text/calendar; method=REPLY\r\n\r\nBEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\nUID:u\r\n"
    b"ATTENDEE;PARTSTAT=ACCEPTED:mailto:deep@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_nested_multiparts_are_searched_to_a_bounded_depth() -> None:
    assert only_reply(parse(nested(MAX_MIME_DEPTH, CALENDAR_PART))).attendee_email == "deep@example.org"
    with pytest.raises(ParseError) as error:
        parse(nested(200, CALENDAR_PART))
    assert str(error.value) == f"no calendar part (not searched: MIME nesting deeper than {MAX_MIME_DEPTH} levels)"


def test_parts_beyond_the_part_limit_are_not_searched() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n\r\nfiller\r\n" * 5000
           + b"--x\r\n" + CALENDAR_PART)
    with pytest.raises(ParseError, match=r"^no calendar part \(not searched: parts after the first 500\)$"):
        parse(raw)


def test_a_20_mb_message_with_a_reply_is_read_quickly() -> None:
    attachment = base64.encodebytes(random.Random(1).randbytes(15 * 1024 * 1024)).replace(b"\n", b"\r\n")
    raw = (
        b"From: jane.doe@example.org\r\nTo: invites+k7q2m9@example.org\r\n"
        b"Content-Type: multipart/mixed; boundary=big\r\n\r\n--big\r\n"
        b"Content-Type: application/pdf; name=scan.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment + b"\r\n--big\r\n" + CALENDAR_PART + b"\r\n--big--\r\n"
    )
    assert len(raw) > 20_000_000
    started = time.perf_counter()
    assert only_reply(parse(raw)).attendee_email == "deep@example.org"
    # A hang guard, not a benchmark: bodies are located with bytes.find, never read line by line.
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: x\r\n\r\n" + b"\r" * 20_000_000,
        b"Subject: x\r\n" + b" folded\r\n" * 2_000_000,
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\n" * 3_000_000,
    ],
    ids=["20MB-of-CR-lines", "huge-header", "millions-of-parts"],
)
def test_pathological_20_mb_messages_fail_quickly(raw: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(ParseError) as error:
        parse(raw)
    assert str(error.value).startswith("no calendar part")
    assert time.perf_counter() - started < 5  # hang guard


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.eml")))
def test_every_truncation_of_a_fixture_is_a_result_or_a_parse_error(name: str) -> None:
    raw = fixture(name)
    for end in range(0, len(raw), 53):
        with contextlib.suppress(ParseError):
            parse(raw[:end])


# --- fuzzing ---------------------------------------------------------------------------------

SEEDS = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))}
SNIPPETS = [
    b"\r\n", b"\n\n", b"\r\n\r\n", b"--", b"\n--", b"=", b"=\r\n", b";", b":", b'"', b"\\", b"\x00", b"\xff\xfe",
    b"\xc3", b" ", b"\t", b"BEGIN:VCALENDAR\n", b"END:VCALENDAR\n", b"BEGIN:VEVENT\n", b"END:VEVENT\n",
    b"END:VTIMEZONE\n", b"METHOD:COUNTER\n", b"ATTENDEE;EMAIL=:mailto:\n", b"DTSTART;TZID=W. Europe Standard Time:",
    b"DTSTART:00010101T000000\n", b"DTEND;TZID=X:99991231T235959\n", b"RECURRENCE-ID;VALUE=DATE:20261301\n",
    b"BEGIN:VTIMEZONE\nTZID:X\nBEGIN:STANDARD\nDTSTART:99991231T235959\nTZOFFSETTO:+2359\n"
    b"RRULE:FREQ=YEARLY;BYMONTH=13;BYDAY=9SU\nEND:STANDARD\nEND:VTIMEZONE\n",
    b"Content-Type: multipart/mixed; boundary=\"\"\n", b"Content-Type: message/rfc822\n\n",
    b"Content-Transfer-Encoding: base64\n", b"=?utf-8?b?!!!?=",
]
HEADER_NAMES = [
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "From", "To", "Subject", "MIME-Version",
]
HEADER_VALUES = [
    "", "multipart/mixed", "multipart/mixed; boundary=", "multipart/alternative; boundary=\"x\"", "message/rfc822",
    "text/calendar; charset=utf-16", "text/calendar; charset=\"rot13\"", "text/calendar; charset=base64",
    "text/calendar; charset*=utf-8''%ff%fe", "application/octet-stream; name=\"a.ics\"",
    "attachment; filename*0=a.; filename*1=ics",
    "base64", "quoted-printable", "x-uuencode", "8bit", "=?utf-8?b?!!!?=", "=?unknown?q?=FF?=", "a" * 2000,
    "<<<@@@>>>", "\"unterminated", "invites+\x00@example.org",
]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.sampled_from(SNIPPETS) | st.binary(max_size=40)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 300)),
    st.tuples(st.just("header"), st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES) | st.text(max_size=40)),
)


def mutate(raw: bytes, operations: list[tuple]) -> bytes:
    data = bytearray(raw)
    for operation in operations:
        kind, where = operation[0], operation[1]
        if kind == "header":
            name = where.encode()
            at_index = data.find(b"\n" + name + b":")
            if at_index >= 0:
                line_end = data.find(b"\n", at_index + 1)
                line_end = len(data) if line_end < 0 else line_end
                value = operation[2].encode("utf-8", "surrogatepass")
                data[at_index:line_end] = b"\n" + name + b": " + value
            continue
        position = where % (len(data) + 1)
        if kind == "flip" and position < len(data):
            data[position] ^= operation[2]
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = operation[2]
        elif kind == "delete":
            del data[position : position + operation[2]]
    return bytes(data)


def assert_result_or_parse_error(raw: bytes) -> None:
    try:
        message = parse(raw)
    except ParseError as error:
        assert str(error)
    else:
        assert isinstance(message, ParsedMessage) and message.replies
        for parsed in message.replies:
            assert parsed.attendee_email == parsed.attendee_email.lower()
            assert parsed.dtstamp is None or parsed.dtstamp.tzinfo is not None
            if parsed.proposal:
                assert parsed.proposal.start.tzinfo is not None and parsed.proposal.start <= parsed.proposal.end


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), operations=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_real_shaped_messages_give_a_result_or_a_parse_error(seed: str, operations: list[tuple]) -> None:
    assert_result_or_parse_error(mutate(SEEDS[seed], operations))


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=4096))
def test_arbitrary_bytes_give_a_result_or_a_parse_error(raw: bytes) -> None:
    assert_result_or_parse_error(raw)


# --- building replies (build_reply_email) ---------------------------------------------------

NOW = at(2026, 3, 2, 8, 15, 12)


def invite(tzid: str = "Europe/Berlin", *, all_day: bool = False) -> bytes:
    start, end = (at(2026, 3, 10), at(2026, 3, 11)) if all_day else (at(2026, 3, 10, 9), at(2026, 3, 10, 9, 30))
    event = EventData(summary="Dental check-up", start=start, end=end, tzid=tzid, all_day=all_day)
    return build_ics(
        uid=UID, sequence=1, event=event, method=ITipMethod.REQUEST, organizer_email="invites+k7q2m9@example.org",
        organizer_name="Example Clinic", attendees=[Attendee("jane.doe@example.org", "Doe, Jane")],
    )


def build(shape: str, partstat: str = "ACCEPTED", **options: object) -> bytes:
    return build_reply_email(
        shape=shape, invite_ics=options.pop("invite_ics", invite()), attendee_email="Jane.Doe@example.org",  # type: ignore[arg-type]
        partstat=partstat, to_address=TO, now=NOW, **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("shape", CLIENT_SHAPES)
@pytest.mark.parametrize(
    ("partstat", "status"),
    [("ACCEPTED", RecipientStatus.ACCEPTED), ("declined", RecipientStatus.DECLINED),
     ("TENTATIVE", RecipientStatus.TENTATIVE), ("NEEDS-ACTION", RecipientStatus.PENDING)],
)
def test_built_replies_round_trip(shape: str, partstat: str, status: RecipientStatus) -> None:
    note = 'Running late; bring "X-rays", & forms'
    message = parse(build(shape, partstat, comment=note))
    # Apple and Thunderbird send no note (INTEROP.md §2).
    expected_note = note if shape in ("google", "outlook") else ""
    assert only_reply(message) == reply(
        attendee_email="jane.doe@example.org", attendee_name="Doe, Jane", partstat=partstat.upper(),
        status=status, comment=expected_note, dtstamp=NOW,
    )
    assert (message.from_address, message.tokens) == ("jane.doe@example.org", ("k7q2m9",))


@pytest.mark.parametrize("shape", ["google", "outlook"])
@pytest.mark.parametrize(
    "proposal",
    [
        Proposal(at(2026, 7, 2, 12), at(2026, 7, 2, 12, 30), "Europe/Berlin"),  # summer time
        Proposal(at(2026, 3, 12, 13), at(2026, 3, 12, 14), "Europe/Berlin"),  # winter time
        Proposal(at(2026, 11, 3, 15), at(2026, 11, 3, 16), "America/New_York"),
        Proposal(at(2026, 5, 1, 8), at(2026, 5, 1, 9), "UTC"),
    ],
)
def test_built_counters_round_trip(shape: str, proposal: Proposal) -> None:
    parsed = only_reply(parse(build(shape, "accepted", proposal=proposal, comment="Later?")))
    # Google writes UTC; Outlook writes the Windows zone, read back as its IANA name.
    expected = proposal if shape == "outlook" else replace(proposal, tzid="UTC")
    assert (parsed.method, parsed.partstat, parsed.status, parsed.proposal, parsed.comment) == (
        "COUNTER", "TENTATIVE", RecipientStatus.TENTATIVE, expected, "Later?")


@pytest.mark.parametrize("shape", ["apple", "thunderbird"])
def test_apple_and_thunderbird_do_not_propose_times(shape: str) -> None:
    with pytest.raises(ValueError, match=f"^{shape} does not propose new times$"):
        build(shape, proposal=Proposal(at(2026, 7, 2, 12), at(2026, 7, 2, 13)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shape": "lotus-notes"}, "unknown client shape"),
        ({"partstat": "ACCEPTED:mailto:x"}, "PARTSTAT must be a token"),
        ({"attendee_email": "not-an-address"}, "not an email address"),
        ({"invite_ics": b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"}, "invite_ics has no VEVENT"),
    ],
)
def test_builder_rejects_bad_arguments(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = dict(
        shape="google", invite_ics=invite(), attendee_email="jane.doe@example.org", partstat="ACCEPTED", to_address=TO,
    )
    with pytest.raises(ValueError, match=message):
        build_reply_email(**{**arguments, **options})  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", CLIENT_SHAPES)
@pytest.mark.parametrize("tzid", ["UTC", "America/New_York"])
def test_built_replies_to_all_day_and_utc_invites_round_trip(shape: str, tzid: str) -> None:
    for ics in (invite(tzid), invite(tzid, all_day=True)):
        assert only_reply(parse(build(shape, invite_ics=ics))).status == RecipientStatus.ACCEPTED


def structure(raw: bytes) -> list[tuple[object, ...]]:
    """(content type, its method= parameter, transfer encoding, filename) of every part, depth first."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return [
        (part.get_content_type(), part.get_param("method"), part.get("Content-Transfer-Encoding"), part.get_filename())
        for part in message.walk()
    ]


def calendar_of(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = next(p for p in message.walk() if p.get_content_type() == "text/calendar")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8").replace("\r\n ", "")


def test_google_shape() -> None:
    raw = build("google", comment="See you; thanks")
    assert structure(raw) == [
        ("multipart/mixed", None, None, None),
        ("multipart/alternative", None, None, None),
        ("text/plain", None, "7bit", None),
        ("text/html", None, "7bit", None),
        ("text/calendar", "REPLY", "7bit", None),
        ("application/ics", None, "base64", "invite.ics"),
    ]
    ics = calendar_of(raw)
    assert 'X-RESPONSE-COMMENT="See you\\; thanks"' in ics
    assert "ORGANIZER;CN=" in ics and "DTSTART:20260310T090000Z" in ics and "VTIMEZONE" not in ics
    headers = email.message_from_bytes(raw, policy=email.policy.default)
    assert headers["Sender"] == "Google Calendar <calendar-notification@google.com>"


def test_outlook_shape() -> None:
    raw = build("outlook", comment="Fine")
    assert structure(raw) == [
        ("multipart/alternative", None, None, None),
        ("text/plain", None, "quoted-printable", None),
        ("text/html", None, "quoted-printable", None),
        ("text/calendar", "REPLY", "base64", None),
    ]
    assert email.message_from_bytes(raw)["Subject"] == "Accepted: Dental check-up"
    ics = calendar_of(raw)
    assert "ORGANIZER" not in ics and "COMMENT;LANGUAGE=en-US:Fine\\n" in ics
    assert "DTSTART;TZID=W. Europe Standard Time:20260310T100000" in ics


def test_outlook_counter_shape() -> None:
    ics = calendar_of(build("outlook", proposal=Proposal(at(2026, 7, 2, 12), at(2026, 7, 2, 13), "Europe/Berlin")))
    assert "METHOD:COUNTER" in ics and "PARTSTAT=TENTATIVE" in ics
    assert "TZID:W. Europe Standard Time" in ics and "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3" in ics
    assert "DTSTART;TZID=W. Europe Standard Time:20260702T140000" in ics
    assert "X-MS-OLK-ORIGINALSTART;TZID=W. Europe Standard Time:20260310T100000" in ics


def test_apple_shape() -> None:
    raw = build("apple")
    kinds = structure(raw)
    assert [k[0] for k in kinds] == [
        "multipart/alternative", "text/plain", "multipart/mixed", "text/html", "text/calendar", "text/html"]
    calendar_part = kinds[4]
    assert calendar_part[1:3] == (None, "quoted-printable") and calendar_part[3] == "iCal-20260302-081512.ics"
    ics = calendar_of(raw)
    assert "DTSTART;TZID=Europe/Berlin:20260310T100000" in ics and "TZID:Europe/Berlin" in ics
    assert "EMAIL=jane.doe@example.org" in ics


def test_thunderbird_shape() -> None:
    raw = build("thunderbird", "declined")
    assert structure(raw) == [
        ("multipart/mixed", None, None, None),
        ("multipart/alternative", None, None, None),
        ("text/plain", None, "8bit", None),
        ("text/calendar", "REPLY", "8bit", None),
        ("application/ics", None, "8bit", "invite.ics"),
    ]
    assert email.message_from_bytes(raw)["Subject"] == "Declined: Dental check-up"


def test_built_reply_to_an_invite_with_a_non_ascii_name() -> None:
    event = EventData(
        summary="Kontrolltermin für Zoë", start=at(2026, 3, 10, 9), end=at(2026, 3, 10, 10), tzid="Europe/Berlin"
    )
    ics = build_ics(
        uid=UID, sequence=3, event=event, method=ITipMethod.REQUEST, organizer_email="invites+k7q2m9@example.org",
        organizer_name="Praxis Müller", attendees=[Attendee("zoe@example.org", "Zoë Müller")],
    )
    for shape in CLIENT_SHAPES:
        raw = build_reply_email(shape=shape, invite_ics=ics, attendee_email="zoe@example.org", partstat="ACCEPTED",
                                to_address=TO, now=NOW)
        parsed = only_reply(parse(raw))
        assert (parsed.attendee_name, parsed.sequence) == ("Zoë Müller", 3)


def test_builder_date_defaults_to_now() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    raw = build_reply_email(
        shape="google", invite_ics=invite(), attendee_email="jane.doe@example.org", partstat="ACCEPTED", to_address=TO
    )
    parsed = only_reply(parse(raw))
    assert parsed.dtstamp is not None and before <= parsed.dtstamp <= datetime.now(timezone.utc)
    assert isinstance(parsed.dtstamp.date(), date)
