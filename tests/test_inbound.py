"""Attendees' reply emails reaching the app (issue 4): ``POST /inbound/email``, the reply
processor (``services/replies.py``), the admins' "Inbound mail" page and the mail
catcher's "Reply as attendee" buttons.

Every client shape in ``fixtures/replies/`` goes in over HTTP and must change the right
recipient's status, comment and proposal; every hostile input must be kept with a reason.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import event, func, select

from smart_invites_ui.config import MailFrom
from smart_invites_ui.domain import ITipMethod, Proposal, RecipientStatus
from smart_invites_ui.extensions import db
from smart_invites_ui.models import (InboundMessage, InboundOutcome, Invite, NotificationSource, OutboxKind,
                                     OutboxMessage, Reply, Role)
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services import replies
from smart_invites_ui.services.invite_mail import invite_ics
from smart_invites_ui.services.itip import build_reply_email, parse_message
from smart_invites_ui.worker import Worker
from tests.conftest import make_event, make_invite

pytestmark = pytest.mark.usefixtures("fast_passwords")  # logins are not what these tests are about

FIXTURES = Path(__file__).parent / "fixtures" / "replies"
SECRET = "inbound-test-secret"
URL = f"/inbound/email?secret={SECRET}"
FIXTURE_UID = "20260301T100000Z-k7q2m9@example.org"  # the invite the fixtures answer
FIXTURE_TOKEN = "k7q2m9"  # they were sent to invites+k7q2m9@example.org
FIXTURE_ATTENDEES = ("jane.doe@example.org", "bob@example.org", "carol@example.org", "dave@example.org",
                     "zoe.mueller@example.org", "erin@example.org", "sara@example.org", "grace@example.org",
                     "bob.example@example.org")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.fixture
def inbound(app):
    """The app with the inbound endpoint on, and MAIL_FROM the fixtures were sent to."""
    app.config.update(INBOUND_EMAIL_SECRET=SECRET, MAIL_FROM=MailFrom("invites", "example.org"))
    return app


@pytest.fixture
def fixture_invite(inbound) -> Invite:
    """The Dental check-up the fixtures answer: their UID and address token, their attendees."""
    invite = make_invite(emails=FIXTURE_ATTENDEES)
    invite.uid, invite.reply_token = FIXTURE_UID, FIXTURE_TOKEN
    db.session.commit()
    return invite


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def post(client, raw: bytes, *, url: str = URL, content_type: str = "message/rfc822"):
    return client.post(url, data=raw, headers={"Content-Type": content_type})


def fresh(invite: Invite) -> Invite:
    db.session.expire_all()
    return db.session.get(Invite, invite.id)


def stored() -> list[InboundMessage]:
    db.session.expire_all()
    return db.session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()


def reply_to(invite: Invite, email: str = "ann@example.org", partstat: str = "ACCEPTED", *, shape: str = "google",
             comment: str = "", proposal: Proposal | None = None, now: datetime | None = None) -> bytes:
    """The reply a real client would send to ``invite`` (services/itip.py builds it)."""
    return build_reply_email(shape=shape, invite_ics=invite_ics(invite), attendee_email=email, partstat=partstat,
                             to_address=f"invites+{invite.reply_token}@example.org", comment=comment,
                             proposal=proposal, now=now)


# --- every client shape, end to end over HTTP -----------------------------------------------

# fixture -> (attendee, status, comment, proposal)
SHAPES = {
    "google_accepted.eml": ("jane.doe@example.org", RecipientStatus.ACCEPTED,
                            "I'll be 5 minutes early; see you then & thanks!", None),
    "outlook_accepted.eml": ("bob@example.org", RecipientStatus.ACCEPTED,
                             "See you there. I might bring my daughter, if that's OK.", None),
    "apple_declined.eml": ("carol@example.org", RecipientStatus.DECLINED, "", None),
    "icloud_relay_accepted.eml": ("dave@example.org", RecipientStatus.ACCEPTED, "", None),
    "thunderbird_tentative_8bit.eml": ("zoe.mueller@example.org", RecipientStatus.TENTATIVE, "", None),
    "nextcloud_declined.eml": ("erin@example.org", RecipientStatus.DECLINED, "Sorry, I have moved away.", None),
    "google_counter.eml": ("jane.doe@example.org", RecipientStatus.TENTATIVE, "Could we do Thursday afternoon instead?",
                           Proposal(utc(2026, 3, 12, 13), utc(2026, 3, 12, 13, 30), "UTC")),
    # Windows zone names: 14:00 "W. Europe Standard Time" in July is 12:00 UTC.
    "outlook_counter.eml": ("bob@example.org", RecipientStatus.TENTATIVE, "Early July works better for me.",
                            Proposal(utc(2026, 7, 2, 12), utc(2026, 7, 2, 12, 30), "Europe/Berlin")),
    "lf_folded_mailto.eml": ("bob.example@example.org", RecipientStatus.ACCEPTED, "", None),
    "arabic_windows1256.eml": ("sara@example.org", RecipientStatus.ACCEPTED, "شكراً، سأحضر", None),
    "mutt_quoted_method.eml": ("grace@example.org", RecipientStatus.ACCEPTED, "", None),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_client_shape_changes_the_right_recipient(client, fixture_invite, name):
    email, status, comment, proposal = SHAPES[name]
    version = fixture_invite.version

    response = post(client, fixture(name))

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["outcome"] == "applied", response.json
    invite = fresh(fixture_invite)
    recipient = invite.recipient(email)
    assert (recipient.status, recipient.comment, recipient.proposal) == (status, comment, proposal)
    assert recipient.needs_attention == (status == RecipientStatus.DECLINED or proposal is not None)
    others = [r for r in invite.recipients if r.email != email]
    assert {r.status for r in others} == {RecipientStatus.PENDING}
    assert invite.version > version  # the live page notices
    history = db.session.scalars(select(Reply).where(Reply.invite_id == invite.id)).all()
    assert [(h.email, h.status, h.applied, h.source) for h in history] == [
        (email, status, True, NotificationSource.EMAIL)]
    [message] = stored()
    assert (message.outcome, message.invite_id, message.source) == (InboundOutcome.APPLIED, invite.id, "http")
    assert message.raw == fixture(name)


def test_the_live_page_shows_a_reply_that_arrived_by_email(client, auth, fixture_invite):
    auth.login()
    version = fixture_invite.version
    post(client, fixture("google_counter.eml"))

    fragment = client.get(f"/invites/{fixture_invite.id}/live?v={version}")

    assert fragment.status_code == 200
    html = fragment.get_data(as_text=True)
    assert 'data-email="jane.doe@example.org" data-status="tentative"' in html
    assert "Could we do Thursday afternoon instead?" in html
    assert "Accept proposed time" in html


def test_staff_can_accept_a_proposed_time_from_a_counter(client, fixture_invite):
    post(client, fixture("outlook_counter.eml"))
    invite = fresh(fixture_invite)
    bob = invite.recipient("bob@example.org")

    invite_service.accept_proposal(invite, bob)

    invite = fresh(fixture_invite)
    assert (invite.start, invite.end) == (utc(2026, 7, 2, 12), utc(2026, 7, 2, 12, 30))
    assert invite.sequence == 1


def test_staff_can_dismiss_a_counter(client, fixture_invite):
    post(client, fixture("google_counter.eml"))
    invite = fresh(fixture_invite)

    invite_service.dismiss_attention(invite, invite.recipient("jane.doe@example.org"))

    assert fresh(fixture_invite).recipient("jane.doe@example.org").needs_attention is False


def test_an_applied_reply_queues_the_api_clients_callback(client, inbound):
    invite = invite_service.create_invite(
        event=make_event(), recipients=[invite_service.NewRecipient("ann@example.org")],
        callback_url="https://example.org/callbacks")

    assert post(client, reply_to(invite, comment="Fine by me")).json["outcome"] == "applied"

    callbacks = db.session.scalars(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.CALLBACK)).all()
    assert len(callbacks) == 1
    assert b'"reply":{"email":"ann@example.org","status":"accepted","comment":"Fine by me"}' in callbacks[0].payload


def test_a_reply_about_one_occurrence_applies_to_its_invite(client, inbound):
    invite = make_invite(emails=("heidi@example.org",))
    invite.uid, invite.reply_token = "weekly-physio-k7q2m9@example.org", FIXTURE_TOKEN
    db.session.commit()

    assert post(client, fixture("recurrence_declined.eml")).json["outcome"] == "applied"
    assert fresh(invite).recipient("heidi@example.org").status == RecipientStatus.DECLINED


def test_the_address_token_is_matched_whatever_its_case(client, inbound):
    invite = make_invite()
    raw = reply_to(invite).replace(f"invites+{invite.reply_token}".encode(),
                                   f"INVITES+{invite.reply_token.upper()}".encode())
    invite.uid = "another-uid@example.org"  # so only the token can find it
    db.session.commit()

    response = post(client, raw)

    assert response.json["outcome"] == "applied"
    assert "matched by the address it was sent to" in response.json["reason"]
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.ACCEPTED


# --- replies that change nothing, kept with the reason ---------------------------------------


@pytest.mark.parametrize(("name", "reason"), [
    ("forwarded_request.eml", "METHOD:REQUEST is an invitation, not a reply"),
    ("protonmail_request_lowercase.eml", "METHOD:REQUEST is an invitation, not a reply"),
    ("google_deleted.eml", "unknown status 'deleted'"),
])
def test_messages_that_are_not_answers_are_ignored(client, fixture_invite, name, reason):
    response = post(client, fixture(name))

    assert response.status_code == 200
    assert response.json["outcome"] == "ignored"
    assert reason in response.json["reason"]
    assert {r.status for r in fresh(fixture_invite).recipients} == {RecipientStatus.PENDING}
    assert stored()[0].outcome == InboundOutcome.IGNORED


def test_an_unknown_uid_is_kept_as_unmatched(client, inbound):
    invite = make_invite()
    raw = reply_to(invite)
    db.session.delete(invite)  # the invite it answers is gone
    db.session.commit()

    response = post(client, raw)

    assert response.status_code == 200
    assert response.json["outcome"] == "unmatched"
    assert "no invite has the UID" in response.json["reason"]
    assert db.session.scalar(select(func.count()).select_from(Reply)) == 0


def test_uid_and_token_of_different_invites_are_not_applied(client, inbound):
    first, second = make_invite(), make_invite()
    raw = reply_to(first).replace(first.reply_token.encode(), second.reply_token.encode())

    response = post(client, raw)

    assert response.json["outcome"] == "unmatched"
    assert "name different invites" in response.json["reason"]
    assert fresh(first).recipient("ann@example.org").status == RecipientStatus.PENDING


def test_an_uninvited_responder_is_recorded_in_the_history_only(client, inbound):
    invite = make_invite()

    response = post(client, reply_to(invite, "alias@example.org", "DECLINED"))

    assert response.json["outcome"] == "ignored"
    assert "alias@example.org is not invited" in response.json["reason"]
    invite = fresh(invite)
    assert {r.status for r in invite.recipients} == {RecipientStatus.PENDING}
    [history] = db.session.scalars(select(Reply).where(Reply.invite_id == invite.id)).all()
    assert (history.email, history.status, history.applied) == ("alias@example.org", RecipientStatus.DECLINED, False)
    assert stored()[0].invite_id == invite.id


def test_a_stale_reply_arriving_late_does_not_overwrite_a_newer_one(client, inbound):
    invite = make_invite()
    older = reply_to(invite, partstat="ACCEPTED", now=utc(2030, 1, 1, 9))
    newer = reply_to(invite, partstat="DECLINED", now=utc(2030, 1, 1, 10))

    assert post(client, newer).json["outcome"] == "applied"
    late = post(client, older)

    assert late.json["outcome"] == "stale"
    assert "older than the answer already recorded" in late.json["reason"]
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.DECLINED
    history = db.session.scalars(select(Reply).where(Reply.invite_id == invite.id).order_by(Reply.id)).all()
    assert [(h.status, h.applied) for h in history] == [(RecipientStatus.DECLINED, True),
                                                        (RecipientStatus.ACCEPTED, False)]


@pytest.mark.parametrize("meanwhile, outcome, reason, status", [
    ("a later answer", "stale", "older than the answer already recorded", RecipientStatus.DECLINED),
    ("staff removing her", "ignored", "this recipient was removed from the invite", RecipientStatus.REMOVED),
])
def test_on_postgresql_a_reply_email_waits_for_a_change_to_its_attendee_being_written(
        client, inbound, while_held, meanwhile, outcome, reason, status):
    """Ann's reply email arrives while a later answer of hers, or her removal, is being committed:
    the reply's one statement waits for her row, finds it changed and writes nothing; the reply
    is then recorded as what it turned out to be. It used to be recorded as applied, though its
    UPDATE, waiting after the history row was written, changed nothing or put her back."""
    from sqlalchemy import update

    from smart_invites_ui.models import Recipient

    invite = make_invite()
    raw = reply_to(invite, partstat="ACCEPTED", now=utc(2030, 1, 1, 9))
    recipients = Recipient.__table__
    change = update(recipients).where(recipients.c.id == invite.recipient("ann@example.org").id)
    change = (change.values(status=RecipientStatus.DECLINED, last_reply_dtstamp=utc(2030, 1, 1, 10))
              if meanwhile == "a later answer" else change.values(status=RecipientStatus.REMOVED))
    response = while_held(change, lambda: post(client, raw))

    assert response.json["outcome"] == outcome and reason in response.json["reason"]
    assert fresh(invite).recipient("ann@example.org").status == status
    history = db.session.scalars(select(Reply).where(Reply.invite_id == invite.id)).all()
    assert [(h.status, h.applied, h.note) for h in history] == [(RecipientStatus.ACCEPTED, False, reason)]
    assert [message.outcome.value for message in stored()] == [outcome]


def test_the_same_message_twice_is_a_duplicate(client, inbound):
    invite = make_invite()
    raw = reply_to(invite, partstat="TENTATIVE")

    first, second = post(client, raw), post(client, raw)

    assert (first.json["outcome"], second.json["outcome"]) == ("applied", "duplicate")
    assert "already received" in second.json["reason"]
    assert [m.outcome for m in stored()] == [InboundOutcome.APPLIED, InboundOutcome.DUPLICATE]
    assert db.session.scalar(select(func.count()).select_from(Reply)) == 1


def test_the_same_reply_relayed_with_other_headers_is_a_duplicate(client, inbound):
    """Received by two routes (an inbound-parse service and IMAP): same Message-ID, other trace headers."""
    invite = make_invite()
    raw = reply_to(invite)

    post(client, raw)
    again = post(client, b"Received: from mx2.example.org by example.org; Mon, 2 Mar 2026 10:00:00 +0000\r\n" + raw)

    assert again.json["outcome"] == "duplicate"


def test_garbage_bytes_are_kept_with_a_reason(client, inbound):
    garbage = bytes(range(256)) * 40 + os.urandom(2000)

    response = post(client, garbage)

    assert response.status_code == 200
    assert response.json["outcome"] == "error"
    [message] = stored()
    assert (message.outcome, message.raw) == (InboundOutcome.ERROR, garbage)
    assert message.reason == response.json["reason"] != ""


def test_a_one_line_calendar_naming_a_file_is_not_read_from_disk(client, inbound, tmp_path):
    """icalendar reads a one-line *str* as a file path (INTEROP §1.9): the path must stay text."""
    invite = make_invite()
    reply = reply_to(invite)
    ics = reply[reply.index(b"BEGIN:VCALENDAR"):reply.index(b"END:VCALENDAR") + len(b"END:VCALENDAR")]
    path = tmp_path / "reply.ics"
    path.write_bytes(ics)  # a valid reply sits at that path
    raw = (f"From: ann@example.org\r\nTo: invites+{invite.reply_token}@example.org\r\nSubject: x\r\n"
           f"Content-Type: text/calendar; method=REPLY\r\n\r\n{path}").encode()

    response = post(client, raw)

    assert response.json["outcome"] == "error"
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.PENDING


def nested(depth: int, inner: bytes) -> bytes:
    message = inner
    for level in range(depth):
        boundary = f"b{level}".encode()
        message = (b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n--" + boundary + b"\r\n"
                   + message + b"\r\n--" + boundary + b"--\r\n")
    return b"From: ann@example.org\r\nSubject: nested\r\nMIME-Version: 1.0\r\n" + message


def test_deeply_nested_multiparts_are_kept_with_a_reason(client, inbound):
    invite = make_invite()
    calendar_part = b"Content-Type: text/calendar; method=REPLY\r\n\r\n" + reply_to(invite).split(b"BEGIN:VCALENDAR")[1]
    calendar_part = calendar_part.replace(b"\r\n\r\n", b"\r\n\r\nBEGIN:VCALENDAR", 1)

    response = post(client, nested(5000, calendar_part))

    assert response.json["outcome"] == "error"
    assert "nesting deeper than" in response.json["reason"]
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.PENDING
    # A few levels, as forwards of forwards make, are read.
    assert post(client, nested(6, calendar_part)).json["outcome"] == "applied"


def with_attachment(raw_reply: bytes, size: int) -> bytes:
    reply = EmailMessage(policy=SMTP)
    reply["From"] = "ann@example.org"
    reply["To"] = "invites@example.org"
    reply["Subject"] = "Accepted, with the scans you asked for"
    reply.set_content("See attached.")
    calendar = raw_reply[raw_reply.index(b"BEGIN:VCALENDAR"):raw_reply.index(b"END:VCALENDAR") + 13]
    reply.add_attachment(calendar, maintype="text", subtype="calendar", params={"method": "REPLY"},
                         filename="reply.ics")
    reply.add_attachment(os.urandom(size), maintype="application", subtype="octet-stream", filename="scan.bin")
    return reply.as_bytes(policy=SMTP)


def test_a_20_mb_reply_is_stored_then_applied_by_the_worker(app, client, inbound):
    invite = make_invite()
    raw = with_attachment(reply_to(invite), 15 * 1024 * 1024)  # base64: about 20 MB
    assert 19 * 2**20 < len(raw) < replies.MAX_INBOUND_BYTES

    response = post(client, raw)

    assert response.status_code == 200
    assert response.json["outcome"] == "received"  # stored; too big to read in the request
    Worker(app, worker_id="test").run_hooks()
    [message] = stored()
    assert message.outcome == InboundOutcome.APPLIED, message.reason
    assert len(message.raw) == len(raw)
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.ACCEPTED


def test_a_message_over_25_mb_is_refused_with_413(client, inbound):
    response = post(client, b"Subject: big\r\n\r\n" + b"x" * (replies.MAX_INBOUND_BYTES + 1))

    assert response.status_code == 413
    assert stored() == []


def test_a_processing_failure_is_recorded_not_raised(client, inbound, monkeypatch):
    invite = make_invite()

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(replies, "record_notification", broken)
    monkeypatch.setattr(replies, "decide", broken)  # PostgreSQL's one-statement path reads with it first
    response = post(client, reply_to(invite))

    assert response.status_code == 200
    assert response.json["outcome"] == "error"
    assert "RuntimeError: the database went away" in response.json["reason"]
    assert stored()[0].outcome == InboundOutcome.ERROR


def test_a_reply_email_is_stored_and_applied_in_one_transaction(client, inbound):
    invite = make_invite()
    commits = []

    def count(connection):
        commits.append(connection)

    event.listen(db.engine, "commit", count)
    try:
        response = post(client, reply_to(invite))
    finally:
        event.remove(db.engine, "commit", count)

    assert response.json["outcome"] == "applied"
    # PostgreSQL: one statement, in autocommit (next test); SQLite: one transaction.
    assert len(commits) == (0 if db.engine.dialect.name == "postgresql" else 1)
    assert stored()[0].outcome == InboundOutcome.APPLIED


def test_on_postgresql_a_reply_email_is_two_statements_and_no_transaction(client, inbound, statements_sent):
    """The invite read, then the reply recorded and the message stored in one statement that
    commits by itself, where the session's pre-ping, BEGIN, six statements and COMMIT took
    nine. The same email again is stored as a duplicate (the usual path)."""
    invite = make_invite()
    raw, responses = reply_to(invite), []
    sent = statements_sent(lambda: responses.append(post(client, raw)))

    assert responses[0].json["outcome"] == "applied"
    assert sent == ["SELECT", "WITH"]
    [message] = stored()
    assert (message.outcome, message.invite_id, message.attempts) == (InboundOutcome.APPLIED, invite.id, 1)
    assert message.from_address == "ann@example.org" and message.raw == raw
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.ACCEPTED
    again = post(client, raw)
    assert again.json["outcome"] == "duplicate"
    assert [m.outcome for m in stored()] == [InboundOutcome.APPLIED, InboundOutcome.DUPLICATE]


def test_on_postgresql_a_reply_the_one_statement_cannot_take_is_read_once(client, inbound, monkeypatch):
    """A reply to an invite with a callback URL (every invite an API client made with one), or
    the same email again: the one statement cannot take it, and it is then recorded in one
    transaction on the same connection, from what was read, as on SQLite; the invite is not found
    a second time through the ORM session, nor the reply decided again."""
    import psycopg

    from smart_invites_ui.services import notifications

    if db.engine.dialect.name != "postgresql":
        pytest.skip("the one statement is PostgreSQL's")
    invite = invite_service.create_invite(
        event=make_event(), recipients=[invite_service.NewRecipient("ann@example.org")],
        callback_url="https://example.org/callbacks")
    raw, decided, found = reply_to(invite), [], []
    decide = notifications.decide
    monkeypatch.setattr(replies, "decide", lambda *args, **kwargs: decided.append(1) or decide(*args, **kwargs))
    execute = psycopg.Cursor.execute

    def noted(cursor, query, *args, **kwargs):
        if str(query).startswith("SELECT invites.uid, invites.reply_token"):
            found.append(1)
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", noted)
    assert post(client, raw).json["outcome"] == "applied"
    assert (len(found), len(decided)) == (1, 1)
    assert post(client, raw).json["outcome"] == "duplicate"
    assert (len(found), len(decided)) == (2, 2)

    assert [m.outcome for m in stored()] == [InboundOutcome.APPLIED, InboundOutcome.DUPLICATE]
    assert [m.attempts for m in stored()] == [1, 1]
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.ACCEPTED
    callbacks = db.session.scalars(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.CALLBACK)).all()
    assert len(callbacks) == 1  # queued with the reply, in its transaction; none for the duplicate


def test_a_message_that_cannot_be_stored_with_its_outcome_applies_nothing(client, inbound, monkeypatch):
    """Storing the message fails after its reply was recorded: the reply is rolled back with it,
    then the message is stored with the error (and can be re-processed)."""
    invite = make_invite()
    insert_values = replies._insert_values

    def refused_with_a_reply(raw, source, values, connection=None):  # every path's INSERT of the message
        if values["outcome"] != InboundOutcome.ERROR:
            raise RuntimeError("the disk is full")
        return insert_values(raw, source, values, connection)

    def refused_by_the_database(notification):  # PostgreSQL's one statement: its message has no raw bytes
        from sqlalchemy import insert, null

        table = InboundMessage.__table__
        return (insert(table).from_select(["raw"], select(null()).select_from(notification))
                .returning(table.c.id).cte("message"))

    monkeypatch.setattr(replies, "_insert_values", refused_with_a_reply)
    monkeypatch.setattr(replies, "_store_message_too", refused_by_the_database)
    response = post(client, reply_to(invite))

    assert response.status_code == 200
    assert response.json["outcome"] == "error"
    assert "the disk is full" in response.json["reason"]
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.PENDING
    assert db.session.scalar(select(func.count()).select_from(Reply)) == 0
    [message] = stored()
    assert message.outcome == InboundOutcome.ERROR
    monkeypatch.setattr(replies, "_insert_values", insert_values)
    assert replies.reprocess(message) == InboundOutcome.APPLIED


def two_replies(invite: Invite) -> bytes:
    """One message carrying two attendees' replies (a shared mailbox answering for two people)."""
    message = EmailMessage(policy=SMTP)
    message["From"] = "front-desk@example.org"
    message["To"] = f"invites+{invite.reply_token}@example.org"
    message["Subject"] = "Replies"
    message.set_content("Both of us.")
    for email in ("ann@example.org", "bob@example.org"):
        raw = reply_to(invite, email)
        calendar = raw[raw.index(b"BEGIN:VCALENDAR"):raw.index(b"END:VCALENDAR") + 13]
        message.add_attachment(calendar, maintype="text", subtype="calendar", params={"method": "REPLY"})
    return message.as_bytes(policy=SMTP)


