"""Invite emails as recipients receive them: sent by the worker to a real SMTP server
on loopback (aiosmtpd), then parsed. Covers the message shape (SPEC §6, INTEROP §1)
and the re-send rules: what each staff action sends, and to whom."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from email import message_from_bytes
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from types import SimpleNamespace

import pytest
from sqlalchemy import event, func, select, update

from smart_invites_ui.extensions import db
from smart_invites_ui.domain import ITipMethod, RecipientStatus
from smart_invites_ui.models import Invite, OutboxKind, OutboxMessage, OutboxState, Recipient, now_utc
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services.callbacks import SIGNATURE_HEADER, sign
from smart_invites_ui.services.invite_mail import Composer, organizer_address
from smart_invites_ui.services.mail import SmtpSettings, SmtpTransport
from tests.conftest import SmtpSink, free_port, make_event, make_invite
from tests.test_ics import read

ANN, BOB, CAT, DAN = "ann@example.org", "bob@example.org", "cat@example.org", "dan@example.org"


@dataclass
class Received:
    sender: str
    rcpts: list[str]
    raw: bytes
    msg: EmailMessage

    @property
    def calendar_part(self):
        """The inline text/calendar part (what Outlook and Gmail show buttons for)."""
        (part,) = [p for p in self.msg.walk() if p.get_content_type() == "text/calendar"]
        return part

    @property
    def ics(self) -> bytes:
        return self.calendar_part.get_payload(decode=True)

    @property
    def cal(self) -> dict:
        return read(self.ics)


class Inbox:
    """What reached the SMTP server since the last ``take()``."""

    def __init__(self, sink):
        self.sink = sink

    def take(self) -> list[Received]:
        received = [Received(sender, rcpts, raw, msg)
                    for (sender, rcpts, raw), msg in zip(self.sink.messages, self.sink.parsed())]
        self.sink.messages.clear()
        return received

    def take_by_recipient(self) -> dict[str, Received]:
        received = self.take()
        by_rcpt = {r.rcpts[0]: r for r in received}
        assert all(len(r.rcpts) == 1 for r in received), "one email per recipient"
        assert len(by_rcpt) == len(received), "nobody gets two emails for one change"
        return by_rcpt


@pytest.fixture
def inbox(app, smtp_server):
    app.config["SMTP_URL"] = smtp_server.url
    return Inbox(smtp_server)


def _outbox_count() -> int:
    return db.session.scalar(select(func.count()).select_from(OutboxMessage))


# --- the message ---------------------------------------------------------------------------


def test_invite_made_on_the_form_is_emailed_to_each_recipient(app, auth, inbox, deliver):
    auth.login()
    response = auth.post("/invites/new", data={
        "summary": "Viewing at 4 Elm Street", "description": "Meet at the gate.", "location": "4 Elm Street",
        "start": "2031-06-03T10:00", "end": "2031-06-03T10:30", "tzid": "Europe/London",
        "organizer_name": "Elm Lettings", "recipients": f"Ann Example <{ANN}>, {BOB}", "smart_invite_id": "",
    })
    assert response.status_code == 302, response.get_data(as_text=True)
    invite = db.session.scalar(select(Invite))
    organizer = organizer_address(invite)
    assert re.fullmatch(r"invites\+[0-9a-f]{32,}@localhost", organizer)

    deliver()
    received = inbox.take_by_recipient()
    assert set(received) == {ANN, BOB}
    for address, email in received.items():
        msg = email.msg
        assert email.sender == organizer  # envelope
        assert email.rcpts == [address]
        assert msg["To"].addresses[0].addr_spec == address
        assert msg["From"].addresses[0].addr_spec == organizer
        assert msg["From"].addresses[0].display_name == "Elm Lettings"
        assert "Viewing at 4 Elm Street" in msg["Subject"]
        assert msg["Message-ID"] and msg["Date"]

        assert msg.get_content_type() == "multipart/mixed"
        alternative, attachment = msg.get_payload()
        assert alternative.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html", "text/calendar"]
        plain, html, calendar = alternative.get_payload()
        assert "Viewing at 4 Elm Street" in plain.get_content()
        assert "4 Elm Street" in html.get_content()
        assert calendar.get_param("method") == "REQUEST"
        assert calendar.get_content_charset() == "utf-8"
        assert attachment.get_content_type() == "application/ics"
        assert attachment.get_filename() == "invite.ics"
        assert attachment.is_attachment()
        assert attachment["Content-Transfer-Encoding"] == "base64"
        assert attachment.get_payload(decode=True) == email.ics

        cal = email.cal
        assert cal["method"] == calendar.get_param("method")
        assert cal["organizer"] == f"mailto:{organizer}"
        assert cal["sequence"] == 0 and cal["uid"] == invite.uid
        assert cal["attendees"] == [f"mailto:{ANN}", f"mailto:{BOB}"]
        assert cal["start"].isoformat() == "2031-06-03T09:00:00+00:00"  # 10:00 BST


def test_non_ascii_summary_travels_encoded(app, inbox, deliver):
    summary = "Kontrolle für Jürgen – 歯科検診 😀"
    invite = invite_service.create_invite(event=make_event(summary=summary),
                                          recipients=[invite_service.NewRecipient(ANN, "Änne")],
                                          organizer_name="Zahnärzte Süd")
    deliver()
    (email,) = inbox.take()

    assert email.raw.isascii()  # no raw 8-bit anywhere, whatever the server supports
    part = email.calendar_part
    assert part["Content-Transfer-Encoding"].lower() in ("quoted-printable", "base64")
    assert email.cal["summary"] == summary
    assert summary in email.msg["Subject"]
    assert email.msg["From"].addresses[0].display_name == "Zahnärzte Süd"
    assert email.msg["To"].addresses[0].display_name == "Änne"
    assert email.cal["uid"] == invite.uid


def test_line_breaks_in_summary_or_organizer_name_cannot_add_headers(app, inbox, deliver):
    invite_service.create_invite(
        event=make_event(summary="Check-up\r\nBcc: evil@example.net\r\nX-Injected: yes"),
        recipients=[invite_service.NewRecipient(ANN), invite_service.NewRecipient(BOB)],
        organizer_name="Clinic\r\nBcc: evil2@example.net\nReply-To: evil3@example.net",
    )
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {ANN, BOB}
    for address, email in received.items():
        assert email.rcpts == [address]
        headers = email.raw.split(b"\r\n\r\n", 1)[0]
        assert not re.search(rb"^(Bcc|X-Injected|Reply-To):", headers, re.MULTILINE | re.IGNORECASE)
        assert email.msg["Bcc"] is None and email.msg["Reply-To"] is None and email.msg["X-Injected"] is None
        assert len(email.msg.get_all("Subject")) == 1
        assert len(email.msg.get_all("From")) == 1
        assert email.msg["From"].addresses[0].addr_spec.startswith("invites+")
        assert "Bcc: evil@example.net" in email.msg["Subject"]  # kept as text, on the one Subject line
        assert email.cal["summary"].startswith("Check-up") and "evil@example.net" in email.cal["summary"]


def test_html_part_escapes_text_and_plain_part_keeps_it(app, inbox, deliver):
    make_invite(emails=(ANN,), summary="Tom & Jerry <b>check-up</b>", location="<script>alert(1)</script>")
    deliver()
    (email,) = inbox.take()
    plain, html, _ = email.msg.get_payload()[0].get_payload()
    assert "Tom & Jerry <b>check-up</b>" in plain.get_content()
    html_text = html.get_content()
    assert "Tom &amp; Jerry &lt;b&gt;check-up&lt;/b&gt;" in html_text
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text
    assert email.cal["summary"] == "Tom & Jerry <b>check-up</b>"


def test_recipients_of_one_invite_each_get_a_whole_email_of_their_own(app, inbox, deliver):
    """The worker builds what an invite's recipients share once (invite_mail.Composer);
    each email still has one of every header, its own To, Date and Message-ID, and parses cleanly."""
    make_invite(emails=(ANN, BOB, CAT))
    db.session.execute(update(Recipient).where(Recipient.email == BOB).values(name='Bob "The Builder", Jr.'))
    db.session.commit()
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {ANN, BOB, CAT}
    for address, email in received.items():
        msg = email.msg
        for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"):
            assert len(msg.get_all(name)) == 1, name
        assert [a.addr_spec for a in msg["To"].addresses] == [address]
        assert all(not part.defects for part in msg.walk())
        assert msg.get_content_type() == "multipart/mixed"
        assert email.cal["attendees"] == [f"mailto:{ANN}", f"mailto:{BOB}", f"mailto:{CAT}"]
    assert len({email.msg["Message-ID"] for email in received.values()}) == 3
    assert received[BOB].msg["To"].addresses[0].display_name == 'Bob "The Builder", Jr.'


def _composed_ics(composed) -> dict:
    msg = message_from_bytes(composed.raw, policy=default_policy)
    (part,) = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    return read(part.get_payload(decode=True))


def _after_own_headers(composed) -> bytes:
    """An email but for its recipient's own To, Date and Message-ID (mail.address)."""
    return composed.raw.split(b"\r\nMessage-ID: ", 1)[1].split(b"\r\n", 1)[1]


