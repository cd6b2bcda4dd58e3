"""Drop ix_recipients_invite_id: uq_recipients_invite_email (invite_id, email) serves the same reads

Every lookup by invite_id (an invite's recipients, the cascade when an invite is deleted) can use
the unique index, whose first column is invite_id; the second index only cost every recipient
written (an import writes three per invite) one more index entry to maintain.

Revision ID: f2b8d4a6c091
Revises: d7a2c5e9b013
Create Date: 2026-11-22 21:00:00

"""
from alembic import op


revision = 'f2b8d4a6c091'
down_revision = 'd7a2c5e9b013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.drop_index('ix_recipients_invite_id')


def downgrade():
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.create_index('ix_recipients_invite_id', ['invite_id'], unique=False)
