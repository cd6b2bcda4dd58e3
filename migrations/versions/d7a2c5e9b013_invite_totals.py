"""How many invites there are, kept by triggers: the invites list reads one row instead of counting

The list's first page showed its total by counting every invite (a full scan on each
page: 1.3-1.5 ms of PostgreSQL's time at 10,000 invites, most of what the page cost the
server). Triggers on ``invites`` keep the total in ``invite_totals``, whichever program or
statement adds or deletes invites: on PostgreSQL once per statement (transition tables),
on SQLite once per row. When the row is missing (the table was emptied, TRUNCATE),
the app counts again with writers held off and stores it (services.invites.invite_total).

Revision ID: d7a2c5e9b013
Revises: c4f1a8e2d903
Create Date: 2026-11-22 13:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'd7a2c5e9b013'
down_revision = 'c4f1a8e2d903'
branch_labels = None
depends_on = None

_POSTGRESQL = [
    """CREATE FUNCTION invite_totals_kept() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE invite_totals SET invites = invites + (SELECT count(*) FROM added) WHERE id = 1;
        ELSIF TG_OP = 'DELETE' THEN
            UPDATE invite_totals SET invites = invites - (SELECT count(*) FROM removed) WHERE id = 1;
        ELSE
            UPDATE invite_totals SET invites = 0 WHERE id = 1;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER invite_totals_on_insert AFTER INSERT ON invites REFERENCING NEW TABLE AS added
       FOR EACH STATEMENT EXECUTE FUNCTION invite_totals_kept()""",
    """CREATE TRIGGER invite_totals_on_delete AFTER DELETE ON invites REFERENCING OLD TABLE AS removed
       FOR EACH STATEMENT EXECUTE FUNCTION invite_totals_kept()""",
    """CREATE TRIGGER invite_totals_on_truncate AFTER TRUNCATE ON invites
       FOR EACH STATEMENT EXECUTE FUNCTION invite_totals_kept()""",
]
_SQLITE = [
    """CREATE TRIGGER invite_totals_on_insert AFTER INSERT ON invites
       BEGIN UPDATE invite_totals SET invites = invites + 1 WHERE id = 1; END""",
    """CREATE TRIGGER invite_totals_on_delete AFTER DELETE ON invites
       BEGIN UPDATE invite_totals SET invites = invites - 1 WHERE id = 1; END""",
]


def upgrade():
    op.create_table(
        'invite_totals',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('invites', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_invite_totals')),
    )
    postgresql = op.get_bind().dialect.name == 'postgresql'
    for statement in _POSTGRESQL if postgresql else _SQLITE:
        op.execute(statement)
    if postgresql:
        op.execute("LOCK TABLE invites IN SHARE MODE")  # no invite added or deleted until this commits
    op.execute("INSERT INTO invite_totals (id, invites) SELECT 1, count(*) FROM invites")


def downgrade():
    postgresql = op.get_bind().dialect.name == 'postgresql'
    for trigger in ('invite_totals_on_insert', 'invite_totals_on_delete', 'invite_totals_on_truncate'):
        if postgresql:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON invites")
        elif trigger != 'invite_totals_on_truncate':
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS invite_totals_kept()")
    op.drop_table('invite_totals')
