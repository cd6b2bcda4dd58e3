"""The one path for status changes (SPEC §2): ``apply_notification``.

A notification is in Cronofy's callback shape, whether it came from the signed
webhook route or from the reply processor reading attendees' emails. Applying
it records the reply in the append-only history, updates the recipient's
current status, bumps the invite's version (what the live poll compares) and
queues callbacks. Repeated deliveries are recognised and change nothing; older
replies arriving late are recorded without overwriting newer ones.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import namedtuple
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, exists, func, insert, or_, select, true, tuple_, union_all, update
from sqlalchemy.engine import Connection

from ..api.schema import parse_event_time, proposal_json
from ..domain import Proposal, RecipientStatus, utc
from ..extensions import db
from ..models import (Invite, Notification, NotificationOutcome, NotificationSource, Recipient, Reply,
                      now_utc)
from ..plain_sql import PlainSelect, PlainWrite, connection_lost, read_engine
from . import outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusReply:
    email: str
    status: RecipientStatus | None  # None: a status we do not know (recorded, not applied)
    raw_status: str = ""
    comment: str = ""
    proposal: Proposal | None = None


@dataclass
class ApplyResult:
    outcome: NotificationOutcome
    notification_id: int | None  # None: nothing was recorded (a duplicate)
    invite_id: int | None
    detail: str = ""


class MalformedNotification(ValueError):
    """The payload is not a smart invite notification."""


def _proposal(value: object) -> Proposal | None:
    if not isinstance(value, dict) or "start" not in value or "end" not in value:
        return None
    try:
        start, tzid, _ = parse_event_time(value["start"], "UTC")
        end, _, _ = parse_event_time(value["end"], tzid)
    except ValueError:
        return None
    return Proposal(start=utc(start), end=utc(end), tzid=tzid)


def _text(value: str) -> str:
    """JSON may carry \u0000, which PostgreSQL cannot store in text: never text anyone meant."""
    return value.replace("\x00", "").strip()


def _reply(value: object) -> StatusReply | None:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        return None
    raw_status = _text(str(value.get("status") or "")).lower()
    try:
        status = RecipientStatus(raw_status)
    except ValueError:
        status = None
    comment = value.get("comment")
    return StatusReply(email=_text(value["email"]).lower(), status=status, raw_status=raw_status,
                       comment=_text(comment) if isinstance(comment, str) else "",
                       proposal=_proposal(value.get("proposal")))


def parse_payload(payload: object) -> tuple[str, list[StatusReply], bool]:
    """(smart_invite_id, the replies it reports, whether it named a single "reply")."""
    if not isinstance(payload, dict) or not isinstance(payload.get("smart_invite"), dict):
        raise MalformedNotification("no smart_invite object")
    notification = payload.get("notification")
    if isinstance(notification, dict) and notification.get("type") not in (None, "smart_invite"):
        raise MalformedNotification(f"notification type {notification.get('type')!r} is not smart_invite")
    smart_invite = payload["smart_invite"]
    reference = smart_invite.get("smart_invite_id")
    reference = _text(reference) if isinstance(reference, str) else reference
    if not isinstance(reference, str) or not reference:
        raise MalformedNotification("smart_invite.smart_invite_id is missing")
    if "reply" in smart_invite:
        reply = _reply(smart_invite["reply"])
        return reference, [reply] if reply else [], True
    if "recipient" in smart_invite:
        reply = _reply(smart_invite["recipient"])
        return reference, [reply] if reply else [], True
    recipients = smart_invite.get("recipients")
    replies = [r for r in (_reply(v) for v in recipients or []) if r] if isinstance(recipients, list) else []
    return reference, replies, False


@dataclass
class _Recipient:
    """The recipient columns applying a reply reads and writes (as ``Recipient`` names them)."""

    id: int
    email: str
    status: RecipientStatus
    comment: str
    proposal: Proposal | None
    last_reply_dtstamp: datetime | None
    last_reply_sequence: int | None


def _recipient(row) -> _Recipient:
    proposal = (Proposal(row.proposal_start, row.proposal_end, row.proposal_tzid or "UTC")
                if row.proposal_start is not None and row.proposal_end is not None else None)
    return _Recipient(row.id, row.email, row.status, row.comment, proposal, row.last_reply_dtstamp,
                      row.last_reply_sequence)


@dataclass(frozen=True)
class _Invite:
    id: int
    smart_invite_id: str
    callback_url: str | None
    single_recipient: bool
    api_client_id: int | None


# The statements of the path every status change takes, built once: building and caching a
# statement costs several times what SQLite takes to run it. Core tables, not the ORM's unit of
# work: a notification is a handful of rows written once.
_INVITES, _RECIPIENTS = Invite.__table__, Recipient.__table__
_RECIPIENT_COLUMNS = tuple(_RECIPIENTS.c[name] for name in (
    "id", "email", "status", "comment", "proposal_start", "proposal_end", "proposal_tzid", "last_reply_dtstamp",
    "last_reply_sequence"))


#: What applying a notification reads: its invite, and each recipient it names (one row per
#: recipient named, or one without a recipient). A caller that finds the invite another way may
#: select these too and pass the rows in (``Preloaded``), saving a query.
APPLY_COLUMNS = (_INVITES.c.id.label("invite_id"), _INVITES.c.smart_invite_id, _INVITES.c.callback_url,
                 _INVITES.c.single_recipient, _INVITES.c.api_client_id, *_RECIPIENT_COLUMNS)


def recipients_named(named):
    """The invites outer-joined with their recipients that match ``named``, for ``APPLY_COLUMNS``."""
    return _INVITES.outerjoin(_RECIPIENTS, (_RECIPIENTS.c.invite_id == _INVITES.c.id) & named)


def _load_invite(named):
    """The invite by its smart_invite_id, with only the recipients the notification names
    (an invite may have many)."""
    return select(*APPLY_COLUMNS).select_from(recipients_named(named)).where(
        _INVITES.c.smart_invite_id == bindparam("reference"))


@dataclass(frozen=True)
class Preloaded:
    """The ``APPLY_COLUMNS`` rows of the invite ``reference`` for the recipients ``emails``
    (lower-cased), read by the caller in this transaction."""

    reference: str
    emails: tuple[str, ...]
    rows: list


# Nearly every notification names one recipient; an IN list of variable length costs a rewrite per call.
_LOAD_INVITE_NAMING_ONE = PlainSelect(_load_invite(_RECIPIENTS.c.email == bindparam("email")))
_LOAD_INVITE_NAMING_ANY = _load_invite(_RECIPIENTS.c.email.in_(bindparam("emails", expanding=True)))
_ALL_RECIPIENTS = select(*_RECIPIENT_COLUMNS).where(_RECIPIENTS.c.invite_id == bindparam("invite_id")).order_by(
    _RECIPIENTS.c.id)
_REPLY_COLUMNS = ("invite_id", "recipient_id", "notification_id", "email", "status", "comment", "proposal_start",
                  "proposal_end", "proposal_tzid", "source", "dtstamp", "sequence", "applied", "note", "received_at")
_INSERT_REPLIES = PlainWrite(insert(Reply.__table__).values({name: bindparam(name) for name in _REPLY_COLUMNS}))
# The answer's order (``_is_newer``), and that the recipient is still on the invite, are checked
# again as the row is written, against the row as it is then: of two replies from one attendee
# decided at the same moment (each read the row before the other wrote), the newer stays,
# whichever of them is written last, and a reply never puts back a recipient staff just removed.
# The history and the outcome say the same: see ``_recipients_written`` and ``_one_statement_of``.
_R_STAMP, _R_SEQUENCE = _RECIPIENTS.c.last_reply_dtstamp, _RECIPIENTS.c.last_reply_sequence
_NEW_STAMP = bindparam("last_reply_dtstamp", type_=_R_STAMP.type)
_NEW_SEQUENCE = bindparam("last_reply_sequence", type_=_R_SEQUENCE.type)
_IN_ORDER = or_(_R_STAMP.is_(None), _NEW_STAMP.is_(None),  # ``_is_newer``, in SQL
                tuple_(_R_STAMP, func.coalesce(_R_SEQUENCE, 0)) <= tuple_(_NEW_STAMP, func.coalesce(_NEW_SEQUENCE, 0)))

# What a reply's decision to apply assumed of its recipient's row, checked again where it is written.
_STILL_SO = (_RECIPIENTS.c.status != RecipientStatus.REMOVED, _IN_ORDER)


def _locked(*columns, where):
    """A reply's recipient joined with its invite, both rows locked in the order every writer takes
    them: the invite's, then its recipients'. Staff's changes are one ORM flush, which writes the
    invite (its version) before its recipients; a reply that locked its recipient first and then
    waited for the invite's version while staff, holding the invite, waited for that recipient,
    was a deadlock (one of the two aborted)."""
    return (select(*columns).select_from(_INVITES.join(_RECIPIENTS, _RECIPIENTS.c.invite_id == _INVITES.c.id))
            .where(*where).with_for_update(of=[_INVITES, _RECIPIENTS], key_share=True))


def _update_recipient(recipient_id):
    """The recipient's UPDATE; ``recipient_id``: a bind parameter, or the column of a CTE."""
    return update(_RECIPIENTS).where(_RECIPIENTS.c.id == recipient_id, *_STILL_SO).values(
        {**{name: bindparam(name) for name in ("status", "comment", "proposal_start", "proposal_end", "proposal_tzid",
                                               "replied_at", "needs_attention")},
         "last_reply_dtstamp": _NEW_STAMP, "last_reply_sequence": _NEW_SEQUENCE})