def test_one_read_of_an_invite_composes_each_recipients_email(app):
    """What recipients share is built once per read; a CANCEL to someone removed lists only them."""
    invite = make_invite(emails=(ANN, BOB, CAT, DAN))
    ann, bob, cat, dan = invite.recipients
    dan.status = RecipientStatus.REMOVED
    composer = Composer(invite)

    to_ann, to_bob = (composer.compose(r, ITipMethod.REQUEST) for r in (ann, bob))
    cancel = composer.compose(dan, ITipMethod.CANCEL)
    to_cat = composer.compose(cat, ITipMethod.REQUEST)
    assert _after_own_headers(to_ann) == _after_own_headers(to_bob) == _after_own_headers(to_cat)
    assert to_ann.raw != to_bob.raw
    assert _composed_ics(to_cat)["attendees"] == [f"mailto:{ANN}", f"mailto:{BOB}", f"mailto:{CAT}"]
    assert _composed_ics(cancel)["attendees"] == [f"mailto:{DAN}"]
    assert "no longer invited" in message_from_bytes(cancel.raw, policy=default_policy).get_body(("plain",)).get_content()


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_invites_run_of_emails_is_composed_from_one_read_for_up_to_a_second(app, monkeypatch):
    """The worker reads an invite once for the emails to it that come one after another in a
    batch: a change committed meanwhile is not in them (it queues emails of its own, sent after
    them); another invite's email in between, or a second gone by, and the invite is read again."""
    from smart_invites_ui.services import delivery

    clock = _Clock()
    monkeypatch.setattr(delivery, "monotonic", clock)
    first, other = make_invite(emails=(ANN, BOB, CAT, DAN)), make_invite(emails=(ANN,))
    ann, bob, cat, dan = [r.id for r in first.recipients]
    first_id, other_id, other_ann = first.id, other.id, other.recipients[0].id
    reads = []

    def note_read(conn, cursor, statement, *rest):
        if statement.lstrip().startswith("SELECT") and "FROM invites" in statement:
            reads.append(statement)

    event.listen(db.engine, "before_cursor_execute", note_read)
    deliverer = delivery.EmailDeliverer(None)  # (the mail catcher: the rendered email is returned)

    def email_to(invite_id: int, recipient_id: int) -> str:
        row = SimpleNamespace(invite_id=invite_id, recipient_id=recipient_id, method="REQUEST", payload=None)
        outcome = deliverer(row)
        assert outcome.ok, outcome.error
        return str(message_from_bytes(outcome.rendered, policy=default_policy)["Subject"])

    def rename(summary: str) -> None:
        db.session.execute(update(Invite).where(Invite.id == first_id).values(summary=summary))
        db.session.commit()

    try:
        assert email_to(first_id, ann) == "Invitation: Dental check-up"
        rename("Check-up, now in Room 4")
        clock.now += 0.9
        assert email_to(first_id, bob) == "Invitation: Dental check-up"
        assert len(reads) == 1
        email_to(other_id, other_ann)
        assert email_to(first_id, cat) == "Invitation: Check-up, now in Room 4"
        assert len(reads) == 3
        rename("Check-up, Room 5")
        clock.now += 1.1
        assert email_to(first_id, dan) == "Invitation: Check-up, Room 5"
        assert len(reads) == 4
    finally:
        event.remove(db.engine, "before_cursor_execute", note_read)


