"""supplier_return: the hub's record of material an NCR returns to its supplier (issue 6)

Revision ID: 0022_supplier_return
Revises: 0001 (its ncr and lot tables)

A return_to_supplier disposition creates one (status `requested`), in the transaction that carries the
disposition out; the ERP's acknowledgement of the purchase return makes it `erp_notified` (with the ERP's
document), and the QA supervisor's signed verification of the NCR makes it `shipped`.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022_supplier_return"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "supplier_return",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("number", sa.String(80), nullable=False, unique=True),
        sa.Column("ncr_id", sa.Integer(), sa.ForeignKey("ncr.id"), nullable=False, unique=True),
        sa.Column("lot_id", sa.Integer(), sa.ForeignKey("lot.id"), nullable=False),
        sa.Column("supplier", sa.String(80), nullable=True),
        sa.Column("supplier_lot", sa.String(80), nullable=True),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("uom", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("erp_document", sa.String(140), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_supplier_return_lot_id", "supplier_return", ["lot_id"])
    op.create_index("ix_supplier_return_supplier", "supplier_return", ["supplier"])
    op.create_index("ix_supplier_return_status", "supplier_return", ["status"])


def downgrade() -> None:
    op.drop_index("ix_supplier_return_status", table_name="supplier_return")
    op.drop_index("ix_supplier_return_supplier", table_name="supplier_return")
    op.drop_index("ix_supplier_return_lot_id", table_name="supplier_return")
    op.drop_table("supplier_return")
