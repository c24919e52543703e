"""SPC warnings: Western Electric rule violations found when measurements are recorded (issue 6)

Revision ID: 0020_spc_warning
Revises: 0001 (its item and inspection tables)
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_spc_warning"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spc_warning",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("item.id"), nullable=False),
        sa.Column("characteristic", sa.String(80), nullable=False),
        sa.Column("rule", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("subgroups", sa.JSON(), nullable=False),
        sa.Column("chart", sa.JSON(), nullable=False),
        sa.Column("inspection_id", sa.Integer(), sa.ForeignKey("inspection.id"), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_by", sa.String(80), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledge_note", sa.String(400), nullable=True),
    )
    op.create_index("ix_spc_warning_item_id", "spc_warning", ["item_id"])
    op.create_index("ix_spc_warning_inspection_id", "spc_warning", ["inspection_id"])


def downgrade() -> None:
    op.drop_index("ix_spc_warning_inspection_id", table_name="spc_warning")
    op.drop_index("ix_spc_warning_item_id", table_name="spc_warning")
    op.drop_table("spc_warning")
