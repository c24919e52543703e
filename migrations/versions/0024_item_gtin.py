"""item_gtin: the GTINs an item held before a correction

Revision ID: 0024_item_gtin
Revises: 0001 (its item table)

PATCH /api/items/{code} corrects an item's GTIN. Codes already printed under the old GTIN must keep resolving to
the same item and lots, so the old GTIN is kept here (one row per former GTIN, unique: a GTIN names one trade
item). Nothing existing is rewritten; the table starts empty. Runs on PostgreSQL and SQLite.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_item_gtin"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_gtin",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("item.id"), nullable=False),
        sa.Column("gtin", sa.String(14), nullable=False, unique=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replaced_by", sa.String(14), nullable=True),
        sa.Column("retired_by", sa.String(120), nullable=False),
    )
    op.create_index("ix_item_gtin_item_id", "item_gtin", ["item_id"])


def downgrade() -> None:
    op.drop_index("ix_item_gtin_item_id", table_name="item_gtin")
    op.drop_table("item_gtin")
