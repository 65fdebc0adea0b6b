"""a session nonce per user (revocable sessions)

Revision ID: 0005_session_nonce
Revises: 0004_execution_ids_never_reused
Create Date: 2026-12-05 10:00:00

Session and remember-me cookies name the user and this nonce; logout and a password change
replace it, so every copy of those cookies stops working. Each existing user gets a random
nonce of its own (cookies issued before this migration name no nonce and are refused: their
holders sign in again).
"""
import secrets

from alembic import op
import sqlalchemy as sa


revision = '0005_session_nonce'
down_revision = '0004_execution_ids_never_reused'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_nonce', sa.String(length=32), nullable=True))
    bind = op.get_bind()
    users = sa.table('users', sa.column('id', sa.Integer), sa.column('session_nonce', sa.String))
    for (user_id,) in bind.execute(sa.select(users.c.id)).fetchall():
        bind.execute(users.update().where(users.c.id == user_id).values(session_nonce=secrets.token_hex(16)))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('session_nonce', existing_type=sa.String(length=32), nullable=False)


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('session_nonce')
