"""How each kind of outbox row is delivered: emails over SMTP (or into the mail
catcher when SMTP_URL is unset), callbacks over HTTPS with their signature."""
from __future__ import annotations

from flask import current_app
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import joinedload

from ..domain import ITipMethod, RecipientStatus
from ..extensions import db
from ..models import Invite, Recipient
from .invite_mail import Composer, organizer_address
from .mail import DeliveryError, SmtpSettings, SmtpTransport, ascii_address
from .outbox import Outcome

CATCHER = "catcher"

# The invite as it stands, with all its recipients (the ICS lists them) in one query,
# built once; the email's recipient then comes from the session. As it stands now, even
# when the session loaded it before (on PostgreSQL a batch runs in one session transaction,
# in autocommit: outbox.deliver_claimed).
_INVITE = (select(Invite).where(Invite.id == bindparam("invite_id")).options(joinedload(Invite.recipients))
           .execution_options(populate_existing=True))


class EmailDeliverer:
    """Renders an invite email from the invite as it stands and sends it.

    One instance lives for a batch, so the SMTP connection is reused and what the
    recipients of an invite share is built once (:class:`Composer`).
    """

    def __init__(self, smtp_url: str | None):
        self.transport = SmtpTransport(SmtpSettings.from_url(smtp_url)) if smtp_url else None
        self.composer = Composer()

    def __call__(self, message: Row) -> Outcome:
        invite = (db.session.execute(_INVITE, {"invite_id": message.invite_id}).unique().scalar_one_or_none()
                  if message.invite_id else None)
        recipient = db.session.get(Recipient, message.recipient_id) if message.recipient_id else None
        if invite is None or recipient is None:
            return Outcome(ok=False, retry=False, error="the invite or recipient no longer exists")
        method = ITipMethod(message.method)
        if method == ITipMethod.REQUEST and (invite.is_cancelled or recipient.status == RecipientStatus.REMOVED):
            return Outcome(ok=False, error="superseded")  # a CANCEL has been queued for them instead
        try:
            email = self.composer.compose(invite, recipient, method, message.payload)
        except DeliveryError as exc:  # an address no SMTP server can take
            return Outcome(ok=False, error=str(exc), retry=not exc.permanent)
        rendered = dict(rendered=email.raw, subject=email.subject, sequence=invite.sequence)
        if self.transport is None:
            return Outcome(ok=True, transport=CATCHER, **rendered)
        try:
            self.transport.send(email.raw, from_addr=ascii_address(organizer_address(invite)),
                                to_addrs=[ascii_address(recipient.email)])
        except DeliveryError as exc:
            return Outcome(ok=False, error=str(exc), retry=not exc.permanent, transport="smtp", **rendered)
        return Outcome(ok=True, transport="smtp", **rendered)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def email_deliverer() -> EmailDeliverer:
    return EmailDeliverer(current_app.config["SMTP_URL"] or None)