def test_a_message_with_several_replies_applies_them_all(client, inbound):
    invite = make_invite()

    response = post(client, two_replies(invite))

    assert response.json["outcome"] == "applied"
    assert {r.email: r.status for r in fresh(invite).recipients} == {
        "ann@example.org": RecipientStatus.ACCEPTED, "bob@example.org": RecipientStatus.ACCEPTED}


def test_a_message_with_several_replies_applies_all_or_none(client, inbound, monkeypatch):
    invite = make_invite()
    record = replies.record_notification

    def second_fails(payload, **kwargs):
        if payload["smart_invite"]["reply"]["email"] == "bob@example.org":
            raise RuntimeError("the database went away")
        return record(payload, **kwargs)

    monkeypatch.setattr(replies, "record_notification", second_fails)
    response = post(client, two_replies(invite))

    assert response.json["outcome"] == "error"
    assert {r.status for r in fresh(invite).recipients} == {RecipientStatus.PENDING}
    assert db.session.scalar(select(func.count()).select_from(Reply)) == 0


def test_an_empty_body_is_refused(client, inbound):
    assert post(client, b"").status_code == 400


# --- inbound-parse services -------------------------------------------------------------------


def multipart(fields: dict[str, bytes], boundary: str = "xYzZY") -> tuple[bytes, str]:
    body = b""
    for name, value in fields.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_sendgrid_raw_mode_keeps_8_bit_messages_byte_for_byte(client, fixture_invite):
    raw = fixture("thunderbird_tentative_8bit.eml")
    body, content_type = multipart({
        "headers": b"Received: by mx.sendgrid.net", "dkim": b"{@example.org : pass}",
        "to": b"invites+k7q2m9@example.org", "from": b"zoe.mueller@example.org", "sender_ip": b"192.0.2.1",
        "envelope": b'{"to":["invites+k7q2m9@example.org"],"from":"zoe.mueller@example.org"}',
        "subject": "Vorläufig zugesagt: Dental check-up".encode(), "email": raw,
        "charsets": b'{"to":"UTF-8","subject":"UTF-8","from":"UTF-8"}', "SPF": b"pass"})

    response = post(client, body, content_type=content_type)

    assert response.json["outcome"] == "applied"
    assert stored()[0].raw == raw
    assert fresh(fixture_invite).recipient("zoe.mueller@example.org").status == RecipientStatus.TENTATIVE


