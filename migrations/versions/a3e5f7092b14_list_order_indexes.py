"""Indexes that hold the invites list's order: start with end, status and end with start

The list shows the upcoming invites by start, then the past ones by start (latest
first). With the end in the start index, a page of either run is read in index
order, filtered on the end without reading the rows; with the start in the
status index, a status tab sorts index entries only.

Revision ID: a3e5f7092b14
Revises: 9c4d5e6f7a81
Create Date: 2026-11-22 05:30:00

"""
from alembic import op


revision = 'a3e5f7092b14'
down_revision = '9c4d5e6f7a81'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('invites', schema=None) as batch_op:
        batch_op.create_index('ix_invites_start_end', ['start', 'end'], unique=False)
        batch_op.create_index('ix_invites_status_end_start', ['status', 'end', 'start'], unique=False)
        batch_op.drop_index('ix_invites_start')
        batch_op.drop_index('ix_invites_status_end')


def downgrade():
    with op.batch_alter_table('invites', schema=None) as batch_op:
        batch_op.create_index('ix_invites_status_end', ['status', 'end'], unique=False)
        batch_op.create_index('ix_invites_start', ['start'], unique=False)
        batch_op.drop_index('ix_invites_status_end_start')
        batch_op.drop_index('ix_invites_start_end')
