"""Attendees' reply emails (SPEC §2, INTEROP.md §3): keep every message, read it and apply
what it says through the one path of ``apply_notification``.

``receive`` (``POST /inbound/email``, the demo replies) reads a message as it arrives and
stores it with its outcome in the transaction that applies its replies: one commit. Should
reading or applying fail, the message is stored with the error instead, so nothing received
is lost. The IMAP poller and messages too big to read in a request go the other way round:
``store_inbound`` keeps the raw message first (committed), then ``process_inbound`` reads it.
Either way staff see an outcome on the "Inbound mail" page: applied, duplicate, stale,
ignored, unmatched or error, with the reason; processing never raises.
Whoever processes a stored message claims it first (``attempts`` moves by one, atomically), so
the web process, the IMAP poller and several workers never apply the same message twice.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr

from flask import current_app
from sqlalchemy import bindparam, insert, inspect, or_, select, update

from ..api.schema import proposal_json
from ..domain import Proposal, RecipientStatus
from ..extensions import db
from ..models import (InboundMessage, InboundOutcome, Invite, NotificationOutcome, NotificationSource, Recipient,
                      now_utc)
from ..plain_sql import PlainSelect, read_engine
from .itip import ParsedMessage, ParsedReply, ParseError, build_reply_email, parse_message
from .notifications import (APPLY_COLUMNS, ApplyResult, Preloaded, committed, decide, in_one_statement,
                            record_notification, recipients_named, write_plan)

log = logging.getLogger(__name__)

SOURCES = ("http", "imap", "demo")
#: The largest message accepted (SPEC §4: 413 above it).
MAX_INBOUND_BYTES = 25 * 1024 * 1024
#: Messages up to this size are read as soon as they are stored; bigger ones by the worker.
INLINE_PROCESS_BYTES = 1024 * 1024
#: A message claimed this long ago and still not processed was dropped by a process that died.
ORPHAN_AFTER = timedelta(minutes=2)
#: How often one message may be claimed before the worker stops retrying it.
MAX_ATTEMPTS = 5
#: Outcomes staff may ask to re-process (after adding a recipient, fixing a UID, ...).
REPROCESSABLE = (InboundOutcome.UNMATCHED, InboundOutcome.ERROR)

_CHANGING_METHODS = ("REPLY", "COUNTER")
_MAX_TOKENS = 20
_MAX_EMAIL = 320  # the width of the address columns
_OUTCOME_RANK = {  # when one message carries several replies, the most telling outcome wins
    InboundOutcome.APPLIED: 0, InboundOutcome.STALE: 1, InboundOutcome.DUPLICATE: 2,
    InboundOutcome.IGNORED: 3, InboundOutcome.UNMATCHED: 4, InboundOutcome.ERROR: 5,
}
_BY_NOTIFICATION_OUTCOME = {
    NotificationOutcome.APPLIED: InboundOutcome.APPLIED,
    NotificationOutcome.DUPLICATE: InboundOutcome.DUPLICATE,
    NotificationOutcome.STALE: InboundOutcome.STALE,
    NotificationOutcome.IGNORED: InboundOutcome.IGNORED,
    # Recorded in the invite's reply history without changing any status (INTEROP §3.5).
    NotificationOutcome.UNKNOWN_RECIPIENT: InboundOutcome.IGNORED,
    NotificationOutcome.UNKNOWN_INVITE: InboundOutcome.UNMATCHED,
}


# --- storing --------------------------------------------------------------------------------


def store_inbound(raw: bytes, source: str, *, claim: bool = False) -> InboundMessage:
    """Keep one raw message (committed) before anything reads it.

    ``claim=True`` marks it as taken by the caller, who processes it next
    (``process_inbound(message, claimed=True)``); otherwise the worker picks it up.
    """
    return db.session.get(InboundMessage, _insert(bytes(raw), source, claim=claim))


# What storing a message writes: every column, each value a parameter named after it (in
# PostgreSQL's one statement, with "message_" before it). No column default is applied by a plain
# statement: the model's scalar defaults are given instead (``_MESSAGE_DEFAULTS``), and the time.
_MESSAGE_COLUMNS = ("raw", "raw_sha256", "source", "message_id", "from_address", "subject", "invite_id", "outcome",
                    "reason", "received_at", "processed_at", "attempts")
_MESSAGE_DEFAULTS = {column.name: column.default.arg if column.default is not None and column.default.is_scalar
                     else None for column in InboundMessage.__table__.c if column.name in _MESSAGE_COLUMNS}
_INSERT_MESSAGE = PlainSelect(insert(InboundMessage.__table__)
                              .values({name: bindparam(name) for name in _MESSAGE_COLUMNS})
                              .returning(InboundMessage.__table__.c.id))


def _insert(raw: bytes, source: str, *, claim: bool) -> int:
    """Store and commit, for a processor to read it next; the new message's id."""
    values: dict = {"outcome": InboundOutcome.RECEIVED, "attempts": 1 if claim else 0}
    if claim:
        values["processed_at"] = now_utc()  # while RECEIVED: when the claim was taken
    else:  # left for the worker: show who sent it meanwhile (processing reads the headers better)
        values.update(_headers(raw))
    message_id = _insert_values(raw, source, values)
    db.session.commit()
    return message_id


