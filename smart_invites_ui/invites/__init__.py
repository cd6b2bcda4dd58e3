"""Pages for staff: list, create, watch live, change and cancel invites."""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import bindparam, select

from ..domain import InviteSource, InviteStatus, ITipMethod, RecipientStatus
from ..extensions import db
from ..models import ApiClient, Invite, OutboxKind, OutboxMessage, Recipient, Reply, User, now_utc
from ..plain_sql import PlainSelect, json_rows, read_engine, read_together
from ..services import invites as service
from ..services.invite_mail import invite_ics
from ..services.providers import ProviderError
from ..views import page_count, requested_page
from .forms import ActionForm, AddRecipientsForm, EventForm, NewInviteForm, timezone_choices

bp = Blueprint("invites", __name__, url_prefix="/invites")


def _invite_or_404(invite_id: int) -> Invite:
    invite = db.session.get(Invite, invite_id)
    if invite is None:
        abort(404)
    return invite


def _recipient_or_404(invite: Invite, recipient_id: int) -> Recipient:
    recipient = db.session.get(Recipient, recipient_id)
    if recipient is None or recipient.invite_id != invite.id:
        abort(404)
    return recipient


def _apply_errors(form, errors: dict[str, str]) -> None:
    for field_name, message in errors.items():
        field = getattr(form, field_name, None)
        if field is not None and hasattr(field, "errors"):
            field.errors = [*field.errors, message]
        else:
            form.form_errors.append(message)


@bp.get("")
def index():
    q = request.args.get("q", "").strip()
    status = request.args.get("status", "")
    if status not in dict(service.ListFilter.CHOICES):
        status = ""
    page = requested_page()
    per_page = 25
    listed = service.list_invites(q, status, page, per_page)
    return render_template("invites/index.html", rows=listed.rows, total=listed.total, q=q, status=status,
                           page=page, pages=page_count(listed.total, per_page), filters=service.ListFilter.CHOICES,
                           attention=listed.attention)


@bp.route("/new", methods=["GET", "POST"])
def new():
    form = NewInviteForm()
    if request.method == "GET":
        form.tzid.data = current_user.timezone or "UTC"
        form.organizer_name.data = current_user.name
        return render_template("invites/new.html", form=form)
    if form.validate_on_submit():
        event = form.event()
        recipients = form.recipient_list()
        if event is not None and recipients is not None:
            try:
                invite = service.create_invite(
                    event=event, recipients=recipients, smart_invite_id=form.smart_invite_id.data,
                    organizer_name=form.organizer_name.data or "", created_by=current_user)
            except service.InviteError as exc:
                _apply_errors(form, exc.errors)
            except ProviderError as exc:
                db.session.rollback()  # the invite was flushed before the provider was asked
                form.form_errors.append(f"The invite provider refused it: {exc}")
            else:
                flash(f"Invite sent to {len(recipients)} recipient{'s' if len(recipients) != 1 else ''}.",
                      "success")
                return redirect(url_for(".show", invite_id=invite.id))
    else:
        form.recipient_list() if form.recipients.data else None
    return render_template("invites/new.html", form=form), 422


# The live part of an invite's page (templates/invites/_live.html), which every page left
# open asks for again whenever the invite changes: named tuples from statements built once
# and run as PlainSelects on the read pool (the ORM's per-statement work was half the poll).
class LiveInvite(NamedTuple):
    id: int
    version: int
    tzid: str
    status: InviteStatus
    end: datetime


_R = Recipient.__table__.c
_RECIPIENT_COLUMNS = (_R.id, _R.email, _R.name, _R.status, _R.comment, _R.proposal_start, _R.proposal_end,
                      _R.replied_at, _R.needs_attention)
