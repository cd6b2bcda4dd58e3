"""The built-in mail catcher: with no SMTP_URL, every email the app sends lands here."""
from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

from flask import Blueprint, Response, abort, current_app, render_template
from sqlalchemy import func, select

from ..extensions import db
from ..models import OutboxKind, OutboxMessage, OutboxState
from ..services.delivery import CATCHER
from ..views import page_count, requested_page
from . import reply

bp = Blueprint("mailcatcher", __name__, url_prefix="/mail")


def _caught():
    return select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.EMAIL,
                                       OutboxMessage.state == OutboxState.SENT,
                                       OutboxMessage.transport == CATCHER)


def _message_or_404(message_id: int) -> tuple[OutboxMessage, EmailMessage]:
    row = db.session.scalar(_caught().where(OutboxMessage.id == message_id))
    if row is None or row.rendered is None:
        abort(404)
    return row, message_from_bytes(row.rendered, policy=default)


def _part(email: EmailMessage, content_type: str):
    for part in email.walk():
        if part.get_content_type() == content_type and not part.is_attachment():
            return part
    return None


@bp.get("")
def index():
    page = requested_page()
    per_page = 50
    total = db.session.scalar(select(func.count()).select_from(_caught().subquery())) or 0
    rows = db.session.scalars(_caught().order_by(OutboxMessage.id.desc())
                              .offset((page - 1) * per_page).limit(per_page)).all()
    return render_template("mailcatcher/index.html", rows=rows, page=page, total=total,
                           pages=page_count(total, per_page),
                           smtp_configured=bool(current_app.config["SMTP_URL"]))


@bp.get("/<int:message_id>")
def show(message_id: int):
    row, email = _message_or_404(message_id)
    text = _part(email, "text/plain")
    return render_template("mailcatcher/show.html", row=row, email=email,
                           text=text.get_content() if text else "",
                           has_html=_part(email, "text/html") is not None,
                           reply_panel=reply.panel(row, email))


@bp.post("/<int:message_id>/reply")
def reply_as_attendee(message_id: int):
    """The "Reply as attendee" buttons (``reply.py``): a real iTIP reply through the inbound path."""
    row, email = _message_or_404(message_id)
    return reply.send_reply(message_id, row, email)


@bp.get("/<int:message_id>/body.html")
def html_body(message_id: int):
    """The HTML part as the recipient sees it, in a sandboxed frame with no scripts."""
    _, email = _message_or_404(message_id)
    part = _part(email, "text/html")
    if part is None:
        abort(404)
    response = Response(part.get_content(), mimetype="text/html")
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/<int:message_id>/invite.ics")
def ics(message_id: int):
    _, email = _message_or_404(message_id)
    for part in email.walk():
        if part.get_filename() == "invite.ics":
            return Response(part.get_payload(decode=True), mimetype="text/calendar",
                            headers={"Content-Disposition": 'attachment; filename="invite.ics"'})
    abort(404)


@bp.get("/<int:message_id>/message.eml")
def raw(message_id: int):
    row, _ = _message_or_404(message_id)
    return Response(row.rendered, mimetype="message/rfc822",
                    headers={"Content-Disposition": f'attachment; filename="message-{row.id}.eml"'})