def _insert_values(raw: bytes, source: str, values: dict, connection=None) -> int:
    """One INSERT, not the ORM's unit of work (this runs for every message), on ``connection``,
    else the session's; the new message's id (not committed)."""
    return _INSERT_MESSAGE.scalar(connection or db.session.connection(), **_message_values(raw, source, values))


def _message_values(raw: bytes, source: str, values: dict) -> dict:
    """A stored message's columns (``_MESSAGE_COLUMNS``): ``values``, the raw bytes with their
    digest and source, and the model's defaults for the rest."""
    if source not in SOURCES:
        raise ValueError(f"unknown inbound source {source!r}")
    return {**_MESSAGE_DEFAULTS, "received_at": now_utc(), **values,
            "raw": raw, "raw_sha256": hashlib.sha256(raw).hexdigest(), "source": source}


def _store_processed(raw: bytes, source: str, result: _Result) -> tuple[int, _Result]:
    """INSERT a message read already, with its outcome (not committed)."""
    result, values = _outcome_values(result)
    return _insert_values(raw, source, dict(values, attempts=1)), result


@dataclass(frozen=True)
class Received:
    """What became of one message just received (what ``POST /inbound/email`` answers)."""

    id: int
    outcome: InboundOutcome
    reason: str = ""


def store_refused(raw: bytes, source: str, reason: str) -> Received:
    """Keep what can be kept of a message that is not processed (too large), with the reason."""
    message_id, result = _store_processed(raw, source, _Result(InboundOutcome.ERROR, reason, headers=_headers(raw)))
    db.session.commit()
    return Received(message_id, result.outcome, result.reason)


def receive(raw: bytes, source: str) -> Received:
    """Store one message with its outcome, read right away when that is cheap (else the worker will).

    The message is stored in the transaction that applies the replies it carries: one commit,
    and no moment where a status changed but the message still reads "received". Should reading
    or applying fail, it is stored with the error instead; should that fail too, the exception
    (a 500 for ``POST /inbound/email``) tells the sender to try again later.
    """
    raw = bytes(raw)
    if len(raw) > INLINE_PROCESS_BYTES:
        return Received(_insert(raw, source, claim=False), InboundOutcome.RECEIVED)
    try:
        parsed = _parse(raw)
        received = _receive_usual(raw, source, parsed) if isinstance(parsed, ParsedMessage) else None
    except Exception:  # nothing was written: the usual path reads it again, and records what fails
        log.exception("an inbound message could not be applied on a connection of its own")
        parsed = received = None
    if received is not None:
        return received
    try:
        message_id, result = _store_processed(raw, source, _process(raw, parsed))
        db.session.commit()
    except Exception as exc:
        log.exception("an inbound message could not be processed")
        db.session.rollback()
        message_id, result = _store_processed(raw, source, _failure(exc, raw))
        db.session.commit()
    return Received(message_id, result.outcome, result.reason)


def receive_claimed(raw: bytes, source: str) -> InboundOutcome:
    """Store one message (committed) and read it now, whatever its size (the IMAP poller: it moves
    the message out of the mailbox once the outcome is known; should reading it kill the process,
    the stored claim lets the worker retry it, then give up: see ``process_pending``)."""
    raw = bytes(raw)
    return _process_claimed(_insert(raw, source, claim=True), raw)[0]