def test_mailgun_body_mime_is_read(client, fixture_invite):
    raw = fixture("arabic_windows1256.eml")
    body, content_type = multipart({"recipient": b"invites+k7q2m9@example.org", "sender": b"sara@example.org",
                                    "timestamp": b"1772445600", "token": b"abc", "signature": b"def",
                                    "body-mime": raw})

    response = post(client, body, content_type=content_type)

    assert response.json["outcome"] == "applied"
    assert stored()[0].raw == raw
    assert fresh(fixture_invite).recipient("sara@example.org").comment == "شكراً، سأحضر"


def test_a_url_encoded_form_is_read_too(client, fixture_invite):
    body = urlencode({"recipient": "invites+k7q2m9@example.org", "body-mime": fixture("google_accepted.eml")})

    response = post(client, body.encode(), content_type="application/x-www-form-urlencoded")

    assert response.json["outcome"] == "applied"


def test_a_form_without_the_message_is_refused(client, inbound):
    body, content_type = multipart({"subject": b"hello"})

    assert post(client, body, content_type=content_type).status_code == 400
    assert stored() == []


# --- the secret -------------------------------------------------------------------------------


def test_the_endpoint_is_off_until_a_secret_is_set(client, app):
    app.config["INBOUND_EMAIL_SECRET"] = None

    assert post(client, fixture("google_accepted.eml")).status_code == 404
    assert stored() == []


