"""``POST /webhooks/smart-invites``: Cronofy-signed status notifications (SPEC §4, §5)
and the one path that applies them, ``apply_notification``."""
from __future__ import annotations

import functools
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask import request
from sqlalchemy import func, select
from werkzeug.test import Client

from smart_invites_ui.domain import InviteSource, RecipientStatus
from smart_invites_ui.extensions import db
from smart_invites_ui.models import (Invite, Notification, NotificationOutcome, NotificationSource, OutboxKind,
                                     OutboxMessage, OutboxState, Reply)
from smart_invites_ui.services import api_clients
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services.callbacks import SIGNATURE_HEADER, sign, verify
from smart_invites_ui.services.notifications import apply_notification, record_notification
from smart_invites_ui.webhooks import SignedNotifications
from tests.conftest import free_port, make_event, make_invite, waiting_for_a_lock

SECRET = "test-cronofy-secret"  # the app fixture's CRONOFY_CLIENT_SECRETS
URL = "/webhooks/smart-invites"
ANN, BOB = "ann@example.org", "bob@example.org"

CRONOFY_SECRET = "CRN_NggYusqPGLxwjw5FHOJYOqSrTPNXy8WQf14OID"
CRONOFY_BODY = b'{"example":"well-known"}'
CRONOFY_SIGNATURE = "5DxentQi5YSXODEzTVv06sRwJ3pULIz1KrYv20qxEK0="


