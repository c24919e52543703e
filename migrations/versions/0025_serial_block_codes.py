"""serial blocks in the traces: each block's first and last code, and the blocks in the per-lot trace row

Revision ID: 0025_serial_block_codes
Revises: 0018_trace_hist_parts (the trace row), depends on 0002_codes (serial_block)

The traces listed a lot's units from code_block, the table of serials issued before code rules existed (issue 2's
minimal issuance). Everything the hub issues since code rules (work orders, the issue-codes workflow, pools) is a
serial_block, so a trace showed no units for any lot made since. Now:
- serial_block.first_code / last_code: the block's first and last code as printed, canonical (Rendered.value:
  /01/{gtin}/21/{serial}, or the house code), rendered once at issuance (domain.codes.issue_block); blocks issued
  before this migration are filled here, rendered by their rule version (domain.codes.block_end_codes);
- PostgreSQL: the trace row's serial blocks (the doc's last element) list the lot's unit-level serial blocks too,
  as [first code, last code, count] after the legacy [first_seq, count] ones, and a trigger on serial_block keeps
  the row current. The portable path (SQLite) reads serial_block itself (domain/trace.py).
"""
from __future__ import annotations

import importlib
import json
import logging

import sqlalchemy as sa
from alembic import op

revision = "0025_serial_block_codes"
down_revision = "0018_trace_hist_parts"
branch_labels = None
depends_on = "0002_codes"

log = logging.getLogger("alembic.runtime.migration")

_M0014 = importlib.import_module("migrations.versions.0014_trace_doc")
_M0018 = importlib.import_module("migrations.versions.0018_trace_hist_parts")

_LEGACY_BLOCKS = """(SELECT json_agg(json_build_array(b.first_seq, b.count) ORDER BY b.first_seq)
       FROM code_block b WHERE b.lot_id = l.id))::text AS doc,"""
_BLOCKS = """(SELECT json_agg(u.b ORDER BY u.k, u.seq) FROM (
        SELECT json_build_array(b.first_seq, b.count) AS b, 0 AS k, b.first_seq AS seq
          FROM code_block b WHERE b.lot_id = l.id
        UNION ALL
        SELECT json_build_array(s.first_code, s.last_code, s.count), 1, s.id
          FROM serial_block s JOIN code_rule r ON r.id = s.rule_id WHERE s.lot_id = l.id AND r.level = 'unit') u)
    )::text AS doc,"""
DOC_SELECT = _M0018._replace(_M0018.DOC_SELECT, _LEGACY_BLOCKS, _BLOCKS)

_TRIGGER_FN = _M0014.REFRESH.partition("\nCREATE OR REPLACE FUNCTION trace_lot_doc_trigger()")[2]
TRIGGER_FN = "CREATE OR REPLACE FUNCTION trace_lot_doc_trigger()" + _M0018._replace(
    _TRIGGER_FN, "WHEN 'inspection', 'ncr', 'shipment_line', 'code_block' THEN",
    "WHEN 'inspection', 'ncr', 'shipment_line', 'code_block', 'serial_block' THEN")
OLD_TRIGGER_FN = "CREATE OR REPLACE FUNCTION trace_lot_doc_trigger()" + _TRIGGER_FN


def _fill_end_codes(conn: sa.Connection) -> int:
    """first_code / last_code of the blocks issued before this migration, rendered by their rule version."""
    from domain.codes import block_end_codes
    from domain.models_codes import CodeRule

    rows = conn.execute(sa.text(
        "SELECT b.id, b.first_seq, b.count, b.line, b.production_date, b.expiry_date, r.id, r.item_id, r.level, "
        "r.version, r.spec, r.namespace, r.secret, i.gtin, l.number FROM serial_block b "
        "JOIN code_rule r ON r.id = b.rule_id JOIN item i ON i.id = r.item_id LEFT JOIN lot l ON l.id = b.lot_id "
        "WHERE b.first_code IS NULL")).all()
    done = 0
    batch: list[dict] = []
    update = sa.text("UPDATE serial_block SET first_code = :f, last_code = :l WHERE id = :id")
    for (bid, first_seq, count, line, pdate, edate, rid, item_id, level, version, spec, namespace, secret, gtin,
         lot) in rows:
        rule = CodeRule(id=rid, item_id=item_id, level=level, version=version,
                        spec=json.loads(spec) if isinstance(spec, str) else spec, namespace=namespace, secret=secret)
        try:
            first, last = block_end_codes(rule, gtin, first_seq=first_seq, count=count, lot=lot, line=line,
                                          production_date=pdate, expiry_date=edate)
        except Exception as exc:  # noqa: BLE001 (a block its rule cannot render any more: the trace shows its count only)
            log.warning("serial block %s: first and last code not rendered (%s)", bid, exc)
            continue
        batch.append({"f": first, "l": last, "id": bid})
        done += 1
        if len(batch) >= 1000:  # many rows per round trip: a plant may hold a million blocks
            conn.execute(update, batch)
            batch = []
    if batch:
        conn.execute(update, batch)
    return done


def upgrade() -> None:
    with op.batch_alter_table("serial_block") as b:
        b.add_column(sa.Column("first_code", sa.String(200), nullable=True))
        b.add_column(sa.Column("last_code", sa.String(200), nullable=True))
    conn = op.get_bind()
    _fill_end_codes(conn)
    if conn.dialect.name == "postgresql":
        op.execute(_M0018._functions(DOC_SELECT))
        op.execute(TRIGGER_FN)
        op.execute("CREATE TRIGGER trace_lot_doc AFTER INSERT OR UPDATE OR DELETE ON serial_block FOR EACH ROW "
                   "EXECUTE FUNCTION trace_lot_doc_trigger();")
        op.execute("SELECT trace_lot_doc_rebuild()")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trace_lot_doc ON serial_block")
        op.execute(OLD_TRIGGER_FN)
        op.execute(_M0018._functions(_M0018.DOC_SELECT))
        op.execute("SELECT trace_lot_doc_rebuild()")
    with op.batch_alter_table("serial_block") as b:
        b.drop_column("last_code")
        b.drop_column("first_code")
