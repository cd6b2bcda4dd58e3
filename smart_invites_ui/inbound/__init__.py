"""Attendees' reply emails coming in (SPEC §4): ``POST /inbound/email?secret=...`` for
inbound-parse services, and the admins' "Inbound mail" page listing every message kept.

The worker's share (IMAP polling, messages left for later) is in ``jobs.py``; the
decisions are in ``services/replies.py``.
"""
from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from flask import Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy import func, select
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ..auth import admin_required
from ..extensions import csrf, db
from ..invites.forms import ActionForm
from ..models import InboundMessage, InboundOutcome, Invite
from ..security import public
from ..services import replies
from ..views import page_count, requested_page
from .jobs import poll_inbound

bp = Blueprint("inbound", __name__)

#: The form fields inbound-parse services put the raw message in: SendGrid (raw mode), Mailgun.
RAW_FIELDS = ("email", "body-mime")
#: Room for the other fields of a form around a message of the largest size.
FORM_SLACK = 1024 * 1024
PER_PAGE = 50


@bp.record_once
def _register_worker_hook(state) -> None:
    state.app.extensions.setdefault("worker_hooks", []).append(poll_inbound)


# --- POST /inbound/email ---------------------------------------------------------------------


@bp.post("/inbound/email")
@csrf.exempt
@public("secret")
def receive_email():
    expected = current_app.config.get("INBOUND_EMAIL_SECRET")
    if not expected:
        abort(404)  # disabled until a secret is configured
    given = request.args.get("secret", "")
    if not given:
        return jsonify(error="the secret query parameter is missing"), 401
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        return jsonify(error="wrong secret"), 403
    raw = _raw_message()
    if not raw.strip():
        return jsonify(error="no message: send it as the body (message/rfc822) or in the form field "
                             "'email' (SendGrid) or 'body-mime' (Mailgun)"), 400
    received = replies.receive(raw, "http")
    # 200 whatever came of it ("received": stored, the worker reads it next), since the message is
    # kept: Mailgun retries any other answer, even a 202, and a retry would only store it twice.
    return jsonify(id=received.id, outcome=received.outcome.value, reason=received.reason), 200


def _raw_message() -> bytes:
    """The raw RFC 822 message: the body itself, or the form field an inbound-parse service uses."""
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    is_form = mimetype in ("multipart/form-data", "application/x-www-form-urlencoded")
    limit = replies.MAX_INBOUND_BYTES + (FORM_SLACK if is_form else 0)
    if request.content_length is not None and request.content_length > limit:
        abort(413)
    request.max_content_length = limit  # this route's own limit; reading past it answers 413
    body = request.get_data(cache=False)
    if mimetype == "multipart/form-data":
        raw = _multipart_field(body, options.get("boundary", ""))
    elif mimetype == "application/x-www-form-urlencoded":
        fields = dict(parse_qsl(body, keep_blank_values=True))
        raw = next((fields[name.encode()] for name in RAW_FIELDS if name.encode() in fields), b"")
    else:
        raw = body
    if len(raw) > replies.MAX_INBOUND_BYTES:
        abort(413)
    return raw


def _multipart_field(body: bytes, boundary: str) -> bytes:
    """The first of RAW_FIELDS in a multipart form, as the bytes sent (not decoded as text,
    which would spoil 8-bit messages in other charsets)."""
    if not boundary:
        abort(400, "multipart/form-data without a boundary")
    decoder = MultipartDecoder(boundary.encode("latin-1", "replace"))
    try:
        decoder.receive_data(body)
        decoder.receive_data(None)
        found: dict[str, bytes] = {}
        name, chunks = None, []
        event = decoder.next_event()
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, (Field, File)):
                name, chunks = event.name, []
            elif isinstance(event, Data) and name in RAW_FIELDS:
                chunks.append(event.data)
                if not event.more_data:
                    found.setdefault(name, b"".join(chunks))
            event = decoder.next_event()
    except ValueError:
        abort(400, "the multipart form could not be read")
    return next((found[name] for name in RAW_FIELDS if name in found), b"")


# --- the admins' page ------------------------------------------------------------------------

OUTCOME_FILTERS = (("", "All"), *((o.value, o.value.capitalize()) for o in InboundOutcome))


@bp.get("/admin/inbound")
@admin_required
def index():
    outcome = request.args.get("outcome", "")
    if outcome not in dict(OUTCOME_FILTERS):
        outcome = ""
    page = requested_page()
    where = [InboundMessage.outcome == InboundOutcome(outcome)] if outcome else []
    total = db.session.scalar(select(func.count()).select_from(InboundMessage).where(*where)) or 0
    # Everything but the raw bytes, which can be 25 MB each.
    rows = db.session.execute(
        select(InboundMessage.id, InboundMessage.source, InboundMessage.message_id, InboundMessage.from_address,
               InboundMessage.subject, InboundMessage.outcome, InboundMessage.reason, InboundMessage.received_at,
               InboundMessage.processed_at, InboundMessage.attempts, InboundMessage.invite_id,
               func.length(InboundMessage.raw).label("size"), Invite.summary.label("invite_summary"))
        .outerjoin(Invite, Invite.id == InboundMessage.invite_id)
        .where(*where).order_by(InboundMessage.id.desc())
        .offset((page - 1) * PER_PAGE).limit(PER_PAGE)
    ).all()
    counts = dict(db.session.execute(
        select(InboundMessage.outcome, func.count()).group_by(InboundMessage.outcome)).all())
    return render_template(
        "inbound/index.html", rows=rows, outcome=outcome, filters=OUTCOME_FILTERS,
        counts={o.value: n for o, n in counts.items()}, page=page, total=total,
        pages=page_count(total, PER_PAGE), reprocessable={o.value for o in replies.REPROCESSABLE},
        inbound_enabled=bool(current_app.config.get("INBOUND_EMAIL_SECRET")),
        imap_enabled=bool(current_app.config.get("IMAP_URL")))


def _message_or_404(message_id: int) -> InboundMessage:
    message = db.session.get(InboundMessage, message_id)
    if message is None:
        abort(404)
    return message


@bp.get("/admin/inbound/<int:message_id>/raw.eml")
@admin_required
def raw(message_id: int):
    message = _message_or_404(message_id)
    return Response(message.raw, mimetype="message/rfc822",
                    headers={"Content-Disposition": f'attachment; filename="inbound-{message.id}.eml"'})


@bp.post("/admin/inbound/<int:message_id>/reprocess")
@admin_required
def reprocess(message_id: int):
    message = _message_or_404(message_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    if message.outcome not in replies.REPROCESSABLE:
        flash(f"Message #{message.id} was {message.outcome.value}; only unmatched or failed messages are "
              "re-processed.", "error")
    else:
        outcome = replies.reprocess(message)
        flash(f"Re-processed message #{message.id}: {outcome.value}. {message.reason}".strip(),
              "success" if outcome == InboundOutcome.APPLIED else "info")
    return redirect(url_for(".index", outcome=request.args.get("outcome") or None))