def test_the_faster_header_factory_writes_what_the_email_package_writes():
    """mail.POLICY only makes each header class once: every byte is the library's own."""
    from email.policy import SMTP

    from smart_invites_ui.services.mail import POLICY

    def build(policy) -> bytes:
        msg = EmailMessage(policy=policy)
        msg["From"] = Address(display_name="Zahnärzte Süd, Praxis <Mitte>", addr_spec="invites+abc@clinic.example")
        msg["To"] = Address(display_name="Ann " * 20, addr_spec="ann@example.org")
        msg["Subject"] = "Kontrolle für Jürgen – 歯科検診 😀 " * 3
        msg["Date"] = "Sun, 22 Nov 2026 04:59:31 +0000"
        msg["Message-ID"] = "<1.2.3@clinic.example>"
        msg.set_content("Grüße\n" * 40, subtype="plain", charset="utf-8")
        msg.add_alternative("<p>Grüße</p>", subtype="html", charset="utf-8")
        msg.add_attachment(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", maintype="application", subtype="ics",
                           filename="invite.ics", params={"method": "REQUEST"})
        msg.set_boundary("outer")
        msg.get_payload()[0].set_boundary("inner")
        return msg.as_bytes(policy=policy)

    first = build(POLICY)
    assert first == build(SMTP.clone(cte_type="7bit"))
    assert build(POLICY) == first  # its header fields now parsed once and used again


