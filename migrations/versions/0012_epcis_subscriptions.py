"""epcis subscriptions: standing queries delivered to webhooks on a schedule or as a stream

Revision ID: 0012_epcis_subs
Revises: 0003_trace
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_epcis_subs"
down_revision = "0003_trace"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "epcis_subscription",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("query_name", sa.String(120), nullable=False, index=True),
        sa.Column("dest", sa.String(2000), nullable=False),
        sa.Column("signature_token", sa.String(500)),
        sa.Column("report_if_empty", sa.Boolean, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("schedule", sa.JSON),
        sa.Column("epc_format", sa.String(40), nullable=False),
        sa.Column("initial_record_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("min_record_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_notified_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(2000)),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("epcis_subscription")
