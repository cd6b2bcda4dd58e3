"""Lease on a running booking import, so one whose worker died is taken over

Revision ID: 9c4d5e6f7a81
Revises: 7b1c2d3e4f50
Create Date: 2026-11-22 04:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '9c4d5e6f7a81'
down_revision = '7b1c2d3e4f50'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('booking_imports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('booking_imports', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