def post(client, payload, *, secret=SECRET, signature=None, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if signature is None and secret is not None:
        signature = sign(body, secret)
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return client.post(URL, data=body, headers=headers)


def single(reference, email, status, **extra):
    return {"notification": {"type": "smart_invite"},
            "smart_invite": {"smart_invite_id": reference, "callback_url": "https://example.org/cb",
                             "recipient": {"email": email, "status": status, **extra}}}


def multi(reference, reply, everyone):
    return {"notification": {"type": "smart_invite"},
            "smart_invite": {"smart_invite_id": reference, "callback_url": "https://example.org/cb",
                             "recipients": everyone, "reply": reply}}


def _fresh(invite: Invite) -> Invite:
    db.session.expire_all()
    return db.session.get(Invite, invite.id)


def _count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def _history(invite: Invite) -> list[Reply]:
    return list(db.session.scalars(select(Reply).where(Reply.invite_id == invite.id).order_by(Reply.id)))


@pytest.fixture
def invite(app):
    return make_invite(emails=(ANN, BOB), reference="BOOK-1")


# --- signatures -----------------------------------------------------------------------------------


def test_cronofy_published_vector_passes_the_route(app, client):
    assert verify(CRONOFY_BODY, CRONOFY_SIGNATURE, [CRONOFY_SECRET])
    app.config["CRONOFY_CLIENT_SECRETS"] = (CRONOFY_SECRET,)

    accepted = post(client, None, raw=CRONOFY_BODY, signature=CRONOFY_SIGNATURE)
    # Signed correctly but not a smart invite notification: refused as such, not as unsigned.
    assert accepted.status_code == 400
    assert "smart invite" in accepted.get_json()["error"]
    assert post(client, None, raw=CRONOFY_BODY, signature=sign(CRONOFY_BODY, "another")).status_code == 401


def test_rotated_secrets_and_several_header_values(app, client, invite):
    app.config["CRONOFY_CLIENT_SECRETS"] = ("new-secret", "old-secret")
    old = json.dumps(single("BOOK-1", ANN, "accepted")).encode()
    new = json.dumps(single("BOOK-1", BOB, "tentative")).encode()

    assert post(client, None, raw=old, secret="old-secret").status_code == 200
    assert post(client, None, raw=new, signature=f"bogus, {sign(new, 'new-secret')}").status_code == 200
    both_wrong = f"{sign(new, 'retired')},{sign(new, SECRET)}"
    assert post(client, None, raw=json.dumps(single("BOOK-1", BOB, "declined")).encode(),
                signature=both_wrong).status_code == 401

    fresh = _fresh(invite)
    assert fresh.recipient(ANN).status == RecipientStatus.ACCEPTED
    assert fresh.recipient(BOB).status == RecipientStatus.TENTATIVE


@pytest.mark.parametrize("signature", [None, "", "not base64 at all", sign(b"other body", SECRET)])
def test_bad_or_missing_signature_is_refused_and_nothing_is_stored(app, client, invite, signature):
    version = invite.version
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    response = client.post(URL, data=json.dumps(single("BOOK-1", ANN, "accepted")), headers=headers)

    assert response.status_code == 401
    assert _count(Notification) == 0 and _count(Reply) == 0
    fresh = _fresh(invite)
    assert fresh.recipient(ANN).status == RecipientStatus.PENDING and fresh.version == version


def test_no_configured_secret_refuses_everything(app, client, invite):
    app.config["CRONOFY_CLIENT_SECRETS"] = ()
    assert post(client, single("BOOK-1", ANN, "accepted"), secret="").status_code == 401
    assert _count(Notification) == 0


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00garbage"])
def test_malformed_json_is_400(app, client, invite, raw):
    response = post(client, None, raw=raw)
    assert response.status_code == 400
    assert _count(Reply) == 0
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.PENDING


# --- the usual delivery, answered before Flask (SignedNotifications) ---------------------------------


@pytest.fixture
def view_calls(app):
    """The Flask view's calls: the deliveries the WSGI layer left to it."""
    calls = []
    view = app.view_functions["webhooks.smart_invites"]

    @functools.wraps(view)  # its name and marks: CSRF exemption, public access
    def counted(*args, **kwargs):
        calls.append(request.get_data())
        return view(*args, **kwargs)

    app.view_functions["webhooks.smart_invites"] = counted
    yield calls
    app.view_functions["webhooks.smart_invites"] = view


def _flask_only(app) -> Client:
    """A client of the app without the webhook's WSGI layer: every delivery goes to the view."""
    layer = app.wsgi_app.app  # ProxyFix(SignedNotifications(...))
    assert isinstance(layer, SignedNotifications)
    return Client(layer.wsgi_app, app.response_class)


def _answer(response) -> tuple:
    headers = {name: value for name, value in response.headers.items() if name != "Content-Length"}
    return response.status, headers, response.get_data()


@pytest.mark.parametrize("reference, email, status", [
    ("BOOK-1", ANN, "accepted"),  # applied
    ("NO-SUCH-BOOKING", ANN, "accepted"),  # an unknown invite: 202
    ("BOOK-1", "frontdesk@example.org", "declined"),  # someone not invited: recorded
])
def test_the_usual_delivery_is_answered_before_flask_exactly_as_the_view_answers(app, client, invite, view_calls,
                                                                               reference, email, status):
    """The WSGI layer answers the usual delivery itself, with the view's status, headers and
    JSON, byte for byte; a repeat of it (a duplicate) too."""
    first = json.dumps(single(reference, email, status, comment="first")).encode()
    second = first.replace(b'"first"', b'"other"')  # the same kind of delivery, not a duplicate

    fast, view = post(client, None, raw=first), post(_flask_only(app), None, raw=second)
    assert view_calls == [second]  # only the second went to the view
    assert _answer(fast) == _answer(view)
    assert int(fast.headers["Content-Length"]) == len(fast.get_data())
    assert fast.status_code == (202 if reference == "NO-SUCH-BOOKING" else 200)

    again_fast, again_view = post(client, None, raw=second), post(_flask_only(app), None, raw=first)
    assert again_fast.get_json()["outcome"] == "duplicate"
    assert _answer(again_fast) == _answer(again_view)
    assert _count(Notification) == 2


def test_what_the_layer_cannot_answer_goes_to_the_view_body_and_all(app, client, invite, view_calls):
    body = json.dumps(single("BOOK-1", ANN, "accepted")).encode()
    assert post(client, None, raw=body, signature=sign(body, "wrong")).status_code == 401
    assert post(client, None, raw=b"{not json").status_code == 400
    unusable = json.dumps({"notification": {"type": "change"}}).encode()
    assert post(client, None, raw=unusable).status_code == 400
    assert client.get(URL).status_code == 405
    assert view_calls == [body, b"{not json", unusable]  # each with the body as sent
    assert db.session.scalar(select(Notification.outcome)) == NotificationOutcome.IGNORED  # kept, with the reason
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.PENDING


def test_a_delivery_that_fails_to_apply_is_tried_once_more_by_the_view(app, client, invite, view_calls,
                                                                       monkeypatch, caplog):
    """Applying is all or nothing, so the view can try again what failed in the layer; should
    that fail too, the view answers as the app answers any failure (a 500)."""
    import smart_invites_ui.webhooks as webhooks

    failures = []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("the database went away")
        return apply_notification(*args, **kwargs)

    monkeypatch.setattr(webhooks, "apply_notification", failing_once)
    body = json.dumps(single("BOOK-1", ANN, "declined")).encode()
    response = post(client, None, raw=body)
    assert response.status_code == 200 and response.get_json()["outcome"] == "applied"
    assert view_calls == [body]
    assert "could not be applied" in caplog.text and "the database went away" in caplog.text
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.DECLINED
    assert _count(Notification) == 1


# --- applying a notification ------------------------------------------------------------------------


def test_single_recipient_notification_updates_the_recipient(app, client, invite):
    version = invite.version
    response = post(client, single("BOOK-1", "Ann@Example.org", "accepted"))

    assert response.status_code == 200
    assert response.get_json()["outcome"] == "applied"
    fresh = _fresh(invite)
    ann = fresh.recipient(ANN)
    assert ann.status == RecipientStatus.ACCEPTED and not ann.needs_attention
    assert fresh.recipient(BOB).status == RecipientStatus.PENDING
    assert fresh.version > version
    (reply,) = _history(fresh)
    assert (reply.email, reply.status, reply.applied) == (ANN, RecipientStatus.ACCEPTED, True)
    assert reply.recipient_id == ann.id
    notification = db.session.scalar(select(Notification))
    assert notification.outcome == NotificationOutcome.APPLIED and notification.invite_id == invite.id


def test_reply_with_comment_and_proposal_needs_attention(app, client, invite):
    reply = {"email": BOB, "status": "tentative", "comment": "Could we do Thursday?",
             "proposal": {"start": {"time": "2031-09-13T23:00:00+02:00", "tzid": "Europe/Paris"},
                          "end": {"time": "2031-09-13T23:30:00+02:00", "tzid": "Europe/Paris"}}}
    everyone = [{"email": ANN, "status": "pending"}, reply]
    response = post(client, multi("BOOK-1", reply, everyone))

    assert response.status_code == 200
    bob = _fresh(invite).recipient(BOB)
    assert bob.status == RecipientStatus.TENTATIVE
    assert bob.comment == "Could we do Thursday?"
    assert bob.proposal.start == datetime(2031, 9, 13, 21, 0, tzinfo=timezone.utc)
    assert bob.proposal.end == datetime(2031, 9, 13, 21, 30, tzinfo=timezone.utc)
    assert bob.proposal.tzid == "Europe/Paris"
    assert bob.needs_attention
    (history,) = _history(invite)  # the reply, not the whole recipients list
    assert (history.email, history.comment) == (BOB, "Could we do Thursday?")
    assert history.proposal.start == bob.proposal.start
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.PENDING


def test_decline_needs_attention_and_answers_are_kept_in_order(app, client, invite):
    assert post(client, single("BOOK-1", ANN, "accepted")).status_code == 200
    assert post(client, single("BOOK-1", ANN, "declined", comment="Sorry, ill")).status_code == 200

    ann = _fresh(invite).recipient(ANN)
    assert (ann.status, ann.comment, ann.needs_attention) == (RecipientStatus.DECLINED, "Sorry, ill", True)
    assert [r.status for r in _history(invite)] == [RecipientStatus.ACCEPTED, RecipientStatus.DECLINED]


def test_recipients_list_without_reply_applies_only_the_changes(app, client, invite):
    everyone = {"notification": {"type": "smart_invite"}, "smart_invite": {
        "smart_invite_id": "BOOK-1", "recipients": [{"email": ANN, "status": "pending"},
                                                    {"email": BOB, "status": "accepted"}]}}
    assert post(client, everyone).status_code == 200
    fresh = _fresh(invite)
    assert fresh.recipient(BOB).status == RecipientStatus.ACCEPTED
    assert [r.email for r in _history(fresh)] == [BOB]


def test_repeated_delivery_changes_nothing(app, client, invite):
    payload = single("BOOK-1", ANN, "accepted")
    assert post(client, payload).status_code == 200
    version = _fresh(invite).version

    again = post(client, payload)
    assert again.status_code == 200
    assert again.get_json()["outcome"] == "duplicate"
    assert _fresh(invite).version == version
    assert len(_history(invite)) == 1
    assert _count(Notification) == 1


def test_a_delivery_being_recorded_elsewhere_is_a_duplicate_that_writes_nothing(app, invite):
    """The same notification twice before either commits (two workers, one transaction here):
    the unique key answers "duplicate" without an error and without a second history row."""
    payload, version = single("BOOK-1", ANN, "declined"), invite.version
    first = record_notification(payload, source=NotificationSource.WEBHOOK)
    second = record_notification(payload, source=NotificationSource.WEBHOOK)
    db.session.commit()

    assert (first.outcome, second.outcome) == (NotificationOutcome.APPLIED, NotificationOutcome.DUPLICATE)
    assert second.notification_id is None
    assert _count(Notification) == 1
    assert len(_history(invite)) == 1
    assert _fresh(invite).version == version + 1


def test_unknown_invite_is_accepted_and_kept(app, client, invite):
    response = post(client, single("NO-SUCH-BOOKING", ANN, "accepted"))
    assert response.status_code == 202
    notification = db.session.scalar(select(Notification))
    assert notification.outcome == NotificationOutcome.UNKNOWN_INVITE
    assert notification.smart_invite_id == "NO-SUCH-BOOKING"
    assert json.loads(notification.body)["smart_invite"]["recipient"]["email"] == ANN
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.PENDING


def test_uninvited_responder_is_recorded_without_changing_anyone(app, client, invite):
    version = invite.version
    response = post(client, single("BOOK-1", "frontdesk@example.org", "declined"))
    assert response.status_code == 200

    fresh = _fresh(invite)
    assert {r.status for r in fresh.recipients} == {RecipientStatus.PENDING}
    assert not any(r.needs_attention for r in fresh.recipients)
    (reply,) = _history(fresh)
    assert (reply.email, reply.recipient_id, reply.applied) == ("frontdesk@example.org", None, False)
    assert reply.note
    assert fresh.version > version  # the history on the page changed
    assert db.session.scalar(select(Notification.outcome)) == NotificationOutcome.UNKNOWN_RECIPIENT


def test_unknown_status_is_recorded_not_applied(app, client, invite):
    post(client, single("BOOK-1", ANN, "accepted"))
    response = post(client, single("BOOK-1", ANN, "deleted"))
    assert response.status_code == 200
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.ACCEPTED
    last = _history(invite)[-1]
    assert last.applied is False and "deleted" in last.note


@pytest.mark.parametrize("payload", [
    [],
    {"notification": {"type": "smart_invite"}},
    {"notification": {"type": "change"}, "smart_invite": {"smart_invite_id": "BOOK-1"}},
    {"smart_invite": {"smart_invite_id": ""}},
])
def test_signed_but_unusable_payload_is_400_and_kept(app, client, invite, payload):
    response = post(client, payload)
    assert response.status_code == 400
    assert _count(Reply) == 0
    assert db.session.scalar(select(Notification.outcome)) == NotificationOutcome.IGNORED


# --- callbacks to the API client ---------------------------------------------------------------------


class CallbackReceiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers.get(SIGNATURE_HEADER), body))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def callback_server():
    CallbackReceiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), CallbackReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/cronofy/smart_invite/notifications"
    yield server
    server.shutdown()
    server.server_close()