def test_short_non_ascii_texts_are_encoded_not_sent_as_raw_8bit():
    """Every line short enough for 8-bit: the SMTP policy would send the UTF-8 as is, which
    plain SMTP (no 8BITMIME) does not carry. Each part is encoded and reads back the same."""
    from smart_invites_ui.services.mail import as_bytes, build_invite_email

    ics = "BEGIN:VCALENDAR\r\nSUMMARY:Grüße\r\nEND:VCALENDAR\r\n".encode()
    raw = as_bytes(build_invite_email(ics=ics, method=ITipMethod.REQUEST, from_email="invites@clinic.example",
                                      from_name="Zahnärzte Süd", subject="Grüße", text="Grüße\nbis bald\n",
                                      html="<p>Grüße</p>\n"))
    assert raw.isascii()
    msg = message_from_bytes(raw, policy=default_policy)
    plain, html, calendar = msg.get_payload()[0].get_payload()
    assert plain.get_content().splitlines() == ["Grüße", "bis bald"]
    assert html.get_content().splitlines() == ["<p>Grüße</p>"]
    assert calendar.get_payload(decode=True) == ics
    assert msg["Subject"] == "Grüße" and msg["From"].addresses[0].display_name == "Zahnärzte Süd"


# --- what each staff action sends (SPEC §6) --------------------------------------------------


@pytest.fixture
def sent_invite(app, inbox, deliver):
    """An invite to Ann, Bob and Cat whose first emails have gone out."""
    invite = make_invite(emails=(ANN, BOB, CAT))
    deliver()
    first = inbox.take_by_recipient()
    assert set(first) == {ANN, BOB, CAT}
    assert {e.cal["method"] for e in first.values()} == {"REQUEST"}
    assert {e.cal["sequence"] for e in first.values()} == {0}
    assert {e.cal["uid"] for e in first.values()} == {invite.uid}
    return invite


EDITS = {
    "time": lambda invite: {"start": invite.start + timedelta(days=1), "end": invite.end + timedelta(days=1)},
    "place": lambda invite: {"location": "Room 7"},
    "title": lambda invite: {"summary": "Dental check-up (extended)"},
    "description": lambda invite: {"description": "Bring your forms and your insurance card."},
}