@pytest.mark.parametrize(("url", "status"), [
    ("/inbound/email", 401),
    ("/inbound/email?secret=", 401),
    ("/inbound/email?secret=wrong", 403),
    (f"/inbound/email?secret={SECRET}x", 403),
    (f"/inbound/email?secret={SECRET[:-1]}", 403),
])
def test_a_missing_or_wrong_secret_is_refused(client, inbound, url, status):
    response = post(client, fixture("google_accepted.eml"), url=url)

    assert response.status_code == status
    assert "error" in response.json
    assert stored() == []


def test_no_login_or_csrf_token_is_needed_with_the_secret(app, inbound):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()

    assert post(client, fixture("google_accepted.eml")).status_code == 200


# --- the worker --------------------------------------------------------------------------------


def test_the_worker_processes_messages_stored_but_not_processed(app, inbound):
    invite = make_invite()
    message = replies.store_inbound(reply_to(invite), "http")
    assert message.outcome == InboundOutcome.RECEIVED

    Worker(app, worker_id="test").run_hooks()

    assert stored()[0].outcome == InboundOutcome.APPLIED
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.ACCEPTED


def test_a_message_claimed_by_a_process_that_died_is_picked_up_later(app, inbound):
    invite = make_invite()
    message = replies.store_inbound(reply_to(invite), "imap", claim=True)  # ... and the process died here

    replies.process_pending()
    assert stored()[0].outcome == InboundOutcome.RECEIVED  # it may still be working on it

    message = db.session.get(InboundMessage, message.id)
    message.processed_at = message.processed_at - replies.ORPHAN_AFTER - timedelta(seconds=1)
    db.session.commit()
    replies.process_pending()

    [message] = stored()
    assert (message.outcome, message.attempts) == (InboundOutcome.APPLIED, 2)


