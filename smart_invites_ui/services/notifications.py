"""The one path for status changes (SPEC §2): ``apply_notification``.

A notification is in Cronofy's callback shape, whether it came from the signed
webhook route or from the reply processor reading attendees' emails. Applying
it records the reply in the append-only history, updates the recipient's
current status, bumps the invite's version (what the live poll compares) and
queues callbacks. Repeated deliveries are recognised and change nothing; older
replies arriving late are recorded without overwriting newer ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..api.schema import parse_event_time, proposal_json
from ..domain import Proposal, RecipientStatus, utc
from ..extensions import db
from ..models import (Invite, Notification, NotificationOutcome, NotificationSource, Recipient, Reply,
                      now_utc)
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
    notification: Notification | None
    invite: Invite | None
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


def _is_newer(recipient: Recipient, dtstamp: datetime | None, sequence: int | None) -> bool:
    if dtstamp is None or recipient.last_reply_dtstamp is None:
        return True
    ours = (recipient.last_reply_dtstamp, recipient.last_reply_sequence or 0)
    return (dtstamp, sequence or 0) >= ours


def _same_as_current(recipient: Recipient, reply: StatusReply) -> bool:
    return (recipient.status == reply.status and recipient.comment == reply.comment
            and recipient.proposal == reply.proposal)


def apply_notification(
    payload: dict,
    *,
    source: NotificationSource,
    raw: bytes | str | None = None,
    dedupe_key: str | None = None,
    dtstamp: datetime | None = None,
    sequence: int | None = None,
    before_commit: Callable[[ApplyResult], None] | None = None,
) -> ApplyResult:
    """Record and apply one notification in one transaction (committed here).

    ``before_commit(result)`` runs inside that transaction, just before the commit, so a caller
    can record its own bookkeeping atomically with it (the reply processor marks the email).
    It is not called when nothing is committed (a duplicate)."""
    body = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or json.dumps(payload, sort_keys=True))
    key = dedupe_key or f"{source.value}:" + hashlib.sha256(body.encode("utf-8")).hexdigest()
    if db.session.scalar(select(Notification.id).where(Notification.dedupe_key == key)):
        return ApplyResult(NotificationOutcome.DUPLICATE, None, None, "already received")

    reference, replies, from_reply = parse_payload(payload)
    try:
        result = _record(key, body, reference, replies, from_reply, source, dtstamp, sequence)
        if before_commit is not None:
            before_commit(result)
        db.session.commit()
    except IntegrityError:  # the same delivery raced us to the unique key
        db.session.rollback()
        return ApplyResult(NotificationOutcome.DUPLICATE, None, None, "already received")
    return result


def _record(key: str, body: str, reference: str, replies: list[StatusReply], from_reply: bool,
            source: NotificationSource, dtstamp: datetime | None, sequence: int | None) -> ApplyResult:
    notification = Notification(source=source, dedupe_key=key, body=body, smart_invite_id=reference[:256],
                                outcome=NotificationOutcome.IGNORED)
    db.session.add(notification)
    db.session.flush()
    invite = db.session.scalar(select(Invite).where(Invite.smart_invite_id == reference))
    result = ApplyResult(NotificationOutcome.IGNORED, notification, invite)
    if invite is None:
        result.outcome, result.detail = NotificationOutcome.UNKNOWN_INVITE, f"no invite {reference!r}"
    elif not replies:
        result.detail = "no recipient status in the notification"
    else:
        notification.invite_id = invite.id
        _apply_replies(invite, notification, replies, from_reply, source, dtstamp, sequence, result)
    notification.outcome, notification.detail = result.outcome, result.detail
    return result


def _apply_replies(invite: Invite, notification: Notification, replies: list[StatusReply], from_reply: bool,
                   source: NotificationSource, dtstamp: datetime | None, sequence: int | None,
                   result: ApplyResult) -> None:
    applied: list[StatusReply] = []
    notes: list[str] = []
    for reply in replies:
        recipient = invite.recipient(reply.email)
        history = Reply(invite_id=invite.id, notification_id=notification.id, email=reply.email,
                        status=reply.status or RecipientStatus.PENDING, comment=reply.comment,
                        proposal_start=reply.proposal.start if reply.proposal else None,
                        proposal_end=reply.proposal.end if reply.proposal else None,
                        proposal_tzid=reply.proposal.tzid if reply.proposal else None,
                        source=source, dtstamp=dtstamp, sequence=sequence, applied=False)
        history.recipient_id = recipient.id if recipient else None
        if recipient is None:
            history.note = "not on the invite (an alias or shared mailbox?)"
        elif reply.status is None:
            history.note = f"unknown status {reply.raw_status!r}"
        elif recipient.status == RecipientStatus.REMOVED:
            history.note = "this recipient was removed from the invite"
        elif reply.status == RecipientStatus.REMOVED:
            history.note = "a reply cannot remove a recipient"
        elif not _is_newer(recipient, dtstamp, sequence):
            history.note = "older than the answer already recorded"
            result.outcome = NotificationOutcome.STALE
        elif not from_reply and _same_as_current(recipient, reply):
            continue  # a "recipients" list repeats everyone: only changes are news
        else:
            history.applied = True
            recipient.status = reply.status
            recipient.comment = reply.comment
            recipient.set_proposal(reply.proposal)
            recipient.replied_at = now_utc()
            recipient.last_reply_dtstamp = dtstamp
            recipient.last_reply_sequence = sequence
            recipient.needs_attention = reply.status == RecipientStatus.DECLINED or reply.proposal is not None
            applied.append(reply)
        if history.note:
            notes.append(f"{reply.email}: {history.note}")
        db.session.add(history)
    # In SQL, so two notifications applied at once both count; the history changed
    # even when no status did.
    invite.version = Invite.version + 1
    if applied:
        result.outcome = NotificationOutcome.APPLIED
        _queue_callbacks(invite, applied)
    elif result.outcome != NotificationOutcome.STALE:
        result.outcome = (NotificationOutcome.UNKNOWN_RECIPIENT
                          if any(invite.recipient(r.email) is None for r in replies) else NotificationOutcome.IGNORED)
    result.detail = "; ".join(notes)


def reply_json(email: str, status: RecipientStatus, comment: str = "", proposal: Proposal | None = None) -> dict:
    data: dict = {"email": email, "status": status.value}
    if comment:
        data["comment"] = comment
    if proposal is not None:
        data["proposal"] = proposal_json(proposal)
    return data


def recipient_json(recipient: Recipient) -> dict:
    return reply_json(recipient.email, recipient.status, recipient.comment, recipient.proposal)


def callback_body(invite: Invite, reply: StatusReply) -> bytes:
    """The seeds' callback shape; these exact bytes are what gets signed."""
    smart_invite: dict = {"smart_invite_id": invite.smart_invite_id, "callback_url": invite.callback_url}
    if invite.single_recipient:
        recipient = invite.recipient(reply.email)
        smart_invite["recipient"] = recipient_json(recipient) if recipient else reply_json(reply.email, reply.status)
    else:
        smart_invite["recipients"] = [recipient_json(r) for r in invite.recipients]
    smart_invite["reply"] = reply_json(reply.email, reply.status, reply.comment, reply.proposal)
    return json.dumps({"notification": {"type": "smart_invite"}, "smart_invite": smart_invite},
                      separators=(",", ":")).encode("utf-8")


def _queue_callbacks(invite: Invite, replies: list[StatusReply]) -> None:
    if not invite.callback_url:
        return
    for reply in replies:
        outbox.queue_callback(invite, invite.callback_url, callback_body(invite, reply), invite.api_client_id)