@pytest.mark.parametrize("edit", EDITS)
def test_edit_sends_request_with_next_sequence_to_everyone(app, inbox, deliver, sent_invite, edit):
    change = EDITS[edit](sent_invite)
    event = make_event(**{"start": sent_invite.start, **change})
    assert invite_service.update_event(sent_invite, event) is True
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {ANN, BOB, CAT}
    for email in received.values():
        cal = email.cal
        assert (cal["method"], cal["sequence"], cal["uid"]) == ("REQUEST", 1, sent_invite.uid)
        assert email.calendar_part.get_param("method") == "REQUEST"
        assert cal["attendees"] == [f"mailto:{a}" for a in (ANN, BOB, CAT)]
        assert "Updated" in email.msg["Subject"]
        for key, value in change.items():
            assert cal[key] == value


def test_edit_that_changes_nothing_sends_nothing(app, auth, inbox, deliver, sent_invite):
    before = _outbox_count()
    assert invite_service.update_event(sent_invite, sent_invite.event) is False

    auth.login()
    form = auth.client.get(f"/invites/{sent_invite.id}/edit").get_data(as_text=True)
    assert form  # the edit page renders the invite as it stands
    start = invite_service.local_datetime(sent_invite.start, sent_invite.tzid)
    end = invite_service.local_datetime(sent_invite.end, sent_invite.tzid)
    response = auth.post(f"/invites/{sent_invite.id}/edit", data={
        "summary": sent_invite.summary, "description": sent_invite.description, "location": sent_invite.location,
        "start": start.strftime("%Y-%m-%dT%H:%M"), "end": end.strftime("%Y-%m-%dT%H:%M"),
        "tzid": sent_invite.tzid, "organizer_name": sent_invite.organizer_name,
    })
    assert response.status_code == 302
    deliver()
    assert inbox.take() == []
    assert _outbox_count() == before
    assert db.session.get(Invite, sent_invite.id).sequence == 0


def test_added_recipient_and_everyone_else_get_the_new_attendee_list(app, inbox, deliver, sent_invite):
    invite_service.add_recipients(sent_invite, [invite_service.NewRecipient(DAN)])
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {ANN, BOB, CAT, DAN}
    for email in received.values():
        cal = email.cal
        assert cal["method"] == "REQUEST" and cal["uid"] == sent_invite.uid
        assert cal["attendees"] == [f"mailto:{a}" for a in (ANN, BOB, CAT, DAN)]
    # SPEC §6 bumps SEQUENCE for edits, removals and cancels, not for a longer attendee
    # list (RFC 5546 §2.1.4: not a significant change); the newer DTSTAMP makes it an update.
    assert {e.cal["sequence"] for e in received.values()} == {0}


def test_removed_recipient_gets_cancel_and_the_rest_the_updated_list(app, inbox, deliver, sent_invite):
    invite_service.remove_recipient(sent_invite, sent_invite.recipient(BOB))
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {ANN, BOB, CAT}
    to_bob = received[BOB].cal
    assert (to_bob["method"], to_bob["status"], to_bob["sequence"]) == ("CANCEL", "CANCELLED", 1)
    assert received[BOB].calendar_part.get_param("method") == "CANCEL"
    assert to_bob["attendees"] == [f"mailto:{BOB}"]
    assert to_bob["uid"] == sent_invite.uid
    for address in (ANN, CAT):
        cal = received[address].cal
        assert (cal["method"], cal["sequence"]) == ("REQUEST", 1)
        assert cal["attendees"] == [f"mailto:{ANN}", f"mailto:{CAT}"]


def test_cancel_goes_to_everyone_still_invited_and_not_to_the_removed(app, inbox, deliver, sent_invite):
    invite_service.remove_recipient(sent_invite, sent_invite.recipient(BOB))
    deliver()
    inbox.take()

    invite_service.cancel_invite(sent_invite)
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {ANN, CAT}
    for email in received.values():
        cal = email.cal
        assert (cal["method"], cal["status"], cal["sequence"]) == ("CANCEL", "CANCELLED", 2)
        assert email.calendar_part.get_param("method") == "CANCEL"
        assert cal["uid"] == sent_invite.uid
        assert cal["start"] == sent_invite.start
        assert "Cancelled" in email.msg["Subject"]