def test_applied_reply_queues_a_signed_callback_in_the_seed_shape(app, callback_server, deliver):
    client, secret = api_clients.create_client("Booking system")
    invite_service.create_invite(
        event=make_event(), recipients=[invite_service.NewRecipient(ANN), invite_service.NewRecipient(BOB)],
        smart_invite_id="API-7", source=InviteSource.API, api_client=client, callback_url=callback_server.url)
    deliver()  # the invite emails

    apply_notification(single("API-7", BOB, "declined", comment="Away that week"),
                       source=NotificationSource.EMAIL)
    (queued,) = db.session.scalars(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.CALLBACK))
    assert (queued.target, queued.api_client_id, queued.state) == (callback_server.url, client.id, OutboxState.QUEUED)
    body = json.loads(queued.payload)
    assert body["notification"] == {"type": "smart_invite"}
    smart_invite = body["smart_invite"]
    assert smart_invite["smart_invite_id"] == "API-7"
    assert smart_invite["callback_url"] == callback_server.url
    assert smart_invite["recipients"] == [{"email": ANN, "status": "pending"},
                                          {"email": BOB, "status": "declined", "comment": "Away that week"}]
    assert smart_invite["reply"] == {"email": BOB, "status": "declined", "comment": "Away that week"}

    deliver()
    ((signature, received),) = CallbackReceiver.received
    assert received == queued.payload
    assert verify(received, signature, [secret])
    db.session.expire_all()
    assert db.session.get(OutboxMessage, queued.id).state == OutboxState.SENT


