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


def invite_ics(invite: Invite, method: ITipMethod = ITipMethod.REQUEST,
               recipients: list[Recipient] | None = None) -> bytes:
    """The ICS as it stands now.

    A REQUEST lists everyone still invited; a CANCEL lists the people it cancels
    (everyone for a cancelled invite, or the one removed recipient).
    """
    if recipients is None:
        recipients = invite.invited
    return ics_service.build_ics(
        uid=invite.uid,
        sequence=invite.sequence,
        event=invite.event,
        method=method,
        organizer_email=organizer_address(invite),
        organizer_name=invite.organizer_name,
        attendees=[attendee(r) for r in recipients],
        cancelled=method == ITipMethod.CANCEL,
    )


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
    """Composes the emails of one invite, as read once, to each of its recipients.

    The worker reads an invite once for each run of its emails in a batch (an edit or an
    import queues them together) and makes one Composer for that read (delivery.EmailDeliverer).
    The recipients then get the same email but for its To, Date and Message-ID headers:
    the texts say nothing of the recipient, so the ICS and the rest of the message
    (flattened) are built once per method and added to each recipient's own headers. A
    CANCEL to someone removed from a live invite is theirs alone (the ICS lists only them).
    """

    def __init__(self, invite: Invite) -> None:
        self.invite = invite
        self.recipients = {recipient.id: recipient for recipient in invite.recipients}  # by id
        # (method, removed, given ICS, the recipient if the email is theirs alone) -> the shared part
        self._shared: dict[tuple, Composed] = {}

    def compose(self, recipient: Recipient, method: ITipMethod, ics: bytes | None = None) -> Composed:
        """The email to ``recipient``. ``ics`` is given when an external provider made it."""
        invite = self.invite
        removed = recipient.status == RecipientStatus.REMOVED and not invite.is_cancelled
        alone = ics is None and method == ITipMethod.CANCEL and not invite.is_cancelled
        key = (method, removed, ics, recipient.id if alone else None)
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = self._shared_part(recipient, method, ics, removed, alone)
        raw = address(shared.raw, to_email=recipient.email, to_name=recipient.name,
                      message_id_domain=current_app.config["MAIL_FROM"].domain)
        return Composed(raw, shared.subject)

    def _shared_part(self, recipient: Recipient, method: ITipMethod, ics: bytes | None, removed: bool,
                     alone: bool) -> Composed:
        invite = self.invite
        if ics is None:  # a CANCEL to one removed from a live invite lists them; else everyone still invited
            ics = invite_ics(invite, method, [recipient] if alone else invite.invited)
        context = dict(invite=invite, method=method.value, removed=removed)
        email = build_invite_email(
            ics=ics,
            method=method,
            from_email=organizer_address(invite),
            from_name=invite.organizer_name or current_app.config["MAIL_FROM"].local,
            subject=subject_for(invite, method),
            text=render_template("email/invite.txt", **context),
            html=render_template("email/invite.html", **context),
        )
        return Composed(as_bytes(email), str(email["Subject"]))
