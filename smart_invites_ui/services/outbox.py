"""The durable outbox (SPEC §2): queue in the caller's transaction, deliver from the worker.

Emails are queued as an intent (invite, recipient, method) and rendered at
delivery from the invite as it then stands: a queued email that a newer one to
the same recipient replaces is marked superseded, so nobody gets an outdated
update after a fresher one. Callbacks carry their exact JSON body.

Claiming works the same on PostgreSQL and SQLite: candidate rows are read with
``FOR UPDATE SKIP LOCKED`` (ignored by SQLite, whose writes are serialised) and
taken with a conditional UPDATE stamped with the worker's claim token, so two
workers never take the same row. A claim is a lease: a row whose worker died is
claimed again once ``lease_until`` has passed.
"""
from __future__ import annotations

import functools
import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from flask import current_app, has_app_context
from sqlalchemy import Row, and_, bindparam, case, false, insert, select, true, update

from ..domain import ITipMethod, RecipientStatus
from ..extensions import db
from ..models import Invite, OutboxKind, OutboxMessage, OutboxState, Recipient, now_utc
from ..plain_sql import PlainSelect
from . import callbacks

log = logging.getLogger(__name__)

EMAIL_MAX_ATTEMPTS = 12  # about a day with the backoff below


def queue_email(invite: Invite, recipient: Recipient, method: ITipMethod, ics: bytes | None = None,
                *, supersede: bool = True) -> OutboxMessage:
    """Queue one invite email; supersedes any still-queued email to the same recipient.

    ``supersede=False`` for a recipient made in this transaction: nothing can be
    queued for them yet, so the query is skipped (it counts when importing thousands).
    """
    if invite.id is None or recipient.id is None:
        db.session.flush()  # rows made in this transaction need their ids
    if supersede:
        db.session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.invite_id == invite.id,  # indexed: the recipient's rows are among the invite's
                OutboxMessage.kind == OutboxKind.EMAIL,
                OutboxMessage.recipient_id == recipient.id,
                OutboxMessage.state == OutboxState.QUEUED,
            )
            .values(state=OutboxState.SUPERSEDED, last_error="replaced by a newer message")
            .execution_options(synchronize_session=False)
        )
    message = OutboxMessage(
        kind=OutboxKind.EMAIL,
        state=OutboxState.QUEUED,
        invite_id=invite.id,
        recipient_id=recipient.id,
        target=recipient.email,
        method=method.value,
        payload=ics,
        next_attempt_at=now_utc(),
    )
    db.session.add(message)
    return message


def queue_new_emails(emails: list[tuple[int, int, str, ITipMethod, bytes | None]]) -> None:
    """Queue emails (invite id, recipient id, address, method, ICS) to recipients made in this
    transaction, in one multi-row INSERT (the CSV import): nothing can be waiting for them,
    so nothing is superseded."""
    if not emails:
        return
    now = now_utc()
    db.session.execute(insert(OutboxMessage), [
        {"kind": OutboxKind.EMAIL, "state": OutboxState.QUEUED, "invite_id": invite_id, "recipient_id": recipient_id,
         "target": email, "method": method.value, "payload": ics, "next_attempt_at": now}
        for invite_id, recipient_id, email, method, ics in emails
    ])


def supersede_queued_to_invited(invite_ids: list[int]) -> None:
    """What queue_email does per recipient, for everyone still invited to these invites at
    once (the CSV import, before re-sending them all): their queued emails are superseded."""
    if not invite_ids:
        return
    invited = select(Recipient.id).where(Recipient.invite_id.in_(invite_ids),
                                         Recipient.status != RecipientStatus.REMOVED)
    db.session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.invite_id.in_(invite_ids), OutboxMessage.kind == OutboxKind.EMAIL,
               OutboxMessage.state == OutboxState.QUEUED, OutboxMessage.recipient_id.in_(invited))
        .values(state=OutboxState.SUPERSEDED, last_error="replaced by a newer message")
        .execution_options(synchronize_session=False)
    )


def queue_callback(connection, invite_id: int, url: str, body: bytes, api_client_id: int | None) -> None:
    """Queue a signed callback, in ``connection``'s transaction (a status change's: they commit together)."""
    connection.execute(insert(OutboxMessage.__table__), {
        "kind": OutboxKind.CALLBACK, "state": OutboxState.QUEUED, "invite_id": invite_id, "target": url,
        "method": "callback", "payload": body, "api_client_id": api_client_id, "next_attempt_at": now_utc()})


EMAIL_BACKOFF_BASE_SECONDS = 30.0


