"""inspection triggers (first-article, patrol, outgoing), per-inspection sampling, photo attachments

Revision ID: 0008_insp
Revises: 0001
Depends on: 0007_quality (its inspection_plan table)
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_insp"
down_revision = "0001"
branch_labels = None
depends_on = "0007_quality"


def upgrade() -> None:
    op.create_table(
        "inspection_plan_trigger",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("plan_id", sa.Integer(), sa.ForeignKey("inspection_plan.id"), nullable=False, unique=True),
        sa.Column("first_article", sa.Boolean(), nullable=False),
        sa.Column("patrol_every_units", sa.Integer(), nullable=True),
        sa.Column("patrol_every_minutes", sa.Float(), nullable=True),
        sa.Column("outgoing", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "work_order_inspection",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("work_order_id", sa.Integer(), sa.ForeignKey("work_order.id"), nullable=False, unique=True),
        sa.Column("outgoing_required", sa.Boolean(), nullable=False),
        sa.Column("outgoing_plan_version", sa.Integer(), nullable=True),
        sa.Column("triggers", sa.JSON(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "inspection_sampling",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("inspection_id", sa.Integer(), sa.ForeignKey("inspection.id"), nullable=False, unique=True),
        sa.Column("plan_id", sa.Integer(), sa.ForeignKey("inspection_plan.id"), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("item", sa.String(64), nullable=False),
        sa.Column("supplier", sa.String(80), nullable=True),
        sa.Column("lot_size", sa.Integer(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("characteristics", sa.JSON(), nullable=False),
        sa.Column("switching_recorded", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_inspection_sampling_plan_id", "inspection_sampling", ["plan_id"])
    op.create_table(
        "inspection_attachment",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("inspection_id", sa.Integer(), sa.ForeignKey("inspection.id"), nullable=False),
        sa.Column("characteristic", sa.String(80), nullable=False),
        sa.Column("filename", sa.String(200), nullable=True),
        sa.Column("content_type", sa.String(40), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_by", sa.String(80), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("inspection_id", "characteristic", "sha256", name="uq_inspection_attachment"),
    )
    op.create_index("ix_inspection_attachment_inspection_id", "inspection_attachment", ["inspection_id"])


def downgrade() -> None:
    op.drop_index("ix_inspection_attachment_inspection_id", "inspection_attachment")
    op.drop_table("inspection_attachment")
    op.drop_index("ix_inspection_sampling_plan_id", "inspection_sampling")
    op.drop_table("inspection_sampling")
    op.drop_table("work_order_inspection")
    op.drop_table("inspection_plan_trigger")
