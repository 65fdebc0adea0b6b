"""duties per pipeline: named maintainers, who set the approval rules, and the audit log

Revision ID: 0006_pipeline_duties
Revises: 0005_session_nonce
Create Date: 2026-12-04 21:30:00

Existing pipelines keep their owner, who (with admins) may edit them and change their approval
rules; a pipeline without an owner is edited by admins only until one is assigned. Nobody knows
who set the approval rules of an existing pipeline, so its owner is taken to have set them: an
owner never self-approves a run they start on the strength of a rule they may have set.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_pipeline_duties'
down_revision = '0005_session_nonce'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('pipeline_maintainers',
    sa.Column('pipeline_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['pipeline_id'], ['pipelines.id'], name=op.f('fk_pipeline_maintainers_pipeline_id_pipelines'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_pipeline_maintainers_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pipeline_id', 'user_id', name=op.f('pk_pipeline_maintainers'))
    )
    op.create_table('pipeline_audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pipeline_id', sa.Integer(), nullable=True),
    sa.Column('pipeline_name', sa.String(length=120), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("action IN ('pipeline_created', 'pipeline_edited', 'approval_rules_changed', 'maintainers_changed', 'owner_changed', 'pipeline_deleted')", name=op.f('ck_pipeline_audit_action_valid')),
    sa.ForeignKeyConstraint(['actor_id'], ['users.id'], name=op.f('fk_pipeline_audit_actor_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['pipeline_id'], ['pipelines.id'], name=op.f('fk_pipeline_audit_pipeline_id_pipelines'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pipeline_audit'))
    )
    with op.batch_alter_table('pipeline_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pipeline_audit_pipeline_id'), ['pipeline_id'], unique=False)
    # a plain ADD COLUMN (no table rebuild: rebuilding pipelines would cascade into its steps)
    with op.batch_alter_table('pipelines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approval_rules_by', sa.String(length=64), nullable=True))
    op.execute("UPDATE pipelines SET approval_rules_by = "
               "(SELECT username FROM users WHERE users.id = pipelines.owner_id)")


def downgrade():
    with op.batch_alter_table('pipelines', schema=None) as batch_op:
        batch_op.drop_column('approval_rules_by')
    with op.batch_alter_table('pipeline_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pipeline_audit_pipeline_id'))
    op.drop_table('pipeline_audit')
    op.drop_table('pipeline_maintainers')
