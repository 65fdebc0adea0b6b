"""attempts by execution and status

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 02:20:00

The step hot path reads an execution's running (or queued) attempts each time a step finishes.
"""
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('step_execution_history', schema=None) as batch_op:
        batch_op.create_index('ix_step_execution_history_execution_status', ['execution_id', 'status'], unique=False)


def downgrade():
    with op.batch_alter_table('step_execution_history', schema=None) as batch_op:
        batch_op.drop_index('ix_step_execution_history_execution_status')
