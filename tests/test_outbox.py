"""The durable outbox (SPEC §2): exclusive claims, leases, superseding, retries and
a worker that stops cleanly. Runs on SQLite and on PostgreSQL (TEST_DATABASE_URL)."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from smart_invites_ui.domain import ITipMethod
from smart_invites_ui.extensions import db
from smart_invites_ui.models import Invite, OutboxKind, OutboxMessage, OutboxState, now_utc
from smart_invites_ui.services import invites as invite_service
from smart_invites_ui.services import outbox
from smart_invites_ui.worker import Worker
from tests.conftest import SmtpSink, free_port, make_event, make_invite

ANN, BOB, CAT = "ann@example.org", "bob@example.org", "cat@example.org"


def _messages() -> list[OutboxMessage]:
    db.session.expire_all()
    return list(db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def _queue_emails(count: int) -> list[int]:
    """``count`` due email rows (invites of 5 recipients each)."""
    for n in range(0, count, 5):
        make_invite(emails=tuple(f"guest{n + i}@example.org" for i in range(min(5, count - n))))
    ids = [m.id for m in _messages()]
    assert len(ids) == count
    return ids


def _version(invite_id: int) -> int:
    return db.session.scalar(select(Invite.version).where(Invite.id == invite_id))


def _deliverers(app):
    """What the worker hands each row to (SMTP, or the mail catcher)."""
    from smart_invites_ui.services.delivery import email_deliverer

    return Worker(app).deliverers(email_deliverer())


@pytest.fixture
def inbox(app, smtp_server):
    app.config["SMTP_URL"] = smtp_server.url
    return smtp_server


# --- claiming -----------------------------------------------------------------------------------


def test_claim_takes_due_rows_once(app):
    ids = _queue_emails(6)
    first = outbox.claim(4, "w1", 300)
    second = outbox.claim(4, "w2", 300)
    assert first == ids[:4]
    assert second == ids[4:]
    assert outbox.claim(4, "w3", 300) == []
    rows = {m.id: m for m in _messages()}
    assert all(rows[i].state == OutboxState.SENDING and rows[i].attempts == 1 for i in ids)
    assert all(rows[i].claimed_by.startswith("w1:") for i in first)
    assert all(rows[i].lease_until > now_utc() for i in ids)


def test_concurrent_claimers_never_share_a_row(app):
    ids = _queue_emails(60)
    barrier = threading.Barrier(3)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        taken: list[int] = []
        try:
            with app.app_context():
                barrier.wait(timeout=10)
                while batch := outbox.claim(5, name, 300):
                    taken.extend(batch)
                db.session.remove()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        claimed[name] = taken

    threads = [threading.Thread(target=claimer, args=(f"worker-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    everything = [i for taken in claimed.values() for i in taken]
    assert sorted(everything) == ids  # each row once, none missed
    owners = {m.id: m.claimed_by.split(":")[0] for m in _messages()}
    for name, taken in claimed.items():
        assert {owners[i] for i in taken} <= {name}


def test_claim_takes_rows_of_dead_workers_first_then_the_longest_due(app):
    ids = _queue_emails(5)
    db.session.execute(update(OutboxMessage).where(OutboxMessage.id == ids[3])  # a dead worker's
                       .values(state=OutboxState.SENDING, claimed_by="dead:1", attempts=1,
                               lease_until=now_utc() - timedelta(seconds=1)))
    db.session.execute(update(OutboxMessage).where(OutboxMessage.id == ids[4])  # a retry due for an hour
                       .values(next_attempt_at=now_utc() - timedelta(hours=1)))
    db.session.execute(update(OutboxMessage).where(OutboxMessage.id == ids[0])  # a retry not due yet
                       .values(next_attempt_at=now_utc() + timedelta(minutes=1)))
    db.session.commit()

    assert outbox.claim(3, "w1", 300) == [ids[1], ids[3], ids[4]]  # a batch goes out in id order
    assert outbox.claim(3, "w2", 300) == [ids[2]]


def test_row_of_a_dead_worker_is_claimed_again_after_its_lease(app):
    ids = _queue_emails(2)
    assert outbox.claim(10, "dead", 300) == ids
    db.session.execute(update(OutboxMessage).where(OutboxMessage.id == ids[0])
                       .values(lease_until=now_utc() - timedelta(seconds=1)))
    db.session.commit()

    assert outbox.claim(10, "alive", 300) == [ids[0]]  # the other lease still runs
    first, second = _messages()
    assert first.claimed_by.startswith("alive:") and first.attempts == 2
    assert second.claimed_by.startswith("dead:")


def test_slow_worker_does_not_send_a_row_another_worker_took_over(app, inbox):
    """A batch can outlast its lease (a slow SMTP server): a row another worker has since
    claimed is theirs, and the recipient gets one email, not two."""
    make_invite(emails=(ANN, BOB))
    slow = outbox.claim(10, "slow", 300)
    # While "slow" is busy with Ann's email, the lease on Bob's runs out and "fast" takes it.
    db.session.execute(update(OutboxMessage).where(OutboxMessage.id == slow[1])
                       .values(lease_until=now_utc() - timedelta(seconds=1)))
    db.session.commit()
    fast = outbox.claim(10, "fast", 300)
    assert fast == [slow[1]]

    fast_sending, slow_done, errors = threading.Event(), threading.Event(), []

    def fast_worker():
        try:
            with app.app_context():
                table = _deliverers(app)
                send = table[OutboxKind.EMAIL]

                def send_slowly(message):
                    fast_sending.set()
                    slow_done.wait(timeout=20)
                    return send(message)

                outbox.deliver_claimed(fast, {**table, OutboxKind.EMAIL: send_slowly})
                db.session.remove()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=fast_worker)
    thread.start()
    assert fast_sending.wait(timeout=20), errors
    try:
        outbox.deliver_claimed(slow, _deliverers(app))
    finally:
        slow_done.set()
        thread.join(timeout=20)

    assert errors == []
    assert sorted(rcpts[0] for _, rcpts, _ in inbox.messages) == [ANN, BOB]
    assert [m.state for m in _messages()] == [OutboxState.SENT, OutboxState.SENT]


def test_worker_with_a_long_host_name_can_claim(app, deliver):
    """Container host names run to 63 characters; the claim token must still fit its column."""
    make_invite(emails=(ANN,))
    Worker(app, worker_id="smart-invites-worker-7d9f8c6b5-" + "x" * 32 + ":4242").run_until_idle()
    (message,) = _messages()
    assert message.state == OutboxState.SENT


# --- what gets sent -------------------------------------------------------------------------------


def test_newer_email_to_the_same_recipient_supersedes_a_queued_one(app, inbox, deliver):
    invite = make_invite(emails=(ANN, BOB))
    invite_service.update_event(invite, make_event(start=invite.start, location="Room 8"))
    invite_service.update_event(invite, make_event(start=invite.start, location="Room 9"))

    rows = _messages()
    assert [m.state for m in rows] == [OutboxState.SUPERSEDED] * 4 + [OutboxState.QUEUED] * 2
    deliver()

    assert sorted(rcpts[0] for _, rcpts, _ in inbox.messages) == [ANN, BOB]  # one each, not three
    for msg in inbox.parsed():
        ics = msg.get_payload()[1].get_payload(decode=True)
        assert b"LOCATION:Room 9" in ics and b"SEQUENCE:2" in ics
    assert [m.state for m in _messages()] == [OutboxState.SUPERSEDED] * 4 + [OutboxState.SENT] * 2


def test_request_claimed_before_a_cancel_is_not_sent(app, inbox):
    """A worker already holding a REQUEST when staff cancel must not send it after the CANCEL."""
    invite = make_invite(emails=(ANN,))
    claimed = outbox.claim(10, "slow", 300)
    invite_service.cancel_invite(invite)
    version = _version(invite.id)

    stats = outbox.deliver_claimed(claimed, _deliverers(app))
    assert stats.superseded == 1 and stats.sent == 0
    request = db.session.get(OutboxMessage, claimed[0])
    db.session.refresh(request)
    assert request.state == OutboxState.SUPERSEDED
    assert request.claimed_by is None and request.lease_until is None
    assert _version(invite.id) > version  # the live page learns the email will not go
    assert inbox.messages == []


# --- failures and retries --------------------------------------------------------------------------


def test_backoff_grows_and_is_capped():
    delays = [outbox.email_backoff(attempt) for attempt in range(1, 14)]
    for earlier, later in zip(delays[:9], delays[1:10]):
        assert later > earlier
    assert timedelta(seconds=20) <= delays[0] <= timedelta(seconds=40)
    assert max(delays) <= timedelta(hours=4) * 1.2


def test_each_failed_attempt_waits_longer(app, deliver):
    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{free_port()}"
    make_invite(emails=(ANN,))
    waits = []
    for attempt in (1, 2, 3):
        before = now_utc()
        deliver()
        (message,) = _messages()
        assert (message.state, message.attempts) == (OutboxState.QUEUED, attempt)
        waits.append(message.next_attempt_at - before)
        db.session.execute(update(OutboxMessage).values(next_attempt_at=now_utc()))
        db.session.commit()
    assert waits[0] < waits[1] < waits[2]
    assert waits[0] > timedelta(seconds=15)


def test_email_gives_up_after_the_last_attempt(app, deliver):
    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{free_port()}"
    make_invite(emails=(ANN,))
    db.session.execute(update(OutboxMessage).values(attempts=outbox.EMAIL_MAX_ATTEMPTS - 1))
    db.session.commit()
    deliver()
    (message,) = _messages()
    assert (message.state, message.attempts) == (OutboxState.FAILED, outbox.EMAIL_MAX_ATTEMPTS)
    assert "refused" in message.last_error.lower()


class RefusingHandler(SmtpSink):
    def __init__(self, code: str):
        super().__init__()
        self.code = code
        self.rcpt_calls = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_calls += 1
        return self.code


@pytest.mark.parametrize("reply, state", [
    ("550 5.1.1 No such user here", OutboxState.FAILED),
    ("451 4.3.0 Try again later", OutboxState.QUEUED),
])
def test_smtp_refusal_permanent_or_temporary(app, deliver, reply, state):
    from aiosmtpd.controller import Controller

    handler = RefusingHandler(reply)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        app.config["SMTP_URL"] = f"smtp://127.0.0.1:{controller.port}"
        make_invite(emails=(ANN,))
        deliver()
        db.session.execute(update(OutboxMessage).values(next_attempt_at=now_utc() - timedelta(seconds=1))
                           .where(OutboxMessage.state == OutboxState.FAILED))
        db.session.commit()
        deliver()  # a failed message is not tried again, even when "due"
    finally:
        controller.stop()

    (message,) = _messages()
    assert message.state == state
    assert message.attempts == 1 and handler.rcpt_calls == 1
    assert reply.split()[0] in message.last_error and reply.split(maxsplit=2)[2] in message.last_error
    if state == OutboxState.QUEUED:
        assert message.next_attempt_at > now_utc()
    assert handler.messages == []
    # What was attempted is kept for the audit, though it did not go.
    assert message.transport == "smtp" and message.subject.startswith("Invitation: ")
    assert f"\r\nTo: {ANN}\r\n".encode() in b"\r\n" + message.rendered.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert message.sequence == 0
    assert (message.claimed_by, message.lease_until) == (None, None)


def test_invite_version_moves_when_an_email_changes_state(app, auth, deliver):
    invite = make_invite(emails=(ANN,))
    version = _version(invite.id)
    auth.login()
    assert auth.client.get(f"/invites/{invite.id}/live?v={version}").status_code == 204

    deliver()
    assert _messages()[0].state == OutboxState.SENT
    assert _version(invite.id) > version
    fragment = auth.client.get(f"/invites/{invite.id}/live?v={version}")
    assert fragment.status_code == 200  # the live page swaps in the new state


# --- stopping ------------------------------------------------------------------------------------------


def test_stop_during_a_batch_hands_the_rest_back(app):
    make_invite(emails=(ANN, BOB, CAT))
    worker = Worker(app, worker_id="stopping")
    real = worker.deliverers
    handled = []

    def deliverers(emails):
        table = real(emails)
        send_email = table[OutboxKind.EMAIL]

        def send_then_stop(message):
            handled.append(message.target)
            worker.stop_event.set()  # SIGTERM arrives while this message is in hand
            return send_email(message)

        return {**table, OutboxKind.EMAIL: send_then_stop}

    worker.deliverers = deliverers
    stats = worker.run_once()

    assert handled == [ANN] and stats.sent == 1
    first, *rest = _messages()
    assert first.state == OutboxState.SENT
    for message in rest:
        assert message.state == OutboxState.QUEUED
        assert (message.attempts, message.claimed_by, message.lease_until) == (0, None, None)
        assert message.next_attempt_at <= now_utc()

    Worker(app, worker_id="next").run_until_idle()  # another worker takes them at once
    assert [m.state for m in _messages()] == [OutboxState.SENT] * 3


def test_worker_loop_exits_when_asked_to_stop(app):
    make_invite(emails=(ANN,))
    worker = Worker(app, worker_id="loop")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        for _ in range(200):
            if _messages()[0].state == OutboxState.SENT:
                break
            threading.Event().wait(0.02)
    finally:
        worker.stop_event.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert _messages()[0].state == OutboxState.SENT


def test_queue_email_writes_in_the_callers_transaction(app):
    invite = make_invite(emails=(ANN,))
    count = db.session.scalar(select(func.count()).select_from(OutboxMessage))
    outbox.queue_email(invite, invite.recipient(ANN), ITipMethod.REQUEST)
    db.session.rollback()  # the change that caused it is rolled back: so is the email
    assert db.session.scalar(select(func.count()).select_from(OutboxMessage)) == count


def test_on_postgresql_a_delivered_row_is_one_statement_and_no_transaction(app, inbox, statements_sent):
    """Per row, one statement recording the outcome, the invite's version and the next row's
    lease, committing by itself, where the session's pre-ping, BEGIN, four statements and
    COMMIT took six round trips; the invite is read once for its three emails in a row
    (delivery.EmailDeliverer). What each row records is the same."""
    invite = make_invite(emails=(ANN, BOB, CAT))
    version = invite.version
    claimed = outbox.claim(10, "w1", 300)
    stats = []
    sent = statements_sent(lambda: stats.append(outbox.deliver_claimed(claimed, _deliverers(app))))
    db.session.remove()

    assert stats[0].sent == 3 and len(inbox.messages) == 3
    # The batch's rows, the first row's lease, the invite, then per row its outcome.
    assert sent == ["SELECT", "UPDATE", "SELECT", *["WITH"] * 3]
    assert [(m.state, m.claimed_by, m.lease_until is None, m.transport) for m in _messages()] == [
        (OutboxState.SENT, None, True, "smtp")] * 3
    assert _version(invite.id) == version + 3


def test_on_postgresql_a_deliverer_that_commits_mid_batch_fails_loudly(app, inbox):
    """The autocommit batch writes on the connection it took: a deliverer that commits the
    session lets that connection go, and the next write raises instead of landing in a
    transaction nobody commits (the row stays claimed and goes again after its lease)."""
    from sqlalchemy.exc import ResourceClosedError

    if db.engine.dialect.name != "postgresql":
        pytest.skip("the autocommit batch is PostgreSQL's")
    make_invite(emails=(ANN,))
    claimed = outbox.claim(10, "w1", 300)
    send = _deliverers(app)[OutboxKind.EMAIL]

    def send_and_commit(message):
        outcome = send(message)
        db.session.commit()
        return outcome

    with pytest.raises(ResourceClosedError):
        outbox.deliver_claimed(claimed, {OutboxKind.EMAIL: send_and_commit})
    db.session.remove()
    assert [m.state for m in _messages()] == [OutboxState.SENDING]
