"""secret variables encrypted at rest

Revision ID: 0007_secret_values_sealed
Revises: 0006_pipeline_duties
Create Date: 2026-12-05 10:00:00

An execution's secret variables sat in clear in context_variables. They move, encrypted with the
current secrets key (ANSFLOW_SECRETS_KEY, else instance/secrets_key), into the new column
secret_values; context_variables keeps each secret name with a placeholder (services/secrets_store.py).
The downgrade decrypts them back into context_variables (it stops, changing nothing, when no
configured key opens them).
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_secret_values_sealed'
down_revision = '0006_pipeline_duties'
branch_labels = None
depends_on = None

executions = sa.table(
    'workflow_executions', sa.column('id', sa.Integer), sa.column('context_variables', sa.JSON),
    sa.column('secret_variables', sa.JSON), sa.column('secret_values', sa.Text),
)


def _rows(bind, where):
    return bind.execute(sa.select(executions.c.id, executions.c.context_variables, executions.c.secret_variables,
                                  executions.c.secret_values).where(where)).all()


def upgrade():
    from webapp.services.secrets_store import split

    op.add_column('workflow_executions', sa.Column('secret_values', sa.Text(), nullable=True))
    bind = op.get_bind()
    for pk, variables, names, _sealed in _rows(bind, executions.c.secret_values.is_(None)):
        variables = variables or {}
        if not set(names or []) & set(variables):
            continue
        stored, sealed = split(variables, names)
        bind.execute(executions.update().where(executions.c.id == pk)
                     .values(context_variables=stored, secret_values=sealed))


def downgrade():
    from webapp.services.secrets_store import clear_variables

    bind = op.get_bind()
    # every row decrypted before any is written: a key that opens none of them changes nothing
    opened = [(pk, clear_variables(variables, sealed))
              for pk, variables, _names, sealed in _rows(bind, executions.c.secret_values.is_not(None))]
    for pk, variables in opened:
        bind.execute(executions.update().where(executions.c.id == pk).values(context_variables=variables))
    # not batch mode: on SQLite it would rebuild the table, and dropping the old one would cascade
    # to every attempt (migration 0004); SQLite 3.35+ drops a column in place
    op.drop_column('workflow_executions', 'secret_values')