def test_only_one_processor_wins_a_message(app, inbound):
    invite = make_invite()
    message = replies.store_inbound(reply_to(invite), "http")
    stale_copy_attempts = message.attempts

    assert replies.process_inbound(message) == InboundOutcome.APPLIED
    message.attempts = stale_copy_attempts  # a second process that read the row before the first claimed it
    assert replies.process_inbound(message) == InboundOutcome.APPLIED  # it reports, but applies nothing
    assert db.session.scalar(select(func.count()).select_from(Reply)) == 1


# --- the admins' page ---------------------------------------------------------------------------


def test_admins_see_every_message_with_its_outcome_and_reason(client, auth, fixture_invite):
    post(client, fixture("google_accepted.eml"))
    post(client, b"\x00\x01garbage")
    auth.login("admin@example.org", role=Role.ADMIN)

    page = client.get("/admin/inbound")

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Inbound mail" in html
    assert 'data-outcome="applied"' in html and 'data-outcome="error"' in html
    assert "jane.doe@example.org accepted" in html
    assert "no calendar part" in html or "empty message" in html
    errors = client.get("/admin/inbound?outcome=error").get_data(as_text=True)
    assert 'data-outcome="error"' in errors and 'data-outcome="applied"' not in errors


def test_the_raw_source_downloads_byte_for_byte(client, auth, fixture_invite):
    post(client, fixture("arabic_windows1256.eml"))
    auth.login("admin@example.org", role=Role.ADMIN)
    [message] = stored()

    response = client.get(f"/admin/inbound/{message.id}/raw.eml")

    assert response.status_code == 200
    assert response.mimetype == "message/rfc822"
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.data == fixture("arabic_windows1256.eml")