def _id(message: InboundMessage) -> int:
    """The primary key without reloading a message its commit expired."""
    identity = inspect(message).identity
    return identity[0] if identity else message.id


def _summary(raw: bytes) -> tuple[str, str, str]:
    """Message-ID, From and Subject for the list page, read from the top headers only.

    Never fails: a message whose headers cannot be read is still stored."""
    try:
        end = min(len(raw), 256 * 1024)
        for separator in (b"\r\n\r\n", b"\n\n"):
            found = raw.find(separator, 0, end)
            if found >= 0:
                end = found
                break
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:end])
        message_id = _text(str(headers.get("Message-ID", "")))
        _, from_address = parseaddr(_text(str(headers.get("From", ""))))
        subject = str(headers.get("Subject", ""))
        try:
            subject = str(make_header(decode_header(subject)))
        except Exception:  # unknown charsets, broken encoded words: show it as received
            pass
        return message_id[:998], _text(from_address).lower()[:_MAX_EMAIL], _text(subject)[:998]
    except Exception:
        return "", "", ""


def _storable(value: str) -> bool:
    """Whether a database takes ``value`` as it is (PostgreSQL refuses NUL and lone surrogates);
    a value that cannot be stored cannot match a stored one either."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeError:
        return False
    return True


def _headers(raw: bytes) -> dict:
    return dict(zip(("message_id", "from_address", "subject"), _summary(raw)))


def _text(value: str) -> str:
    """Printable one-line text a database column takes (no NUL, no lone surrogates)."""
    try:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return " ".join(value.replace("\x00", "").split())


# --- processing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    outcome: InboundOutcome
    reason: str
    invite_id: int | None = None
    headers: dict = field(default_factory=dict)  # what the parser read better than the store did


def process_inbound(message: InboundMessage, *, claimed: bool = False) -> InboundOutcome:
    """Read one stored message and apply the replies it carries; record and return the outcome.

    Never raises. ``claimed`` says the caller already holds the claim (``store_inbound(claim=True)``).
    """
    message_id = _id(message)
    try:
        if not claimed and not _claim(message):
            db.session.refresh(message)
            return message.outcome  # another process has it
    except Exception:
        log.exception("inbound message %s could not be claimed", message_id)
        db.session.rollback()
        return InboundOutcome.RECEIVED  # still stored; the worker tries again
    return _process_claimed(message_id)[0]


def _process_claimed(message_id: int, raw: bytes | None = None) -> tuple[InboundOutcome, str]:
    """Read a stored message; its outcome is written in the transaction that applies its replies."""
    try:
        if raw is None:
            raw = db.session.scalar(select(InboundMessage.raw).where(InboundMessage.id == message_id))
        result = _write_outcome(message_id, _process(raw))
        db.session.commit()
    except Exception as exc:  # a bug or a database error: keep the message, say why
        log.exception("inbound message %s could not be processed", message_id)
        db.session.rollback()
        return _finish(message_id, _failure(exc, raw or b""))
    return result.outcome, result.reason


def _failure(exc: Exception, raw: bytes) -> _Result:
    return _Result(InboundOutcome.ERROR, f"internal error while processing: {type(exc).__name__}: {exc}"[:2000],
                   headers=_headers(raw))


def _claim(message: InboundMessage) -> bool:
    """Take the message for processing: only one caller wins, even across processes."""
    seen = message.attempts
    claimed = db.session.execute(
        update(InboundMessage)
        .where(InboundMessage.id == _id(message), InboundMessage.attempts == seen,
               InboundMessage.outcome == InboundOutcome.RECEIVED)
        .values(attempts=seen + 1, processed_at=now_utc())
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    db.session.commit()
    return claimed


def _outcome_values(result: _Result) -> tuple[_Result, dict]:
    """``result`` with its reason made storable, and the columns that record it."""
    result = replace(result, reason=_text(result.reason)[:4000])
    values: dict = {"outcome": result.outcome, "reason": result.reason, "processed_at": now_utc(), **result.headers}
    if result.invite_id is not None:
        values["invite_id"] = result.invite_id
    return result, values


def _write_outcome(message_id: int, result: _Result) -> _Result:
    """UPDATE the message with ``result`` in the current transaction (not committed)."""
    result, values = _outcome_values(result)
    db.session.execute(update(InboundMessage).where(InboundMessage.id == message_id).values(**values)
                       .execution_options(synchronize_session=False))
    return result


def _finish(message_id: int, result: _Result) -> tuple[InboundOutcome, str]:
    """Record the outcome, committed; returns (outcome, reason)."""
    try:
        result = _write_outcome(message_id, result)
        db.session.commit()
    except Exception:
        log.exception("could not record the outcome of inbound message %s", message_id)
        db.session.rollback()
        return InboundOutcome.ERROR, result.reason
    return result.outcome, result.reason


def _parse(raw: bytes) -> ParsedMessage | _Result:
    """The message parsed, or, when it cannot be, the error to record."""
    try:
        return parse_message(raw, current_app.config["MAIL_FROM"].address)
    except ParseError as exc:
        return _Result(InboundOutcome.ERROR, str(exc), headers=_headers(raw))


def _process(raw: bytes, parsed: ParsedMessage | _Result | None = None) -> _Result:
    """Parse the message (unless ``parsed`` is what ``_parse`` made of it already) and record the
    replies it carries, in the current transaction (not committed); what came of it, with the
    headers the parser read."""
    parsed = _parse(raw) if parsed is None else parsed
    if isinstance(parsed, _Result):
        return parsed
    identity = _identity(parsed, raw)
    results = [_apply(parsed, reply, identity) for reply in parsed.replies if reply.method in _CHANGING_METHODS]
    ignored_methods = dict.fromkeys(reply.method for reply in parsed.replies if reply.method not in _CHANGING_METHODS)
    results += [_Result(InboundOutcome.IGNORED, _ignored_method(method)) for method in ignored_methods]
    return replace(_combine(results), headers=_parsed_headers(parsed))


def _identity(parsed: ParsedMessage, raw: bytes) -> str:
    return parsed.message_id or "sha256:" + hashlib.sha256(raw).hexdigest()


def _parsed_headers(parsed: ParsedMessage) -> dict:
    return {key: value for key, value in (("message_id", _text(parsed.message_id)[:998]),
                                          ("from_address", _text(parsed.from_address)[:_MAX_EMAIL]),
                                          ("subject", _text(parsed.subject)[:998])) if value}


def _ignored_method(method: str) -> str:
    if method in ("REQUEST", "CANCEL"):
        return f"METHOD:{method} is an invitation, not a reply (a forwarded invite?); ignored"
    if not method:
        return "the calendar has no METHOD, so it is not a reply; ignored"
    return f"METHOD:{_text(method)[:40]} is not a reply; ignored"


def _combine(results: list[_Result]) -> _Result:
    best = min(results, key=lambda r: _OUTCOME_RANK[r.outcome])
    invite_id = best.invite_id or next((r.invite_id for r in results if r.invite_id), None)
    reasons = list(dict.fromkeys(r.reason for r in results if r.reason))
    return _Result(best.outcome, "; ".join(reasons), invite_id)


@dataclass(frozen=True)
class _Matched:
    """One reply, matched to its invite and ready to record."""

    invite: _Match
    email: str
    answer: str  # what it says, in words
    note: str  # how it was matched, when that is worth saying
    payload: dict  # the notification, in Cronofy's shape
    options: dict  # record_notification's other arguments


def _match(parsed: ParsedMessage, reply: ParsedReply, identity: str, connection) -> _Matched | _Result:
    """The reply's invite, read on ``connection``; or, when it cannot be recorded, what came of it."""
    email = _text(reply.attendee_email).lower()
    usable = bool(email) and len(email) <= _MAX_EMAIL
    invite, note = _find_invite(reply.uid, parsed.tokens, email if usable else None, connection)
    if invite is None:
        return _Result(InboundOutcome.UNMATCHED, note)
    if not usable:
        return _Result(InboundOutcome.IGNORED, "the reply names no usable attendee address", invite.id)
    answer = "proposed a new time" if reply.method == "COUNTER" else (
        reply.status.value if reply.status else f"PARTSTAT {reply.partstat or 'missing'}")
    payload = {"notification": {"type": "smart_invite"},
               "smart_invite": {"smart_invite_id": invite.smart_invite_id, "reply": _reply_json(reply, email)}}
    return _Matched(invite, email, answer, note, payload, dict(
        source=NotificationSource.EMAIL, dedupe_key=_dedupe_key(identity, reply), dtstamp=reply.dtstamp,
        sequence=reply.sequence, preloaded=Preloaded(invite.smart_invite_id, (email,), invite.rows)))