def test_accepting_a_proposed_time_sends_the_new_time(app, client, inbox, deliver, sent_invite):
    proposed = sent_invite.start + timedelta(days=2, hours=3)
    body = json.dumps({
        "notification": {"type": "smart_invite"},
        "smart_invite": {"smart_invite_id": sent_invite.smart_invite_id, "reply": {
            "email": BOB, "status": "tentative", "comment": "Thursday works better",
            "proposal": {"start": {"time": proposed.isoformat(), "tzid": "Europe/London"},
                         "end": {"time": (proposed + timedelta(minutes=30)).isoformat(), "tzid": "Europe/London"}},
        }},
    }).encode()
    response = client.post("/webhooks/smart-invites", data=body, headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: sign(body, "test-cronofy-secret")})
    assert response.status_code == 200
    db.session.expire_all()
    bob = sent_invite.recipient(BOB)
    assert bob.proposal is not None

    invite_service.accept_proposal(sent_invite, bob)
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {ANN, BOB, CAT}
    for email in received.values():
        cal = email.cal
        assert (cal["method"], cal["sequence"], cal["uid"]) == ("REQUEST", 1, sent_invite.uid)
        assert (cal["start"], cal["end"]) == (proposed, proposed + timedelta(minutes=30))
    assert received[BOB].cal["attendee_params"][f"mailto:{BOB}"]["PARTSTAT"] == "ACCEPTED"
    assert received[ANN].cal["attendee_params"][f"mailto:{ANN}"]["PARTSTAT"] == "NEEDS-ACTION"


def test_resend_to_one_keeps_the_sequence(app, inbox, deliver, sent_invite):
    invite_service.update_event(sent_invite, make_event(start=sent_invite.start, location="Room 9"))
    deliver()
    inbox.take()

    invite_service.resend(sent_invite, sent_invite.recipient(CAT))
    deliver()
    (email,) = inbox.take()
    assert email.rcpts == [CAT]
    assert (email.cal["method"], email.cal["sequence"], email.cal["location"]) == ("REQUEST", 1, "Room 9")


def test_resend_to_a_removed_recipient_repeats_their_cancellation(app, inbox, deliver, sent_invite):
    bob = sent_invite.recipient(BOB)
    invite_service.remove_recipient(sent_invite, bob)
    deliver()
    inbox.take()

    invite_service.resend(sent_invite, bob)
    deliver()
    (email,) = inbox.take()
    assert email.rcpts == [BOB]
    assert (email.cal["method"], email.cal["sequence"], email.cal["attendees"]) == ("CANCEL", 1, [f"mailto:{BOB}"])


# --- when the SMTP server is away -------------------------------------------------------------


def test_smtp_down_keeps_the_email_queued_then_delivers_it(app, deliver):
    port = free_port()  # nothing listens here yet
    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{port}"
    invite = make_invite(emails=(ANN,))
    deliver()

    message = db.session.scalar(select(OutboxMessage))
    assert message.state == OutboxState.QUEUED
    assert message.attempts == 1
    assert f"127.0.0.1:{port}" in message.last_error and "refused" in message.last_error.lower()
    assert message.next_attempt_at > now_utc() + timedelta(seconds=10)

    from aiosmtpd.controller import Controller

    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        deliver()  # not due yet: nothing happens
        assert sink.messages == []
        db.session.execute(update(OutboxMessage).values(next_attempt_at=now_utc()))
        db.session.commit()
        deliver()
    finally:
        controller.stop()

    message = db.session.scalar(select(OutboxMessage))
    assert (message.state, message.attempts, message.last_error) == (OutboxState.SENT, 2, "")
    assert [rcpts for _, rcpts, _ in sink.messages] == [[ANN]]
    assert read(Inbox(sink).take()[0].ics)["uid"] == invite.uid