# A recipient's row as applying a reply reads it, read again and locked when the reply's UPDATE found
# it changed (``_recipients_written``; SQLite has no row locks: its writer holds the database).
_LOCK_RECIPIENT = PlainSelect(_locked(*APPLY_COLUMNS, where=[_RECIPIENTS.c.id == bindparam("recipient_id")]))
_RECORD_OUTCOME = PlainWrite(update(Notification.__table__).where(Notification.__table__.c.id == bindparam("id"))
                             .values(outcome=bindparam("outcome"), detail=bindparam("detail")))


def _bump_version(invite_id):
    """In SQL, so two notifications applied at once both count; ``invite_id`` as above."""
    return update(_INVITES).where(_INVITES.c.id == invite_id).values(version=_INVITES.c.version + 1,
                                                                     updated_at=bindparam("now"))


_UPDATE_RECIPIENT = PlainWrite(_update_recipient(bindparam("recipient_id")))
_BUMP_VERSION = PlainWrite(_bump_version(bindparam("invite_id")))
_NOTIFICATION_COLUMNS = ("source", "dedupe_key", "body", "smart_invite_id", "invite_id", "outcome", "detail",
                         "received_at")


@functools.cache
def _insert_notification(dialect: str) -> PlainSelect:
    """INSERT ... ON CONFLICT (dedupe_key) DO NOTHING RETURNING id: no row means "already received"."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise RuntimeError(f"no INSERT ... ON CONFLICT for the {dialect} database")
    table = Notification.__table__
    return PlainSelect(dialect_insert(table).values({name: bindparam(name) for name in _NOTIFICATION_COLUMNS})
                       .on_conflict_do_nothing(index_elements=[table.c.dedupe_key]).returning(table.c.id))


def _is_newer(recipient: _Recipient, dtstamp: datetime | None, sequence: int | None) -> bool:
    if dtstamp is None or recipient.last_reply_dtstamp is None:
        return True
    ours = (recipient.last_reply_dtstamp, recipient.last_reply_sequence or 0)
    return (dtstamp, sequence or 0) >= ours


def _same_as_current(recipient: _Recipient, reply: StatusReply) -> bool:
    return (recipient.status == reply.status and recipient.comment == reply.comment
            and recipient.proposal == reply.proposal)


def apply_notification(payload: dict, **options) -> ApplyResult:
    """Record and apply one notification, committed here, all or nothing: what
    :func:`record_notification` does with the same arguments, in a transaction of its own.

    It runs on a connection of its own, not in the ORM session: a webhook has nothing else to
    write, and the session's transaction bookkeeping cost three times the commit (45 us against
    14 us). So the session's own pending changes are not part of it; what the session has loaded
    is expired, as a commit of its own would have done.

    On a database server the connection comes from the read pool, in autocommit and without
    the main pool's pre-ping. The usual notification (one reply, from a recipient on an invite
    without a callback URL) is one round trip: one statement that reads and writes it as
    ``decide`` would (``_apply_usual``). When the invite turns out otherwise, that statement
    writes nothing, and the notification takes two round trips or more: the invite read, then
    every write in one statement where ``in_one_statement`` allows, else in a transaction. If the connection turns out
    dead, the whole notification is applied again on a new one: nothing was committed, or, if
    the connection died with the commit in flight, the second attempt finds the delivery
    recorded and answers "duplicate"."""
    engine = read_engine()
    if engine.dialect.name == "sqlite":  # the app's engine: no pre-ping to skip
        with engine.connect() as connection:  # (closed on an error: what was begun is rolled back)
            result = write_committed(decide(payload, connection=connection, **options), connection)
    else:
        result = _apply_on_read_pool(engine, payload, options)
    if db.session.registry.has():
        db.session.expire_all()
    return result


def _apply_on_read_pool(engine, payload: dict, options: dict) -> ApplyResult:
    notice = _Notice.of(payload, options["source"], options.pop("raw", None), options.pop("dedupe_key", None))
    for attempt in (1, 2):
        with engine.connect() as connection:  # in autocommit: each statement commits itself
            try:
                applied = _apply_usual(notice, connection, **options)
                if applied is not None:
                    return applied
                # Read outside a transaction: under READ COMMITTED, which the writes run at,
                # every statement sees what is committed when it starts, in a transaction or not.
                return write_committed(_decide(notice, connection, **options), connection)
            except BaseException as exc:
                lost = connection_lost(engine.dialect, exc, connection.connection.dbapi_connection)
                if lost and not connection.invalidated:
                    connection.invalidate(exc)  # e.g. the server restarted: a new connection, once
                if connection.in_transaction():
                    connection.rollback()  # on a connection thrown away, only forgets the transaction
                if attempt == 2 or not lost:
                    raise
    raise AssertionError("unreachable")


def record_notification(
    payload: dict,
    *,
    source: NotificationSource,
    raw: bytes | str | None = None,
    dedupe_key: str | None = None,
    dtstamp: datetime | None = None,
    sequence: int | None = None,
    preloaded: Preloaded | None = None,
    connection: Connection | None = None,
) -> ApplyResult:
    """What ``apply_notification`` does, in the caller's transaction, which the caller commits
    (the reply processor writes a message's outcome with the replies it carries): on
    ``connection``, else on the ORM session's (its pending changes flushed first).

    ``preloaded``: the invite and recipients as the caller read them already; used when they are
    the ones the payload names, else read here.

    A repeated delivery writes nothing and returns DUPLICATE (``notification_id`` None),
    also when the same delivery is being recorded at the same moment by another transaction.
    Raises ``MalformedNotification`` (before writing anything) for a payload of another shape.
    """
    if connection is None:
        db.session.flush()  # the caller's pending changes first: what follows is Core, on the session's connection
        connection = db.session.connection()  # (the ORM's execute layer cost as much as these statements)
    plan = decide(payload, source=source, raw=raw, dedupe_key=dedupe_key, dtstamp=dtstamp, sequence=sequence,
                  preloaded=preloaded, connection=connection)
    return write_plan(plan, connection)


@dataclass
class _Plan:
    """What applying a notification writes, decided from the invite as read."""

    result: ApplyResult  # the outcome; its notification_id comes with the notification's row
    notification: dict  # the notification row's values
    invite: _Invite | None
    recipients: dict[str, _Recipient]  # by email, with the applied replies' changes
    history: list[dict]  # the replies' history rows, without the notification's id
    applied: list[StatusReply]
    # What it was decided from, to decide again (``again``): the notification, the ``APPLY_COLUMNS``
    # rows read, and ``decide``'s options.
    notice: _Notice
    rows: list
    source: NotificationSource
    dtstamp: datetime | None
    sequence: int | None

    @property
    def replies(self) -> list[StatusReply]:
        return self.notice.replies

    @property
    def now(self) -> datetime:
        return self.notice.now

    @property
    def changed(self) -> list[str]:
        """The emails of the recipients whose row it writes, in id order (two writers lock rows alike)."""
        return sorted(dict.fromkeys(reply.email for reply in self.applied), key=lambda email: self.recipients[email].id)

    @property
    def writes_history(self) -> bool:
        """Whether anything beyond the notification's own row is written."""
        return self.invite is not None and bool(self.replies)

    def again(self, rows: list) -> _Plan:
        """The plan decided the same way from other rows."""
        return _plan(self.notice, rows, self.source, self.dtstamp, self.sequence)

    def recipient_values(self, email: str) -> dict:
        """``_UPDATE_RECIPIENT``'s values for the recipient ``email``."""
        recipient = self.recipients[email]
        proposal = recipient.proposal
        return dict(recipient_id=recipient.id, status=recipient.status, comment=recipient.comment,
                    proposal_start=proposal.start if proposal else None,
                    proposal_end=proposal.end if proposal else None, proposal_tzid=proposal.tzid if proposal else None,
                    replied_at=self.now, last_reply_dtstamp=recipient.last_reply_dtstamp,
                    last_reply_sequence=recipient.last_reply_sequence,
                    needs_attention=recipient.status == RecipientStatus.DECLINED or proposal is not None)

    def one_statement_values(self) -> dict:
        """``in_one_statement``'s values: the notification's, each history row's (prefixed), the
        recipient's and the version's."""
        values = dict(self.notification, now=self.now)
        for index, row in enumerate(self.history):
            values.update({f"h{index}_{name}": value for name, value in row.items()})
        for email in self.changed:
            values.update(self.recipient_values(email))
        return values

    def recorded(self, notification_id: int | None) -> ApplyResult:
        """The outcome, once the notification's row was (or, already there, was not) inserted."""
        if notification_id is None:  # this delivery was recorded before (or just now, by another transaction)
            return ApplyResult(NotificationOutcome.DUPLICATE, None, None, "already received")
        self.result.notification_id = notification_id
        return self.result


def decide(payload: dict, *, source: NotificationSource, raw: bytes | str | None = None,
           dedupe_key: str | None = None, dtstamp: datetime | None = None, sequence: int | None = None,
           preloaded: Preloaded | None = None, connection: Connection) -> _Plan:
    """Read, on ``connection``, the invite and the recipients the notification names, and decide
    what it changes: what ``record_notification`` would write (``write_plan``, or in one
    statement: :func:`in_one_statement`), written by neither yet."""
    return _decide(_Notice.of(payload, source, raw, dedupe_key), connection, source=source, dtstamp=dtstamp,
                   sequence=sequence, preloaded=preloaded)


def _decide(notice: _Notice, connection: Connection, *, source: NotificationSource, dtstamp: datetime | None = None,
            sequence: int | None = None, preloaded: Preloaded | None = None) -> _Plan:
    """``decide``, for a notification already read (``_Notice``)."""
    reference, emails = notice.reference, list(dict.fromkeys(reply.email for reply in notice.replies))
    if preloaded is not None and preloaded.reference == reference and preloaded.emails == tuple(emails):
        rows = preloaded.rows
    elif len(emails) == 1:
        rows = _LOAD_INVITE_NAMING_ONE.all(connection, reference=reference, email=emails[0])
    else:
        rows = connection.execute(_LOAD_INVITE_NAMING_ANY, {"reference": reference, "emails": emails}).all()
    return _plan(notice, rows, source, dtstamp, sequence)


@dataclass(frozen=True)
class _Notice:
    """What a notification says, before the invite is read."""

    body: str  # as received (kept)
    key: str  # its dedupe key
    reference: str  # the smart_invite_id
    replies: list[StatusReply]
    from_reply: bool  # it named a single "reply" (or "recipient")
    now: datetime

    @classmethod
    def of(cls, payload: dict, source: NotificationSource, raw: bytes | str | None, dedupe_key: str | None):
        body = (raw.decode("utf-8", "replace") if isinstance(raw, bytes)
                else (raw or json.dumps(payload, sort_keys=True)))
        key = dedupe_key or f"{source.value}:" + hashlib.sha256(body.encode("utf-8")).hexdigest()
        return cls(body, key, *parse_payload(payload), now_utc())


def _plan(notice: _Notice, rows: list, source: NotificationSource, dtstamp: datetime | None,
          sequence: int | None) -> _Plan:
    """``decide``'s plan, from the ``APPLY_COLUMNS`` rows of the invite and the recipients named."""
    reference, replies, from_reply, now = notice.reference, notice.replies, notice.from_reply, notice.now
    invite = (_Invite(rows[0].invite_id, rows[0].smart_invite_id, rows[0].callback_url, rows[0].single_recipient,
                      rows[0].api_client_id) if rows else None)
    recipients = {row.email: _recipient(row) for row in rows if row.id is not None}
    result = ApplyResult(NotificationOutcome.IGNORED, None, invite.id if invite else None)
    history: list[dict] = []
    applied: list[StatusReply] = []
    if invite is None:
        result.outcome, result.detail = NotificationOutcome.UNKNOWN_INVITE, f"no invite {reference!r}"
    elif not replies:
        result.detail = "no recipient status in the notification"
    else:
        history, applied = _apply_replies(recipients, replies, from_reply, source, dtstamp, sequence, now, result)
    notification = dict(source=source, dedupe_key=notice.key, body=notice.body, smart_invite_id=reference[:256],
                        invite_id=invite.id if invite is not None and replies else None, outcome=result.outcome,
                        detail=result.detail, received_at=now)
    return _Plan(result, notification, invite, recipients, history, applied, notice, rows, source, dtstamp, sequence)


def write_plan(plan: _Plan, connection: Connection) -> ApplyResult:
    """The plan's writes, one statement each, in the caller's transaction."""
    result = plan.recorded(_insert_notification(connection.dialect.name).scalar(connection, **plan.notification))
    if result.notification_id is None or not plan.writes_history:
        return result
    # The invite's row first (``_locked``); the history changes even when no status does.
    _BUMP_VERSION.execute(connection, invite_id=plan.invite.id, now=plan.now)
    plan = _recipients_written(plan, connection)
    result, invite = plan.result, plan.invite
    if plan.history:
        _INSERT_REPLIES.execute_many(connection, [dict(row, notification_id=result.notification_id)
                                                  for row in plan.history])
    if plan.applied and invite.callback_url:
        _queue_callbacks(connection, invite, plan.recipients, plan.applied)
    return result


def _recipients_written(plan: _Plan, connection: Connection) -> _Plan:
    """Write the recipients ``plan`` changes, in the transaction that writes it, and return it.

    Each UPDATE checks again what the plan assumed of the row (``_STILL_SO``). Where one wrote
    nothing, that recipient was written since the plan read it (another reply, staff removing
    them): its row is read again, and locked until the transaction ends (on SQLite, whose writer
    holds the whole database, the notification's INSERT took that lock), and the plan is decided
    again with it. So a reply that lost the race is recorded as what it turned out to be (older
    than the answer recorded, or to a removed recipient), not as applied, in its history row and
    in the notification's outcome; and the usual write costs no statement more."""
    lost = _update_recipients(plan, plan.changed, connection)
    if not lost:
        return plan
    now = {row.id: row for row in (_LOCK_RECIPIENT.first(connection, recipient_id=recipient_id)
                                   for recipient_id in lost) if row is not None}
    # The other recipients' rows as first read: they were written as decided from them.
    again = plan.again([now.get(row.id, row) for row in plan.rows])
    # Normally none: the row that refused the reply still does. Unless, between that UPDATE and
    # the lock, it changed back (a removed recipient invited again): then the reply applies.
    if _update_recipients(again, [email for email in again.changed if again.recipients[email].id in now], connection):
        raise RuntimeError("a recipient's row changed while locked")
    again.result.notification_id = plan.result.notification_id
    if (again.result.outcome, again.result.detail) != (plan.result.outcome, plan.result.detail):
        _RECORD_OUTCOME.execute(connection, id=plan.result.notification_id, outcome=again.result.outcome,
                                detail=again.result.detail)
    return again


def _update_recipients(plan: _Plan, emails: list[str], connection: Connection) -> list[int]:
    """Each recipient's UPDATE; the ids of those it wrote nothing to (no longer as ``plan`` read them)."""
    return [plan.recipients[email].id for email in emails
            if _UPDATE_RECIPIENT.execute(connection, **plan.recipient_values(email)) == 0]


def write_committed(plan: _Plan, connection: Connection) -> ApplyResult:
    """Write ``plan`` (``decide`` made it on ``connection``) and commit: on PostgreSQL in one
    statement where ``in_one_statement`` allows, on a connection in autocommit; else in a
    transaction of its own (``committed``)."""
    one = in_one_statement(connection.dialect, plan)
    if one is not None:
        notification_id = one.scalar(connection, **plan.one_statement_values())
        if notification_id is not None:
            return plan.recorded(notification_id)
        # Nothing was written: a repeated delivery, or the recipient's row changed since it was
        # read (the statement's guard). The transaction below tells which, and decides again.
    with committed(connection):
        return write_plan(plan, connection)


@contextmanager
def committed(connection: Connection):
    """A transaction of its own on ``connection`` (one ``decide`` read on), committed at the end,
    rolled back on an error; at READ COMMITTED on a database server. What the reads began on the
    connection (SQLAlchemy begins a transaction at a Core execute, and a server connection's
    isolation level cannot change inside one) held no lock: it is ended first."""
    if connection.in_transaction():
        connection.rollback()
    if connection.dialect.name != "sqlite":
        connection.execution_options(isolation_level="READ COMMITTED")
    with connection.begin():
        yield connection


def in_one_statement(dialect, plan: _Plan, also=None) -> PlainSelect | None:
    """PostgreSQL, for the usual notification: all of ``write_plan`` in one statement, which
    commits by itself on a connection in autocommit (one round trip where ``write_plan`` takes six
    with BEGIN and COMMIT). Run it with ``plan.one_statement_values()``; its row is the
    notification's id, and no row when nothing was written: a repeated delivery, or a recipient
    row no longer as the plan read it (removed, or answered later since), which ``write_plan``
    decides again.

    ``also``: a function of the notification's CTE returning one more data-modifying CTE with
    ``RETURNING id``, which must write only if the notification is new (select FROM it); its
    id comes second in the row, and its values go with the plan's. None where it does not
    apply: SQLite (no data-modifying WITH), several recipients' statuses changed, or callbacks
    to queue."""
    if dialect.name != "postgresql" or not plan.writes_history or len(plan.applied) > 1:
        return None
    if plan.applied and plan.invite.callback_url:
        return None
    return _one_statement_of(len(plan.history), bool(plan.applied), also)


@functools.lru_cache(maxsize=16)
def _one_statement_of(history_rows: int, applied: bool, also=None, usual: bool = False) -> PlainSelect:
    """INSERT the notification (ON CONFLICT DO NOTHING RETURNING id) in a WITH, and, each only
    if that inserted a row, the history rows, the recipient's UPDATE (``applied``) and the
    version's: all or nothing, and nothing for a repeated delivery. Its row: the notification's
    id, or no row for a repeat. With ``applied``, nothing either unless the recipient is still
    on the invite and not answered later (``_STILL_SO``): the row is locked and checked first
    (``target``), so the recipient's UPDATE, which takes the same lock, cannot find it otherwise
    and write nothing after the history said "applied".

    ``usual`` (``_apply_usual``): the invite and recipient are not given but found, by
    ``reference`` and ``email``, and only if the invite has no callback URL and the recipient
    was neither removed nor answered later (``_STILL_SO``); nothing is written otherwise. Its
    row then always comes: the notification's id (None for a repeat) and the invite's (None
    when it was not found so). Its recipient's row is locked as it is found: a reply or a
    removal written meanwhile is waited for, and the row checked again as it then is."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    if usual:
        target = _locked(_INVITES.c.id.label("invite_id"), _RECIPIENTS.c.id.label("recipient_id"),
                         where=[_INVITES.c.smart_invite_id == bindparam("reference"),
                                _RECIPIENTS.c.email == bindparam("email"),
                                func.coalesce(_INVITES.c.callback_url, "") == "", *_STILL_SO]).cte("target")
        invite_id, recipient_id = target.c.invite_id, target.c.recipient_id
    else:
        invite_id = bindparam("invite_id", type_=_INVITES.c.id.type)
        recipient_id = bindparam("recipient_id", type_=_RECIPIENTS.c.id.type)
    notifications, replies = Notification.__table__, Reply.__table__
    new = select(*(invite_id if name == "invite_id" else bindparam(name, type_=notifications.c[name].type)
                   for name in _NOTIFICATION_COLUMNS))
    if applied and not usual:
        target = _locked(_RECIPIENTS.c.id, where=[_RECIPIENTS.c.id == recipient_id, *_STILL_SO]).cte("target")
        new = new.where(exists(select(target.c.id)))
    notification = (pg_insert(notifications).from_select(_NOTIFICATION_COLUMNS, new)
                    .on_conflict_do_nothing(index_elements=[notifications.c.dedupe_key])
                    .returning(notifications.c.id).cte("notification"))
    recorded = exists(select(notification.c.id))
    found = {"invite_id": invite_id, "recipient_id": recipient_id} if usual else {}
    rows = [select(*(notification.c.id if name == "notification_id" else found[name] if name in found
                     else bindparam(f"h{index}_{name}", type_=replies.c[name].type) for name in _REPLY_COLUMNS))
            .select_from(target.join(notification, true()) if usual else notification)
            for index in range(history_rows)]
    ctes = []
    if rows:
        ctes.append(insert(replies).from_select(_REPLY_COLUMNS, rows[0] if len(rows) == 1 else union_all(*rows))
                    .cte("history"))
    if applied:
        ctes.append(_update_recipient(recipient_id).where(recorded).cte("recipient"))
    # Its invite_id is the notification's (this statement is only for notifications with replies).
    ctes.append(_bump_version(invite_id).where(recorded).cte("version"))
    if usual:
        return PlainSelect(select(select(notification.c.id).scalar_subquery().label("notification_id"),
                                  select(target.c.invite_id).scalar_subquery().label("invite_id")).add_cte(*ctes))
    if also is None:
        return PlainSelect(select(notification.c.id).add_cte(*ctes))
    extra = also(notification)
    return PlainSelect(select(notification.c.id, extra.c.id.label("also_id"))
                       .select_from(notification.join(extra, true())).add_cte(*ctes, extra))


# What ``_plan`` is given for the usual notification, as far as its decision depends on it: the invite
# there without a callback URL, and the recipient named on it, neither removed nor answered later.
# Which invite and recipient those are, and whether they are so, its statement finds out.
_UsualRow = namedtuple("_UsualRow", [column.name for column in APPLY_COLUMNS])


def _apply_usual(notice: _Notice, connection: Connection, *, source: NotificationSource,
                 dtstamp: datetime | None = None, sequence: int | None = None,
                 preloaded: Preloaded | None = None) -> ApplyResult | None:
    """PostgreSQL: the usual notification, one reply from a recipient on an invite without a callback
    URL, read, decided and written in one statement, on ``connection`` in autocommit: one round trip,
    where reading the invite first takes two. Decided as ``decide`` would, from the row it would read
    if the invite is so (``_UsualRow``), and written only if it is. None, with nothing written, for
    any other notification or invite: ``decide`` reads the invite and says why."""
    if preloaded is not None or not notice.from_reply or len(notice.replies) != 1:
        return None
    reply = notice.replies[0]
    # Ids 0: the statement writes the ones it finds.
    usual = _UsualRow(invite_id=0, smart_invite_id=notice.reference, callback_url=None, single_recipient=False,
                      api_client_id=None, id=0, email=reply.email, status=RecipientStatus.PENDING, comment="",
                      proposal_start=None, proposal_end=None, proposal_tzid=None, last_reply_dtstamp=None,
                      last_reply_sequence=None)
    plan = _plan(notice, [usual], source, dtstamp, sequence)
    if plan.result.outcome != NotificationOutcome.APPLIED:
        return None  # e.g. a status we do not know, which is recorded as not applied
    found = _one_statement_of(1, True, usual=True).first(connection, reference=notice.reference, email=reply.email,
                                                         **plan.one_statement_values())
    if found.invite_id is None:
        return None  # not the usual invite, or no such invite: nothing was written
    plan.result.invite_id = found.invite_id
    return plan.recorded(found.notification_id)


def _apply_replies(recipients: dict[str, _Recipient], replies: list[StatusReply], from_reply: bool,
                   source: NotificationSource, dtstamp: datetime | None, sequence: int | None, now: datetime,
                   result: ApplyResult) -> tuple[list[dict], list[StatusReply]]:
    """Decide what each reply changes (``recipients`` are updated in place); the history rows
    to insert and the replies applied."""
    history: list[dict] = []
    applied: list[StatusReply] = []
    notes: list[str] = []
    for reply in replies:
        recipient = recipients.get(reply.email)
        note = ""
        if recipient is None:
            note = "not on the invite (an alias or shared mailbox?)"
        elif reply.status is None:
            note = f"unknown status {reply.raw_status!r}"
        elif recipient.status == RecipientStatus.REMOVED:
            note = "this recipient was removed from the invite"
        elif reply.status == RecipientStatus.REMOVED:
            note = "a reply cannot remove a recipient"
        elif not _is_newer(recipient, dtstamp, sequence):
            note = "older than the answer already recorded"
            result.outcome = NotificationOutcome.STALE
        elif not from_reply and _same_as_current(recipient, reply):
            continue  # a "recipients" list repeats everyone: only changes are news
        else:
            recipient.status = reply.status
            recipient.comment = reply.comment
            recipient.proposal = reply.proposal
            recipient.last_reply_dtstamp = dtstamp
            recipient.last_reply_sequence = sequence
            applied.append(reply)
        if note:
            notes.append(f"{reply.email}: {note}")
        history.append({
            "invite_id": result.invite_id, "recipient_id": recipient.id if recipient else None, "email": reply.email,
            "status": reply.status or RecipientStatus.PENDING, "comment": reply.comment,
            "proposal_start": reply.proposal.start if reply.proposal else None,
            "proposal_end": reply.proposal.end if reply.proposal else None,
            "proposal_tzid": reply.proposal.tzid if reply.proposal else None,
            "source": source, "dtstamp": dtstamp, "sequence": sequence, "applied": not note, "note": note,
            "received_at": now,
        })
    if applied:
        result.outcome = NotificationOutcome.APPLIED
    elif result.outcome != NotificationOutcome.STALE:
        result.outcome = (NotificationOutcome.UNKNOWN_RECIPIENT
                          if any(reply.email not in recipients for reply in replies) else NotificationOutcome.IGNORED)
    result.detail = "; ".join(notes)
    return history, applied


def reply_json(email: str, status: RecipientStatus, comment: str = "", proposal: Proposal | None = None) -> dict:
    data: dict = {"email": email, "status": status.value}
    if comment:
        data["comment"] = comment
    if proposal is not None:
        data["proposal"] = proposal_json(proposal)
    return data


def recipient_json(recipient: Recipient | _Recipient) -> dict:
    return reply_json(recipient.email, recipient.status, recipient.comment, recipient.proposal)


def callback_body(invite: _Invite, recipients: list[_Recipient], reply: StatusReply) -> bytes:
    """The seeds' callback shape; these exact bytes are what gets signed. ``recipients``: the
    invite's, as they are now (for a single-recipient invite, the one replying)."""
    smart_invite: dict = {"smart_invite_id": invite.smart_invite_id, "callback_url": invite.callback_url}
    if invite.single_recipient:
        recipient = next((r for r in recipients if r.email == reply.email), None)
        smart_invite["recipient"] = recipient_json(recipient) if recipient else reply_json(reply.email, reply.status)
    else:
        smart_invite["recipients"] = [recipient_json(r) for r in recipients]
    smart_invite["reply"] = reply_json(reply.email, reply.status, reply.comment, reply.proposal)
    return json.dumps({"notification": {"type": "smart_invite"}, "smart_invite": smart_invite},
                      separators=(",", ":")).encode("utf-8")


def _queue_callbacks(connection: Connection, invite: _Invite, named: dict[str, _Recipient],
                     replies: list[StatusReply]) -> None:
    if invite.single_recipient:
        recipients = list(named.values())
    else:  # the callback lists everyone, as they are now (this transaction's changes included)
        rows = connection.execute(_ALL_RECIPIENTS, {"invite_id": invite.id})
        recipients = [_recipient(row) for row in rows]
    for reply in replies:
        outbox.queue_callback(connection, invite.id, invite.callback_url, callback_body(invite, recipients, reply),
                              invite.api_client_id)
