"""the definition version of each attempt

Revision ID: 0003_attempt_definition_version
Revises: 0002
Create Date: 2026-12-04 20:30:00

A resumed execution keeps attempts of its parent, which may have run an older definition; the
execution page names the version each attempt ran. Older rows stay NULL (read as the version
of their execution).
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_attempt_definition_version'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('step_execution_history', schema=None) as batch_op:
        batch_op.add_column(sa.Column('definition_version', sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table('step_execution_history', schema=None) as batch_op:
        batch_op.drop_column('definition_version')
