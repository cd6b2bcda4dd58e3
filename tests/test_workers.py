"""Worker processes as they run in production (issue 6): real ``flask --app app worker``
subprocesses against the test database, delivering to a real SMTP server on loopback.

Runs on SQLite and on PostgreSQL (TEST_DATABASE_URL). On PostgreSQL the test of three
workers also shows the claims skip rows another transaction has locked (SKIP LOCKED).

The duplicate bound these tests hold the workers to (and the README states): a worker
killed while an email is being handed to SMTP leaves that one row claimed; after the
lease another worker sends it again, so the recipient may get it twice. At most one
email per killed worker, never lost; a worker stopped with SIGTERM duplicates nothing.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from smart_invites_ui.extensions import db
from smart_invites_ui.models import Invite, OutboxMessage, OutboxState, now_utc
from smart_invites_ui.services import invites as invite_service
from tests.conftest import free_port, future, make_event

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"
SIGTERM_EXIT_LIMIT = 10.0  # seconds (issue 6)


# --- a real SMTP server that can be made slow ------------------------------------------------


class Mailbox:
    """aiosmtpd handler keeping (recipients, raw message) of each email. A message is
    recorded as soon as its data has arrived; the 250 reply comes ``delay`` seconds later,
    and after the first ``hold_after`` messages only once ``release`` is set, so a test
    can catch a worker with an email in hand."""

    def __init__(self):
        self.received: list[tuple[list[str], bytes]] = []
        self.delay = 0.0
        self.hold_after: int | None = None
        self.release = threading.Event()
        self.in_hand = 0  # messages received and not yet answered
        self.most_in_hand = 0

    async def handle_DATA(self, server, session, envelope):
        self.received.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        self.in_hand += 1
        self.most_in_hand = max(self.most_in_hand, self.in_hand)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.hold_after is not None and len(self.received) > self.hold_after:
                while not self.release.is_set():
                    await asyncio.sleep(0.02)
        finally:
            self.in_hand -= 1
        return "250 OK"

    def per_recipient(self) -> Counter:
        return Counter(rcpt for rcpts, _ in self.received for rcpt in rcpts)

    def sender_pids(self) -> set[int]:
        """Which worker processes sent the mail: Python's Message-IDs carry the pid."""
        pids = set()
        for _, raw in self.received:
            match = re.search(rb"^Message-ID: <\d+\.(\d+)\.", raw, re.MULTILINE | re.IGNORECASE)
            assert match, "a message without a Message-ID"
            pids.add(int(match.group(1)))
        return pids


def smtp_server(mailbox: Mailbox, port: int | None = None):
    from aiosmtpd.controller import Controller

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # a line per SMTP command otherwise
    controller = Controller(mailbox, hostname="127.0.0.1", port=port or free_port())
    controller.start()
    return controller


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = smtp_server(box)
    box.url = f"smtp://127.0.0.1:{controller.port}"
    yield box
    box.release.set()
    controller.stop()


# --- worker processes --------------------------------------------------------------------------


