"""What an invite email says: the ICS for one recipient and the message around it."""
from __future__ import annotations

from email.message import EmailMessage

from flask import current_app, render_template

from ..domain import Attendee, ITipMethod, RecipientStatus
from ..models import Invite, Recipient
from . import ics as ics_service
from .mail import build_invite_email


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
    cancelled = method == ITipMethod.CANCEL
    return ics_service.build_ics(
        uid=invite.uid,
        sequence=invite.sequence,
        event=invite.event,
        method=method,
        organizer_email=organizer_address(invite),
        organizer_name=invite.organizer_name,
        attendees=[attendee(r) for r in recipients],
        cancelled=cancelled,
    )


def subject_for(invite: Invite, method: ITipMethod) -> str:
    if method == ITipMethod.CANCEL:
        return f"Cancelled: {invite.summary}"
    if invite.sequence > 0:
        return f"Updated invitation: {invite.summary}"
    return f"Invitation: {invite.summary}"


def compose(invite: Invite, recipient: Recipient, method: ITipMethod,
            ics: bytes | None = None) -> EmailMessage:
    """The email for one recipient. ``ics`` is given when an external provider made it."""
    if ics is None:
        if method == ITipMethod.CANCEL and not invite.is_cancelled:
            ics = invite_ics(invite, method, [recipient])  # removed from a live invite
        else:
            ics = invite_ics(invite, method)
    removed = recipient.status == RecipientStatus.REMOVED and not invite.is_cancelled
    context = dict(invite=invite, recipient=recipient, method=method.value, removed=removed)
    mail_from = current_app.config["MAIL_FROM"]
    return build_invite_email(
        ics=ics,
        method=method,
        from_email=organizer_address(invite),
        from_name=invite.organizer_name or mail_from.local,
        to_email=recipient.email,
        to_name=recipient.name,
        subject=subject_for(invite, method),
        text=render_template("email/invite.txt", **context),
        html=render_template("email/invite.html", **context),
        message_id_domain=mail_from.domain,
    )
