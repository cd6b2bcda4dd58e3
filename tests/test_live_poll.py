"""The invite page's live part (issue 2 §6): a polled fragment that answers 204 when nothing changed."""
from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest

from smart_invites_ui.extensions import db
from smart_invites_ui.models import Invite, NotificationSource
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services.notifications import apply_notification
from tests.conftest import future, make_invite

pytestmark = pytest.mark.usefixtures("fast_passwords")

HTMX = {"HX-Request": "true"}


@pytest.fixture
def staff(auth):
    auth.login()
    return auth


def answer(invite: Invite, email: str, status: str, comment: str = "") -> None:
    apply_notification({"smart_invite": {"smart_invite_id": invite.smart_invite_id,
                                         "reply": {"email": email, "status": status, "comment": comment}}},
                       source=NotificationSource.WEBHOOK)
    db.session.expire_all()


def root_tag(html: str) -> str:
    """The opening tag of the live element (the fragment's root, or its copy in the full page)."""
    match = re.search(r'<div id="live"[^>]*>', html)
    assert match, "no live element"
    return match.group(0)


def polled_version(html: str) -> int | None:
    match = re.search(r'hx-get="([^"]+)"', root_tag(html))
    if match is None:
        return None
    url = urlsplit(unescape(match.group(1)))
    return int(parse_qs(url.query)["v"][0])


def version_of(invite: Invite) -> int:
    db.session.expire_all()
    return db.session.get(Invite, invite.id).version


def poll(client, invite: Invite, version: int | None):
    query = {} if version is None else {"v": version}
    return client.get(f"/invites/{invite.id}/live", query_string=query, headers=HTMX)


def test_the_page_polls_its_live_part_with_the_version_it_shows(staff):
    invite = make_invite()
    html = staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    tag = root_tag(html)
    assert re.search(rf'hx-get="/invites/{invite.id}/live\?v=\d+"', tag)
    assert polled_version(html) == version_of(invite)
    assert 'hx-swap="outerHTML"' in tag
    assert re.search(r'hx-trigger="[^"]*every \d+s', tag)
    assert "data-poll" in tag  # app.js skips polls while the tab is hidden


def test_nothing_changed_answers_204_with_an_empty_body(staff):
    invite = make_invite()
    response = poll(staff.client, invite, version_of(invite))
    assert response.status_code == 204
    assert response.get_data() == b""


def test_a_change_answers_the_fragment_with_the_new_status_and_version(staff):
    invite = make_invite()
    shown = version_of(invite)
    answer(invite, "ann@example.org", "declined", comment="Stuck abroad")

    response = poll(staff.client, invite, shown)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<html" not in html and html.lstrip().startswith('<div id="live"')
    row = re.search(r'<tr id="recipient-\d+" data-email="ann@example.org" data-status="(\w+)"[^>]*>(.*?)</tr>',
                    html, re.S)
    assert row.group(1) == "declined"
    assert "Declined" in row.group(2) and "Stuck abroad" in row.group(2)
    assert "Stuck abroad" in html.split('<table class="history">', 1)[1]  # the reply history too

    new_version = version_of(invite)
    assert new_version > shown
    assert polled_version(html) == new_version
    tag = root_tag(html)
    assert 'hx-swap="outerHTML"' in tag and "hx-trigger=" in tag

    # The page now shows the new version: the next poll is free again.
    assert poll(staff.client, invite, new_version).status_code == 204


def test_without_a_version_the_fragment_is_sent(staff):
    invite = make_invite()
    response = poll(staff.client, invite, None)
    assert response.status_code == 200
    assert polled_version(response.get_data(as_text=True)) == version_of(invite)


def test_staff_actions_also_reach_the_open_page(staff):
    invite = make_invite()
    shown = version_of(invite)
    bob = next(r for r in invite.recipients if r.email == "bob@example.org")
    staff.post(f"/invites/{invite.id}/recipients/{bob.id}/remove")
    html = poll(staff.client, invite, shown).get_data(as_text=True)
    assert 'data-email="bob@example.org" data-status="removed"' in html