_RECIPIENTS = PlainSelect(select(*_RECIPIENT_COLUMNS).where(_R.invite_id == bindparam("invite_id")).order_by(_R.id))
# The invite (its columns labelled invite_*) with its recipients, in one query.
_I = Invite.__table__.c
_INVITE_COLUMNS = tuple(_I[name].label(f"invite_{name}") for name in LiveInvite._fields)
_INVITE_WITH_RECIPIENTS = PlainSelect(
    select(*_INVITE_COLUMNS, *_RECIPIENT_COLUMNS)
    .select_from(Invite.__table__.outerjoin(Recipient.__table__, _R.invite_id == _I.id))
    .where(_I.id == bindparam("invite_id"))
    .order_by(_R.id)
)
_P = Reply.__table__.c
_REPLIES = PlainSelect(select(_P.received_at, _P.email, _P.status, _P.comment, _P.proposal_start, _P.proposal_end,
                   _P.applied, _P.note, _P.source)
            .where(_P.invite_id == bindparam("invite_id"))
            .order_by(_P.received_at.desc(), _P.id.desc()))
# What the page shows of each email, not the message itself (the ICS and the delivered email).
_O = OutboxMessage.__table__.c
_EMAILS = PlainSelect(select(_O.id, _O.target, _O.method, _O.sequence, _O.state, _O.transport, _O.attempts, _O.sent_at,
                  _O.last_error, _O.next_attempt_at)
           .where(_O.invite_id == bindparam("invite_id"), _O.kind == OutboxKind.EMAIL)
           .order_by(_O.id.desc()))


# The same, on PostgreSQL, in one statement (``live_in_one_statement``).
_LIVE_IN_ONE = PlainSelect(select(*(_I[name] for name in LiveInvite._fields),
                                 json_rows(_RECIPIENTS.statement).label("recipients"),
                                 json_rows(_REPLIES.statement).label("replies"),
                                 json_rows(_EMAILS.statement).label("emails")).where(_I.id == bindparam("invite_id")))


# What the invite's page shows of it: its columns, and who made it (an API client's name, else
# a user's address), read with the live part's three queries: one round trip on PostgreSQL,
# where reading the invite and its maker in the ORM session took four more (tests/test_invite_pages.py).
class InvitePage(NamedTuple):
    id: int
    version: int
    smart_invite_id: str
    summary: str
    description: str
    location: str
    start: datetime
    end: datetime
    tzid: str
    organizer_name: str
    status: InviteStatus
    source: InviteSource
    created_at: datetime
    api_client: str | None  # the API client's name, when one made it
    created_by: str | None  # the user's address, when one made it


_A = ApiClient.__table__.c
_U = User.__table__.c
_INVITE_PAGE = PlainSelect(
    select(*(_I[name] for name in InvitePage._fields[:-2]), _A.name.label("api_client"), _U.email.label("created_by"))
    .select_from(Invite.__table__.outerjoin(ApiClient.__table__, _A.id == _I.api_client_id)
                 .outerjoin(User.__table__, _U.id == _I.created_by_id))
    .where(_I.id == bindparam("invite_id"))
)


def _detail_context(invite_id: int) -> dict:
    """The invite's page (templates/invites/show.html and _live.html), as committed (read on the
    read pool); 404 when there is no such invite."""
    params = {"invite_id": invite_id}
    found, recipients, replies, emails = read_together((_INVITE_PAGE, params), (_RECIPIENTS, params),
                                                       (_REPLIES, params), (_EMAILS, params))
    if not found:
        abort(404)
    return _live_context(InvitePage(*found[0]), recipients, replies, emails)


def _live_context(invite, recipients: list, replies: list, emails: list) -> dict:
    cancelled = invite.status == InviteStatus.CANCELLED
    return dict(invite=invite, recipients=recipients, replies=replies, emails=emails, cancelled=cancelled,
                live=not cancelled and invite.end > now_utc())


@bp.get("/<int:invite_id>")
def show(invite_id: int):
    return render_template("invites/show.html", add_form=AddRecipientsForm(), **_detail_context(invite_id))


