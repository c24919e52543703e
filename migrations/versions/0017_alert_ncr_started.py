"""code_alert.ncr_started_at (a duplicate's NCR workflow is started durably); drop the unused trace_genealogy()

Revision ID: 0017_alert_ncr_started
Revises: 0002_codes
Depends on: 0014_trace_doc

- code_alert.ncr_started_at: set once the NCR review workflow of a duplicate-code alert was started (or found
  started); the worker's NCR sweeper starts those still NULL, so an API that dies between the upload's commit
  and the start loses no NCR. Alerts recorded before stay NULL: the sweeper marks those whose NCR is recorded
  (the workflow's first activity writes it) and starts the others.
- trace_genealogy(): no caller since 0014_trace_doc (domain/trace.py reads trace_lot_doc / trace_lots());
  dropped on PostgreSQL. The downgrade creates it again from its definition in 0003_trace.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0017_alert_ncr_started"
down_revision = "0002_codes"
branch_labels = None
depends_on = "0014_trace_doc"


def _trace_genealogy_sql() -> str:
    """The function as 0003_trace created it (one definition, read from that migration)."""
    path = Path(__file__).with_name("0003_trace.py")
    spec = importlib.util.spec_from_file_location("_tracehub_migration_0003_trace", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.TRACE_GENEALOGY)


def upgrade() -> None:
    with op.batch_alter_table("code_alert", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ncr_started_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS trace_genealogy(bigint[], boolean, boolean)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_trace_genealogy_sql())
    with op.batch_alter_table("code_alert", schema=None) as batch_op:
        batch_op.drop_column("ncr_started_at")
