"""The outbox's due index holds the claim's order: state, next attempt, then id

A claim takes the rows longest due first. With the id in the index, PostgreSQL
reads them in index order and stops at the batch size, instead of sorting every
due row (30,000 after a large import) for each batch; SQLite's index already
ends with the row id, so there only the claim's query changed.

Revision ID: c4f1a8e2d903
Revises: a3e5f7092b14
Create Date: 2026-11-22 08:20:00

"""
from alembic import op


revision = 'c4f1a8e2d903'
down_revision = 'a3e5f7092b14'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_due')
        batch_op.create_index('ix_outbox_due', ['state', 'next_attempt_at', 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_due')
        batch_op.create_index('ix_outbox_due', ['state', 'next_attempt_at'], unique=False)