# --- TLS and credentials -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed_cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def _tls_server(cert, key, **kwargs):
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins = []

    def authenticator(server, session, envelope, mechanism, data):
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=(data.login, data.password) == (b"clinic@example.org", b"p:ss/w@rd"), handled=False)

    sink = SmtpSink()
    sink.logins = logins
    if kwargs.pop("implicit", False):
        # aiosmtpd only sees TLS it negotiated itself (STARTTLS); the socket here is TLS from the start.
        controller = Controller(sink, hostname="127.0.0.1", port=free_port(), ssl_context=context,
                                authenticator=authenticator, auth_required=True, auth_require_tls=False)
    else:
        controller = Controller(sink, hostname="127.0.0.1", port=free_port(), tls_context=context,
                                require_starttls=True, authenticator=authenticator, auth_required=True)
    controller.start()
    return controller, sink


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_tls_with_credentials(app, deliver, monkeypatch, self_signed_cert, scheme):
    """smtp:// upgrades with STARTTLS when offered; smtps:// speaks TLS from the start.
    The certificate is verified: the operator trusts a private CA with SSL_CERT_FILE."""
    cert, key = self_signed_cert
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    controller, sink = _tls_server(cert, key, implicit=scheme == "smtps")
    try:
        app.config["SMTP_URL"] = f"{scheme}://clinic%40example.org:p%3Ass%2Fw%40rd@127.0.0.1:{controller.port}"
        make_invite(emails=(ANN,))
        deliver()
    finally:
        controller.stop()
    message = db.session.scalar(select(OutboxMessage))
    assert message.state == OutboxState.SENT, message.last_error
    assert sink.logins == [("clinic@example.org", "p:ss/w@rd")]
    assert [rcpts for _, rcpts, _ in sink.messages] == [[ANN]]


def test_wrong_smtp_password_is_retried_not_dropped(app, deliver, monkeypatch, self_signed_cert):
    """Bad credentials are the operator's to fix: the email waits for them."""
    cert, key = self_signed_cert
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    controller, sink = _tls_server(cert, key)
    try:
        app.config["SMTP_URL"] = f"smtp://clinic%40example.org:wrong@127.0.0.1:{controller.port}"
        make_invite(emails=(ANN,))
        deliver()
    finally:
        controller.stop()
    message = db.session.scalar(select(OutboxMessage))
    assert (message.state, message.attempts) == (OutboxState.QUEUED, 1)
    assert "535" in message.last_error
    assert set(sink.logins) == {("clinic@example.org", "wrong")} and sink.messages == []


def test_untrusted_certificate_is_refused_and_retried(app, deliver, self_signed_cert):
    cert, key = self_signed_cert
    controller, sink = _tls_server(cert, key)
    try:
        app.config["SMTP_URL"] = f"smtp://clinic%40example.org:p%3Ass%2Fw%40rd@127.0.0.1:{controller.port}"
        make_invite(emails=(ANN,))
        deliver()
    finally:
        controller.stop()
    message = db.session.scalar(select(OutboxMessage))
    assert message.state == OutboxState.QUEUED
    assert "certificate" in message.last_error.lower()
    assert sink.messages == [] and sink.logins == []


@pytest.mark.parametrize("url, expected", [
    ("smtp://mail.example.org", ("mail.example.org", 587, None, None, False)),
    ("smtps://mail.example.org", ("mail.example.org", 465, None, None, True)),
    ("smtp://u%40example.org:p%3A%40ss@mail.example.org:2525",
     ("mail.example.org", 2525, "u@example.org", "p:@ss", False)),
    ("smtps://apikey:s3cret@smtp.example.org:4650", ("smtp.example.org", 4650, "apikey", "s3cret", True)),
])
def test_smtp_url_parsing(url, expected):
    s = SmtpSettings.from_url(url)
    assert (s.host, s.port, s.username, s.password, s.implicit_tls) == expected


# --- without SMTP_URL: the mail catcher ----------------------------------------------------------