def test_staff_who_are_not_admins_cannot_open_the_page(client, auth, inbound):
    assert client.get("/admin/inbound").status_code == 302  # to the login page
    auth.login("staff@example.org", role=Role.STAFF)
    assert client.get("/admin/inbound").status_code == 403
    assert client.get("/admin/inbound/1/raw.eml").status_code == 403


def test_an_unmatched_message_is_applied_once_reprocessed_after_a_fix(client, auth, inbound):
    invite = make_invite()
    uid = invite.uid
    # Sent to the bare mailbox, so only the UID can find the invite, and that has a typo.
    raw = reply_to(invite, "ann@example.org", "DECLINED").replace(f"+{invite.reply_token}@".encode(), b"@")
    invite.uid = "typo-" + uid
    db.session.commit()
    assert post(client, raw).json["outcome"] == "unmatched"
    [message] = stored()
    auth.login("admin@example.org", role=Role.ADMIN)
    assert "Re-process" in client.get("/admin/inbound").get_data(as_text=True)

    invite = fresh(invite)
    invite.uid = uid  # the fix
    db.session.commit()
    response = auth.post(f"/admin/inbound/{message.id}/reprocess")

    assert response.status_code == 302
    [message] = stored()
    assert (message.outcome, message.invite_id) == (InboundOutcome.APPLIED, invite.id)
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.DECLINED
    assert "Re-processed message" in client.get("/admin/inbound").get_data(as_text=True)