def _apply(parsed: ParsedMessage, reply: ParsedReply, identity: str) -> _Result:
    """Record one reply through the one path of ``apply_notification`` (not committed)."""
    matched = _match(parsed, reply, identity, db.session.connection())
    if isinstance(matched, _Result):
        return matched
    return _told(matched, record_notification(matched.payload, **matched.options))


def _told(matched: _Matched, result: ApplyResult) -> _Result:
    """What recording ``matched`` came to, as the message's outcome says it."""
    email, answer = matched.email, matched.answer
    if result.outcome == NotificationOutcome.APPLIED:
        text = f"{email} {answer}"
    elif result.outcome == NotificationOutcome.DUPLICATE:
        text = f"{email} {answer}: this reply was already received"
    elif result.outcome == NotificationOutcome.UNKNOWN_RECIPIENT:
        text = f"{email} is not invited: recorded in the reply history, no status changed"
    else:
        text = result.detail or f"{email} {answer}: nothing to change"
    return _Result(_BY_NOTIFICATION_OUTCOME[result.outcome], "; ".join(filter(None, (text, matched.note))),
                   matched.invite.id)


def _store_message_too(notification):
    """``in_one_statement``'s ``also``: the message INSERTed only if its reply's notification is new."""
    table = InboundMessage.__table__
    values = select(*(bindparam(f"message_{name}", type_=table.c[name].type) for name in _MESSAGE_COLUMNS))
    return (insert(table).from_select(_MESSAGE_COLUMNS, values.select_from(notification))
            .returning(table.c.id).cte("message"))


