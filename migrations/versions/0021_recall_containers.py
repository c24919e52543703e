"""recall_container: the cases and pallets holding units of a recall's lots, held in stock or shipped

Revision ID: 0021_recall_containers
Revises: 0003_trace

A recall holds every affected lot and case still in stock: the cases and pallets holding units of the scope's
lots are recorded with the recall (what they held, where they were) and those in stock are put on hold with
it (container.status 'on_hold', which packing and shipping refuse), until a reviewer has released every
recalled lot inside them.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_recall_containers"
down_revision = "0003_trace"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recall_container",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recall_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=200), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("status_before", sa.String(length=16), nullable=False),
        sa.Column("lots", sa.JSON(), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["recall_id"], ["recall.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("recall_id", "code"),
    )
    op.create_index(op.f("ix_recall_container_recall_id"), "recall_container", ["recall_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_recall_container_recall_id"), table_name="recall_container")
    op.drop_table("recall_container")
