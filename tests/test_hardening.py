"""Hardening (issue 6): rate limits on /login, a cap on request size, cookie and password
settings, and hostile text in every user-controlled field coming out inert in HTML, ICS,
email headers and CSV. Runs on SQLite and on PostgreSQL (TEST_DATABASE_URL)."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from icalendar import Calendar
from sqlalchemy import func, select

from smart_invites_ui.extensions import db, limiter
from smart_invites_ui.models import BookingImport, Invite, OutboxMessage, OutboxState, Role
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services import users as user_service
from smart_invites_ui.services.callbacks import SIGNATURE_HEADER, sign
from tests.conftest import PASSWORD, csrf_from, future, make_app


WEBHOOK_SECRET = "test-cronofy-secret"  # the app fixture's CRONOFY_CLIENT_SECRETS
EVIL = "evil@example.org"
ANN, BOB = "ann@example.org", "bob@example.org"


def hostile(field: str, *, line_breaks: bool = True) -> str:
    """One value that is at once a spreadsheet formula, HTML with script, and (unless the
    field cannot hold line breaks) a CRLF injection of calendar properties and mail headers."""
    text = f'=HYPERLINK("//x.example","{field}")<script>alert("{field}")</script><img src=x onerror=alert(1)>'
    if line_breaks:  # CRLF, and a bare CR and LF, which lenient parsers also split on
        text += f"\r\nATTENDEE:mailto:{EVIL}\r\nMETHOD:CANCEL\rBcc: {EVIL}\nSTATUS:CANCELLED"
    return text


def assert_inert_html(html: str, where: str) -> None:
    for raw in ("<script>alert(", "<img src=x"):
        assert raw not in html, f"{raw!r} unescaped on {where}"
    assert not re.search(r"<[a-z][^<>]*\sonerror\s*=", html, re.IGNORECASE), f"an event handler on {where}"


# --- hostile text everywhere --------------------------------------------------------------------


@pytest.fixture
def hostile_invite(app, auth, deliver):
    """An invite made on the form with a hostile value in every field, a recipient whose
    name is hostile, and a hostile reply (comment and proposal) through the signed webhook;
    its emails delivered into the mail catcher."""
    auth.login()
    start = future(days=10)
    response = auth.post("/invites/new", data={
        "summary": hostile("summary"),
        "description": hostile("description"),
        "location": hostile("location"),
        "organizer_name": hostile("organizer"),
        "smart_invite_id": "@SUM(1+1)<b>ref</b>",
        # The recipients box splits on line breaks, so a name there holds none.
        "recipients": f'"{hostile("name", line_breaks=False).replace(chr(34), "")}" <{ANN}>, {BOB}',
        "start": start.strftime("%Y-%m-%dT%H:%M"),
        "end": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M"),
        "tzid": "Europe/London",
    })
    assert response.status_code == 302, re.findall(r'class="error"[^>]*>[^<]*', response.get_data(as_text=True))
    invite = db.session.scalar(select(Invite))
    # What the API or a CSV file can bring: a name with line breaks in it.
    invite_service.add_recipients(invite, [invite_service.NewRecipient("cat@example.org", hostile("cat"))])
    reply = {"email": BOB, "status": "tentative", "comment": hostile("comment"),
             "proposal": {"start": {"time": (start + timedelta(days=1)).isoformat(), "tzid": "Europe/Paris"},
                          "end": {"time": (start + timedelta(days=1, hours=1)).isoformat(), "tzid": "Europe/Paris"}}}
    body = json.dumps({"notification": {"type": "smart_invite"},
                       "smart_invite": {"smart_invite_id": invite.smart_invite_id, "reply": reply,
                                        "recipients": [{"email": ANN, "status": "pending"}, reply]}}).encode()
    webhook = auth.client.post("/webhooks/smart-invites", data=body,
                               headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, WEBHOOK_SECRET)})
    assert webhook.status_code in (200, 202)
    deliver()
    db.session.expire_all()
    invite = db.session.get(Invite, invite.id)
    assert invite.summary == hostile("summary").strip()  # stored as typed: made inert on the way out
    assert invite.recipient(BOB).comment == hostile("comment").strip()
    return invite


def caught_emails() -> list[OutboxMessage]:
    emails = list(db.session.scalars(select(OutboxMessage).where(OutboxMessage.state == OutboxState.SENT)
                                     .order_by(OutboxMessage.id)))
    assert {m.target for m in emails} >= {ANN, BOB, "cat@example.org"}
    return emails


def test_hostile_text_is_escaped_on_every_page(app, auth, hostile_invite):
    invite = hostile_invite
    pages = {
        "list": "/invites",
        "search": "/invites?q=script",
        "detail": f"/invites/{invite.id}",
        "live fragment": f"/invites/{invite.id}/live",
        "mail catcher": "/mail",
    }
    for message in caught_emails():
        pages[f"caught email {message.id}"] = f"/mail/{message.id}"
        pages[f"caught email body {message.id}"] = f"/mail/{message.id}/body.html"
    for where, url in pages.items():
        response = auth.client.get(url)
        assert response.status_code == 200, where
        assert_inert_html(response.get_data(as_text=True), where)

    detail = auth.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    for field in ("summary", "description", "location", "organizer", "cat", "comment"):
        assert f"&lt;script&gt;alert(&#34;{field}&#34;)&lt;/script&gt;" in detail, field
    assert "&lt;script&gt;alert(name)&lt;/script&gt;" in detail  # the name typed in the recipients box
    assert "@SUM(1+1)&lt;b&gt;ref&lt;/b&gt;" in detail
    listing = auth.client.get("/invites").get_data(as_text=True)
    assert '&lt;script&gt;alert(&#34;summary&#34;)' in listing
    body = auth.client.get(f"/mail/{caught_emails()[0].id}/body.html")
    assert "sandbox" in body.headers["Content-Security-Policy"]  # the email's own HTML runs no script


def physical_lines(ics: bytes) -> list[bytes]:
    """Lines as the most lenient parser would split them (on CR, LF or CRLF), unfolded."""
    unfolded = ics.replace(b"\r\n ", b"").replace(b"\r\n\t", b"")
    return re.split(rb"\r\n|\r|\n", unfolded)


def assert_inert_ics(ics: bytes, attendees: set[str], where: str) -> None:
    lines = physical_lines(ics)
    assert not any(line.upper().startswith(b"BCC") for line in lines), where
    assert [line for line in lines if line.startswith(b"METHOD:")] in ([b"METHOD:REQUEST"], [b"METHOD:CANCEL"]), where
    attendee_lines = [line for line in lines if line.startswith(b"ATTENDEE")]
    assert len(attendee_lines) == len(attendees), where
    assert not any(line.startswith(b"ATTENDEE:mailto:" + EVIL.encode()) for line in lines), where
    assert [line for line in lines if line.startswith(b"STATUS:")] == [b"STATUS:CONFIRMED"], where
    event = Calendar.from_ical(ics).walk("VEVENT")[0]
    found = event.get("ATTENDEE")
    found = found if isinstance(found, list) else [found]
    assert {str(a).lower() for a in found} == {f"mailto:{a}" for a in attendees}, where
    # The text comes back as typed, line breaks included: escaped, not executed.
    assert str(event["SUMMARY"]) == hostile("summary").strip().replace("\r\n", "\n").replace("\r", "\n")
    assert str(event["LOCATION"]).startswith('=HYPERLINK("//x.example","location")<script>')


def test_hostile_text_cannot_add_calendar_properties(app, auth, hostile_invite):
    everyone = {ANN, BOB, "cat@example.org"}
    download = auth.client.get(f"/invites/{hostile_invite.id}/invite.ics")
    assert download.status_code == 200
    assert_inert_ics(download.data, everyone, "the ICS download")
    assert re.fullmatch(r'attachment; filename="[A-Za-z0-9._-]+"', download.headers["Content-Disposition"])
    for message in caught_emails():
        assert_inert_ics(auth.client.get(f"/mail/{message.id}/invite.ics").data, everyone,
                         f"the ICS attached to email {message.id}")


def header_block(raw: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of each header, split the way a mail server would."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert "\r" not in head.replace("\r\n", "") and "\n" not in head.replace("\r\n", ""), "a bare CR or LF"
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    return [tuple(line.split(":", 1)) for line in unfolded.split("\r\n")]


def test_hostile_text_cannot_add_email_headers(app, auth, hostile_invite):
    from email import message_from_bytes
    from email.policy import default

    for message in caught_emails():
        raw = auth.client.get(f"/mail/{message.id}/message.eml").data
        headers = header_block(raw)
        names = [name.lower() for name, _ in headers]
        assert not {"bcc", "cc", "attendee", "method", "status"} & set(names)
        for single in ("subject", "from", "to", "date", "message-id"):
            assert names.count(single) == 1, single
        email = message_from_bytes(raw, policy=default)
        # One mailbox each, whatever the name holds (quotes, "<", ",", line breaks).
        (to,) = email["To"].addresses
        assert to.addr_spec == message.target
        (sender,) = email["From"].addresses
        assert sender.addr_spec.startswith("invites+") and "organizer" in sender.display_name
        assert f"Bcc: {EVIL}" in email["Subject"]  # kept as words on the one Subject line


def test_export_csv_cells_cannot_start_a_formula(app, auth, hostile_invite):
    response = auth.client.get("/invites/export.csv")
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.data.decode("utf-8-sig"), newline="")))
    cells = [cell for row in rows[1:] for cell in row]
    assert len(rows) == 4  # the header and the three recipients
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert "'" + hostile("summary").strip() in cells
    assert "'@SUM(1+1)<b>ref</b>" in cells
    assert "'" + hostile("comment").strip() in cells


def test_a_proposal_with_a_hostile_time_zone_is_not_taken(app, auth, hostile_invite):
    reply = {"email": ANN, "status": "tentative",
             "proposal": {"start": {"time": "2031-09-13T10:00:00", "tzid": "<script>alert(1)</script>"},
                          "end": {"time": "2031-09-13T11:00:00", "tzid": "Europe/Paris\r\nX-EVIL:1"}}}
    body = json.dumps({"notification": {"type": "smart_invite"},
                       "smart_invite": {"smart_invite_id": hostile_invite.smart_invite_id, "recipient": reply}}
                      ).encode()
    response = auth.client.post("/webhooks/smart-invites", data=body, headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: sign(body, WEBHOOK_SECRET)})
    assert response.status_code in (200, 202, 400)
    db.session.expire_all()
    assert db.session.get(Invite, hostile_invite.id).recipient(ANN).proposal is None  # not a time zone
    page = auth.client.get(f"/invites/{hostile_invite.id}").get_data(as_text=True)
    assert_inert_html(page, "detail")
    assert "X-EVIL" not in page


def test_nul_characters_in_forms_and_queries_get_400_not_a_server_error(app, auth):
    """PostgreSQL cannot store NUL in text; a field a person types never holds one."""
    auth.login()
    start = future(days=3)
    form = auth.post("/invites/new", data={
        "summary": "Check-up\x00", "recipients": ANN, "tzid": "UTC",
        "start": start.strftime("%Y-%m-%dT%H:%M"), "end": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")})
    assert form.status_code == 400
    assert auth.client.get("/invites?q=a%00b").status_code == 400
    assert auth.client.get("/invites/export.csv?q=%00").status_code == 400
    assert db.session.scalar(select(func.count()).select_from(Invite)) == 0
    auth.client.post("/logout", data={"csrf_token": auth.token()})
    login_page = auth.client.get("/login").get_data(as_text=True)
    assert auth.client.post("/login", data={"email": "ann\x00@example.org", "password": "x",
                                            "csrf_token": csrf_from(login_page)}).status_code == 400


# --- rate limits on /login ----------------------------------------------------------------------


@pytest.fixture
def limited(app, database_url, fast_passwords):
    """An app with the login rate limits on (the test config turns them off), fresh counters."""
    was_enabled = limiter.enabled
    limited_app = make_app(database_url, RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://")
    user_service.create_user(ANN, PASSWORD, Role.STAFF)
    yield limited_app
    limiter.enabled = was_enabled  # one Limiter object serves every app made in this process


def login_attempt(client, email, password="not the password", ip="198.51.100.1"):
    token = csrf_from(client.get("/login", headers={"X-Forwarded-For": ip}).get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                       headers={"X-Forwarded-For": ip})


def test_login_is_limited_per_address(limited):
    client = limited.test_client()
    for n in range(10):
        assert login_attempt(client, f"guess{n}@example.org", ip="198.51.100.7").status_code == 401
    assert login_attempt(client, "guess10@example.org", ip="198.51.100.7").status_code == 429
    assert login_attempt(client, ANN, PASSWORD, ip="198.51.100.7").status_code == 429  # even the right one
    assert client.get("/login", headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    assert login_attempt(client, ANN, PASSWORD, ip="198.51.100.8").status_code == 302  # another address


def test_login_is_limited_per_account_across_addresses(limited):
    client = limited.test_client()
    for n in range(20):  # a botnet: every attempt from a new address
        assert login_attempt(client, ANN, ip=f"203.0.113.{n + 1}").status_code == 401
    assert login_attempt(client, "Ann@Example.ORG", PASSWORD, ip="203.0.113.200").status_code == 429
    assert login_attempt(client, BOB, ip="203.0.113.201").status_code == 401  # other accounts are not locked


def test_wrong_api_keys_are_limited_per_address(limited):
    from smart_invites_ui.services import api_clients

    _, secret = api_clients.create_client("Booking website")
    client = limited.test_client()

    def lookup(key, ip):
        return client.get("/v1/smart_invites", query_string={"smart_invite_id": "BOOK-1"},
                          headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": ip})

    for _ in range(40):  # the right key never counts
        assert lookup(secret, "198.51.100.20").status_code == 404
    for n in range(30):
        assert lookup(f"guess-{n}", "198.51.100.21").status_code == 401
    refused = lookup("guess-30", "198.51.100.21")
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.get_json()["errors"]["authorization"][0]["key"] == "errors.too_many_attempts"
    assert lookup(secret, "198.51.100.21").status_code == 429  # even the right key, until the minute is over
    assert lookup(secret, "198.51.100.22").status_code == 404  # another address
    assert lookup("guess-31", "198.51.100.22").status_code == 401


# --- size, cookies, passwords -------------------------------------------------------------------


def test_requests_over_the_size_cap_get_413(app, auth):
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert 0 < limit <= 50 * 1024 * 1024
    body = b"{" + b" " * limit + b"}"
    webhook = auth.client.post("/webhooks/smart-invites", data=body,
                               headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, WEBHOOK_SECRET)})
    assert webhook.status_code == 413
    login_form = auth.client.post("/login", data=b"email=" + b"a" * limit, content_type="application/x-www-form-urlencoded")
    assert login_form.status_code == 413
    auth.login()
    upload = auth.post("/imports", data={"file": (io.BytesIO(b"a" * limit), "bookings.csv")},
                       content_type="multipart/form-data")
    assert upload.status_code == 413
    assert db.session.scalar(select(func.count()).select_from(BookingImport)) == 0


def test_session_cookie_is_httponly_and_samesite_lax(app, client):
    user_service.create_user(ANN, PASSWORD, Role.STAFF)
    page = client.get("/login")
    response = client.post("/login", data={"email": ANN, "password": PASSWORD,
                                           "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert response.status_code == 302
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies
    for cookie in cookies:
        flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
        assert "httponly" in flags
        assert flags["samesite"].lower() == "samesite=lax"
        assert "secure" not in flags  # plain http here; https deployments: tests/test_deploy.py


def test_passwords_are_hashed_with_scrypt_and_salted(app):
    first = user_service.create_user(ANN, PASSWORD, Role.STAFF)
    second = user_service.create_user(BOB, PASSWORD, Role.STAFF)
    assert first.password_hash.startswith("scrypt:")
    assert first.password_hash != second.password_hash
    assert PASSWORD not in first.password_hash
    assert user_service.authenticate(ANN, PASSWORD) == first
    assert user_service.authenticate(ANN, PASSWORD + "!") is None


@pytest.mark.parametrize("name, kept", [
    ("Dr. Anne-Marie Fitzgerald-Smithson, Department of Orthopaedics", True),
    ("Zahnärzte Süd, Praxis Dr. Müller-Lüdenscheidt und Kollegen, Abteilung 3", True),
    ("A long long long long long long long long name <evil@example.org>", True),
    ("a, " + "word " * 40, False),  # Python would fold this into two mailboxes...
    ("Dr. Anne-Marie Fitzgerald-Smithson, Department of Orthopaedics, Riverside Hospital", False),  # ...this into 3
    ('=HYPERLINK("//x.example")<script>alert(1)</script><img src=x onerror=alert(1)>', False),
])
def test_a_display_name_never_reads_as_another_mailbox(name, kept):
    from email import message_from_bytes
    from email.message import EmailMessage
    from email.policy import SMTP, default

    from smart_invites_ui.services.mail import mailbox

    for header in ("From", "To"):
        email = EmailMessage(policy=SMTP)
        email[header] = mailbox(header, name, ANN)
        (parsed,) = message_from_bytes(email.as_bytes(), policy=default)[header].addresses
        assert parsed.addr_spec == ANN
        if kept:
            assert parsed.display_name.replace(" ", "") == name.replace(" ", "")
        else:  # shortened to what folds safely
            assert parsed.display_name.endswith("…") and name.startswith(parsed.display_name[:-1])