def test_an_applied_message_is_not_reprocessed(client, auth, inbound):
    invite = make_invite()
    post(client, reply_to(invite))
    [message] = stored()
    auth.login("admin@example.org", role=Role.ADMIN)

    auth.post(f"/admin/inbound/{message.id}/reprocess")

    assert stored()[0].outcome == InboundOutcome.APPLIED
    assert db.session.scalar(select(func.count()).select_from(Reply)) == 1


def test_reprocessing_needs_the_csrf_token(app, client, auth, inbound):
    app.config["WTF_CSRF_ENABLED"] = True
    post(client, b"garbage")
    [message] = stored()
    auth.login("admin@example.org", role=Role.ADMIN)

    assert client.post(f"/admin/inbound/{message.id}/reprocess").status_code == 400


# --- "Reply as attendee" in the mail catcher ---------------------------------------------------


def caught_invite(deliver) -> tuple[Invite, OutboxMessage]:
    invite = make_invite(emails=("ann@example.org",))
    deliver()
    row = db.session.scalars(select(OutboxMessage).where(OutboxMessage.invite_id == invite.id,
                                                         OutboxMessage.method == ITipMethod.REQUEST.value)).one()
    return invite, row


@pytest.mark.parametrize(("shape", "answer", "status"), [
    ("google", "accepted", RecipientStatus.ACCEPTED),
    ("outlook", "declined", RecipientStatus.DECLINED),
    ("apple", "tentative", RecipientStatus.TENTATIVE),
    ("thunderbird", "accepted", RecipientStatus.ACCEPTED),
])
def test_reply_as_attendee_goes_through_the_inbound_path(client, auth, deliver, shape, answer, status):
    auth.login()
    invite, row = caught_invite(deliver)
    page = client.get(f"/mail/{row.id}").get_data(as_text=True)
    assert "Reply as attendee" in page

    response = auth.post(f"/mail/{row.id}/reply", {"shape": shape, "answer": answer, "comment": "On my way"})

    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/invites/{invite.id}")
    recipient = fresh(invite).recipient("ann@example.org")
    assert recipient.status == status
    assert recipient.comment == ("On my way" if shape in ("google", "outlook") else "")
    [message] = stored()
    assert (message.source, message.outcome) == ("demo", InboundOutcome.APPLIED)
    assert parse_message(message.raw, "invites@localhost").replies[0].method == "REPLY"


