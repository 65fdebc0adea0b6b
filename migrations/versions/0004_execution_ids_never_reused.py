"""execution and attempt ids are never reused (SQLite AUTOINCREMENT)

Revision ID: 0004_execution_ids_never_reused
Revises: 0003_attempt_definition_version
Create Date: 2026-12-04 21:00:00

Without AUTOINCREMENT SQLite hands a deleted row's id to the next insert, and a worker that
knew the old row by its id (a cache, a cancel flag in Redis) would apply what it knew to the new
one: it ran a deleted pipeline's command. PostgreSQL sequences never go back: nothing to do.

SQLite can only add AUTOINCREMENT by recreating the table. Foreign keys are switched off
around it: with them on, dropping the old table would cascade-delete every attempt, approval
and notification of every execution.
"""
from alembic import op


revision = '0004_execution_ids_never_reused'
down_revision = '0003_attempt_definition_version'
branch_labels = None
depends_on = None

TABLES = ('workflow_executions', 'step_execution_history')


def _recreate(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'sqlite':
        return
    # PRAGMA foreign_keys is a no-op inside a transaction: end the migration's, and begin a new
    # one after, which the migration context then commits with the version row.
    bind.exec_driver_sql('COMMIT')
    bind.exec_driver_sql('PRAGMA foreign_keys=OFF')
    bind.exec_driver_sql('BEGIN IMMEDIATE')
    before = bind.exec_driver_sql('PRAGMA foreign_key_check').fetchall()
    for table in TABLES:
        with op.batch_alter_table(table, recreate='always',
                                  table_kwargs={'sqlite_autoincrement': autoincrement}):
            pass
    problems = bind.exec_driver_sql('PRAGMA foreign_key_check').fetchall()
    if len(problems) > len(before):
        raise RuntimeError(f'foreign keys broken by the table rebuild: {problems[:5]}')
    bind.exec_driver_sql('COMMIT')
    bind.exec_driver_sql('PRAGMA foreign_keys=ON')
    bind.exec_driver_sql('BEGIN')


def upgrade():
    _recreate(True)


def downgrade():
    _recreate(False)