def test_no_callback_without_a_callback_url_or_for_a_change_that_was_not_applied(app, client, invite):
    post(client, single("BOOK-1", ANN, "accepted"))
    assert db.session.scalar(select(func.count()).where(OutboxMessage.kind == OutboxKind.CALLBACK)) == 0

    api_client, _ = api_clients.create_client("Booking system")
    invite_service.create_invite(event=make_event(), recipients=[invite_service.NewRecipient(ANN)],
                                 smart_invite_id="API-8", source=InviteSource.API, api_client=api_client,
                                 callback_url="https://example.org/cb")
    post(client, single("API-8", "someone-else@example.org", "accepted"))
    assert db.session.scalar(select(func.count()).where(OutboxMessage.kind == OutboxKind.CALLBACK)) == 0


def test_a_nul_character_in_a_comment_is_dropped_not_a_server_error(app, client, invite):
    # PostgreSQL refuses NUL in text columns; a 500 would make the sender retry forever.
    response = post(client, single("BOOK-1\u0000", ANN, "declined", comment="Sick\u0000 today"))
    assert response.status_code == 200
    ann = _fresh(invite).recipient(ANN)
    assert (ann.status, ann.comment) == (RecipientStatus.DECLINED, "Sick today")
    assert _history(invite)[0].comment == "Sick today"