def _receive_usual(raw: bytes, source: str, parsed: ParsedMessage) -> Received | None:
    """The usual message (one reply, to an invite found), read and recorded on a connection of
    its own, as ``apply_notification`` records a webhook, not in the ORM session, whose unit of
    work and transaction bookkeeping cost a reply email more than its statements (about a third
    of storing and applying one on SQLite):

    The invite read, then, as ``write_committed`` writes a webhook's notification:

    - PostgreSQL: the reply recorded and the message stored in one statement, which commits by
      itself: two round trips where the session's transaction took eight;
    - else (SQLite; or a message that statement cannot take: a callback to queue, a repeat, a
      recipient changed since read) the reply recorded and the message stored with its outcome
      in one transaction, from what was read.

    None, having written nothing, for any other message, which ``receive`` then handles as usual."""
    if len(parsed.replies) != 1 or parsed.replies[0].method not in _CHANGING_METHODS:
        return None
    with read_engine().connect() as connection:  # on PostgreSQL in autocommit; closed on an error (rolled back)
        matched = _match(parsed, parsed.replies[0], _identity(parsed, raw), connection)
        if isinstance(matched, _Result):
            return None
        plan = decide(matched.payload, connection=connection, **matched.options)
        received = _in_one_statement(raw, source, parsed, matched, plan, connection)
        if received is None:
            received = _in_one_transaction(raw, source, parsed, matched, plan, connection)
    if db.session.registry.has():
        db.session.expire_all()  # as a commit of the session's own would have
    return received


def _told_values(parsed: ParsedMessage, told: _Result) -> tuple[_Result, dict]:
    """What the message is stored with: ``told`` as its outcome, the headers read, one attempt."""
    result, values = _outcome_values(replace(told, headers=_parsed_headers(parsed)))
    return result, dict(values, attempts=1)


def _in_one_statement(raw: bytes, source: str, parsed: ParsedMessage, matched: _Matched, plan,
                      connection) -> Received | None:
    """PostgreSQL's one statement; None, having written nothing, where it does not apply."""
    statement = in_one_statement(connection.dialect, plan, also=_store_message_too)
    if statement is None:
        return None
    result, values = _told_values(parsed, _told(matched, plan.result))
    values = _message_values(raw, source, values)
    row = statement.first(connection, **plan.one_statement_values(),
                          **{f"message_{name}": values[name] for name in _MESSAGE_COLUMNS})
    if row is None:  # already received: nothing was written
        return None
    return Received(row.also_id, result.outcome, result.reason)


