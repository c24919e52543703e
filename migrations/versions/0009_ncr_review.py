"""ncr review: defect code catalogue, NCR review content (severity, root cause, due, escalation, verification),
containment actions, CAPA records and their actions

Revision ID: 0009_ncr
Revises: 0001
"""
from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009_ncr"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

# a starting catalogue; quality managers add their own (POST /api/defect-codes)
SEED = [
    ("DIM-OOT", "dimension out of tolerance", "major"),
    ("DIM-CRIT", "critical (safety) dimension out of tolerance", "critical"),
    ("HARD-OOS", "hardness out of specification", "major"),
    ("MAT-CERT", "material certificate nonconforming or missing", "major"),
    ("MAT-WRONG", "wrong material or grade", "critical"),
    ("PROC-DEV", "process parameter outside its window", "major"),
    ("SURF-CRACK", "crack", "critical"),
    ("SURF-SCRATCH", "scratch, dent or cosmetic surface defect", "minor"),
    ("SURF-CORR", "corrosion or rust", "major"),
    ("CONT-FOREIGN", "contamination or foreign matter", "major"),
    ("WELD-POR", "weld porosity or incomplete fusion", "major"),
    ("LABEL-ERR", "wrong or missing label / identification", "major"),
    ("PKG-DMG", "packaging damaged", "minor"),
    ("DOC-MISS", "missing or incomplete documentation", "minor"),
]


def upgrade() -> None:
    op.create_table(
        "ncr_defect_code",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("code", sa.String(32), nullable=False, unique=True),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("default_severity", sa.String(12), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "capa",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("number", sa.String(32), nullable=False, unique=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("root_cause_category", sa.String(16), nullable=True),
        sa.Column("root_cause", sa.Text(), nullable=True),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("effectiveness_criteria", sa.Text(), nullable=True),
        sa.Column("effectiveness_result", sa.Text(), nullable=True),
        sa.Column("effective", sa.Boolean(), nullable=True),
        sa.Column("checked_by", sa.String(80), nullable=True),
        sa.Column("checked_at", TS, nullable=True),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("closed_at", TS, nullable=True),
    )
    op.create_index("ix_capa_state", "capa", ["state"])
    op.create_table(
        "capa_action",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("capa_id", sa.Integer(), sa.ForeignKey("capa.id"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("done_at", TS, nullable=True),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("capa_id", "seq", name="uq_capa_action_seq"),
    )
    op.create_index("ix_capa_action_capa_id", "capa_action", ["capa_id"])
    op.create_index("ix_capa_action_due_at", "capa_action", ["due_at"])
    op.create_table(
        "ncr_review",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ncr_id", sa.Integer(), sa.ForeignKey("ncr.id"), nullable=False, unique=True),
        sa.Column("severity", sa.String(12), nullable=False),
        sa.Column("defect_codes", sa.JSON(), nullable=False),
        sa.Column("quantity_affected", sa.Float(), nullable=True),
        sa.Column("root_cause_category", sa.String(16), nullable=True),
        sa.Column("root_cause", sa.Text(), nullable=True),
        sa.Column("capa_id", sa.Integer(), sa.ForeignKey("capa.id"), nullable=True),
        sa.Column("timing", sa.JSON(), nullable=False),
        sa.Column("due_at", TS, nullable=True),
        sa.Column("escalated_to", sa.String(32), nullable=True),
        sa.Column("escalated_users", sa.JSON(), nullable=False),
        sa.Column("baseline_inspection_id", sa.Integer(), nullable=True),
        sa.Column("verification", sa.String(16), nullable=True),
        sa.Column("verified_by", sa.String(120), nullable=True),
        sa.Column("verified_at", TS, nullable=True),
        sa.Column("verification_note", sa.Text(), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_ncr_review_severity", "ncr_review", ["severity"])
    op.create_index("ix_ncr_review_capa_id", "ncr_review", ["capa_id"])
    op.create_index("ix_ncr_review_due_at", "ncr_review", ["due_at"])
    op.create_table(
        "ncr_containment",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ncr_id", sa.Integer(), sa.ForeignKey("ncr.id"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("due_at", TS, nullable=True),
        sa.Column("done_at", TS, nullable=True),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("ncr_id", "seq", name="uq_ncr_containment_seq"),
    )
    op.create_index("ix_ncr_containment_ncr_id", "ncr_containment", ["ncr_id"])
    codes = sa.table("ncr_defect_code", sa.column("code"), sa.column("description"), sa.column("default_severity"),
                     sa.column("active"), sa.column("created_by"), sa.column("created_at", TS))
    # naive UTC: what the application's UTCDateTime stores on SQLite, and read as UTC on PostgreSQL's session zone
    now = datetime.now(UTC).replace(tzinfo=None) if op.get_bind().dialect.name == "sqlite" else datetime.now(UTC)
    op.bulk_insert(codes, [{"code": c, "description": d, "default_severity": s, "active": True,
                            "created_by": "system", "created_at": now} for c, d, s in SEED])


def downgrade() -> None:
    op.drop_index("ix_ncr_containment_ncr_id", "ncr_containment")
    op.drop_table("ncr_containment")
    for ix in ("ix_ncr_review_due_at", "ix_ncr_review_capa_id", "ix_ncr_review_severity"):
        op.drop_index(ix, "ncr_review")
    op.drop_table("ncr_review")
    op.drop_index("ix_capa_action_due_at", "capa_action")
    op.drop_index("ix_capa_action_capa_id", "capa_action")
    op.drop_table("capa_action")
    op.drop_index("ix_capa_state", "capa")
    op.drop_table("capa")
    op.drop_table("ncr_defect_code")