def test_without_smtp_emails_land_in_the_mail_catcher(app, auth, deliver):
    assert not app.config["SMTP_URL"]
    invite = make_invite(emails=(ANN, BOB), summary="Table for four")
    deliver()
    auth.login()

    listing = auth.client.get("/mail")
    assert listing.status_code == 200
    page = listing.get_data(as_text=True)
    assert ANN in page and BOB in page and "Invitation: Table for four" in page

    ids = db.session.scalars(select(OutboxMessage.id).where(OutboxMessage.kind == OutboxKind.EMAIL)
                             .order_by(OutboxMessage.id)).all()
    assert len(ids) == 2
    for message_id in ids:
        assert f"/mail/{message_id}" in page
    shown = auth.client.get(f"/mail/{ids[0]}")
    assert shown.status_code == 200
    assert "Table for four" in shown.get_data(as_text=True)

    ics = auth.client.get(f"/mail/{ids[0]}/invite.ics")
    assert ics.status_code == 200
    assert ics.mimetype == "text/calendar"
    cal = read(ics.get_data())
    assert (cal["method"], cal["uid"], cal["summary"]) == ("REQUEST", invite.uid, "Table for four")

    assert auth.client.get("/mail/999999").status_code == 404


def test_internationalised_domain_is_delivered_in_its_ascii_form(app, inbox, deliver):
    make_invite(emails=("ann@bücher.example", BOB))
    deliver()
    received = inbox.take_by_recipient()

    assert set(received) == {"ann@xn--bcher-kva.example", BOB}
    email = received["ann@xn--bcher-kva.example"]
    assert email.msg["To"].addresses[0].addr_spec == "ann@xn--bcher-kva.example"
    assert email.raw.isascii()
    assert email.cal["attendees"] == ["mailto:ann@bücher.example", f"mailto:{BOB}"]


def test_a_clinic_whose_own_domain_is_internationalised_can_send(app, inbox, deliver):
    """MAIL_FROM at an internationalised domain: the From, the envelope and the Message-ID
    carry its ASCII form. The Message-ID made the email package raise for every email."""
    from smart_invites_ui.config import MailFrom

    app.config["MAIL_FROM"] = MailFrom("einladungen", "praxis-müller.example")
    make_invite(emails=(BOB,))
    deliver()
    [email] = inbox.take_by_recipient().values()

    assert email.raw.isascii()
    assert email.msg["Message-ID"].endswith("@xn--praxis-mller-klb.example>")
    assert email.msg["From"].addresses[0].domain == "xn--praxis-mller-klb.example"
    assert [m.state for m in db.session.scalars(select(OutboxMessage))] == [OutboxState.SENT]


def test_unsendable_address_fails_alone_with_a_reason(app, inbox, deliver):
    """A non-ASCII mailbox name needs SMTPUTF8: that one email fails for good and says
    why, and the others in the same batch still go out."""
    make_invite(emails=("jürgen@example.org", BOB, CAT))
    deliver()

    assert set(inbox.take_by_recipient()) == {BOB, CAT}
    states = {m.target: m for m in db.session.scalars(select(OutboxMessage))}
    failed = states["jürgen@example.org"]
    assert failed.state == OutboxState.FAILED and failed.attempts == 1
    assert "SMTPUTF8" in failed.last_error
    assert states[BOB].state == states[CAT].state == OutboxState.SENT


def test_a_message_that_breaks_half_way_does_not_spoil_the_next(smtp_server):
    """One SMTP connection serves a whole batch: a message that fails after MAIL FROM
    must not leave the transaction open for the next one."""
    with SmtpTransport(SmtpSettings.from_url(smtp_server.url)) as transport:
        with pytest.raises(UnicodeEncodeError):
            transport.send(b"Subject: one\r\n\r\nbody\r\n", from_addr="invites@example.org",
                           to_addrs=["jürgen@example.org"])
        transport.send(b"Subject: two\r\n\r\nbody\r\n", from_addr="invites@example.org", to_addrs=[BOB])
    assert [rcpts for _, rcpts, _ in smtp_server.messages] == [[BOB]]
