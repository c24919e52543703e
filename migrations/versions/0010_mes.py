"""mes: rejected MES messages (malformed, unknown work order, not expected), kept with their reason

Revision ID: 0010_mes
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_mes"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mes_rejected_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=True),
        sa.Column("topic", sa.String(length=512), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("work_order", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.String(length=128), nullable=True),
        sa.Column("field", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest", name="uq_mes_rejected_message_digest"),
    )
    with op.batch_alter_table("mes_rejected_message", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mes_rejected_message_work_order"), ["work_order"], unique=False)
        batch_op.create_index(batch_op.f("ix_mes_rejected_message_last_at"), ["last_at"], unique=False)


def downgrade() -> None:
    op.drop_table("mes_rejected_message")