def test_reply_as_attendee_can_propose_a_new_time(client, auth, deliver):
    auth.login()
    invite, row = caught_invite(deliver)  # the event is in Europe/London

    auth.post(f"/mail/{row.id}/reply", {"shape": "outlook", "answer": "propose", "comment": "Later please",
                                        "proposed_start": "2031-07-01T15:00", "proposed_end": "2031-07-01T15:30"})

    recipient = fresh(invite).recipient("ann@example.org")
    assert (recipient.status, recipient.comment) == (RecipientStatus.TENTATIVE, "Later please")
    assert (recipient.proposal.start, recipient.proposal.end) == (utc(2031, 7, 1, 14), utc(2031, 7, 1, 14, 30))
    assert recipient.needs_attention
    assert parse_message(stored()[0].raw, "invites@localhost").replies[0].method == "COUNTER"


def test_reply_as_attendee_refuses_a_proposal_no_client_sends(client, auth, deliver):
    auth.login()
    invite, row = caught_invite(deliver)

    response = auth.post(f"/mail/{row.id}/reply", {"shape": "apple", "answer": "propose",
                                                   "proposed_start": "2031-07-01T15:00",
                                                   "proposed_end": "2031-07-01T15:30"}, follow_redirects=True)

    assert "Apple Calendar cannot propose a new time" in response.get_data(as_text=True)
    assert stored() == []
    assert fresh(invite).recipient("ann@example.org").status == RecipientStatus.PENDING


def test_reply_as_attendee_is_off_with_a_real_mail_server(app, client, auth, deliver):
    auth.login()
    invite, row = caught_invite(deliver)
    app.config["SMTP_URL"] = "smtp://mail.example.org:587"

    assert "Reply as attendee" not in client.get(f"/mail/{row.id}").get_data(as_text=True)
    assert auth.post(f"/mail/{row.id}/reply", {"shape": "google", "answer": "accepted"}).status_code == 404
    assert stored() == []

    app.config["DEMO_MODE"] = True
    assert "Reply as attendee" in client.get(f"/mail/{row.id}").get_data(as_text=True)


def test_reply_as_attendee_needs_the_csrf_token(app, client, auth, deliver):
    auth.login()
    invite, row = caught_invite(deliver)
    app.config["WTF_CSRF_ENABLED"] = True

    response = client.post(f"/mail/{row.id}/reply", data={"shape": "google", "answer": "accepted"})

    assert response.status_code == 400
    assert stored() == []


def test_a_message_is_parsed_once_whichever_path_records_it(client, inbound, monkeypatch):
    """Parsing is half of what receiving a reply costs. A message the one-statement path leaves
    to the usual one (here: two replies) is not parsed again there."""
    invite = make_invite()
    calls = []
    parse = replies.parse_message
    monkeypatch.setattr(replies, "parse_message", lambda *args: (calls.append(args), parse(*args))[1])

    assert post(client, two_replies(invite)).json["outcome"] == "applied"
    assert len(calls) == 1
