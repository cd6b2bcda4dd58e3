"""PlainSelect (smart_invites_ui/plain_sql.py) gives exactly what SQLAlchemy's execution gives:
the same rows, with values converted by the columns' types, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import bindparam, func, insert, select, update

from smart_invites_ui.domain import InviteStatus, RecipientStatus
from smart_invites_ui.extensions import db
from smart_invites_ui.invites import _EMAILS, _INVITE_WITH_RECIPIENTS, _REPLIES
from smart_invites_ui.models import Invite, NotificationSource, Recipient, Reply
from smart_invites_ui.plain_sql import PlainSelect, PlainWrite
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


def _reply_values(invite, **changes) -> dict:
    values = {"invite_id": invite.id, "recipient_id": invite.recipients[0].id, "notification_id": None,
              "email": "ann@example.org", "status": RecipientStatus.TENTATIVE, "comment": "Maybe — late",
              "proposal_start": datetime(2031, 3, 4, 9, 30, tzinfo=timezone.utc),
              "proposal_end": datetime(2031, 3, 4, 10, 0, tzinfo=timezone.utc), "proposal_tzid": "Europe/Berlin",
              "source": NotificationSource.EMAIL, "dtstamp": None, "sequence": 3, "applied": False, "note": "",
              "received_at": datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}
    return dict(values, **changes)


def test_plain_writes_store_what_sqlalchemy_stores(app):
    invite = make_invite(emails=("ann@example.org",))
    table = Reply.__table__
    write = PlainWrite(insert(table).values({name: bindparam(name) for name in _reply_values(invite)}))
    connection = db.session.connection()
    write.execute(connection, **_reply_values(invite))
    write.execute_many(connection, [_reply_values(invite, email="bob@example.org"),
                                    _reply_values(invite, email="cy@example.org", applied=True)])
    connection.execute(insert(table), [_reply_values(invite, email="dee@example.org")])
    db.session.commit()

    rows = db.session.execute(select(table).order_by(table.c.id)).all()
    assert [row.email for row in rows] == ["ann@example.org", "bob@example.org", "cy@example.org", "dee@example.org"]
    ours, sqlalchemys = rows[0]._asdict(), rows[3]._asdict()
    del ours["id"], sqlalchemys["id"], sqlalchemys["email"], ours["email"]
    assert ours == sqlalchemys
    assert ours["status"] is RecipientStatus.TENTATIVE and ours["proposal_start"].utcoffset() is not None
    assert [row.applied for row in rows] == [False, False, True, False]

    rename = PlainWrite(update(table).where(table.c.email == bindparam("old")).values(email=bindparam("new")))
    assert rename.execute(db.session.connection(), old="bob@example.org", new="bo@example.org") == 1
    assert rename.execute(db.session.connection(), old="nobody@example.org", new="x@example.org") == 0
    db.session.commit()
    assert db.session.scalar(select(func.count()).where(table.c.email == "bo@example.org")) == 1


def test_plain_writes_refuse_what_sqlalchemy_would_have_added(app):
    invite = make_invite(emails=("ann@example.org",))
    values = _reply_values(invite)
    del values["received_at"], values["note"]  # columns with defaults, which a plain write does not apply
    without_defaults = PlainWrite(insert(Reply.__table__).values({name: bindparam(name) for name in values}))
    with pytest.raises(ValueError, match="note, received_at"):
        without_defaults.execute(db.session.connection(), **values)
    invites = Invite.__table__  # updated_at is set on every UPDATE (onupdate), in Python
    bump = PlainWrite(update(invites).where(invites.c.id == bindparam("invite_id")).values(version=invites.c.version + 1))
    with pytest.raises(ValueError, match="updated_at"):
        bump.execute(db.session.connection(), invite_id=invite.id)
    returning = PlainWrite(update(invites).values(updated_at=bindparam("now")).returning(invites.c.id))
    with pytest.raises(ValueError, match="RETURNING"):
        returning.execute(db.session.connection(), now=datetime.now(timezone.utc))


def test_reads_together_give_what_each_gives_alone(app):
    from smart_invites_ui.plain_sql import read_together

    invite = make_invite(emails=("ann@example.org", "bob@example.org"))
    apply_notification({"smart_invite": {"smart_invite_id": invite.smart_invite_id,
                                         "reply": {"email": "bob@example.org", "status": "tentative"}}},
                       source=NotificationSource.WEBHOOK)
    params = {"invite_id": invite.id}
    with app.test_request_context():
        together = read_together((_INVITE_WITH_RECIPIENTS, params), (_REPLIES, params), (_EMAILS, params),
                                 (_REPLIES, {"invite_id": 987654}))
        alone = [query.read(**values) for query, values in ((_INVITE_WITH_RECIPIENTS, params), (_REPLIES, params),
                                                           (_EMAILS, params), (_REPLIES, {"invite_id": 987654}))]
    assert together == alone
    assert [len(rows) for rows in together] == [2, 1, 2, 0]
    assert together[1][0].status is RecipientStatus.TENTATIVE


@pytest.mark.parametrize("position", [0, 1])
def test_a_read_that_fails_says_why_and_leaves_the_pool_usable(app, position):
    from sqlalchemy import column, table

    from smart_invites_ui.plain_sql import read_engine, read_together

    missing = PlainSelect(select(table("no_such_table", column("id"))))
    invite = make_invite(emails=("ann@example.org",))
    params = {"invite_id": invite.id}
    with app.test_request_context():
        with pytest.raises(read_engine().dialect.loaded_dbapi.Error, match="no_such_table"):
            missing.read()
        reads = [(_INVITE_WITH_RECIPIENTS, params)]
        reads.insert(position, (missing, {}))
        with pytest.raises(read_engine().dialect.loaded_dbapi.Error, match="no_such_table"):
            read_together(*reads)
        for _ in range(3):  # every pooled connection still answers
            rows, emails = read_together((_INVITE_WITH_RECIPIENTS, params), (_EMAILS, params))
            assert [row.email for row in rows] == ["ann@example.org"] and len(emails) == 1
