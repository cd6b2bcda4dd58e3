""""Reply as attendee" in the mail catcher: the whole loop without a mail server.

A caught invite gets buttons that write the iTIP REPLY (or COUNTER) a real calendar client
would send, in the shape the user picks, and feed it to the same ingest path as real mail
(``replies.demo_reply``: stored as an inbound message, then processed). Only when no real
mail server is configured (SMTP_URL unset) or in DEMO_MODE; otherwise 404 and no panel.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from flask import abort, current_app, flash, redirect, request, url_for

from ..domain import ITipMethod, Proposal, utc
from ..extensions import db
from ..models import Invite, OutboxMessage
from ..services import replies
from ..services.itip import CLIENT_SHAPES

SHAPE_LABELS = {"google": "Google Calendar", "outlook": "Outlook", "apple": "Apple Calendar",
                "thunderbird": "Thunderbird"}
PROPOSING_SHAPES = ("google", "outlook")  # Apple and Thunderbird never propose a time
_LOCAL_FORMAT = "%Y-%m-%dT%H:%M"


def _invite_ics(email: EmailMessage) -> bytes | None:
    for part in email.walk():
        if part.get_filename() == "invite.ics":
            return part.get_payload(decode=True)
    return None


def _zone(tzid: str) -> ZoneInfo:
    try:
        return ZoneInfo(tzid)
    except Exception:
        return ZoneInfo("UTC")


def panel(row: OutboxMessage, email: EmailMessage) -> dict | None:
    """What the show page needs to draw the panel, or None when it is not offered."""
    if not replies.demo_replies_enabled(current_app.config) or row.method != ITipMethod.REQUEST.value:
        return None
    invite = db.session.get(Invite, row.invite_id) if row.invite_id else None
    if invite is None or _invite_ics(email) is None:
        return None
    zone = _zone(invite.tzid)
    start = utc(invite.start) + timedelta(days=1)
    return {
        "attendee": row.target,
        "shapes": [(shape, SHAPE_LABELS.get(shape, shape)) for shape in CLIENT_SHAPES],
        "proposing": ", ".join(SHAPE_LABELS[s] for s in PROPOSING_SHAPES),
        "tzid": invite.tzid,
        "start": start.astimezone(zone).strftime(_LOCAL_FORMAT),
        "end": (start + (invite.end - invite.start)).astimezone(zone).strftime(_LOCAL_FORMAT),
    }


def _proposal(tzid: str) -> Proposal:
    zone = _zone(tzid)
    try:
        start = datetime.strptime(request.form.get("proposed_start", ""), _LOCAL_FORMAT).replace(tzinfo=zone)
        end = datetime.strptime(request.form.get("proposed_end", ""), _LOCAL_FORMAT).replace(tzinfo=zone)
    except ValueError:
        raise ValueError("Give the proposed start and end as dates and times.") from None
    if end <= start:
        raise ValueError("The proposed end must be after its start.")
    return Proposal(start=utc(start), end=utc(end), tzid=zone.key)


def send_reply(message_id: int, row: OutboxMessage, email: EmailMessage):
    """POST /mail/<id>/reply: build the reply, feed it in, show the invite it changed."""
    if panel(row, email) is None:
        abort(404)
    invite = db.session.get(Invite, row.invite_id)
    back = redirect(url_for("mailcatcher.show", message_id=message_id))
    answer = request.form.get("answer", "")
    shape = request.form.get("shape", "google")
    comment = " ".join(request.form.get("comment", "").split())[:500]
    if shape not in CLIENT_SHAPES:
        flash("Choose a calendar client.", "error")
        return back
    try:
        proposal = None
        if answer == "propose":
            if shape not in PROPOSING_SHAPES:
                raise ValueError(f"{SHAPE_LABELS[shape]} cannot propose a new time; choose "
                                 f"{' or '.join(SHAPE_LABELS[s] for s in PROPOSING_SHAPES)}.")
            proposal = _proposal(invite.tzid)
        elif answer not in replies.DEMO_ANSWERS:
            raise ValueError("Choose Accept, Decline, Tentative or Propose new time.")
        message = replies.demo_reply(invite_ics=_invite_ics(email), attendee_email=row.target,
                                     to_address=parseaddr(str(email["From"] or ""))[1], shape=shape, answer=answer,
                                     comment=comment, proposal=proposal)
    except ValueError as exc:
        flash(str(exc), "error")
        return back
    flash(f"{SHAPE_LABELS[shape]} replied as {row.target}: {message.outcome.value}"
          + (f" ({message.reason})" if message.reason else "") + ".",
          "success" if message.outcome.value == "applied" else "info")
    return redirect(url_for("invites.show", invite_id=invite.id))
