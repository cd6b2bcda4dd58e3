"""Index the recipients that need attention (the count on every invites list page)

Revision ID: 7b1c2d3e4f50
Revises: e89501fe4e0f
Create Date: 2026-11-22 03:40:00

"""
from alembic import op


revision = '7b1c2d3e4f50'
down_revision = 'e89501fe4e0f'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.create_index('ix_recipients_attention', ['needs_attention', 'invite_id'], unique=False)


def downgrade():
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.drop_index('ix_recipients_attention')