@bp.get("/<int:invite_id>/live")
def live(invite_id: int):
    """The polled fragment: 204 when the page already shows this version.

    Most polls never reach this view: ``live_poll.UnchangedPoll`` answers the
    unchanged ones before Flask. This is the full path for everything else.
    """
    # The fragment's reads in one round trip on PostgreSQL: the full path rarely sees an
    # unchanged version, which the fast path answers.
    read = live_in_one_statement if read_engine().dialect.name == "postgresql" else live_together
    found = read(invite_id)
    if found is None:
        abort(404)
    invite, recipients, replies, emails = found
    if request.args.get("v", type=int) == invite.version:
        return Response(status=204)
    return render_template("invites/_live.html", **_live_context(invite, recipients, replies, emails))


def live_in_one_statement(invite_id: int) -> tuple | None:
    """PostgreSQL: the live part's invite, recipients, replies and emails, as ``live_together``
    reads them, in one statement (``json_rows``): its three statements, sent together, cost
    this process and the server more than the one."""
    found = _LIVE_IN_ONE.read_first(invite_id=invite_id)
    if found is None:
        return None
    return LiveInvite(*found[:len(LiveInvite._fields)]), found.recipients, found.replies, found.emails


def live_together(invite_id: int) -> tuple | None:
    """The live part's invite, recipients, replies and emails, in three queries read together
    (one round trip on PostgreSQL); None when there is no such invite."""
    params = {"invite_id": invite_id}
    rows, replies, emails = read_together((_INVITE_WITH_RECIPIENTS, params), (_REPLIES, params), (_EMAILS, params))
    if not rows:
        return None
    return LiveInvite(*rows[0][:len(_INVITE_COLUMNS)]), [row for row in rows if row.id is not None], replies, emails


@bp.get("/<int:invite_id>/invite.ics")
def download_ics(invite_id: int):
    invite = _invite_or_404(invite_id)
    method = ITipMethod.CANCEL if invite.is_cancelled else ITipMethod.REQUEST
    body = invite.provider_ics if invite.provider_ics and not invite.is_cancelled else invite_ics(invite, method)
    filename = f"{invite.smart_invite_id}.ics".replace('"', "")
    return Response(body, mimetype="text/calendar", headers={
        "Content-Disposition": f"attachment; filename=\"{_ascii_filename(filename)}\""})


def _ascii_filename(name: str) -> str:
    # ASCII only: WSGI servers send header values as Latin-1 and fail on anything else.
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name) or "invite.ics"


@bp.route("/<int:invite_id>/edit", methods=["GET", "POST"])
def edit(invite_id: int):
    invite = _invite_or_404(invite_id)
    if invite.is_cancelled:
        flash("A cancelled invite cannot be changed.", "error")
        return redirect(url_for(".show", invite_id=invite.id))
    form = EventForm(obj=None)
    if invite.tzid not in dict(timezone_choices()):  # e.g. "Etc/GMT-3" from the API or an import
        form.tzid.choices = [(invite.tzid, invite.tzid), *timezone_choices()]
    if request.method == "GET":
        form.summary.data = invite.summary
        form.description.data = invite.description
        form.location.data = invite.location
        form.tzid.data = invite.tzid
        form.start.data = service.local_datetime(invite.start, invite.tzid).replace(tzinfo=None)
        form.end.data = service.local_datetime(invite.end, invite.tzid).replace(tzinfo=None)
        form.organizer_name.data = invite.organizer_name
        return render_template("invites/edit.html", form=form, invite=invite)
    if form.validate_on_submit():
        event = form.event(base=invite.event)
        if event is not None:
            try:
                changed = service.update_event(invite, event, organizer_name=form.organizer_name.data or "")
            except service.InviteError as exc:
                db.session.rollback()
                _apply_errors(form, exc.errors)
            except ProviderError as exc:
                db.session.rollback()
                form.form_errors.append(f"The invite provider refused the change: {exc}")
            else:
                if changed:
                    flash("Invite updated; everyone invited gets the new version.", "success")
                else:
                    flash("Nothing changed, so nothing was sent.", "info")
                return redirect(url_for(".show", invite_id=invite.id))
    return render_template("invites/edit.html", form=form, invite=invite), 422