def email_backoff(attempt: int, base_seconds: float = EMAIL_BACKOFF_BASE_SECONDS) -> timedelta:
    """Exponential backoff with jitter: ~30 s, 1 min, 2 min, ... capped at 4 h.

    ``base_seconds`` is the first wait (``OUTBOX_RETRY_BASE_SECONDS``; tests shorten it).
    """
    base = min(base_seconds * 2 ** (attempt - 1), 4 * 3600)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


class Claim(list):
    """The ids one claim took, in order; ``token`` is what it stamped in ``claimed_by``, and
    ``recipients`` each row's recipient, (invite id, address or URL), for ``split_claim``."""

    def __init__(self, ids=(), token: str = "", lease_seconds: int = 0, recipients: dict | None = None):
        super().__init__(ids)
        self.token = token
        self.lease_seconds = lease_seconds
        self.recipients = recipients or {}


def claim(batch_size: int, worker_id: str, lease_seconds: int) -> list[int]:
    """Take up to ``batch_size`` due rows for this worker; returns their ids (a :class:`Claim`).

    Rows whose worker's lease ran out come first, then the queued rows longest due.
    """
    now = now_utc()
    lapsed = and_(OutboxMessage.state == OutboxState.SENDING, OutboxMessage.lease_until < now)
    queued = and_(OutboxMessage.state == OutboxState.QUEUED, OutboxMessage.next_attempt_at <= now)
    # One query per kind, each reading ix_outbox_due in its order and stopping at the batch
    # size: one query for both (an OR) read and sorted every due row for each batch (10-20 ms
    # with 30,000 queued by an import, and on PostgreSQL a walk through the sent history).
    candidates = db.session.scalars(
        select(OutboxMessage.id).where(lapsed).order_by(OutboxMessage.id).limit(batch_size)
        .with_for_update(skip_locked=True)
    ).all()
    if len(candidates) < batch_size:
        candidates += db.session.scalars(
            select(OutboxMessage.id).where(queued)
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(batch_size - len(candidates))
            .with_for_update(skip_locked=True)
        ).all()
    if not candidates:
        db.session.rollback()
        return []
    # claimed_by holds 64 characters; container host names alone can reach 63. The tail
    # (pod suffix, pid) tells workers apart for people; the random part makes it unique.
    token = f"{worker_id[-51:]}:{uuid.uuid4().hex[:12]}"
    # A row is taken only if still due: another worker may have taken it since it was read.
    # Said with CASE, not OR, so that SQLite finds the rows by id; given the OR, it reads
    # every due entry of ix_outbox_due instead.
    still_due = case((lapsed, true()), (queued, true()), else_=false())
    db.session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(candidates), still_due)
        .values(state=OutboxState.SENDING, claimed_by=token,
                lease_until=now + timedelta(seconds=lease_seconds),
                attempts=OutboxMessage.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    rows = db.session.execute(
        select(OutboxMessage.id, OutboxMessage.invite_id, OutboxMessage.target)
        .where(OutboxMessage.claimed_by == token, OutboxMessage.state == OutboxState.SENDING)
        .order_by(OutboxMessage.id)
    ).all()
    taken = Claim([row.id for row in rows], token, lease_seconds,
                  {row.id: (row.invite_id, row.target) for row in rows})
    db.session.commit()  # read first: no transaction is left open (deliver_claimed may run in autocommit)
    return taken


# Statements run for every delivered row, built once as Core statements on the table:
# building an ORM UPDATE (or flushing an ORM object) per row cost several times what the
# database takes to run it. None of them touches the session's objects.
_outbox = OutboxMessage.__table__
_RENEW_LEASE = (
    _outbox.update()
    .where(_outbox.c.id == bindparam("leased_id"), _outbox.c.claimed_by == bindparam("token"),
           _outbox.c.state == OutboxState.SENDING)
    .values(lease_until=bindparam("until"))
)
# The SET clause is made of the columns given when it runs.
_RECORD = _outbox.update().where(_outbox.c.id == bindparam("message_id"))
_invites = Invite.__table__
_BUMP_VERSION = _invites.update().where(_invites.c.id == bindparam("invite_id")).values(
    version=_invites.c.version + 1, updated_at=bindparam("now"))


def _still_ours(message_id: int, claimed: Claim, *, commit: bool = True) -> bool:
    """Renew the lease on one row just before delivering it. A batch can outlast its
    lease (a slow SMTP server); a row another worker has taken over since is theirs.
    ``commit=False`` folds the renewal into the transaction recording the previous row."""
    result = db.session.execute(_RENEW_LEASE, {
        "leased_id": message_id, "token": claimed.token,
        "until": now_utc() + timedelta(seconds=claimed.lease_seconds),
    })
    if commit:
        db.session.commit()
    return result.rowcount == 1


@dataclass
class Outcome:
    """What a deliverer reports; :func:`deliver_claimed` records it on the row.

    ``transport`` and, for an email, the message as rendered (``rendered``,
    ``subject``, ``sequence``) are recorded when given, whether or not it went.
    """

    ok: bool
    error: str = ""
    retry: bool = True
    status_code: int | None = None
    transport: str | None = None
    rendered: bytes | None = None
    subject: str | None = None
    sequence: int | None = None


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    superseded: int = 0
    ids: list[int] = field(default_factory=list)


def _bump_invite_version(invite_id: int | None) -> None:
    if invite_id is not None:
        db.session.execute(_BUMP_VERSION, {"invite_id": invite_id, "now": now_utc()})


def _record(message: Row, **columns) -> None:
    db.session.execute(_RECORD, {"message_id": message.id, **columns})


def outcome_columns(message: Row, outcome: Outcome, *, max_attempts: int,
                    give_up_at: datetime | None = None) -> tuple[str, dict]:
    """What a delivery attempt's outcome writes on ``message``: ("sent", "retried" or
    "failed", the columns' new values)."""
    now = now_utc()
    columns = {"claimed_by": None, "lease_until": None, "last_status_code": outcome.status_code}
    columns.update({name: value for name in ("transport", "rendered", "subject", "sequence")
                    if (value := getattr(outcome, name)) is not None})
    if outcome.ok:
        columns.update(state=OutboxState.SENT, sent_at=now, last_error="")
        return "sent", columns
    columns["last_error"] = outcome.error[:2000]
    retry_at = now + backoff_for(message)
    out_of_time = give_up_at is not None and retry_at > give_up_at
    if outcome.retry and message.attempts < max_attempts and not out_of_time:
        columns.update(state=OutboxState.QUEUED, next_attempt_at=retry_at)
        return "retried", columns
    columns["state"] = OutboxState.FAILED
    return "failed", columns


# A deliverer gets the claimed row as read at the start of the batch (a read-only
# ``Row`` with the table's columns as attributes) and reports an Outcome.
Deliverer = Callable[[Row], Outcome]


@functools.lru_cache(maxsize=64)
def _record_in_one_statement(columns: tuple[str, ...], bump: bool, renew: bool) -> PlainSelect:
    """PostgreSQL: a row's outcome (``columns``), its invite's version (``bump``) and the next
    row's lease (``renew``) in one statement, which commits by itself on a connection in
    autocommit: one round trip where the session took five (the pre-ping at checkout, BEGIN,
    three statements and COMMIT). Returns the next row's id while it is still ours."""
    # The session path's statements (``_RECORD``, ``_BUMP_VERSION``, ``_RENEW_LEASE``), the SET
    # clause of ``_RECORD`` made of ``columns``, each a parameter named "set_<column>".
    record = _RECORD.values({name: bindparam(f"set_{name}", type_=_outbox.c[name].type) for name in columns})
    ctes = [_BUMP_VERSION.cte("version")] if bump else []
    if renew:
        ctes.append(record.cte("outcome"))
        main = _RENEW_LEASE.returning(_outbox.c.id)
    else:
        main = record.returning(_outbox.c.id)
    return PlainSelect(main.add_cte(*ctes) if ctes else main)


def split_claim(claimed: Claim, ways: int) -> list[Claim]:
    """The claimed rows in up to ``ways`` groups, to be delivered side by side: every row to
    one recipient (an invite's address, a callback's URL: ``Claim.recipients``) in the same
    group, in the claim's order, so that nobody gets an update before the invite it updates,
    nor a callback an older status after a newer one. Each recipient goes to the group with
    the fewest rows so far. Each group is a Claim with the claim's token."""
    if ways <= 1 or len(claimed) <= 1:
        return [claimed]
    groups: list[list[int]] = []
    group_of: dict = {}
    for message_id in claimed:
        key = claimed.recipients[message_id]
        if key not in group_of:
            if len(groups) < ways:
                groups.append([])
            group_of[key] = min(range(len(groups)), key=lambda index: len(groups[index]))
        groups[group_of[key]].append(message_id)
    return [Claim(group, claimed.token, claimed.lease_seconds) for group in groups]


def deliver_claimed(ids: list[int], deliverers: dict[OutboxKind, Deliverer],
                    should_stop: Callable[[], bool] = lambda: False) -> DeliveryStats:
    """Deliver claimed rows one by one, committing each outcome as soon as it is known.

    Rows left when ``should_stop`` turns true are handed back (state queued) so
    another worker can take them at once instead of waiting for the lease.

    On PostgreSQL the batch holds one connection in autocommit: each row's outcome, its
    invite's new version and the next row's lease renewal are one statement
    (``_record_in_one_statement``), so a row costs two round trips to the database (the
    deliverer's read of the invite, and that), not seven. On SQLite, whose statements cost
    no round trip, each row's writes are a transaction of the session's.
    """
    stats = DeliveryStats(ids=list(ids))
    claimed = ids if isinstance(ids, Claim) else None
    ours = [OutboxMessage.claimed_by == claimed.token] if claimed is not None else []
    # (Not inside a caller's transaction: its changes would stay uncommitted.)
    in_one_statement = db.session.get_bind().dialect.name == "postgresql" and not db.session().in_transaction()
    if in_one_statement:  # (its isolation level is reset when the session lets the connection go)
        # Held for the batch: should anything commit the session meanwhile, writing on it fails
        # loudly instead of landing in a transaction nobody commits.
        autocommit = db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    # The rows in one query. While the claim holds, only this loop writes them; the
    # lease renewal just before each one says whether it still does.
    rows = {row.id: row for row in db.session.execute(select(_outbox).where(_outbox.c.id.in_(ids)))}
    renewed: dict[int, bool] = {}  # next row's lease, renewed in the previous row's commit
    for index, message_id in enumerate(ids):
        if should_stop():
            db.session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids[index:]), OutboxMessage.state == OutboxState.SENDING, *ours)
                .values(state=OutboxState.QUEUED, claimed_by=None, lease_until=None,
                        attempts=OutboxMessage.attempts - 1)
                .execution_options(synchronize_session=False)
            )
            db.session.commit()
            break
        if (claimed is not None and not renewed.pop(message_id, None)
                and not _still_ours(message_id, claimed, commit=not in_one_statement)):  # autocommit: no COMMIT
            continue
        message = rows.get(message_id)
        if message is None or message.state != OutboxState.SENDING:
            continue
        try:
            outcome = deliverers[message.kind](message)
        except Exception as exc:  # a bug must not stall the whole outbox
            log.exception("outbox message %s failed", message_id)
            outcome = Outcome(ok=False, error=f"internal error: {exc!r}", retry=True)
        if outcome.error == "superseded":  # the live page shows it will not go: its version is bumped too
            result, columns = "superseded", dict(state=OutboxState.SUPERSEDED, claimed_by=None, lease_until=None)
        else:
            result, columns = outcome_columns(message, outcome, max_attempts=max_attempts_for(message),
                                              give_up_at=give_up_for(message))
        setattr(stats, result, getattr(stats, result) + 1)
        next_id = ids[index + 1] if claimed is not None and index + 1 < len(ids) else None
        if in_one_statement:
            statement = _record_in_one_statement(tuple(columns), message.invite_id is not None, next_id is not None)
            values = {f"set_{name}": value for name, value in columns.items()}
            now = now_utc()
            returned = statement.scalar(autocommit, message_id=message.id, invite_id=message.invite_id,
                                        now=now, leased_id=next_id, token=claimed.token if claimed else None,
                                        until=now + timedelta(seconds=claimed.lease_seconds) if claimed else None,
                                        **values)
            if next_id is not None:
                renewed[next_id] = returned is not None
            continue
        _record(message, **columns)
        _bump_invite_version(message.invite_id)
        if next_id is not None:
            # One commit records this outcome and renews the next row's lease.
            renewed[next_id] = _still_ours(next_id, claimed, commit=False)
        db.session.commit()
    return stats


def max_attempts_for(message: Row) -> int:
    return EMAIL_MAX_ATTEMPTS if message.kind == OutboxKind.EMAIL else 1000


def backoff_for(message: Row) -> timedelta:
    """Wait before the next attempt: callbacks use full jitter (services/callbacks.py)."""
    if message.kind == OutboxKind.CALLBACK:
        return timedelta(seconds=callbacks.backoff_seconds(message.attempts))
    base = EMAIL_BACKOFF_BASE_SECONDS
    if has_app_context():
        base = current_app.config.get("OUTBOX_RETRY_BASE_SECONDS", base)
    return email_backoff(message.attempts, base)


def give_up_for(message: Row) -> datetime | None:
    if message.kind == OutboxKind.CALLBACK:
        return message.created_at + callbacks.MAX_CALLBACK_AGE
    return None

