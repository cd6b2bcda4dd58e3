"""How each kind of outbox row is delivered: emails over SMTP (or into the mail
catcher when SMTP_URL is unset), callbacks over HTTPS with their signature."""
from __future__ import annotations

from time import monotonic

from flask import current_app
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import joinedload

from ..domain import ITipMethod, RecipientStatus
from ..extensions import db
from ..models import Invite
from .invite_mail import Composer, organizer_address
from .mail import DeliveryError, SmtpSettings, SmtpTransport, ascii_address
from .outbox import Outcome

CATCHER = "catcher"

# The invite as it stands, with all its recipients (the ICS lists them) in one query, built
# once. As it stands now, even when the session loaded it before.
_INVITE = (select(Invite).where(Invite.id == bindparam("invite_id")).options(joinedload(Invite.recipients))
           .execution_options(populate_existing=True))


class EmailDeliverer:
    """Renders an invite email from the invite as it stands and sends it.

    One instance lives for a batch, so the SMTP connection is reused. An invite's emails
    are queued together (an edit, an import, a new invite) and so come one after another in
    a batch: the invite is read once for each such run, and its recipients' emails are
    composed from that read (:class:`Composer` builds what they share once), for at most
    ``READ_SERVES_SECONDS`` (a slow relay takes a while per email). A change committed
    meanwhile queues emails of its own, which go after these: as if these had gone out at
    the read.
    """

    READ_SERVES_SECONDS = 1.0

    def __init__(self, smtp_url: str | None):
        self.transport = SmtpTransport(SmtpSettings.from_url(smtp_url)) if smtp_url else None
        # The invite read last: its id, when it was read, and the read (None when it is gone).
        self._read_id: int | None = None
        self._read_at = 0.0
        self._read: Composer | None = None

    def _composer(self, invite_id: int | None) -> Composer | None:
        """The Composer of the invite as read for the run of emails to it this one is in."""
        if invite_id is None:
            return None
        if invite_id != self._read_id or monotonic() - self._read_at > self.READ_SERVES_SECONDS:
            self._read_id, self._read_at = invite_id, monotonic()
            invite = db.session.execute(_INVITE, {"invite_id": invite_id}).unique().scalar_one_or_none()
            if invite is not None:
                # Kept as read: on SQLite each email's outcome is committed, which would
                # otherwise expire it and have the next email load it again, attribute by attribute.
                db.session.expunge(invite)
            self._read = Composer(invite) if invite is not None else None
        return self._read

    def __call__(self, message: Row) -> Outcome:
        composer = self._composer(message.invite_id)
        invite = composer.invite if composer is not None else None
        recipient = composer.recipients.get(message.recipient_id) if composer is not None else None
        if invite is None or recipient is None:
            return Outcome(ok=False, retry=False, error="the invite or recipient no longer exists")
        method = ITipMethod(message.method)
        if method == ITipMethod.REQUEST and (invite.is_cancelled or recipient.status == RecipientStatus.REMOVED):
            return Outcome(ok=False, error="superseded")  # a CANCEL has been queued for them instead
        try:
            email = composer.compose(recipient, method, message.payload)
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