def _refusing_invite_updates():
    """DDL for a trigger that makes the database refuse every UPDATE of an invite, and DDL to drop it."""
    if db.engine.dialect.name == "postgresql":
        return (["CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
                 "CREATE TRIGGER test_refuse BEFORE UPDATE ON invites FOR EACH ROW EXECUTE FUNCTION test_refuse()"],
                ["DROP TRIGGER test_refuse ON invites", "DROP FUNCTION test_refuse()"])
    return (["CREATE TRIGGER test_refuse BEFORE UPDATE ON invites BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
            ["DROP TRIGGER test_refuse"])


@pytest.mark.parametrize("everyone", [False, True], ids=["one reply", "a recipients list"])
def test_a_notification_that_fails_half_way_writes_nothing_and_can_be_sent_again(app, invite, everyone):
    """All or nothing: when the last write (the invite's version) is refused, the notification,
    the history row and the status written before it go too, so the sender's retry is applied,
    not taken for a duplicate. On PostgreSQL the usual notification is one statement, and a
    recipients list a transaction; on SQLite both are a transaction."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    payload = single("BOOK-1", ANN, "declined")
    if everyone:  # Cronofy's "recipients" list, without a "reply"
        payload["smart_invite"] = {"smart_invite_id": "BOOK-1", "recipients": [{"email": ANN, "status": "declined"}]}
    create, drop = _refusing_invite_updates()
    for statement in create:
        db.session.execute(text(statement))
    db.session.commit()
    try:
        with pytest.raises((db.engine.dialect.loaded_dbapi.Error, DBAPIError), match="refused by the test"):
            apply_notification(payload, source=NotificationSource.WEBHOOK)
        assert (_count(Notification), len(_history(invite))) == (0, 0)
        assert _fresh(invite).recipient(ANN).status == RecipientStatus.PENDING
    finally:
        db.session.rollback()
        for statement in drop:
            db.session.execute(text(statement))
        db.session.commit()

    again = apply_notification(payload, source=NotificationSource.WEBHOOK)
    assert again.outcome == NotificationOutcome.APPLIED
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.DECLINED
    assert _fresh(invite).version == 2


def test_what_was_loaded_before_a_notification_shows_it_afterwards(app, invite):
    ann = invite.recipient(ANN)
    assert ann.status == RecipientStatus.PENDING
    apply_notification(single("BOOK-1", ANN, "accepted"), source=NotificationSource.WEBHOOK)
    assert ann.status == RecipientStatus.ACCEPTED
    assert invite.version == 2


def test_a_webhook_answer_does_not_vary_by_cookie_but_a_page_with_a_form_does(app, client, invite, auth):
    """Machine endpoints leave the session alone: reading it on the way out (to remember a CSRF
    token no form asked for) marked every answer "Vary: Cookie" and cost a webhook 4%."""
    response = post(client, single("BOOK-1", ANN, "accepted"))
    assert response.status_code == 200
    assert "Cookie" not in response.headers.get("Vary", "")
    auth.login()
    page = client.get("/invites/new")
    assert page.status_code == 200 and "Cookie" in page.headers.get("Vary", "")


def test_a_webhook_survives_the_database_dropping_its_connections(app, client, invite):
    """On a database server a webhook is applied on the read pool, without pre-ping: a dropped
    connection is replaced and the notification applied once, not lost and not doubled."""
    from sqlalchemy import text

    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    assert post(client, single("BOOK-1", ANN, "tentative")).status_code == 200  # the pool holds a connection
    db.session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    db.session.commit()
    response = post(client, single("BOOK-1", ANN, "declined"))
    assert response.status_code == 200 and response.get_json()["outcome"] == "applied"
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.DECLINED
    assert [reply.status for reply in _history(invite)] == [RecipientStatus.TENTATIVE, RecipientStatus.DECLINED]


def test_on_postgresql_a_usual_notification_is_one_statement_and_no_transaction(app, client, invite,
                                                                              statements_sent):
    """One reply from a recipient on an invite without a callback URL: read, decided and written
    in one statement that commits by itself, one round trip. Reading the invite first took two,
    and BEGIN, six statements and COMMIT before that took seven (each round trip costs the server
    and this process more than the statement's own work)."""
    assert post(client, single("BOOK-1", BOB, "accepted")).status_code == 200  # the pool has its connection
    version = _fresh(invite).version
    responses = []
    sent = statements_sent(lambda: responses.append(post(client, single("BOOK-1", ANN, "declined",
                                                                        comment="Sick today"))))

    assert responses[0].status_code == 200 and responses[0].get_json()["outcome"] == "applied"
    assert sent == ["WITH"]
    ann = _fresh(invite).recipient(ANN)
    assert (ann.status, ann.comment, ann.needs_attention) == (RecipientStatus.DECLINED, "Sick today", True)
    assert ann.replied_at is not None
    assert _fresh(invite).version == version + 1
    (notification,) = db.session.scalars(select(Notification).where(Notification.outcome != "duplicate")
                                         .order_by(Notification.id.desc()).limit(1))
    assert (notification.invite_id, notification.outcome, notification.detail) == (
        invite.id, NotificationOutcome.APPLIED, "")
    history = _history(invite)
    assert [(reply.email, reply.status, reply.comment, reply.applied, reply.note) for reply in history][1:] == [
        (ANN, RecipientStatus.DECLINED, "Sick today", True, "")]
    assert (history[-1].recipient_id, history[-1].notification_id) == (ann.id, notification.id)

    again = statements_sent(lambda: responses.append(post(client, single("BOOK-1", ANN, "declined",
                                                                         comment="Sick today"))))
    assert responses[1].get_json()["outcome"] == "duplicate" and again == ["WITH"]
    assert len(_history(invite)) == 2 and _fresh(invite).version == version + 1


def _remove_ann(invite: Invite) -> None:
    invite_service.remove_recipient(invite, invite.recipient(ANN), send_emails=False)


def _answer_ann_later(invite: Invite) -> None:
    later = datetime(2031, 3, 1, 9, 5, tzinfo=timezone.utc)
    apply_notification({"smart_invite": {"smart_invite_id": "BOOK-1", "reply": {"email": ANN, "status": "accepted"}}},
                       source=NotificationSource.EMAIL, dtstamp=later, sequence=0, raw="a later answer")


def _give_a_callback_url(invite: Invite) -> None:
    invite.callback_url = "http://127.0.0.1:9/callback"
    db.session.commit()


@pytest.mark.parametrize("unusual, outcome, note", [
    (_remove_ann, NotificationOutcome.IGNORED, "removed from the invite"),
    (_answer_ann_later, NotificationOutcome.STALE, "older than the answer already recorded"),
    (_give_a_callback_url, NotificationOutcome.APPLIED, ""),
], ids=["a removed recipient", "an older answer", "a callback to queue"])
def test_a_reply_the_one_statement_cannot_take_is_applied_as_read(app, invite, unusual, outcome, note):
    """The one-statement path writes nothing for these; the notification is then read and decided
    as before, recorded once, with its reason."""
    unusual(invite)
    status = _fresh(invite).recipient(ANN).status
    result = apply_notification({"smart_invite": {"smart_invite_id": "BOOK-1",
                                                  "reply": {"email": ANN, "status": "declined"}}},
                                source=NotificationSource.EMAIL, dtstamp=datetime(2031, 3, 1, 9, 0, tzinfo=timezone.utc),
                                sequence=0, raw="the reply")

    assert (result.outcome, result.invite_id) == (outcome, invite.id)
    assert note in result.detail
    notification = db.session.scalar(select(Notification).where(Notification.body == "the reply"))
    assert (notification.outcome, notification.invite_id) == (outcome, invite.id)
    assert len(db.session.scalars(select(Reply).where(Reply.notification_id == notification.id)).all()) == 1
    expected = RecipientStatus.DECLINED if outcome == NotificationOutcome.APPLIED else status
    assert _fresh(invite).recipient(ANN).status == expected
    queued = db.session.scalar(select(func.count()).select_from(OutboxMessage)
                               .where(OutboxMessage.kind == OutboxKind.CALLBACK))
    assert queued == (1 if unusual is _give_a_callback_url else 0)


def test_on_postgresql_an_unusual_notification_is_read_after_the_one_statement_wrote_nothing(app, client, invite,
                                                                                             statements_sent):
    """Someone not on the invite: the one statement finds no such recipient and writes nothing,
    then the invite is read, and the notification recorded as from an unknown recipient."""
    assert post(client, single("BOOK-1", BOB, "accepted")).status_code == 200
    responses = []
    sent = statements_sent(lambda: responses.append(post(client, single("BOOK-1", "frontdesk@example.org",
                                                                        "declined"))))
    assert responses[0].get_json()["outcome"] == "unknown_recipient"
    assert sent == ["WITH", "SELECT", "WITH"]
    assert _count(Notification) == 2


STAMPED = datetime(2031, 3, 1, 9, 0, tzinfo=timezone.utc)


def _decided(status: str, dtstamp: datetime):
    """A reply email's notification from Ann, decided (read) but not written yet."""
    from smart_invites_ui.plain_sql import read_engine
    from smart_invites_ui.services.notifications import decide

    payload = {"smart_invite": {"smart_invite_id": "BOOK-1", "reply": {"email": ANN, "status": status}}}
    with read_engine().connect() as connection:
        return decide(payload, source=NotificationSource.EMAIL, dtstamp=dtstamp, sequence=0,
                      raw=f"{status} {dtstamp}", connection=connection)


def _written(plan):
    """As apply_notification writes what it decided."""
    from smart_invites_ui.plain_sql import read_engine
    from smart_invites_ui.services.notifications import write_committed

    with read_engine().connect() as connection:
        return write_committed(plan, connection)


def _notification(notification_id: int) -> Notification:
    db.session.expire_all()
    return db.session.get(Notification, notification_id)


def test_two_replies_decided_at_once_keep_the_newer_and_record_the_older_as_stale(app, invite):
    """Two reply emails from one attendee, each decided on the row as it was before the other
    wrote (two processes at the same moment): the newer answer (DTSTAMP) stays, also when the
    older one is written last, and the older one is recorded as what it turned out to be. It
    was recorded as applied, in its history row and its notification, though it changed nothing."""
    from datetime import timedelta

    newer, older = _decided("accepted", STAMPED + timedelta(minutes=5)), _decided("declined", STAMPED)
    assert newer.applied and older.applied  # neither saw the other
    assert _written(newer).outcome == NotificationOutcome.APPLIED
    late = _written(older)

    assert (late.outcome, late.detail) == (NotificationOutcome.STALE, f"{ANN}: older than the answer already recorded")
    ann = _fresh(invite).recipient(ANN)
    assert ann.status == RecipientStatus.ACCEPTED and ann.last_reply_dtstamp == STAMPED + timedelta(minutes=5)
    assert not ann.needs_attention
    assert [(reply.status, reply.applied, reply.note) for reply in _history(invite)] == [
        (RecipientStatus.ACCEPTED, True, ""), (RecipientStatus.DECLINED, False, "older than the answer already recorded")]
    assert (_notification(late.notification_id).outcome, _notification(late.notification_id).detail) == (
        late.outcome, late.detail)

    # A newer one decided on the old row still applies over the older.
    assert _written(_decided("tentative", STAMPED + timedelta(minutes=9))).outcome == NotificationOutcome.APPLIED
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.TENTATIVE


def test_a_reply_decided_before_staff_removed_the_recipient_does_not_put_them_back(app, invite):
    """Staff remove Ann while her acceptance is being recorded: she stays removed, and her reply
    is kept in the history as to a removed recipient. It put her back on the invite, accepted."""
    plan = _decided("accepted", STAMPED)
    assert plan.applied
    _remove_ann(invite)
    result = _written(plan)

    assert (result.outcome, result.detail) == (NotificationOutcome.IGNORED,
                                               f"{ANN}: this recipient was removed from the invite")
    ann = _fresh(invite).recipient(ANN)
    assert ann.status == RecipientStatus.REMOVED and ann.last_reply_dtstamp is None
    assert [(reply.status, reply.applied, reply.note) for reply in _history(invite)] == [
        (RecipientStatus.ACCEPTED, False, "this recipient was removed from the invite")]
    assert _notification(result.notification_id).outcome == NotificationOutcome.IGNORED


def test_on_postgresql_a_webhook_waits_for_a_removal_being_written_and_does_not_undo_it(app, client, invite,
                                                                                      while_held):
    """The one statement of the usual webhook, sent while staff's removal of Ann is being
    committed: it waits for the row, sees her removed and writes nothing; the notification is
    then recorded as to a removed recipient. Its UPDATE used to wait instead, after the history
    row was written as applied, and then put her back."""
    from sqlalchemy import update

    from smart_invites_ui.models import Recipient

    removal = (update(Recipient.__table__).where(Recipient.__table__.c.id == invite.recipient(ANN).id)
               .values(status=RecipientStatus.REMOVED))
    response = while_held(removal, lambda: post(client, single("BOOK-1", ANN, "accepted")))

    assert response.status_code == 200 and response.get_json()["outcome"] == "ignored"
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.REMOVED
    assert [(reply.status, reply.applied, reply.note) for reply in _history(invite)] == [
        (RecipientStatus.ACCEPTED, False, "this recipient was removed from the invite")]


def test_a_notification_listing_several_recipients_applies_each(app, client, invite):
    """Cronofy's ``recipients`` list without a ``reply``: every status in it. On PostgreSQL its
    read (an IN list, not a plain query) began a transaction on the connection, and setting the
    writes' isolation level then failed: 500, nothing recorded."""
    version = _fresh(invite).version
    payload = {"notification": {"type": "smart_invite"},
               "smart_invite": {"smart_invite_id": "BOOK-1", "recipients": [
                   {"email": ANN, "status": "accepted"}, {"email": BOB, "status": "declined"}]}}
    response = post(client, payload)

    assert response.status_code == 200 and response.get_json()["outcome"] == "applied"
    fresh = _fresh(invite)
    assert fresh.recipient(ANN).status == RecipientStatus.ACCEPTED
    assert fresh.recipient(BOB).status == RecipientStatus.DECLINED and fresh.recipient(BOB).needs_attention
    assert fresh.version > version
    assert sorted((r.email, r.status) for r in _history(invite)) == [(ANN, RecipientStatus.ACCEPTED),
                                                                    (BOB, RecipientStatus.DECLINED)]


def _write_decided_accept():
    """A reply email's notification written by ``write_committed`` (the one statement for a given
    invite and recipient, on PostgreSQL), as for a reply email read with others in one batch."""
    return _written(_decided("accepted", STAMPED))


def _webhook_accept(client):
    response = post(client, single("BOOK-1", ANN, "accepted"))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


@pytest.mark.parametrize("write, callback_url", [
    (lambda client: _webhook_accept(client)["outcome"], False),
    (lambda client: _write_decided_accept().outcome, False),
    (lambda client: _webhook_accept(client)["outcome"], True),
], ids=["the usual webhook", "a decided reply", "a reply to an invite with a callback URL"])
def test_on_postgresql_a_reply_and_staff_removing_its_recipient_at_once_do_not_deadlock(app, client, invite, write,
                                                                                       callback_url):
    """Staff remove Ann (one flush: the invite's row, then hers) while her acceptance is written.
    The reply took her row first, then waited for the invite's row (its version), which staff
    held while waiting for hers: PostgreSQL aborted one of the two after a second (the webhook
    answered 500, or staff's removal failed). Every writer now takes the invite's row first."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no row locks to wait for")
    from sqlalchemy import event

    if callback_url:
        _give_a_callback_url(invite)
    invite_id = invite.id
    staff_sent: list[str] = []
    invite_written, outcome = threading.Event(), {}

    def before(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread() is not staff:
            return
        staff_sent.append(statement.split(None, 2)[:2])
        if statement.startswith("UPDATE recipients"):
            # Staff hold the invite's row: let the reply start, and go on once it waits for a row.
            invite_written.set()
            deadline = time.monotonic() + 10
            with db.engine.connect() as watcher:
                while not waiting_for_a_lock(watcher) and time.monotonic() < deadline:
                    pass

    def remove():
        try:
            with app.app_context():
                fresh = db.session.get(Invite, invite_id)
                invite_service.remove_recipient(fresh, fresh.recipient(ANN), send_emails=False)
                outcome["removed"] = True
        except BaseException as exc:  # raised in the test, below
            outcome["error"] = exc

    staff = threading.Thread(target=remove)
    event.listen(db.engine, "before_cursor_execute", before)
    try:
        staff.start()
        assert invite_written.wait(10), "staff's removal never wrote Ann's row"
        result = write(client)
        staff.join(10)
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
    if "error" in outcome:
        raise outcome["error"]

    assert staff_sent.index(["UPDATE", "invites"]) < staff_sent.index(["UPDATE", "recipients"])
    assert outcome == {"removed": True}
    assert result == NotificationOutcome.IGNORED
    assert _fresh(invite).recipient(ANN).status == RecipientStatus.REMOVED
    assert [(reply.status, reply.applied, reply.note) for reply in _history(invite)] == [
        (RecipientStatus.ACCEPTED, False, "this recipient was removed from the invite")]
