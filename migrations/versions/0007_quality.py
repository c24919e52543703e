"""quality: inspection plans (versioned per item and operation), sampling switching state and lots

Revision ID: 0007_quality
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_quality"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inspection_plan",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("item.id"), nullable=False),
        sa.Column("operation", sa.String(80), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(400), nullable=True),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("item_id", "operation", "version", name="uq_inspection_plan_version"),
    )
    op.create_index("ix_inspection_plan_item_id", "inspection_plan", ["item_id"])
    op.create_table(
        "inspection_plan_characteristic",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("plan_id", sa.Integer(), sa.ForeignKey("inspection_plan.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("severity", sa.String(12), nullable=False),
        sa.Column("nominal", sa.Float(), nullable=True),
        sa.Column("lower", sa.Float(), nullable=True),
        sa.Column("upper", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(20), nullable=False),
        sa.Column("gauge", sa.String(80), nullable=True),
        sa.Column("defect_codes", sa.JSON(), nullable=False),
        sa.Column("photo_required", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("plan_id", "name", name="uq_inspection_plan_characteristic"),
    )
    op.create_index("ix_inspection_plan_characteristic_plan_id", "inspection_plan_characteristic", ["plan_id"])
    op.create_table(
        "inspection_plan_sampling",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("plan_id", sa.Integer(), sa.ForeignKey("inspection_plan.id"), nullable=False),
        sa.Column("severity", sa.String(12), nullable=False),
        sa.Column("aql", sa.String(8), nullable=False),
        sa.Column("level", sa.String(4), nullable=False),
        sa.UniqueConstraint("plan_id", "severity", name="uq_inspection_plan_sampling"),
    )
    op.create_index("ix_inspection_plan_sampling_plan_id", "inspection_plan_sampling", ["plan_id"])
    op.create_table(
        "sampling_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("supplier", sa.String(80), nullable=False),
        sa.Column("item", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("switching_score", sa.Integer(), nullable=False),
        sa.Column("recent_normal", sa.JSON(), nullable=False),
        sa.Column("tightened_accepted_run", sa.Integer(), nullable=False),
        sa.Column("tightened_not_accepted", sa.Integer(), nullable=False),
        sa.Column("lots", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("supplier", "item", name="uq_sampling_state"),
    )
    op.create_table(
        "sampling_lot",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("lot", sa.String(64), nullable=False, unique=True),
        sa.Column("state_id", sa.Integer(), sa.ForeignKey("sampling_state.id"), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("lot_size", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(4), nullable=False),
        sa.Column("aql", sa.String(8), nullable=False),
        sa.Column("code_letter", sa.String(1), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("ac", sa.Integer(), nullable=False),
        sa.Column("re", sa.Integer(), nullable=False),
        sa.Column("nonconforming", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("switched_to", sa.String(16), nullable=True),
        sa.Column("recorded_by", sa.String(80), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sampling_lot_state_id", "sampling_lot", ["state_id"])


def downgrade() -> None:
    op.drop_index("ix_sampling_lot_state_id", "sampling_lot")
    op.drop_table("sampling_lot")
    op.drop_table("sampling_state")
    op.drop_index("ix_inspection_plan_sampling_plan_id", "inspection_plan_sampling")
    op.drop_table("inspection_plan_sampling")
    op.drop_index("ix_inspection_plan_characteristic_plan_id", "inspection_plan_characteristic")
    op.drop_table("inspection_plan_characteristic")
    op.drop_index("ix_inspection_plan_item_id", "inspection_plan")
    op.drop_table("inspection_plan")