def test_polling_stops_when_the_invite_is_cancelled(staff):
    invite = make_invite()
    shown = version_of(invite)
    invite_service.cancel_invite(invite)

    response = poll(staff.client, invite, shown)
    assert response.status_code == 200
    tag = root_tag(response.get_data(as_text=True))
    assert "hx-get" not in tag and "hx-trigger" not in tag
    assert "hx-get" not in root_tag(staff.client.get(f"/invites/{invite.id}").get_data(as_text=True))


def test_a_past_invite_is_not_polled(staff):
    start = future(-3)
    invite = make_invite(start=start, end=start + timedelta(hours=1))
    page = staff.client.get(f"/invites/{invite.id}").get_data(as_text=True)
    assert "hx-get" not in root_tag(page)
    response = poll(staff.client, invite, None)
    assert response.status_code == 200
    assert "hx-get" not in root_tag(response.get_data(as_text=True))


def test_unknown_invite_is_404(staff):
    assert staff.client.get("/invites/4242/live?v=1", headers=HTMX).status_code == 404


def test_logged_out_polls_are_sent_to_the_login_page(client, app):
    invite = make_invite()
    response = client.get(f"/invites/{invite.id}/live?v=1", headers=HTMX)
    assert response.status_code == 401
    assert urlsplit(response.headers["HX-Redirect"]).path == "/login"
    plain = client.get(f"/invites/{invite.id}/live?v=1")
    assert plain.status_code == 302 and urlsplit(plain.headers["Location"]).path == "/login"


def test_an_unchanged_poll_is_refused_once_the_session_is_revoked(staff):
    """The 204 fast path checks the session itself: disabling the user (or resetting the
    password) ends the poll at once, even though nothing changed on the invite."""
    from smart_invites_ui.services import users as user_service

    invite = make_invite()
    version = version_of(invite)
    assert poll(staff.client, invite, version).status_code == 204
    user_service.set_active(staff.user, False)
    response = poll(staff.client, invite, version)
    assert response.status_code == 401
    assert urlsplit(response.headers["HX-Redirect"]).path == "/login"


def test_an_unchanged_poll_is_refused_without_a_login(client):
    invite = make_invite()
    response = poll(client, invite, version_of(invite))
    assert response.status_code == 401


def test_an_unchanged_poll_keeps_the_session_bound_to_its_browser(staff):
    """A session cookie replayed from another browser (another User-Agent: Flask-Login's
    "strong" session protection) gets no 204, not even from the fast path: it is sent to
    the login page like every other page would."""
    invite = make_invite()
    version = version_of(invite)
    assert poll(staff.client, invite, version).status_code == 204
    stolen = dict(HTMX, **{"User-Agent": "another browser"})
    response = staff.client.get(f"/invites/{invite.id}/live", query_string={"v": version}, headers=stolen)
    assert response.status_code == 401
    assert urlsplit(response.headers["HX-Redirect"]).path == "/login"


# --- the unchanged poll's fast path (live_poll.UnchangedPoll) answers only what the full path would ---


def refused(response) -> bool:
    return response.status_code == 401 and urlsplit(response.headers["HX-Redirect"]).path == "/login"


def test_the_fast_204_carries_the_security_headers(staff, app):
    invite = make_invite()
    response = poll(staff.client, invite, version_of(invite))
    assert response.status_code == 204
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Vary"] == "Cookie"
    assert "Set-Cookie" not in response.headers


def test_a_forged_session_cookie_gets_no_204(staff, app):
    """A cookie naming the same user but signed with another key is refused."""
    from flask.sessions import SecureCookieSessionInterface

    invite = make_invite()
    version = version_of(invite)
    forger = app.test_client()
    real = staff.client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value
    with app.test_request_context():
        payload = app.session_interface.get_signing_serializer(app).loads(real)
    other = type("Other", (), {"secret_key": "not our key", "config": app.config})()
    forged = SecureCookieSessionInterface().get_signing_serializer(other).dumps(payload)
    forger.set_cookie(app.config["SESSION_COOKIE_NAME"], forged)
    assert refused(poll(forger, invite, version))
    assert poll(staff.client, invite, version).status_code == 204  # the real one still works


def test_an_expired_session_gets_no_204(staff, app):
    invite = make_invite()
    version = version_of(invite)
    assert poll(staff.client, invite, version).status_code == 204
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=-1)  # every session is now too old
    assert refused(poll(staff.client, invite, version))


