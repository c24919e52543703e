"""audit log: hash chain, and the database refuses UPDATE and DELETE on it

Revision ID: 0005_audit
Revises: 0001
"""
from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0005_audit"
down_revision = "0001"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def _hash(prev: str, seq: int, at, actor, action, entity, key, changes) -> str:
    from datetime import UTC

    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if isinstance(changes, str):
        changes = json.loads(changes)
    cj = json.dumps(changes, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    body = "\x1f".join([prev, str(seq), at.isoformat(), actor, action, entity, key, cj])
    return hashlib.sha256(body.encode()).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as b:
        b.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        b.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        b.add_column(sa.Column("hash", sa.String(64), nullable=True))
    conn = op.get_bind()
    # chain the entries written before this migration, in the order they were written
    rows = conn.execute(sa.text(
        "SELECT id, at, actor, action, entity, entity_key, changes FROM audit_log ORDER BY id")).fetchall()
    prev = GENESIS
    for seq, r in enumerate(rows, start=1):
        at = r.at if not isinstance(r.at, str) else __import__("datetime").datetime.fromisoformat(r.at)
        h = _hash(prev, seq, at, r.actor, r.action, r.entity, r.entity_key, r.changes)
        conn.execute(sa.text("UPDATE audit_log SET seq=:s, prev_hash=:p, hash=:h WHERE id=:i"),
                     {"s": seq, "p": prev, "h": h, "i": r.id})
        prev = h
    with op.batch_alter_table("audit_log") as b:
        b.alter_column("seq", nullable=False)
        b.alter_column("prev_hash", nullable=False)
        b.alter_column("hash", nullable=False)
        b.create_unique_constraint("uq_audit_log_seq", ["seq"])
    if conn.dialect.name == "postgresql":
        op.execute("""
            CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
            BEGIN
              RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
            END $$ LANGUAGE plpgsql;
        """)
        op.execute("""CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
                      FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""")
        op.execute("""CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
                      FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""")
    else:
        op.execute("""CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
                      BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE is not allowed'); END""")
        op.execute("""CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
                      BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE is not allowed'); END""")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    with op.batch_alter_table("audit_log") as b:
        b.drop_constraint("uq_audit_log_seq", type_="unique")
        b.drop_column("hash")
        b.drop_column("prev_hash")
        b.drop_column("seq")
