"""The invite pages (issue 2 §3, §5-§7): create, find, read, edit and change invites."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest
from sqlalchemy import func, select, text

from smart_invites_ui.domain import InviteStatus, RecipientStatus
from smart_invites_ui.extensions import db
from smart_invites_ui.models import (Invite, NotificationSource, OutboxKind, OutboxMessage, OutboxState,
                                     Recipient)
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services import outbox
from smart_invites_ui.services.notifications import apply_notification
from tests.conftest import future, make_event, make_invite

pytestmark = pytest.mark.usefixtures("fast_passwords")

UTC = timezone.utc


# --------------------------------------------------------------------------- helpers

@pytest.fixture
def staff(auth):
    auth.login(timezone_name="America/New_York")
    return auth


def new_invite_form(**overrides) -> dict:
    data = {
        "summary": "Dental check-up", "description": "Bring your forms.", "start": "2030-05-03T09:00",
        "end": "2030-05-03T09:30", "tzid": "Europe/London", "location": "Room 3",
        "recipients": "ann@example.org\nbob@example.org", "smart_invite_id": "",
        "organizer_name": "Riverside Clinic",
    }
    data.update(overrides)
    return data


def count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def committed_count(table: str) -> int:
    """Rows another connection can see: what was really committed."""
    with db.engine.connect() as conn:
        return conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar()


def emails(invite: Invite, *, method: str | None = None, state=OutboxState.QUEUED) -> list[OutboxMessage]:
    db.session.expire_all()
    query = select(OutboxMessage).where(OutboxMessage.invite_id == invite.id, OutboxMessage.kind == OutboxKind.EMAIL)
    if state is not None:
        query = query.where(OutboxMessage.state == state)
    if method:
        query = query.where(OutboxMessage.method == method)
    return list(db.session.scalars(query.order_by(OutboxMessage.id)))


def reload(invite: Invite) -> Invite:
    db.session.expire_all()
    return db.session.get(Invite, invite.id)


def field_errors(html: str, field: str) -> list[str]:
    return re.findall(rf'<p class="error" id="{field}-error">([^<]*)</p>', html)


def reply(invite: Invite, email: str, status: str, comment: str = "", proposal=None):
    """A recipient answers, through the one path for status changes."""
    answer = {"email": email, "status": status}
    if comment:
        answer["comment"] = comment
    if proposal:
        start, end = proposal
        answer["proposal"] = {"start": {"time": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "tzid": invite.tzid},
                              "end": {"time": end.strftime("%Y-%m-%dT%H:%M:%SZ"), "tzid": invite.tzid}}
    apply_notification({"notification": {"type": "smart_invite"},
                        "smart_invite": {"smart_invite_id": invite.smart_invite_id, "reply": answer}},
                       source=NotificationSource.WEBHOOK)
    db.session.expire_all()


def recipient(invite: Invite, email: str) -> Recipient:
    db.session.expire_all()
    return db.session.scalar(select(Recipient).where(Recipient.invite_id == invite.id, Recipient.email == email))


class FormReader(HTMLParser):
    """The values a browser would submit from the form posting to ``action``."""

    def __init__(self, action: str):
        super().__init__(convert_charrefs=True)
        self.action, self.inside, self.values = action, False, {}
        self._textarea = self._select = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("action") == self.action
        elif not self.inside:
            return
        elif tag == "input" and attrs.get("name") and attrs.get("type") not in ("submit", "button"):
            self.values[attrs["name"]] = attrs.get("value") or ""
        elif tag == "textarea":
            self._textarea = attrs["name"]
            self.values[self._textarea] = ""
        elif tag == "select":
            self._select = attrs["name"]
        elif tag == "option" and self._select and "selected" in attrs:
            self.values[self._select] = attrs.get("value")

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "textarea":
            # Browsers drop the newline right after <textarea> and submit line breaks as CRLF.
            value = self.values[self._textarea]
            value = value[1:] if value.startswith("\n") else value
            self.values[self._textarea] = value.replace("\r\n", "\n").replace("\n", "\r\n")
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data):
        if self.inside and self._textarea:
            self.values[self._textarea] += data


def form_values(html: str, action: str) -> dict:
    reader = FormReader(action)
    reader.feed(html)
    assert reader.values, f"no form posting to {action}"
    return reader.values


def invite_links(html: str) -> list[int]:
    """Invite ids in the order the list shows them."""
    table = html.split('<table class="invites">', 1)[1].split("</table>", 1)[0] if 'class="invites"' in html else ""
    return [int(i) for i in re.findall(r'<a href="/invites/(\d+)">', table)]


def list_page(client, **params) -> str:
    response = client.get("/invites", query_string=params)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def flashes(client) -> str:
    with client.session_transaction() as session:
        return " ".join(message for _, message in session.get("_flashes", []))


# --------------------------------------------------------------------------- the create form

def test_new_invite_form_has_the_documented_fields(staff):
    html = staff.client.get("/invites/new").get_data(as_text=True)
    for name in ("summary", "description", "start", "end", "tzid", "location", "recipients",
                 "smart_invite_id", "organizer_name"):
        assert f'name="{name}"' in html, name
    inputs = re.findall(r"<input[^>]*>", html)
    for name in ("start", "end"):
        assert any(f'name="{name}"' in tag and 'type="datetime-local"' in tag for tag in inputs), name
    assert re.search(r'<label for="smart_invite_id">Reference</label>', html)


def test_time_zone_defaults_to_the_users_zone(staff):
    html = staff.client.get("/invites/new").get_data(as_text=True)
    assert form_values(html, "/invites/new")["tzid"] == "America/New_York"


def test_creating_an_invite_stores_it_queues_emails_and_shows_it(staff):
    response = staff.post("/invites/new", data=new_invite_form())
    assert response.status_code == 302
    invite = db.session.scalar(select(Invite))
    assert response.headers["Location"] == f"/invites/{invite.id}"

    assert invite.summary == "Dental check-up" and invite.location == "Room 3"
    assert invite.tzid == "Europe/London" and invite.organizer_name == "Riverside Clinic"
    # 09:00 in London in May is 08:00 UTC.
    assert invite.start == datetime(2030, 5, 3, 8, 0, tzinfo=UTC)
    assert invite.end == datetime(2030, 5, 3, 8, 30, tzinfo=UTC)
    assert sorted(r.email for r in invite.recipients) == ["ann@example.org", "bob@example.org"]
    assert invite.smart_invite_id  # generated

    queued = emails(invite)
    assert sorted(m.target for m in queued) == ["ann@example.org", "bob@example.org"]
    assert {m.method for m in queued} == {"REQUEST"}

    page = staff.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Invite sent to 2 recipients." in page
    assert "Dental check-up" in page and invite.smart_invite_id in page


def test_generated_references_differ(staff):
    staff.post("/invites/new", data=new_invite_form())
    staff.post("/invites/new", data=new_invite_form())
    references = db.session.scalars(select(Invite.smart_invite_id)).all()
    assert len(references) == 2 and len(set(references)) == 2 and all(references)


def test_a_given_reference_is_kept(staff):
    staff.post("/invites/new", data=new_invite_form(smart_invite_id="  BOOKING-1042 "))
    assert db.session.scalar(select(Invite.smart_invite_id)) == "BOOKING-1042"


@pytest.mark.parametrize("text, expected", [
    ("ann@example.org\nbob@example.org\n\n", [("ann@example.org", ""), ("bob@example.org", "")]),
    ("ann@example.org, bob@example.org,cat@example.org",
     [("ann@example.org", ""), ("bob@example.org", ""), ("cat@example.org", "")]),
    ("Ann Example <Ann@Example.org>\r\n\"Bob B\" <bob@example.org>",
     [("ann@example.org", "Ann Example"), ("bob@example.org", "Bob B")]),
    ("ann@example.org\nANN@example.org", [("ann@example.org", "")]),
    # As Outlook copies addresses: a comma inside the quoted name does not split it.
    ('"Doe, Jane" <jane@example.org>, bob@example.org; "Roe, Rick" <rick@example.org>',
     [("bob@example.org", ""), ("jane@example.org", "Doe, Jane"), ("rick@example.org", "Roe, Rick")]),
])
def test_recipients_one_per_line_comma_separated_or_with_names(staff, text, expected):
    response = staff.post("/invites/new", data=new_invite_form(recipients=text))
    assert response.status_code == 302
    invite = db.session.scalar(select(Invite))
    assert sorted((r.email, r.name) for r in invite.recipients) == expected
    assert len(emails(invite)) == len(expected)


def test_a_duplicate_reference_is_refused_on_its_field(staff):
    make_invite(reference="BOOKING-1042")
    response = staff.post("/invites/new", data=new_invite_form(smart_invite_id="BOOKING-1042"))
    assert response.status_code == 422
    errors = field_errors(response.get_data(as_text=True), "smart_invite_id")
    assert errors and "already used" in errors[0]
    assert count(Invite) == 1


@pytest.mark.parametrize("overrides, field, message", [
    ({"summary": ""}, "summary", "Enter a title"),
    ({"summary": "   "}, "summary", "Enter a title"),
    ({"start": ""}, "start", "Enter when it starts"),
    ({"start": "next tuesday"}, "start", ""),
    ({"end": "2030-05-03T08:00"}, "end", "end must be after the start"),
    ({"end": "2030-05-03T09:00"}, "end", "end must be after the start"),
    ({"tzid": "Mars/Olympus_Mons"}, "tzid", ""),
    # The clocks go forward at 01:00 in London that night: 01:30 never happens.
    ({"start": "2030-03-31T01:30", "end": "2030-03-31T02:30"}, "start", "does not exist in Europe/London"),
    ({"recipients": ""}, "recipients", "at least one recipient"),
    ({"smart_invite_id": "x" * 257}, "smart_invite_id", ""),
])
def test_invalid_input_re_renders_the_form_with_a_message_on_the_field(staff, overrides, field, message):
    response = staff.post("/invites/new", data=new_invite_form(**overrides))
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    if field == "recipients":  # the recipients field has its own markup for the address list
        assert message in html
    else:
        errors = field_errors(html, field)
        assert errors and message in errors[0] and errors[0].strip()
    assert form_values(html, "/invites/new")["location"] == "Room 3"  # what was typed is kept
    assert count(Invite) == 0
    assert count(OutboxMessage) == 0


def test_bad_addresses_are_listed_and_nothing_is_created(staff):
    response = staff.post("/invites/new", data=new_invite_form(
        recipients="ann@example.org\nnot-an-address\nbob@example\nCat <cat@@example.org>"))
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    listed = re.search(r'<ul class="error bad-addresses">(.*?)</ul>', html, re.S)
    assert listed
    items = re.findall(r"<li>(.*?)</li>", listed.group(1))
    assert items == ["not-an-address", "bob@example", "Cat &lt;cat@@example.org&gt;"]
    assert "ann@example.org" not in listed.group(1)
    assert count(Invite) == 0 and count(OutboxMessage) == 0


def test_invite_and_its_emails_are_written_together_or_not_at_all(staff, monkeypatch):
    real_queue = outbox.queue_email
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_queue(*args, **kwargs)

    monkeypatch.setattr(outbox, "queue_email", fail_on_second)
    token = staff.token()
    with pytest.raises(RuntimeError):
        staff.client.post("/invites/new", data={**new_invite_form(), "csrf_token": token})
    assert len(calls) == 2
    assert committed_count("invites") == 0
    assert committed_count("recipients") == 0
    assert committed_count("outbox_messages") == 0
    db.session.rollback()


# --------------------------------------------------------------------------- the list

def test_upcoming_invites_come_first_soonest_first_then_past_ones(staff):
    in_3_days = make_invite(summary="In three days", start=future(3))
    tomorrow = make_invite(summary="Tomorrow", start=future(1))
    in_10_days = make_invite(summary="In ten days", start=future(10))
    two_days_ago = make_invite(summary="Two days ago", start=future(-2))
    week_ago = make_invite(summary="A week ago", start=future(-7))
    order = invite_links(list_page(staff.client))
    assert order[:3] == [tomorrow.id, in_3_days.id, in_10_days.id]
    assert order[3:] == [two_days_ago.id, week_ago.id]  # the most recent past first


def _expected_order(invites, now):
    upcoming = sorted((i for i in invites if i.end > now), key=lambda i: (i.start, i.id))
    past = sorted(sorted((i for i in invites if i.end <= now), key=lambda i: i.id), key=lambda i: i.start, reverse=True)
    return [i.id for i in upcoming + past]


@pytest.mark.parametrize("per_page", [1, 2, 3, 4, 7, 25])
def test_every_page_follows_the_order_across_ties_and_the_upcoming_past_boundary(staff, per_page):
    now = datetime.now(UTC).replace(microsecond=0)
    invites = [
        *(make_invite(summary=f"Same slot {n}", start=future(2)) for n in range(3)),
        make_invite(summary="Under way", start=now - timedelta(hours=1), end=now + timedelta(hours=1)),
        make_invite(summary="Next week", start=future(7)),
        *(make_invite(summary=f"Old slot {n}", start=future(-3)) for n in range(3)),
        make_invite(summary="Last month", start=future(-30)),
        make_invite(summary="Just ended", start=now - timedelta(hours=2), end=now - timedelta(hours=1)),
    ]
    for index in (1, 5):  # cancelled ones are listed among the others (upcoming and past)
        invite_service.cancel_invite(invites[index])
    db.session.expire_all()
    invites = [db.session.get(Invite, i.id) for i in invites]
    searched = [i for i in invites if "slot" in i.summary.lower()]
    cancelled = [i for i in invites if i.status == InviteStatus.CANCELLED]
    active = [i for i in invites if i.status == InviteStatus.ACTIVE]
    cases = [("", "", invites), ("SLOT", "", searched), ("", "cancelled", cancelled),
             ("", "upcoming", [i for i in active if i.end > now]), ("", "past", [i for i in active if i.end <= now])]
    for q, status, wanted in cases:
        pages, total = [], None
        for page in range(1, len(wanted) // per_page + 3):
            rows, total, _ = invite_service.list_invites(q, status, page, per_page)
            assert len(rows) <= per_page
            pages += [row.id for row in rows]
        assert pages == _expected_order(wanted, now), (q, status)
        assert total == len(wanted)


def test_each_row_links_to_the_invite_page(staff):
    invite = make_invite(summary="Root canal")
    html = list_page(staff.client)
    assert invite_links(html) == [invite.id]
    page = staff.client.get(f"/invites/{invite.id}")
    assert page.status_code == 200 and "Root canal" in page.get_data(as_text=True)


@pytest.mark.parametrize("q", ["whitening", "WHITENING", "bk-7731", "carol@", "CAROL@EXAMPLE.NET"])
def test_search_covers_title_reference_and_recipient_address(staff, q):
    wanted = make_invite(summary="Teeth whitening", reference="BK-7731-Z", emails=("carol@example.net",))
    make_invite(summary="Check-up", reference="BK-1000", emails=("dan@example.org",))
    html = list_page(staff.client, q=q)
    assert invite_links(html) == [wanted.id]
    assert "1 invite " in html


@pytest.mark.parametrize("q, wanted, other", [
    ("100%", "100% attendance review", "1000 club"),
    ("room_1", "Meeting in room_1", "Meeting in roomX1"),
])
def test_percent_and_underscore_in_the_search_are_literal(staff, q, wanted, other):
    match = make_invite(summary=wanted)
    make_invite(summary=other)
    assert invite_links(list_page(staff.client, q=q)) == [match.id]


def test_search_without_a_match_says_so(staff):
    make_invite(summary="Check-up")
    html = list_page(staff.client, q="orthodontist")
    assert invite_links(html) == []
    assert "No invites match" in html


def test_status_filter(staff):
    upcoming = make_invite(summary="Upcoming", start=future(2))
    past = make_invite(summary="Past", start=future(-2))
    cancelled = make_invite(summary="Cancelled", start=future(3))
    invite_service.cancel_invite(cancelled)
    declined = make_invite(summary="Declined", start=future(4))
    reply(declined, "ann@example.org", "declined")

    assert set(invite_links(list_page(staff.client, status="upcoming"))) == {upcoming.id, declined.id}
    assert invite_links(list_page(staff.client, status="past")) == [past.id]
    assert invite_links(list_page(staff.client, status="cancelled")) == [cancelled.id]
    assert invite_links(list_page(staff.client, status="attention")) == [declined.id]
    assert len(invite_links(list_page(staff.client))) == 4
    assert len(invite_links(list_page(staff.client, status="nonsense"))) == 4


def test_pagination(staff):
    created = [make_invite(summary=f"Appointment {n:02d}", start=future(1 + n)) for n in range(30)]
    first = list_page(staff.client)
    second = list_page(staff.client, page=2)
    first_ids, second_ids = invite_links(first), invite_links(second)
    assert first_ids == [i.id for i in created[:25]]
    assert second_ids == [i.id for i in created[25:]]
    assert 'rel="next" href="/invites?page=2"' in first and 'rel="prev"' not in first
    assert 'rel="prev" href="/invites?page=1"' in second and 'rel="next"' not in second
    assert invite_links(list_page(staff.client, page=3)) == []


def test_pagination_keeps_the_search(staff):
    for n in range(27):
        make_invite(summary=f"Cleaning {n}", start=future(1 + n))
    make_invite(summary="Something else")
    html = list_page(staff.client, q="cleaning")
    assert 'rel="next" href="/invites?q=cleaning&amp;page=2"' in html
    assert len(invite_links(list_page(staff.client, q="cleaning", page=2))) == 2


def test_an_out_of_range_page_number_is_not_an_error(staff):
    invite = make_invite()
    assert invite_links(list_page(staff.client, page="-3")) == [invite.id]
    assert invite_links(list_page(staff.client, page="99999999999999999999")) == []


def test_each_row_counts_answers(staff):
    invite = make_invite(emails=[f"p{n}@example.org" for n in range(8)])
    reply(invite, "p0@example.org", "accepted")
    reply(invite, "p1@example.org", "accepted")
    reply(invite, "p2@example.org", "declined")
    reply(invite, "p3@example.org", "tentative")
    invite_service.remove_recipient(reload(invite), recipient(invite, "p7@example.org"))
    html = list_page(staff.client)
    row = re.search(rf'<tr[^>]*>(?:(?!</tr>).)*href="/invites/{invite.id}"(?:(?!</tr>).)*</tr>', html, re.S).group(0)
    # accepted, declined, tentative, pending (the removed recipient counts nowhere)
    assert re.findall(r'<td class="num">(\d+)</td>', row) == ["2", "1", "1", "3"]
    header = re.search(r"<thead>(.*?)</thead>", html, re.S).group(1)
    assert header.index("Accepted") < header.index("Declined") < header.index("Tentative") < header.index("Pending")


# --------------------------------------------------------------------------- needs attention

def test_a_decline_or_a_proposal_needs_attention(staff):
    declined = make_invite(summary="Declined one")
    proposed = make_invite(summary="Proposed one")
    accepted = make_invite(summary="Accepted one")
    reply(declined, "ann@example.org", "declined", comment="Away that week")
    start = future(9)
    reply(proposed, "bob@example.org", "tentative", proposal=(start, start + timedelta(minutes=30)))
    reply(accepted, "ann@example.org", "accepted")

    html = list_page(staff.client, status="attention")
    assert set(invite_links(html)) == {declined.id, proposed.id}
    assert "Needs attention" in html
    all_rows = list_page(staff.client)
    assert re.search(r'<span class="count">2</span>', all_rows)


def test_rescheduling_deals_with_the_attention(staff):
    invite = make_invite()
    reply(invite, "ann@example.org", "declined")
    assert invite_links(list_page(staff.client, status="attention")) == [invite.id]

    values = form_values(staff.client.get(f"/invites/{invite.id}/edit").get_data(as_text=True),
                         f"/invites/{invite.id}/edit")
    new_start = invite_service.local_datetime(future(12), "Europe/London")
    values.update(start=new_start.strftime("%Y-%m-%dT%H:%M"),
                  end=(new_start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    assert staff.client.post(f"/invites/{invite.id}/edit", data=values).status_code == 302
    assert invite_links(list_page(staff.client, status="attention")) == []


def test_accepting_the_proposed_time_moves_the_event_and_deals_with_it(staff):
    invite = make_invite()
    start = future(20, hour=14)
    reply(invite, "bob@example.org", "tentative", comment="Afternoon?", proposal=(start, start + timedelta(hours=1)))
    bob = recipient(invite, "bob@example.org")
    page = staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert "Accept proposed time" in page
    before = {m.id for m in emails(invite, state=None)}

    response = staff.post(f"/invites/{invite.id}/recipients/{bob.id}/accept-proposal")
    assert response.status_code == 302
    invite = reload(invite)
    assert invite.start == start and invite.end == start + timedelta(hours=1)
    assert invite.sequence == 1
    assert invite_links(list_page(staff.client, status="attention")) == []
    new = [m for m in emails(invite) if m.id not in before]
    assert sorted(m.target for m in new) == ["ann@example.org", "bob@example.org"]
    assert {m.method for m in new} == {"REQUEST"}


def test_dismissing_deals_with_it_without_sending_anything(staff):
    invite = make_invite()
    reply(invite, "ann@example.org", "declined")
    ann = recipient(invite, "ann@example.org")
    before = count(OutboxMessage)
    assert ">Dismiss</button>" in staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    response = staff.post(f"/invites/{invite.id}/recipients/{ann.id}/dismiss")
    assert response.status_code == 302
    assert invite_links(list_page(staff.client, status="attention")) == []
    assert recipient(invite, "ann@example.org").status == RecipientStatus.DECLINED
    assert ">Dismiss</button>" not in staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert count(OutboxMessage) == before


# --------------------------------------------------------------------------- the detail page

def test_detail_page_shows_the_event_answers_history_and_email_states(staff):
    invite = make_invite(summary="Implant consultation", location="Surgery 2", description="Bring X-rays.",
                         emails=("ann@example.org", "bob@example.org", "cat@example.org"),
                         start=datetime(2031, 1, 15, 10, 0, tzinfo=UTC), tzid="Europe/London")
    proposed = datetime(2031, 1, 16, 15, 0, tzinfo=UTC)
    reply(invite, "ann@example.org", "accepted", comment="See you then")
    reply(invite, "bob@example.org", "tentative", comment="Maybe later?",
          proposal=(proposed, proposed + timedelta(minutes=30)))
    ann_email, bob_email, cat_email = emails(invite)
    ann_email.state, ann_email.sent_at = OutboxState.SENT, datetime.now(UTC)
    bob_email.state, bob_email.last_error, bob_email.attempts = OutboxState.FAILED, "550 mailbox unavailable", 12
    db.session.commit()

    html = staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert "Implant consultation" in html and "Surgery 2" in html and "Bring X-rays." in html
    assert invite.smart_invite_id in html
    assert "Wed 15 Jan 2031, 10:00" in html and "Europe/London" in html

    rows = {email: row for email, row in re.findall(
        r'<tr id="recipient-\d+" data-email="([^"]+)"[^>]*>(.*?)</tr>', html, re.S)}
    assert "Accepted" in rows["ann@example.org"] and "See you then" in rows["ann@example.org"]
    assert "Tentative" in rows["bob@example.org"] and "Maybe later?" in rows["bob@example.org"]
    assert "Thu 16 Jan 2031, 15:00" in rows["bob@example.org"]
    assert "Pending" in rows["cat@example.org"]

    history = html.split('<table class="history">', 1)[1].split("</table>", 1)[0]
    assert "ann@example.org" in history and "See you then" in history
    assert "bob@example.org" in history and "Thu 16 Jan 2031, 15:00" in history

    mails = html.split('<table class="emails">', 1)[1].split("</table>", 1)[0]
    states = dict(re.findall(r'<tr data-state="(\w+)">\s*<td>([^<]+)</td>', mails))
    assert states == {"sent": "ann@example.org", "failed": "bob@example.org", "queued": "cat@example.org"}
    assert "550 mailbox unavailable" in mails


def test_detail_page_buttons(staff):
    invite = make_invite()
    html = staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    forms = re.findall(r"<form[^>]*>.*?</form>", html, re.S)

    def form_with(label):
        found = [f for f in forms if re.search(rf"<button[^>]*>{re.escape(label)}</button>", f)]
        return found

    removes = form_with("Remove")
    assert len(removes) == 2 and all("data-confirm=" in f and 'name="csrf_token"' in f for f in removes)
    cancel = form_with("Cancel invite")
    assert len(cancel) == 1 and "data-confirm=" in cancel[0] and 'method="post"' in cancel[0]
    assert len(form_with("Resend")) == 2
    ics_links = re.findall(r'<a[^>]*href="([^"]+\.ics)"', html)
    assert f"/invites/{invite.id}/invite.ics" in ics_links


def test_unknown_invite_is_404(staff):
    assert staff.client.get("/invites/4242").status_code == 404
    assert staff.client.get("/invites/4242/edit").status_code == 404
    assert staff.client.get("/invites/4242/invite.ics").status_code == 404


def test_ics_download_is_the_current_invite_and_a_cancel_after_cancelling(staff):
    invite = make_invite(summary="Hygienist")
    response = staff.client.get(f"/invites/{invite.id}/invite.ics")
    assert response.status_code == 200
    assert response.mimetype == "text/calendar"
    assert "attachment" in response.headers["Content-Disposition"]
    body = response.get_data(as_text=True)
    assert f"UID:{invite.uid}" in body.replace("\r\n ", "")
    assert "METHOD:REQUEST" in body and "SUMMARY:Hygienist" in body

    assert staff.post(f"/invites/{invite.id}/cancel").status_code == 302
    cancelled = staff.client.get(f"/invites/{invite.id}/invite.ics").get_data(as_text=True)
    assert f"UID:{invite.uid}" in cancelled.replace("\r\n ", "")
    assert "METHOD:CANCEL" in cancelled and "STATUS:CANCELLED" in cancelled
    assert "SEQUENCE:1" in cancelled


def test_the_ics_download_has_a_safe_file_name_whatever_the_reference(staff):
    invite = make_invite(reference='予約 "7";x')
    response = staff.client.get(f"/invites/{invite.id}/invite.ics")
    assert response.status_code == 200
    disposition = response.headers["Content-Disposition"]
    # WSGI servers (gunicorn) send header values as Latin-1 and fail on anything else.
    assert disposition.isascii()
    assert re.fullmatch(r'attachment; filename="[A-Za-z0-9_.-]+\.ics"', disposition)


# --------------------------------------------------------------------------- changing an invite

def test_edit_page_prefills_the_event_in_its_own_zone(staff):
    # The user is in New York; the event is in Tokyo: 10:00 JST is 01:00 UTC.
    invite = make_invite(summary="Video consult", tzid="Asia/Tokyo",
                         start=datetime(2031, 2, 1, 1, 0, tzinfo=UTC), location="Online")
    html = staff.client.get(f"/invites/{invite.id}/edit").get_data(as_text=True)
    values = form_values(html, f"/invites/{invite.id}/edit")
    assert values["start"] == "2031-02-01T10:00" and values["end"] == "2031-02-01T10:30"
    assert values["tzid"] == "Asia/Tokyo"
    assert values["summary"] == "Video consult" and values["location"] == "Online"
    assert values["organizer_name"] == "Riverside Clinic"


def test_an_invite_in_a_zone_missing_from_the_list_can_still_be_edited(staff):
    # The API and the CSV import accept any IANA zone, e.g. "Etc/GMT-3" (UTC+3).
    invite = make_invite(tzid="Etc/GMT-3", start=datetime(2031, 2, 1, 6, 0, tzinfo=UTC))
    url = f"/invites/{invite.id}/edit"
    values = form_values(staff.client.get(url).get_data(as_text=True), url)
    assert values["tzid"] == "Etc/GMT-3" and values["start"] == "2031-02-01T09:00"
    values.update(location="Room 12")
    assert staff.client.post(url, data=values).status_code == 302
    invite = reload(invite)
    assert invite.location == "Room 12" and invite.tzid == "Etc/GMT-3"
    assert invite.start == datetime(2031, 2, 1, 6, 0, tzinfo=UTC)


def test_saving_the_edit_form_unchanged_sends_nothing(staff):
    invite = make_invite(description="Bring your forms.\nArrive ten minutes early.")
    before = count(OutboxMessage)
    url = f"/invites/{invite.id}/edit"
    values = form_values(staff.client.get(url).get_data(as_text=True), url)
    response = staff.client.post(url, data=values)
    assert response.status_code == 302
    assert "Nothing changed" in flashes(staff.client)
    assert count(OutboxMessage) == before
    assert reload(invite).sequence == 0


def test_editing_the_time_sends_an_update_to_everyone(staff):
    invite = make_invite(start=datetime(2031, 3, 3, 9, 0, tzinfo=UTC), tzid="Europe/London")
    url = f"/invites/{invite.id}/edit"
    values = form_values(staff.client.get(url).get_data(as_text=True), url)
    values.update(start="2031-03-03T11:00", end="2031-03-03T12:00", location="Room 9")
    assert staff.client.post(url, data=values).status_code == 302
    invite = reload(invite)
    assert invite.start == datetime(2031, 3, 3, 11, 0, tzinfo=UTC) and invite.location == "Room 9"
    assert invite.sequence == 1
    queued = emails(invite)
    assert sorted(m.target for m in queued) == ["ann@example.org", "bob@example.org"]
    assert {m.method for m in queued} == {"REQUEST"}


def test_an_invalid_edit_is_refused_with_a_message(staff):
    invite = make_invite()
    url = f"/invites/{invite.id}/edit"
    values = form_values(staff.client.get(url).get_data(as_text=True), url)
    values.update(end=values["start"])
    response = staff.client.post(url, data=values)
    assert response.status_code == 422
    assert field_errors(response.get_data(as_text=True), "end")
    assert reload(invite).sequence == 0


def test_removing_a_recipient_cancels_for_them_and_updates_the_others(staff):
    invite = make_invite(emails=("ann@example.org", "bob@example.org", "cat@example.org"))
    bob = recipient(invite, "bob@example.org")
    response = staff.post(f"/invites/{invite.id}/recipients/{bob.id}/remove")
    assert response.status_code == 302
    assert recipient(invite, "bob@example.org").status == RecipientStatus.REMOVED
    queued = {m.target: m.method for m in emails(invite)}
    assert queued == {"bob@example.org": "CANCEL", "ann@example.org": "REQUEST", "cat@example.org": "REQUEST"}
    html = staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert "Removed bob@example.org" in html


def test_resend_queues_the_invite_again_for_one_recipient(staff):
    invite = make_invite()
    for message in emails(invite):
        message.state = OutboxState.SENT
    db.session.commit()
    ann = recipient(invite, "ann@example.org")
    assert staff.post(f"/invites/{invite.id}/recipients/{ann.id}/resend").status_code == 302
    queued = emails(invite)
    assert [(m.target, m.method) for m in queued] == [("ann@example.org", "REQUEST")]
    assert reload(invite).sequence == 0


def test_cancelling_sends_a_cancellation_to_everyone_still_invited(staff):
    invite = make_invite(emails=("ann@example.org", "bob@example.org", "cat@example.org"))
    invite_service.remove_recipient(invite, recipient(invite, "cat@example.org"))
    before = {m.id for m in emails(invite, state=None)}
    assert staff.post(f"/invites/{invite.id}/cancel").status_code == 302
    invite = reload(invite)
    assert invite.status == InviteStatus.CANCELLED
    new = {m.target: m.method for m in emails(invite) if m.id not in before}
    assert new == {"ann@example.org": "CANCEL", "bob@example.org": "CANCEL"}
    html = staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert "Cancelled" in html
    assert ">Cancel invite</button>" not in html and ">Remove</button>" not in html


def test_a_cancelled_invite_cannot_be_edited_or_changed(staff):
    invite = make_invite()
    start = future(11)
    reply(invite, "bob@example.org", "tentative", proposal=(start, start + timedelta(minutes=30)))
    invite_service.cancel_invite(reload(invite))
    invite = reload(invite)
    ann, bob = recipient(invite, "ann@example.org"), recipient(invite, "bob@example.org")
    before = count(OutboxMessage)
    edit_url = f"/invites/{invite.id}/edit"

    response = staff.client.get(edit_url)
    assert response.status_code == 302 and response.headers["Location"] == f"/invites/{invite.id}"
    assert "cannot be changed" in flashes(staff.client)

    response = staff.post(edit_url, data=new_invite_form(summary="Sneaky change"))
    assert response.status_code == 302
    assert "cannot be changed" in flashes(staff.client)

    for url in (f"/invites/{invite.id}/recipients/{ann.id}/remove",
                f"/invites/{invite.id}/recipients/{bob.id}/accept-proposal",
                f"/invites/{invite.id}/cancel"):
        response = staff.post(url)
        assert response.status_code == 302, url
        assert "cancelled" in flashes(staff.client), url

    response = staff.post(f"/invites/{invite.id}/recipients", data={"recipients": "dan@example.org"})
    assert response.status_code in (302, 422)
    shown = staff.client.get(response.headers["Location"]).get_data(as_text=True) \
        if response.status_code == 302 else response.get_data(as_text=True)
    assert "cannot be changed" in shown

    invite = reload(invite)
    assert invite.summary == "Dental check-up" and invite.sequence == 1
    assert {r.email: r.status for r in invite.recipients} == {
        "ann@example.org": RecipientStatus.PENDING, "bob@example.org": RecipientStatus.TENTATIVE}
    assert count(OutboxMessage) == before


def test_adding_recipients_invites_them_and_updates_everyone(staff):
    invite = make_invite()
    response = staff.post(f"/invites/{invite.id}/recipients", data={"recipients": "Dan <dan@example.org>"})
    assert response.status_code == 302
    queued = {m.target for m in emails(invite, method="REQUEST")}
    assert queued == {"ann@example.org", "bob@example.org", "dan@example.org"}
    assert recipient(invite, "dan@example.org").name == "Dan"


def test_adding_a_bad_address_lists_it_and_changes_nothing(staff):
    invite = make_invite()
    before = count(OutboxMessage)
    response = staff.post(f"/invites/{invite.id}/recipients", data={"recipients": "dan@example.org\nnope"})
    assert response.status_code == 422
    assert re.search(r'<ul class="error bad-addresses"><li>nope</li></ul>', response.get_data(as_text=True))
    assert recipient(invite, "dan@example.org") is None
    assert count(OutboxMessage) == before


def _shown_total(client, **args) -> int:
    return int(re.search(r'<p class="muted">([\d,]+) invites?', list_page(client, **args)).group(1).replace(",", ""))


def test_the_lists_total_follows_invites_however_they_are_added_or_deleted(staff):
    """The All tab reads the total the database's triggers keep (counting every invite on
    every page was most of the page's cost on PostgreSQL). It follows invites made here, rows
    inserted or deleted by hand, and a table emptied at once; when its row is missing it is
    counted again."""
    assert _shown_total(staff.client) == 0
    first, second = make_invite(), make_invite(summary="Second")
    assert _shown_total(staff.client) == 2
    db.session.execute(text("DELETE FROM recipients WHERE invite_id = :id"), {"id": second.id})
    db.session.execute(text("DELETE FROM outbox_messages WHERE invite_id = :id"), {"id": second.id})
    db.session.execute(text("DELETE FROM invites WHERE id = :id"), {"id": second.id})
    db.session.commit()
    assert _shown_total(staff.client) == 1

    # It is the kept row that the All tab shows; the other tabs and searches count.
    db.session.execute(text("UPDATE invite_totals SET invites = 41"))
    db.session.commit()
    assert _shown_total(staff.client) == 41
    assert _shown_total(staff.client, status="upcoming") == 1
    assert _shown_total(staff.client, q=first.summary) == 1

    db.session.execute(text("DELETE FROM invite_totals"))  # lost (TRUNCATE, a restore): counted again
    db.session.commit()
    assert _shown_total(staff.client) == 1
    make_invite(summary="Third")
    assert _shown_total(staff.client) == 2
    assert db.session.scalar(text("SELECT invites FROM invite_totals")) == 2


def test_on_postgresql_the_list_is_two_round_trips(staff, round_trips):
    """The signed-in user, then the total, the page and the attention count sent together: two
    round trips on a database server. A third reads the past invites, when the upcoming ones
    end on the page."""
    proxy, browser = round_trips
    client = browser(staff.client)
    make_invite(summary="Last week", start=future(days=-7))
    make_invite(summary="Next week")
    assert client.get("/invites").status_code == 200  # the read pool has its connection

    pages = []
    assert proxy.during(lambda: pages.append(client.get("/invites"))) == 3
    assert ["Next week", "Last week"] == re.findall(r"(Next week|Last week)", pages[-1].get_data(as_text=True))
    for day in range(25):
        make_invite(summary=f"Day {day}", start=future(days=1, hour=8, minute=day))
    assert proxy.during(lambda: pages.append(client.get("/invites"))) == 2
    shown = pages[-1].get_data(as_text=True)
    assert "Day 0" in shown and "Day 24" in shown and "Next week" not in shown


def test_the_invite_page_says_who_made_it(staff):
    """A user's address, an API client's name (escaped), or else where it came from."""
    from smart_invites_ui.domain import InviteSource
    from smart_invites_ui.services import api_clients

    by_staff = invite_service.create_invite(
        event=make_event(summary="Made here"), recipients=[invite_service.NewRecipient("ann@example.org")],
        organizer_name="Riverside Clinic", created_by=staff.user)
    client_record, _ = api_clients.create_client("Booking <site> & co")
    by_api = invite_service.create_invite(
        event=make_event(summary="Made by the site"), recipients=[invite_service.NewRecipient("ann@example.org")],
        source=InviteSource.API, api_client=client_record)
    by_nobody = make_invite(summary="Made without a user")  # e.g. by a script

    def made(invite) -> str:
        page = staff.client.get(f"/invites/{invite.id}")
        assert page.status_code == 200
        return re.search(r"<dt>Made</dt><dd>(.*?),", page.get_data(as_text=True)).group(1)

    assert made(by_staff) == "by staff@example.org"
    assert made(by_api) == "through the API by <strong>Booking &lt;site&gt; &amp; co</strong>"
    assert made(by_nobody) == "dashboard"  # its source
    assert staff.client.get("/invites/999999").status_code == 404


def test_on_postgresql_the_invite_page_is_two_round_trips(staff, round_trips):
    """The signed-in user, then the invite, who made it and its live part, read together."""
    proxy, browser = round_trips
    client = browser(staff.client)
    invite = invite_service.create_invite(
        event=make_event(summary="Made here"), recipients=[invite_service.NewRecipient("ann@example.org")],
        created_by=staff.user)
    assert client.get(f"/invites/{invite.id}").status_code == 200  # the pools have their connections

    pages = []
    assert proxy.during(lambda: pages.append(client.get(f"/invites/{invite.id}"))) == 2
    shown = pages[0].get_data(as_text=True)
    assert "Made here" in shown and "by staff@example.org" in shown and 'data-email="ann@example.org"' in shown