def _action(invite_id: int, do, success: str, recipient_id: int | None = None):
    """Run one staff action from a button; errors come back as a flash message."""
    invite = _invite_or_404(invite_id)
    recipient = _recipient_or_404(invite, recipient_id) if recipient_id is not None else None
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        do(invite, recipient) if recipient is not None else do(invite)
    except (service.InviteError, ProviderError) as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        flash(success.format(email=recipient.email if recipient else ""), "success")
    return redirect(url_for(".show", invite_id=invite_id))


@bp.post("/<int:invite_id>/recipients")
def add_recipients(invite_id: int):
    invite = _invite_or_404(invite_id)
    if invite.is_cancelled:  # the page has no form to show the error on
        flash("A cancelled invite cannot be changed.", "error")
        return redirect(url_for(".show", invite_id=invite.id))
    form = AddRecipientsForm()
    if form.validate_on_submit():
        recipients = form.recipient_list()
        if recipients:
            try:
                added = service.add_recipients(invite, recipients)
            except (service.InviteError, ProviderError) as exc:
                db.session.rollback()
                form.recipients.errors = [*form.recipients.errors, str(exc)]
            else:
                flash(f"Invited {', '.join(r.email for r in added)}.", "success")
                return redirect(url_for(".show", invite_id=invite.id))
    return render_template("invites/show.html", add_form=form, **_detail_context(invite.id)), 422


@bp.post("/<int:invite_id>/recipients/<int:recipient_id>/remove")
def remove_recipient(invite_id: int, recipient_id: int):
    return _action(invite_id, service.remove_recipient, "Removed {email}; they get a cancellation.", recipient_id)


@bp.post("/<int:invite_id>/recipients/<int:recipient_id>/resend")
def resend(invite_id: int, recipient_id: int):
    return _action(invite_id, service.resend, "Sent the invite to {email} again.", recipient_id)


@bp.post("/<int:invite_id>/recipients/<int:recipient_id>/accept-proposal")
def accept_proposal(invite_id: int, recipient_id: int):
    return _action(invite_id, service.accept_proposal,
                   "Moved the event to the time {email} proposed; everyone gets the new time.", recipient_id)


@bp.post("/<int:invite_id>/recipients/<int:recipient_id>/dismiss")
def dismiss(invite_id: int, recipient_id: int):
    return _action(invite_id, service.dismiss_attention, "Marked {email}'s reply as dealt with.", recipient_id)


@bp.post("/<int:invite_id>/cancel")
def cancel(invite_id: int):
    return _action(invite_id, service.cancel_invite, "Invite cancelled; everyone invited gets a cancellation.")


@bp.app_template_filter("localtime")
def localtime_filter(value: datetime | None, tzid: str = "UTC", fmt: str = "%a %d %b %Y, %H:%M") -> str:
    if value is None:
        return ""
    return service.local_datetime(value, tzid or "UTC").strftime(fmt)


@bp.app_template_filter("timerange")
def timerange_filter(start: datetime | None, end: datetime | None, tzid: str = "UTC") -> str:
    """"Tue 05 Jan 2027, 09:00 – 09:30", with the end's date only when it differs."""
    if start is None or end is None:
        return ""
    first = service.local_datetime(start, tzid or "UTC")
    last = service.local_datetime(end, tzid or "UTC")
    end_format = "%H:%M" if first.date() == last.date() else "%a %d %b %Y, %H:%M"
    return f"{first:%a %d %b %Y, %H:%M} – {last.strftime(end_format)}"


@bp.app_context_processor
def status_values() -> dict:
    return {"RecipientStatus": RecipientStatus}