def _in_one_transaction(raw: bytes, source: str, parsed: ParsedMessage, matched: _Matched, plan,
                        connection) -> Received:
    with committed(connection):
        result, values = _told_values(parsed, _told(matched, write_plan(plan, connection)))
        message_id = _insert_values(raw, source, values, connection)
    return Received(message_id, result.outcome, result.reason)


def _reply_json(reply: ParsedReply, email: str) -> dict:
    if reply.method == "COUNTER":
        status = RecipientStatus.TENTATIVE.value  # a proposal, not a decline (INTEROP §3.8)
    elif reply.status is not None:
        status = reply.status.value
    else:  # unknown to us (Google's DELETED): recorded, not applied
        status = _text(reply.partstat).lower()[:40] or "unknown"
    data: dict = {"email": email, "status": status}
    comment = _text(reply.comment)
    if comment:
        data["comment"] = comment[:4000]
    if reply.method == "COUNTER" and reply.proposal is not None:
        data["proposal"] = proposal_json(reply.proposal)
    return data


def _dedupe_key(identity: str, reply: ParsedReply) -> str:
    """The same message read twice gives the same key, so the second is a "duplicate"."""
    parts = (identity, reply.method, reply.uid, reply.recurrence_id or "", reply.attendee_email, reply.partstat,
             reply.dtstamp.isoformat() if reply.dtstamp else "", str(reply.sequence))
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"email:{digest}"


# Built once: building a statement costs more than SQLite takes to run it. A reply is nearly
# always sent to one address token, and an IN list of variable length costs a rewrite per call.
# The query also reads what applying the reply reads (``APPLY_COLUMNS``, with the recipient who
# replied), so ``record_notification`` need not read the invite again.
_INVITES, _RECIPIENTS = Invite.__table__, Recipient.__table__


def _find_invites(token_condition):
    return (select(_INVITES.c.uid, _INVITES.c.reply_token, *APPLY_COLUMNS)
            .select_from(recipients_named(_RECIPIENTS.c.email == bindparam("email")))
            .where(_INVITES.c.uid.in_([bindparam("uid"), bindparam("uid_lower")]) | token_condition))


_FIND_BY_UID_OR_TOKEN = PlainSelect(_find_invites(_INVITES.c.reply_token == bindparam("token")))
_FIND_BY_UID_OR_TOKENS = _find_invites(_INVITES.c.reply_token.in_(bindparam("tokens", expanding=True)))


@dataclass(frozen=True)
class _Match:
    id: int
    smart_invite_id: str
    rows: tuple = field(compare=False)  # its APPLY_COLUMNS rows, for the recipient who replied


def _find_invite(uid: str, tokens: tuple[str, ...], email: str | None, connection) -> tuple[_Match | None, str]:
    """The invite a reply is about, by its UID and the token of the address it was sent to,
    with the recipient ``email`` if it has one.

    Either one finds it; when both are there they must agree. Returns (invite, a note).
    """
    uids = {uid, uid.lower()} if uid and len(uid) <= 255 and _storable(uid) else set()
    wanted = {token.lower() for token in tokens[:_MAX_TOKENS] if 0 < len(token) <= 64 and _storable(token)}
    found = []
    if uids or wanted:
        values = {"uid": uid if uids else None, "uid_lower": uid.lower() if uids else None,  # NULL matches nothing
                  "email": email}
        if len(wanted) <= 1:  # (a PlainSelect: the ORM's execute layer costs more than the query)
            found = _FIND_BY_UID_OR_TOKEN.all(connection, **values, token=next(iter(wanted), None))
        else:
            found = connection.execute(_FIND_BY_UID_OR_TOKENS, {**values, "tokens": list(wanted)}).all()

    def match(row) -> _Match:
        return _Match(row.invite_id, row.smart_invite_id, tuple(r for r in found if r.invite_id == row.invite_id))

    by_uid = next((match(row) for row in found if row.uid in uids), None)
    by_token = [match(row) for row in found if row.reply_token in wanted]
    shown_uid = _text(uid)[:120] or "(none)"
    if by_uid is not None:
        if by_token and by_uid not in by_token:
            return None, (f"the UID {shown_uid} and the address it was sent to name different invites; "
                          "not applied")
        return by_uid, ""
    if len(by_token) == 1:
        return by_token[0], f"matched by the address it was sent to (its UID {shown_uid} is not the invite's)"
    if len(by_token) > 1:
        return None, f"no invite has the UID {shown_uid}, and it was sent to the addresses of several invites"
    if tokens:
        return None, f"no invite has the UID {shown_uid} or the address token {_text(tokens[0])[:64]}"
    return None, f"no invite has the UID {shown_uid}"


