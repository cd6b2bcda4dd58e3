"""Fuzzing the ingest path (issue 4): real-shaped reply emails, mutated by hypothesis, go
through ``store_inbound`` + ``process_inbound``. Whatever the bytes, nothing raises and
every message ends with a stored outcome (never left "received") and, unless it was
applied, a reason staff can read. On PostgreSQL this also proves that nothing the parser
lets through (NUL bytes, lone surrogates, overlong values) breaks a write.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from smart_invites_ui.config import MailFrom
from smart_invites_ui.domain import Proposal
from smart_invites_ui.extensions import db
from smart_invites_ui.models import InboundMessage, InboundOutcome
from smart_invites_ui.services import replies
from smart_invites_ui.services.invite_mail import invite_ics
from smart_invites_ui.services.itip import CLIENT_SHAPES, build_reply_email
from tests.conftest import future, make_invite

FIXTURES = Path(__file__).parent / "fixtures" / "replies"
FIXTURE_ATTENDEES = ("jane.doe@example.org", "bob@example.org", "carol@example.org", "dave@example.org",
                     "zoe.mueller@example.org", "erin@example.org", "sara@example.org", "grace@example.org")

# Fragments that make mutations land on what the parser cares about.
INTERESTING = [
    b"METHOD:REPLY", b"METHOD:COUNTER", b"METHOD:REQUEST", b"METHOD:CANCEL", b"PARTSTAT=DELETED",
    b"PARTSTAT=ACCEPTED", b"PARTSTAT=", b"mailto:", b"MAILTO:", b"EMAIL=\"x@example.org\"", b"\x00", b"\r\n ",
    b"\n\t", b"\r\n\r\n", b"BEGIN:VCALENDAR", b"END:VEVENT", b"BEGIN:VTIMEZONE", b"TZID=W. Europe Standard Time:",
    b"DTSTAMP:99991231T235959Z", b"DTSTAMP:00010101T000000Z", b"SEQUENCE:999999999999999999999",
    b"UID:", b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n", b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable", b"=?utf-8?b?", b"charset=\"x-unknown\"", b"/etc/passwd",
    "Zoë\u202e".encode(), b"\xed\xa0\x80", b"\xff\xfe", b"X-RESPONSE-COMMENT=\"&amp;\\;\"", b"COMMENT:" + b"x" * 5000,
    b"ATTENDEE;CN=a:mailto:" + b"a" * 400 + b"@example.org", b"RECURRENCE-ID:20260407T080000Z",
]


def seeds(invite) -> list[bytes]:
    messages = [path.read_bytes() for path in sorted(FIXTURES.glob("*.eml"))]
    ics = invite_ics(invite)
    start = future(days=9)
    for shape in CLIENT_SHAPES:
        messages.append(build_reply_email(shape=shape, invite_ics=ics, attendee_email="ann@example.org",
                                          partstat="DECLINED", to_address=f"invites+{invite.reply_token}@example.org",
                                          comment="Sorry; can't make it \\ & <b>"))
    for shape in ("google", "outlook"):
        messages.append(build_reply_email(
            shape=shape, invite_ics=ics, attendee_email="bob@example.org", partstat="TENTATIVE",
            to_address=f"invites+{invite.reply_token}@example.org", comment="Later?",
            proposal=Proposal(start, start.replace(hour=start.hour + 1), "Europe/Berlin")))
    return messages


@st.composite
def mutated(draw, corpus: list[bytes]) -> bytes:
    raw = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate", "splice", "lf", "case"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            raw[at:at] = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(max_size=64)))
        elif kind == "delete":
            del raw[at:at + draw(st.integers(1, 200))]
        elif kind == "duplicate":
            raw[at:at] = raw[at:at + draw(st.integers(1, 400))] * draw(st.integers(1, 3))
        elif kind == "truncate":
            del raw[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(corpus))
            raw[at:] = other[draw(st.integers(0, len(other))):]
        elif kind == "lf":
            raw = bytearray(bytes(raw).replace(b"\r\n", b"\n"))
        elif kind == "case":
            raw[at:at + 40] = bytes(raw[at:at + 40]).swapcase()
    return bytes(raw)


@pytest.fixture
def corpus(app):
    app.config.update(MAIL_FROM=MailFrom("invites", "example.org"))
    fixtures_invite = make_invite(emails=FIXTURE_ATTENDEES)
    fixtures_invite.uid, fixtures_invite.reply_token = "20260301T100000Z-k7q2m9@example.org", "k7q2m9"
    db.session.commit()
    return seeds(make_invite())


def test_the_seeds_apply_so_mutations_start_from_real_replies(corpus):
    outcomes = [replies.process_inbound(replies.store_inbound(raw, "http")) for raw in corpus]
    assert outcomes.count(InboundOutcome.APPLIED) >= 12, outcomes


def test_no_mutated_message_escapes_the_ingest_path(corpus):
    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data):
        raw = data.draw(mutated(corpus))
        message = replies.store_inbound(raw, data.draw(st.sampled_from(replies.SOURCES)))
        outcome = replies.process_inbound(message)  # must not raise

        db.session.expire_all()
        kept = db.session.get(InboundMessage, message.id)
        assert kept.raw == raw
        assert kept.outcome == outcome != InboundOutcome.RECEIVED
        assert kept.outcome == InboundOutcome.APPLIED or kept.reason, (outcome, raw[:200])
        assert "internal error" not in kept.reason, kept.reason

    check()
    assert db.session.scalar(select(InboundMessage.id).where(InboundMessage.outcome == InboundOutcome.RECEIVED)) \
        is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=4000))
def test_any_bytes_at_all_are_kept_with_an_outcome(app, raw):
    message = replies.store_inbound(raw, "http")

    outcome = replies.process_inbound(message)

    db.session.expire_all()
    kept = db.session.get(InboundMessage, message.id)
    assert (kept.raw, kept.outcome) == (raw, outcome)
    assert outcome in (InboundOutcome.ERROR, InboundOutcome.IGNORED, InboundOutcome.UNMATCHED)
    assert kept.reason
