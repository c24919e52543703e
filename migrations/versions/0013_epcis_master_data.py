"""epcis master data (vocabulary elements, attributes, children) and documents of asynchronous capture jobs

Revision ID: 0013_epcis_master
Revises: 0003_trace
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_epcis_master"
down_revision = "0003_trace"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "epcis_vocabulary_element",
        sa.Column("vtype", sa.String(120), primary_key=True),
        sa.Column("element_id", sa.String(300), primary_key=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "epcis_vocabulary_attribute",
        sa.Column("vtype", sa.String(120), primary_key=True),
        sa.Column("element_id", sa.String(300), primary_key=True),
        sa.Column("attr", sa.String(300), primary_key=True),
        sa.Column("value", sa.String(500)),
    )
    op.create_index("ix_epcis_vocabulary_attribute_attr", "epcis_vocabulary_attribute", ["vtype", "attr", "value"])
    op.create_table(
        "epcis_vocabulary_child",
        sa.Column("vtype", sa.String(120), primary_key=True),
        sa.Column("parent", sa.String(300), primary_key=True),
        sa.Column("child", sa.String(300), primary_key=True),
    )
    op.create_table(
        "epcis_capture_document",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("epcis_capture_job.id"), primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("content_type", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("epcis_capture_document")
    op.drop_table("epcis_vocabulary_child")
    op.drop_index("ix_epcis_vocabulary_attribute_attr", "epcis_vocabulary_attribute")
    op.drop_table("epcis_vocabulary_attribute")
    op.drop_table("epcis_vocabulary_element")
