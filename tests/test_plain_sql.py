"""PlainSelect (smart_invites_ui/plain_sql.py) gives exactly what SQLAlchemy's execution gives:
the same rows, with values converted by the columns' types, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import bindparam, select

from smart_invites_ui.domain import InviteStatus, RecipientStatus
from smart_invites_ui.extensions import db
from smart_invites_ui.invites import _EMAILS, _INVITE_WITH_RECIPIENTS, _REPLIES
from smart_invites_ui.models import NotificationSource, Recipient
from smart_invites_ui.plain_sql import PlainSelect
from smart_invites_ui.services.notifications import apply_notification
from tests.conftest import make_invite


def same_as_sqlalchemy(query: PlainSelect, **params) -> list:
    connection = db.session.connection()
    plain = query.all(connection, **params)
    result = connection.execute(query.statement, params)
    assert all(row._fields == tuple(result.keys()) for row in plain)
    assert [tuple(row) for row in plain] == [tuple(row) for row in result]
    return plain


def test_rows_and_types_match_sqlalchemys(app):
    invite = make_invite(emails=("ann@example.org", "bob@example.org"))
    apply_notification({"smart_invite": {"smart_invite_id": invite.smart_invite_id,
                                         "reply": {"email": "ann@example.org", "status": "declined",
                                                   "comment": "Away — sorry"}}},
                       source=NotificationSource.WEBHOOK)
    rows = same_as_sqlalchemy(_INVITE_WITH_RECIPIENTS, invite_id=invite.id)
    assert [row.email for row in rows] == ["ann@example.org", "bob@example.org"]
    ann = rows[0]
    assert ann.invite_status is InviteStatus.ACTIVE and ann.status is RecipientStatus.DECLINED
    assert isinstance(ann.replied_at, datetime) and ann.replied_at.utcoffset() is not None  # aware, in UTC
    assert isinstance(ann.needs_attention, bool)
    assert ann.comment == "Away — sorry"
    replies = same_as_sqlalchemy(_REPLIES, invite_id=invite.id)
    assert [(r.email, r.status) for r in replies] == [("ann@example.org", RecipientStatus.DECLINED)]


def test_enum_parameters_are_bound_by_their_type(app):
    invite = make_invite(emails=("ann@example.org",))
    emails = same_as_sqlalchemy(_EMAILS, invite_id=invite.id)  # kind = OutboxKind.EMAIL is a bound enum
    assert len(emails) == 1 and emails[0].target == "ann@example.org"
    by_kind = PlainSelect(select(Recipient.email).where(Recipient.status == bindparam("status")))
    assert [r.email for r in by_kind.all(db.session.connection(), status=RecipientStatus.PENDING)] == [
        "ann@example.org"]


def test_no_rows_and_scalars(app):
    assert _INVITE_WITH_RECIPIENTS.all(db.session.connection(), invite_id=987654) == []
    assert _INVITE_WITH_RECIPIENTS.first(db.session.connection(), invite_id=987654) is None


def test_expanding_parameters_are_refused(app):
    query = PlainSelect(select(Recipient.id).where(Recipient.email.in_(bindparam("emails", expanding=True))))
    with pytest.raises(ValueError):
        query.all(db.session.connection(), emails=["ann@example.org"])
