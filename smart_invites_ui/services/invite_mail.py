"""What an invite email says: the ICS for one recipient and the message around it."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, render_template

from ..domain import Attendee, ITipMethod, RecipientStatus
from ..models import Invite, Recipient
from . import ics as ics_service
from .mail import address, as_bytes, build_invite_email


def organizer_address(invite: Invite) -> str:
    """The reply mailbox: MAIL_FROM plus-addressed with the invite's token (SPEC §2)."""
    return current_app.config["MAIL_FROM"].for_token(invite.reply_token)


def attendee(recipient: Recipient) -> Attendee:
    return Attendee(email=recipient.email, name=recipient.name, status=recipient.status)


def _ics_fields(invite: Invite, method: ITipMethod, recipients: list[Recipient]) -> dict:
    """Everything :func:`ics.build_ics` makes the invite's ICS from (hashable values)."""
    return dict(
        uid=invite.uid,
        sequence=invite.sequence,
        event=invite.event,
        method=method,
        organizer_email=organizer_address(invite),
        organizer_name=invite.organizer_name,
        attendees=tuple(attendee(r) for r in recipients),
        cancelled=method == ITipMethod.CANCEL,
    )


def invite_ics(invite: Invite, method: ITipMethod = ITipMethod.REQUEST,
               recipients: list[Recipient] | None = None) -> bytes:
    """The ICS as it stands now.

    A REQUEST lists everyone still invited; a CANCEL lists the people it cancels
    (everyone for a cancelled invite, or the one removed recipient).
    """
    if recipients is None:
        recipients = invite.invited
    return ics_service.build_ics(**_ics_fields(invite, method, recipients))


def subject_for(invite: Invite, method: ITipMethod) -> str:
    if method == ITipMethod.CANCEL:
        return f"Cancelled: {invite.summary}"
    if invite.sequence > 0:
        return f"Updated invitation: {invite.summary}"
    return f"Invitation: {invite.summary}"


@dataclass(frozen=True)
class Composed:
    """One recipient's email as sent (RFC 822 bytes) and its subject."""

    raw: bytes
    subject: str


class Composer:
    """Composes the invite emails of one delivery batch (the worker makes one per batch).

    The recipients of an invite mostly get the same email but for its To, Date and
    Message-ID headers. The ICS and the rest of the message (flattened) are kept by
    everything they are made from (the invite's fields, the attendees and their
    answers, the method, the rendered texts), so a recipient whose email would read
    the same gets that one with their own headers, and any difference (an edit, a
    reply, a removed recipient's own texts) builds a new one. Each email is still made
    from the invite as it stands when it is delivered.
    """

    def __init__(self) -> None:
        self._ics: dict[tuple, bytes] = {}
        # What recipients share: the message but for To, Date and Message-ID, flattened.
        self._shared: dict[tuple, Composed] = {}

    def _invite_ics(self, invite: Invite, method: ITipMethod, recipients: list[Recipient]) -> bytes:
        fields = _ics_fields(invite, method, recipients)
        key = tuple(fields.values())
        ics = self._ics.get(key)
        if ics is None:
            ics = self._ics[key] = ics_service.build_ics(**fields)
        return ics

    def compose(self, invite: Invite, recipient: Recipient, method: ITipMethod,
                ics: bytes | None = None) -> Composed:
        """The email to ``recipient``. ``ics`` is given when an external provider made it."""
        if ics is None:
            if method == ITipMethod.CANCEL and not invite.is_cancelled:
                ics = self._invite_ics(invite, method, [recipient])  # removed from a live invite
            else:
                ics = self._invite_ics(invite, method, invite.invited)
        removed = recipient.status == RecipientStatus.REMOVED and not invite.is_cancelled
        context = dict(invite=invite, recipient=recipient, method=method.value, removed=removed)
        mail_from = current_app.config["MAIL_FROM"]
        content = dict(
            ics=ics,
            method=method,
            from_email=organizer_address(invite),
            from_name=invite.organizer_name or mail_from.local,
            subject=subject_for(invite, method),
            text=render_template("email/invite.txt", **context),
            html=render_template("email/invite.html", **context),
        )
        key = tuple(content.values())
        shared = self._shared.get(key)
        if shared is None:
            email = build_invite_email(**content)
            shared = self._shared[key] = Composed(as_bytes(email), str(email["Subject"]))
        raw = address(shared.raw, to_email=recipient.email, to_name=recipient.name,
                      message_id_domain=mail_from.domain)
        return Composed(raw, shared.subject)
