"""Admin pages for the API: its clients (create, list, revoke; a secret is shown
once) and the callbacks sent to them, each with its delivery state."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from ..auth import admin_required
from ..extensions import db
from ..invites.forms import ActionForm
from ..models import ApiClient, Invite, OutboxKind, OutboxMessage, OutboxState
from ..services import api_clients as service
from ..views import page_count, requested_page

bp = Blueprint("api_admin", __name__, url_prefix="/admin")

DELIVERIES_PER_PAGE = 50


class ApiClientForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired("Give the API client a name."), Length(max=200)],
                       description="Who calls the API, e.g. “Booking website”. Shown on the invites it makes.")


def _render_clients(form: ApiClientForm, *, new_client: ApiClient | None = None, secret: str | None = None,
                    status: int = 200):
    clients = db.session.scalars(select(ApiClient).order_by(ApiClient.revoked_at.is_not(None), ApiClient.name,
                                                            ApiClient.id)).all()
    counts = dict(db.session.execute(
        select(Invite.api_client_id, func.count()).where(Invite.api_client_id.is_not(None))
        .group_by(Invite.api_client_id)).all())
    response = render_template("api_admin/clients.html", clients=clients, counts=counts, form=form,
                               action_form=ActionForm(), new_client=new_client, secret=secret)
    headers = {"Cache-Control": "no-store"} if secret else {}
    return response, status, headers


@bp.get("/api-clients")
@admin_required
def clients():
    return _render_clients(ApiClientForm())


@bp.post("/api-clients")
@admin_required
def create_client():
    form = ApiClientForm()
    if form.validate_on_submit():
        try:
            client, secret = service.create_client(form.name.data, created_by=current_user)
        except ValueError as exc:
            form.name.errors = [*form.name.errors, str(exc)]
        else:
            # Shown on this response only: never stored in plain text, never in the session.
            return _render_clients(ApiClientForm(formdata=None), new_client=client, secret=secret)
    return _render_clients(form, status=422)


@bp.post("/api-clients/<int:client_id>/revoke")
@admin_required
def revoke_client(client_id: int):
    client = db.session.get(ApiClient, client_id)
    if client is None:
        abort(404)
    if not ActionForm().validate_on_submit():
        abort(400)
    if client.revoked_at is None:
        service.revoke(client)
        flash(f"Revoked “{client.name}”: its key no longer works.", "success")
    return redirect(url_for(".clients"))


STATE_FILTERS = (("", "All"), ("queued", "Waiting"), ("sending", "Sending"), ("sent", "Delivered"),
                 ("failed", "Failed"))


@bp.get("/callbacks")
@admin_required
def deliveries():
    state = request.args.get("state", "")
    if state not in dict(STATE_FILTERS):
        state = ""
    page = requested_page()
    where = [OutboxMessage.kind == OutboxKind.CALLBACK]
    if state:
        where.append(OutboxMessage.state == OutboxState(state))
    total = db.session.scalar(select(func.count()).select_from(OutboxMessage).where(*where)) or 0
    client = aliased(ApiClient)
    rows = db.session.execute(
        select(OutboxMessage, Invite, client)
        .outerjoin(Invite, Invite.id == OutboxMessage.invite_id)
        .outerjoin(client, client.id == OutboxMessage.api_client_id)
        .where(*where).order_by(OutboxMessage.id.desc())
        .offset((page - 1) * DELIVERIES_PER_PAGE).limit(DELIVERIES_PER_PAGE)
    ).all()
    counts = dict(db.session.execute(
        select(OutboxMessage.state, func.count()).where(OutboxMessage.kind == OutboxKind.CALLBACK)
        .group_by(OutboxMessage.state)).all())
    pages = page_count(total, DELIVERIES_PER_PAGE)
    return render_template("api_admin/deliveries.html", rows=rows, state=state, filters=STATE_FILTERS,
                           counts={s.value: n for s, n in counts.items()}, page=page, pages=pages, total=total)