# --- the worker's share, and staff's re-process ---------------------------------------------


def process_pending(limit: int = 50, *, should_stop=lambda: False) -> int:
    """Process stored messages nobody is processing: new ones left for the worker (too big
    to read inline) and ones whose processing died half-way. Returns how many were done."""
    orphaned = now_utc() - ORPHAN_AFTER
    rows = db.session.scalars(
        select(InboundMessage)
        .where(InboundMessage.outcome == InboundOutcome.RECEIVED,
               or_(InboundMessage.attempts == 0,
                   (InboundMessage.attempts < MAX_ATTEMPTS) & (InboundMessage.processed_at < orphaned)))
        .order_by(InboundMessage.id).limit(limit)
    ).all()
    done = 0
    for message in rows:
        if should_stop():
            break
        process_inbound(message)
        done += 1
    _give_up_on_poison(orphaned)
    return done


def is_orphaned(message: InboundMessage) -> bool:
    """Stored and never claimed, or claimed by a process that has not finished in ORPHAN_AFTER."""
    return message.outcome == InboundOutcome.RECEIVED and (
        message.attempts == 0 or message.processed_at is None or message.processed_at < now_utc() - ORPHAN_AFTER)


def _give_up_on_poison(orphaned: datetime) -> None:
    """A message that killed its processor MAX_ATTEMPTS times is marked as an error, not retried forever."""
    stuck = db.session.execute(
        update(InboundMessage)
        .where(InboundMessage.outcome == InboundOutcome.RECEIVED, InboundMessage.attempts >= MAX_ATTEMPTS,
               InboundMessage.processed_at < orphaned)
        .values(outcome=InboundOutcome.ERROR, processed_at=now_utc(),
                reason=f"processing did not finish after {MAX_ATTEMPTS} attempts")
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if stuck:
        log.warning("%d inbound message(s) gave up after %d attempts", stuck, MAX_ATTEMPTS)


def reprocess(message: InboundMessage) -> InboundOutcome:
    """Read an unmatched or failed message again (after a fix); other outcomes are final."""
    if message.outcome not in REPROCESSABLE:
        raise ValueError(f"a message that was {message.outcome.value} is not re-processed")
    reset = db.session.execute(
        update(InboundMessage)
        .where(InboundMessage.id == message.id, InboundMessage.outcome.in_(REPROCESSABLE))
        .values(outcome=InboundOutcome.RECEIVED, attempts=InboundMessage.attempts + 1, processed_at=now_utc())
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    db.session.commit()
    if not reset:  # someone else re-processed it meanwhile
        db.session.refresh(message)
        return message.outcome
    outcome = process_inbound(message, claimed=True)
    db.session.refresh(message)
    return outcome


# --- the mail catcher's "Reply as attendee" -------------------------------------------------

DEMO_ANSWERS = {"accepted": "ACCEPTED", "declined": "DECLINED", "tentative": "TENTATIVE"}


def demo_replies_enabled(config) -> bool:
    """Only without a real mail server (SMTP_URL unset) or in DEMO_MODE."""
    return not config.get("SMTP_URL") or bool(config.get("DEMO_MODE"))


def demo_reply(*, invite_ics: bytes, attendee_email: str, to_address: str, shape: str, answer: str,
               comment: str = "", proposal: Proposal | None = None) -> Received:
    """Write the reply a real client would send and feed it to the same ingest path as real mail.

    ``answer`` is accepted, declined or tentative; a ``proposal`` makes it a COUNTER.
    Raises ``ValueError`` for a combination no client sends (Apple proposing a time).
    """
    if proposal is None and answer not in DEMO_ANSWERS:
        raise ValueError(f"unknown answer {answer!r}")
    raw = build_reply_email(shape=shape, invite_ics=invite_ics, attendee_email=attendee_email,
                            partstat=DEMO_ANSWERS.get(answer, "TENTATIVE"), to_address=to_address,
                            comment=comment, proposal=proposal)
    return receive(raw, "demo")