class Workers:
    """Starts ``flask --app app worker`` processes with the environment a Procfile gives them."""

    def __init__(self, database_url: str, log_dir: Path):
        self.database_url = database_url
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, smtp_url: str, **settings: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in {"SMTP_URL", "TEST_DATABASE_URL", "FLASK_DEBUG"}}
        env.update({
            "DATABASE_URL": self.database_url,
            "SECRET_KEY": "worker-test-secret-key",
            "SMTP_URL": smtp_url,
            "WORKER_POLL_SECONDS": "0.1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(settings)
        process = subprocess.Popen([str(FLASK), "--app", "app", "worker"], cwd=ROOT, env=env,
                                   stdout=open(self.log_dir / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n" + (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                         for name in self.processes)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def workers(app, database_url, tmp_path):
    started = Workers(database_url, tmp_path)
    yield started
    started.stop()


def wait_until(condition, *, timeout: float, what: str, workers: Workers):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{workers.logs()}")
        time.sleep(0.05)


# --- the outbox as the test sees it ------------------------------------------------------------


def queue_invites(invites: int, recipients_each: int) -> list[str]:
    """Invites made at once through the service, as a CSV import makes them (each queues
    one email per recipient); returns the addresses."""
    batch = [invite_service.NewInvite(make_event(), [invite_service.NewRecipient(f"guest{n}-{i}@example.org")
                                                     for i in range(recipients_each)])
             for n in range(invites)]
    invite_service.create_invites(batch, organizer_name="Riverside Clinic")
    return [r.email for item in batch for r in item.recipients]


def rows() -> list[OutboxMessage]:
    db.session.expire_all()
    found = list(db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    db.session.expunge_all()  # read as they are now, not reloaded later
    db.session.rollback()  # hold no snapshot (nor, on SQLite, a read lock) while workers write
    return found


def count(state: OutboxState) -> int:
    found = db.session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.state == state))
    db.session.rollback()
    return found


def is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


# --- the tests ---------------------------------------------------------------------------------


def test_three_workers_send_300_emails_each_exactly_once(app, workers, mailbox):
    addresses = queue_invites(100, 3)
    assert count(OutboxState.QUEUED) == 300
    lock = None
    if is_postgres():
        # Another transaction holds the first 30 rows: SKIP LOCKED claims pass them by
        # instead of queueing up behind the lock.
        lock = db.engine.connect()
        lock.begin()
        held = lock.scalars(select(OutboxMessage.id).order_by(OutboxMessage.id).limit(30).with_for_update()).all()
        held_targets = set(db.session.scalars(select(OutboxMessage.target).where(OutboxMessage.id.in_(held))))
        db.session.rollback()
    mailbox.delay = 0.01  # a little time per message, so all three workers get a share
    try:
        for n in range(3):
            workers.start(f"worker-{n}", mailbox.url, OUTBOX_BATCH_SIZE="10")
        if lock is not None:
            wait_until(lambda: count(OutboxState.SENT) == 270, timeout=90, what="270 unlocked emails sent",
                       workers=workers)
            time.sleep(0.5)  # several more polls by every worker
            assert not held_targets & set(mailbox.per_recipient())
            assert count(OutboxState.QUEUED) == 30 and count(OutboxState.SENT) == 270
    finally:
        if lock is not None:
            lock.close()  # rolls back: the rows are free again
    wait_until(lambda: count(OutboxState.SENT) == 300, timeout=90, what="300 emails sent", workers=workers)

    assert mailbox.per_recipient() == Counter({address: 1 for address in addresses})
    assert len(mailbox.received) == 300
    assert len(mailbox.sender_pids()) == 3, "every worker took a share"
    assert {w.pid for w in workers.processes.values()} == mailbox.sender_pids()
    assert all(m.attempts == 1 and m.claimed_by is None for m in rows())


def test_a_worker_sends_its_batch_on_several_smtp_connections_at_once(app, workers, mailbox):
    """``OUTBOX_CONNECTIONS``: a batch goes out on that many SMTP connections side by side, as a
    slow relay needs; every recipient gets exactly one email."""
    addresses = queue_invites(6, 3)
    mailbox.delay = 0.3  # a slow server: sequentially, 18 emails would take 5.4 s
    started = time.monotonic()
    workers.start("worker", mailbox.url, OUTBOX_BATCH_SIZE="50", OUTBOX_CONNECTIONS="3")
    wait_until(lambda: count(OutboxState.SENT) == 18, timeout=60, what="18 emails sent", workers=workers)
    assert mailbox.per_recipient() == Counter({address: 1 for address in addresses})
    assert mailbox.most_in_hand == 3
    assert all(m.attempts == 1 and m.claimed_by is None for m in rows())
    print(f"\n18 emails on 3 connections, 0.3 s each at the server: {time.monotonic() - started:.1f} s "
          "(worker start included)")


def test_a_batch_is_split_with_each_recipients_mail_in_one_group_in_order(app):
    """``split_claim``: a recipient's rows (an update after the invitation, a cancellation after
    that) are never delivered side by side, so they cannot overtake each other."""
    from smart_invites_ui.services import outbox

    queue_invites(2, 2)
    invite = db.session.scalars(select(Invite).order_by(Invite.id)).first()
    for hour in (10, 11):  # two updates, each queueing another email to both its recipients
        invite_service.update_event(invite, make_event(start=future(days=3, hour=hour),
                                                       end=future(days=3, hour=hour + 1)))
    rows_by_id = {m.id: m for m in rows()}  # (the superseded ones too: 3 rows to each of the first invite's)
    claimed = outbox.Claim(sorted(rows_by_id), "worker:token", 300,
                           {m.id: (m.invite_id, m.target) for m in rows_by_id.values()})

    groups = outbox.split_claim(claimed, 3)
    assert all(isinstance(group, outbox.Claim) and group.token == claimed.token for group in groups)
    assert sorted(i for group in groups for i in group) == sorted(claimed)
    # 4 recipients (3, 3, 1 and 1 rows), each to the group with the fewest rows when first seen
    assert [len(group) for group in groups] == [4, 3, 1]
    for group in groups:
        assert group == sorted(group)
    by_recipient: dict = {}
    for index, group in enumerate(groups):
        for message_id in group:
            by_recipient.setdefault(rows_by_id[message_id].target, set()).add(index)
    assert all(len(found) == 1 for found in by_recipient.values()) and len(by_recipient) == 4
    assert outbox.split_claim(claimed, 1) == [claimed]
    # A claim reads each row's recipient as it takes the rows: splitting reads nothing more.
    taken = outbox.claim(50, "worker", 300)
    assert taken.recipients == {m.id: (m.invite_id, m.target) for m in rows_by_id.values()
                                if m.state == OutboxState.QUEUED} and len(taken) == 4


def test_worker_killed_mid_batch_loses_nothing_and_duplicates_at_most_the_email_in_hand(app, workers, mailbox):
    addresses = queue_invites(4, 3)
    mailbox.delay, mailbox.hold_after = 0.2, 2
    # One SMTP connection (the default): one email in hand (with several, one in hand on each).
    victim = workers.start("victim", mailbox.url, OUTBOX_BATCH_SIZE="50", OUTBOX_LEASE_SECONDS="2",
                           OUTBOX_CONNECTIONS="1")
    # The third email has reached the server, which has not answered 250 yet.
    wait_until(lambda: len(mailbox.received) >= 3, timeout=20, what="three emails received", workers=workers)
    victim.kill()
    victim.wait(timeout=5)
    (in_hand,) = mailbox.received[-1][0]
    mailbox.delay, mailbox.hold_after = 0, None
    mailbox.release.set()

    before = rows()
    assert [m.state for m in before].count(OutboxState.SENT) == 2
    claimed = [m for m in before if m.state == OutboxState.SENDING]  # the dead worker's claim stands, for now
    assert len(claimed) == 10 and {m.claimed_by.split(":")[1] for m in claimed} == {str(victim.pid)}
    assert in_hand in {m.target for m in claimed}

    killed_at = time.monotonic()
    rescuer = workers.start("rescuer", mailbox.url, OUTBOX_LEASE_SECONDS="2")
    wait_until(lambda: count(OutboxState.SENT) == 12, timeout=30, what="all 12 emails sent", workers=workers)
    rescued_after = time.monotonic() - killed_at

    received = mailbox.per_recipient()
    assert set(received) == set(addresses)  # nothing lost
    duplicates = {address: n - 1 for address, n in received.items() if n > 1}
    assert sum(duplicates.values()) <= 1  # the documented bound: one per killed worker...
    assert set(duplicates) <= {in_hand}  # ...and only the email that was in hand
    rescued = [m for m in rows() if m.id in {c.id for c in claimed}]
    assert all(m.state == OutboxState.SENT and m.attempts == 2 for m in rescued)
    assert rescuer.pid in mailbox.sender_pids()
    print(f"\nSIGKILL: {sum(duplicates.values())} duplicate(s) of 12 ({in_hand} was in hand); "
          f"the rest delivered {rescued_after:.1f} s after the kill (lease 2 s)")


@pytest.mark.parametrize("connections", [1, 3])
def test_sigterm_finishes_the_email_in_hand_hands_back_the_rest_and_exits_in_time(app, workers, mailbox, connections):
    """With several SMTP connections, one email is in hand on each: all are finished."""
    queue_invites(4, 3)  # 12 recipients: on 3 connections, 4 to each
    mailbox.hold_after = connections  # each connection's first email is answered, its second held
    worker = workers.start("worker", mailbox.url, OUTBOX_BATCH_SIZE="50", OUTBOX_CONNECTIONS=str(connections))
    wait_until(lambda: len(mailbox.received) >= 2 * connections and mailbox.in_hand == connections, timeout=20,
               what=f"an email in hand on each of {connections} connection(s)", workers=workers)

    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)  # while the second emails wait for the server's 250
    time.sleep(1.0)  # a slow server
    assert worker.poll() is None  # still finishing the emails in hand
    answered = time.monotonic()
    mailbox.release.set()
    returncode = worker.wait(timeout=SIGTERM_EXIT_LIMIT + 5)
    exit_seconds = time.monotonic() - signalled
    after_answer = time.monotonic() - answered

    assert returncode == 0, workers.logs()
    assert exit_seconds < SIGTERM_EXIT_LIMIT
    after = rows()
    sent = [m for m in after if m.state == OutboxState.SENT]
    assert len(sent) == len(mailbox.received) == 2 * connections  # those in hand were finished and recorded
    assert mailbox.per_recipient() == Counter({m.target: 1 for m in sent})  # nothing sent twice
    rest = [m for m in after if m.state != OutboxState.SENT]
    assert len(rest) == 12 - 2 * connections
    for message in rest:  # handed back: due at once for any other worker, no attempt counted
        assert message.state == OutboxState.QUEUED
        assert (message.claimed_by, message.lease_until, message.attempts) == (None, None, 0)
        assert message.next_attempt_at <= now_utc()
    print(f"\nSIGTERM on {connections} connection(s): exited {exit_seconds:.2f} s after the signal "
          f"(limit {SIGTERM_EXIT_LIMIT:.0f} s), {after_answer:.2f} s after the server answered the emails in hand")


def test_mail_waits_while_the_smtp_server_is_down_and_goes_out_once_it_is_back(app, workers):
    port = free_port()  # nothing listens here yet
    addresses = queue_invites(1, 3)
    workers.start("worker", f"smtp://127.0.0.1:{port}", OUTBOX_RETRY_BASE_SECONDS="0.5")

    def failed_twice():
        found = rows()
        return all(m.attempts >= 2 and m.state == OutboxState.QUEUED for m in found) and found

    down = wait_until(failed_twice, timeout=20, what="two failed attempts each", workers=workers)
    for message in down:
        assert message.state == OutboxState.QUEUED
        assert f"127.0.0.1:{port}" in message.last_error and "refused" in message.last_error.lower()
        assert message.sent_at is None

    mailbox = Mailbox()
    controller = smtp_server(mailbox, port)  # the server is back, on the same port
    try:
        wait_until(lambda: count(OutboxState.SENT) == 3, timeout=20, what="all three sent", workers=workers)
    finally:
        controller.stop()
    assert mailbox.per_recipient() == Counter({address: 1 for address in addresses})
    assert all(m.last_error == "" and m.attempts >= 3 for m in rows())
