"""trace: units printed from offline code pools count in their lot's units

Revision ID: 0026_trace_pool_units
Revises: 0025_serial_block_codes

A line that lost its network prints from a code pool allocated in advance; its upload records each code it used
with the lot (used_code, pool_id and lot_id set). Those units are the lot's as much as a block issued to it, but the
trace listed only blocks. Now the lot's trace row (PostgreSQL) lists them after its blocks as one entry, [count],
which the trace shows as `{"count": n, "from_pools": true}`; the portable path (SQLite) counts them itself
(domain/trace.py). A statement-level trigger on used_code (inserted and deleted rows, by transition tables) rewrites
each touched lot's row once per statement, so an upload of thousands of codes costs one rewrite per lot.
"""
from __future__ import annotations

import importlib

from alembic import op

revision = "0026_trace_pool_units"
down_revision = "0025_serial_block_codes"
branch_labels = None
depends_on = None

_M0018 = importlib.import_module("migrations.versions.0018_trace_hist_parts")
_M0025 = importlib.import_module("migrations.versions.0025_serial_block_codes")

_SERIAL = """          FROM serial_block s JOIN code_rule r ON r.id = s.rule_id WHERE s.lot_id = l.id AND r.level = 'unit') u)"""
_POOLS = """          FROM serial_block s JOIN code_rule r ON r.id = s.rule_id WHERE s.lot_id = l.id AND r.level = 'unit'
        UNION ALL
        SELECT json_build_array(count(*)), 2, 0 FROM used_code p
          WHERE p.lot_id = l.id AND p.pool_id IS NOT NULL AND p.level = 'unit' HAVING count(*) > 0) u)"""
DOC_SELECT = _M0018._replace(_M0025.DOC_SELECT, _SERIAL, _POOLS)

POOL_TRIGGER_FN = """
CREATE OR REPLACE FUNCTION trace_lot_doc_pool_units() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM trace_lot_doc_refresh(x.lot_id) FROM (SELECT DISTINCT lot_id FROM pool_new
                                                   WHERE lot_id IS NOT NULL AND pool_id IS NOT NULL) x;
  ELSE
    PERFORM trace_lot_doc_refresh(x.lot_id) FROM (SELECT DISTINCT lot_id FROM pool_old
                                                   WHERE lot_id IS NOT NULL AND pool_id IS NOT NULL) x;
  END IF;
  RETURN NULL;
END
$fn$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_M0018._functions(DOC_SELECT))
        op.execute(POOL_TRIGGER_FN)
        op.execute("CREATE TRIGGER trace_lot_doc_pool_ins AFTER INSERT ON used_code REFERENCING NEW TABLE AS pool_new "
                   "FOR EACH STATEMENT EXECUTE FUNCTION trace_lot_doc_pool_units();")
        op.execute("CREATE TRIGGER trace_lot_doc_pool_del AFTER DELETE ON used_code REFERENCING OLD TABLE AS pool_old "
                   "FOR EACH STATEMENT EXECUTE FUNCTION trace_lot_doc_pool_units();")
        op.execute("SELECT trace_lot_doc_rebuild()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trace_lot_doc_pool_ins ON used_code")
        op.execute("DROP TRIGGER IF EXISTS trace_lot_doc_pool_del ON used_code")
        op.execute("DROP FUNCTION IF EXISTS trace_lot_doc_pool_units()")
        op.execute(_M0018._functions(_M0025.DOC_SELECT))
        op.execute("SELECT trace_lot_doc_rebuild()")