def test_a_session_replayed_from_another_address_gets_no_204(staff):
    invite = make_invite()
    version = version_of(invite)
    elsewhere = dict(HTMX, **{"X-Forwarded-For": "203.0.113.9"})
    response = staff.client.get(f"/invites/{invite.id}/live", query_string={"v": version}, headers=elsewhere)
    assert refused(response)


def test_a_poll_without_an_integer_version_gets_the_fragment(staff):
    invite = make_invite()
    for query in ({"v": "x"}, {"v": ""}, {"w": version_of(invite)}):
        response = staff.client.get(f"/invites/{invite.id}/live", query_string=query, headers=HTMX)
        assert response.status_code == 200 and 'id="live"' in response.get_data(as_text=True)


@pytest.mark.parametrize("environ", [
    {"REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64)"},
    {"REMOTE_ADDR": "127.0.0.1"},
    {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.4, 10.0.0.2", "HTTP_USER_AGENT": "curl/8"},
    {"REMOTE_ADDR": "::1", "HTTP_USER_AGENT": "Navigateur \u00e9t\u00e9".encode().decode("latin-1")},
])
def test_the_fast_path_binds_sessions_exactly_as_flask_login_does(app, environ):
    from flask_login.utils import _create_identifier

    from smart_invites_ui.live_poll import session_identifier

    with app.test_request_context(environ_base=environ):
        assert session_identifier(environ) == _create_identifier()


def test_an_unchanged_poll_survives_the_database_dropping_its_connections(staff, app):
    """On a database server the fast path has connections of its own, without pre-ping: when
    the server drops them (a restart, a failover), the poll still answers, and recovers."""
    from sqlalchemy import text

    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    invite = make_invite()
    version = version_of(invite)
    assert poll(staff.client, invite, version).status_code == 204
    db.session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    db.session.commit()
    for _ in range(3):
        assert poll(staff.client, invite, version).status_code == 204


def test_pages_that_only_read_survive_the_database_dropping_their_connections(staff, app):
    """Pages that only read (the list, the live fragment, the signed-in user) read on a pool
    of their own, in autocommit and without pre-ping: a dropped connection is replaced and
    the read tried again, so the page still answers."""
    from sqlalchemy import text

    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    invite = make_invite()
    assert staff.client.get("/invites").status_code == 200  # the read pool now holds a connection
    db.session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    db.session.commit()
    page = staff.client.get("/invites")
    assert page.status_code == 200 and invite.smart_invite_id in page.get_data(as_text=True)
    assert poll(staff.client, invite, 0).status_code == 200


def test_reads_keep_their_prepared_statements_on_a_database_server(staff, app):
    """psycopg drops its prepared statements at every rollback, and a page that only read
    in the ORM session ended with one: the server parsed and planned its queries every time."""
    from smart_invites_ui.plain_sql import read_engine

    if db.engine.dialect.name != "postgresql":
        pytest.skip("prepared statements: PostgreSQL")
    invite = make_invite()
    for _ in range(8):  # psycopg prepares a query the sixth time a connection runs it
        assert poll(staff.client, invite, 0).status_code == 200
    connection = read_engine(app).raw_connection()
    try:
        cursor = connection.dbapi_connection.cursor()
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = " ".join(row[0] for row in cursor.fetchall())
    finally:
        connection.close()
    assert "FROM replies" in prepared and "FROM outbox_messages" in prepared


def test_a_changed_poll_shows_times_in_the_signed_in_users_zone_as_it_is_now(staff, app):
    """The full path takes the user the fast path's check read on this request, never an
    older copy: a change of time zone shows at the next poll."""
    from zoneinfo import ZoneInfo

    from smart_invites_ui.models import Recipient, User

    invite = make_invite(emails=("ann@example.org",))
    apply_notification({"smart_invite": {"smart_invite_id": invite.smart_invite_id,
                                         "reply": {"email": "ann@example.org", "status": "accepted"}}},
                       source=NotificationSource.WEBHOOK)
    replied = db.session.get(Recipient, invite.recipients[0].id).replied_at

    def shown(zone: str) -> bool:
        html = poll(staff.client, invite, 0).get_data(as_text=True)
        return replied.astimezone(ZoneInfo(zone)).strftime("%d %b %H:%M") in html

    assert shown("Europe/London")
    db.session.get(User, staff.user.id).timezone = "Asia/Kathmandu"  # +05:45: no other zone's clock
    db.session.commit()
    assert shown("Asia/Kathmandu") and not shown("Europe/London")


def test_on_postgresql_a_poll_is_one_round_trip_and_a_changed_one_two(staff, round_trips):
    """What a poll costs on a database server is its round trips (each one wakes the server and
    this process again): the check alone when nothing changed; the check, then the fragment's
    three queries sent together, when something did. Reading those inside psycopg's pipeline
    took a second round trip for them (a flush request, then the pipeline's end)."""
    proxy, browser = round_trips
    client = browser(staff.client)
    invite = make_invite()
    version = version_of(invite)
    assert poll(client, invite, 0).status_code == 200  # the read pool has its connection

    unchanged, changed = [], []
    assert proxy.during(lambda: unchanged.append(poll(client, invite, version))) == 1
    assert proxy.during(lambda: changed.append(poll(client, invite, 0))) == 2
    assert unchanged[0].status_code == 204
    assert changed[0].status_code == 200 and polled_version(changed[0].get_data(as_text=True)) == version


def test_on_postgresql_a_changed_polls_fragment_is_read_in_one_statement(staff, statements_sent):
    """The check, then one statement for the invite, its recipients, replies and emails, where
    the three queries sent together (one round trip still) cost this process and the server a
    statement each."""
    invite = make_invite()
    assert poll(staff.client, invite, 0).status_code == 200  # the read pool has its connections
    responses = []
    sent = statements_sent(lambda: responses.append(poll(staff.client, invite, 0)))
    assert responses[0].status_code == 200 and polled_version(responses[0].get_data(as_text=True)) == version_of(invite)
    assert sent == ["SELECT", "SELECT"]


def test_on_postgresql_the_one_statement_reads_what_the_three_queries_read(app, deliver):
    """``live_in_one_statement`` carries the recipients, replies and emails as JSON: they come
    back as the same rows, with the same values (aware datetimes to the microsecond, enums,
    booleans, None), in the same order, as ``live_together`` reads them."""
    from smart_invites_ui.invites import _RECIPIENTS, live_in_one_statement, live_together
    from smart_invites_ui.models import Recipient

    if db.engine.dialect.name != "postgresql":
        pytest.skip("the one statement is PostgreSQL's (SQLite reads the three queries in this process)")
    invite = make_invite(emails=("ann@example.org", "bob@example.org", "cy@example.org", "di@example.org"))
    deliver()  # the invitations sent: states, transports and times
    proposal = {"start": {"time": "2031-03-02T09:30:00Z", "tzid": "Europe/London"},
                "end": {"time": "2031-03-02T10:00:00Z", "tzid": "Europe/London"}}
    apply_notification({"smart_invite": {"smart_invite_id": invite.smart_invite_id, "reply": {
        "email": "ann@example.org", "status": "tentative", "comment": 'Later? "Quotes", <tags> & ünïcode',
        "proposal": proposal}}}, source=NotificationSource.WEBHOOK)
    answer(invite, "bob@example.org", "declined", "Away")
    answer(invite, "frontdesk@example.org", "accepted")  # not on the invite: a history row not applied
    invite = db.session.get(Invite, invite.id)
    invite_service.remove_recipient(invite, db.session.get(Recipient, invite.recipient("di@example.org").id))
    db.session.expire_all()

    with app.test_request_context():
        one, three = live_in_one_statement(invite.id), live_together(invite.id)
        assert live_in_one_statement(987654) is None and live_together(987654) is None
    assert one[0] == three[0]
    fields = _RECIPIENTS._for(db.engine.dialect)[3]._fields
    assert [row._fields for row in one[1]] == [fields] * 4
    assert one[1] == [tuple(getattr(row, name) for name in fields) for row in three[1]]
    assert (one[2], one[3]) == (three[2], three[3])
    assert [row._fields for row in one[2] + one[3]] == [row._fields for row in three[2] + three[3]]
    ann = one[1][0]
    assert ann.proposal_start.tzinfo is not None and ann.needs_attention is True
    assert [r.status.value for r in one[1]] == ["tentative", "declined", "pending", "removed"]
    assert [r.applied for r in one[2]] == [False, True, True]
    assert {m.state.value for m in one[3]} == {"sent", "queued"} and all(m.sent_at for m in one[3][-4:])
