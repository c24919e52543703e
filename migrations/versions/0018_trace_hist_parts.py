"""trace: each lot's history kept as parts the answer sends as they are (counts, NCR names, three JSON texts)

Revision ID: 0018_trace_hist_parts
Revises: 0014_trace_doc

trace_lot_doc.hist (0014_trace_doc) held a lot's [operations, inspections, NCRs] as one JSON text, which every
backward trace parsed into Python objects and serialised again, unchanged, into its answer. It now holds the
parts separately, joined by the unit separator (U+001F, which a JSON text never holds raw: PostgreSQL escapes
control characters in strings):

    <operations count> US <inspections count> US <NCR numbers as a JSON string> US <operations JSON>
    US <inspections JSON> US <NCRs JSON>

so the JSON route embeds the three texts in its answer as they are stored (orjson.Fragment) and the flat list
takes the counts and NCR numbers without reading them. trace_lots() sends the histories after its JSON text,
behind a group separator (U+001D), one record per lot (record separator U+001E: lot id US the row's hist).
The lots' rows are rebuilt once (about 20 s per million lots here). SQLite keeps no trace rows (0014).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0018_trace_hist_parts"
down_revision = "0014_trace_doc"
branch_labels = None
depends_on = None


def _m0014():
    path = Path(__file__).with_name("0014_trace_doc.py")
    spec = importlib.util.spec_from_file_location("_tracehub_migration_0014_trace_doc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# compact JSON (to_json of rows: no spaces, unlike json_build_object and json_agg), keys in column order, as the
# answer shows them
_OPS = """COALESCE((SELECT to_json(array_agg(t ORDER BY o.id)) FROM operation_record o CROSS JOIN LATERAL (
         SELECT o.seq, o.name, o.rework, o.equipment, o.operator, o.shift, o.started_at, o.ended_at,
                o.parameters, o.consumed, o.good_quantity, o.scrap_quantity) t
       WHERE o.output_lot_id = l.id)::text, '[]')"""
_INS = """COALESCE((SELECT to_json(array_agg(t ORDER BY x.id)) FROM inspection x CROSS JOIN LATERAL (
         SELECT x.number, x.kind, x.status, x.inspector, x.inspected_at, COALESCE(
           (SELECT to_json(array_agg(ct ORDER BY c.id)) FROM characteristic_result c CROSS JOIN LATERAL (
              SELECT c.name, c.nominal, c.lower, c.upper, c.unit, c."values", c.verdict) ct
            WHERE c.inspection_id = x.id), '[]'::json) AS characteristics) t
       WHERE x.lot_id = l.id)::text, '[]')"""
_NCRS = """COALESCE((SELECT to_json(array_agg(t ORDER BY r.id)) FROM ncr r CROSS JOIN LATERAL (
         SELECT r.number, r.state, r.disposition, r.description, r.opened_at, r.closed_at, COALESCE(
           (SELECT to_json(array_agg(dt ORDER BY d.id)) FROM ncr_decision d CROSS JOIN LATERAL (
              SELECT d.action, d.reviewer, d.role, d.reason, d.decided_at) dt
            WHERE d.ncr_id = r.id), '[]'::json) AS decisions) t
       WHERE r.lot_id = l.id)::text, '[]')"""
_HIST = f"""CASE WHEN EXISTS (SELECT 1 FROM operation_record o WHERE o.output_lot_id = l.id)
         OR EXISTS (SELECT 1 FROM inspection x WHERE x.lot_id = l.id)
         OR EXISTS (SELECT 1 FROM ncr r WHERE r.lot_id = l.id) THEN
  concat_ws(E'\\x1f',
    (SELECT count(*) FROM operation_record o WHERE o.output_lot_id = l.id),
    (SELECT count(*) FROM inspection x WHERE x.lot_id = l.id),
    to_json(COALESCE((SELECT string_agg(r.number, ', ' ORDER BY r.id) FROM ncr r WHERE r.lot_id = l.id), ''))::text,
    {_OPS},
    {_INS},
    {_NCRS}) END AS hist"""

# the row of every lot that `{where}` selects (as 0014's, with the history in parts)
DOC_SELECT = """
SELECT l.id, l.item_id, l.supplier_id,
  json_build_array(l.id, l.number, l.kind, l.status, l.quantity, l.quantity_remaining, l.uom, l.supplier_lot,
    l.heat_number, l.certificate_ref, l.receipt, l.location, l.concession, l.item_id, l.supplier_id,
    (SELECT json_agg(json_build_object('shipment', sh.number, 'sales_order', sh.sales_order,
                'customer', sh.customer, 'carrier', sh.carrier, 'tracking_number', sh.tracking_number,
                'quantity', sl.quantity, 'shipped_at', sh.shipped_at) ORDER BY sh.shipped_at, sl.id)
       FROM shipment_line sl JOIN shipment sh ON sh.id = sl.shipment_id WHERE sl.lot_id = l.id),
    (SELECT json_agg(json_build_array(b.first_seq, b.count) ORDER BY b.first_seq)
       FROM code_block b WHERE b.lot_id = l.id))::text AS doc,
  """ + _HIST.replace("{", "{{").replace("}", "}}") + """
FROM lot l WHERE {where}
"""


def _functions(doc_select: str) -> str:
    """trace_lot_doc_refresh() and trace_lot_doc_rebuild() over `doc_select` (the trigger calls the first)."""
    return f"""
CREATE OR REPLACE FUNCTION trace_lot_doc_refresh(p_lot integer) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE v_item integer; v_supplier integer; v_doc text; v_hist text;
BEGIN
  IF p_lot IS NULL THEN
    RETURN;
  END IF;
  -- writers of one lot's row take turns, and each reads the facts after the previous one committed
  PERFORM 1 FROM trace_lot_doc WHERE lot_id = p_lot FOR UPDATE;
  SELECT t.item_id, t.supplier_id, t.doc, t.hist INTO v_item, v_supplier, v_doc, v_hist
    FROM ({doc_select.format(where="l.id = p_lot")}) t;
  IF v_doc IS NULL THEN  -- the lot is gone
    DELETE FROM trace_lot_doc WHERE lot_id = p_lot;
    RETURN;
  END IF;
  INSERT INTO trace_lot_doc (lot_id, item_id, supplier_id, doc, hist)
    VALUES (p_lot, v_item, v_supplier, v_doc, v_hist)
  ON CONFLICT (lot_id) DO UPDATE SET item_id = excluded.item_id, supplier_id = excluded.supplier_id,
    doc = excluded.doc, hist = excluded.hist;
END
$fn$;

CREATE OR REPLACE FUNCTION trace_lot_doc_rebuild() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE n bigint;
BEGIN
  TRUNCATE trace_lot_doc;
  INSERT INTO trace_lot_doc (lot_id, item_id, supplier_id, doc, hist) {doc_select.format(where="true")};
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$fn$;
"""


# PostgreSQL: a whole walk and the rows of the visited lots: one JSON text (domain/trace.py reads it)
# [starts, [reached, from, via], [lot docs], null, [[item id, code, gtin]], [[supplier id, code]],
#  captured nodes [[id], [uri], [kind]], their events (arrays of columns)]
# then, when p_full, GS and the histories: lot id US hist, records separated by RS.
TRACE_LOTS = """
CREATE OR REPLACE FUNCTION trace_lots(p_starts bigint[], p_up boolean, p_full boolean) RETURNS text
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
  v_starts bigint[]; v_reached bigint[]; v_from bigint[]; v_via varchar[]; v_nodes bigint[];
  v_docs text; v_hists text; v_items integer[]; v_suppliers integer[]; v_ext text; v_events text;
BEGIN
  IF p_up THEN
    WITH RECURSIVE walk(id, c, via) AS (
        SELECT s, NULL::bigint, NULL::varchar FROM unnest(p_starts) s
      UNION
        SELECT e.parent_id, e.child_id, e.via FROM trace_edge e JOIN walk w ON e.child_id = w.id)
    SELECT array_agg(w.id) FILTER (WHERE w.c IS NULL), array_agg(w.id) FILTER (WHERE w.c IS NOT NULL),
           array_agg(w.c) FILTER (WHERE w.c IS NOT NULL), array_agg(w.via) FILTER (WHERE w.c IS NOT NULL),
           array_agg(DISTINCT w.id)
      INTO v_starts, v_reached, v_from, v_via, v_nodes FROM walk w;
  ELSE
    WITH RECURSIVE walk(id, c, via) AS (
        SELECT s, NULL::bigint, NULL::varchar FROM unnest(p_starts) s
      UNION
        SELECT e.child_id, e.parent_id, e.via FROM trace_edge e JOIN walk w ON e.parent_id = w.id)
    SELECT array_agg(w.id) FILTER (WHERE w.c IS NULL), array_agg(w.id) FILTER (WHERE w.c IS NOT NULL),
           array_agg(w.c) FILTER (WHERE w.c IS NOT NULL), array_agg(w.via) FILTER (WHERE w.c IS NOT NULL),
           array_agg(DISTINCT w.id)
      INTO v_starts, v_reached, v_from, v_via, v_nodes FROM walk w;
  END IF;
  -- one pass over the lots' rows: their texts, and the items and suppliers they name
  SELECT string_agg(d.doc, ','),
         string_agg(d.lot_id || E'\\x1f' || d.hist, E'\\x1e') FILTER (WHERE p_full AND d.hist IS NOT NULL),
         array_agg(DISTINCT d.item_id), array_agg(DISTINCT d.supplier_id) FILTER (WHERE d.supplier_id IS NOT NULL)
    INTO v_docs, v_hists, v_items, v_suppliers
    FROM unnest(v_nodes) v(id) JOIN trace_lot_doc d ON d.lot_id = v.id WHERE v.id > 0;
  IF EXISTS (SELECT 1 FROM unnest(v_nodes) v(id) WHERE v.id < 0) THEN  -- identifiers from captured events
    WITH ext AS MATERIALIZED (
        SELECT n.id, n.uri, n.kind FROM unnest(v_nodes) v(id) JOIN trace_node n ON n.id = v.id WHERE v.id < 0)
    SELECT (SELECT json_build_array(array_agg(x.id), array_agg(x.uri), array_agg(x.kind))::text FROM ext x),
           (SELECT json_build_array(array_agg(t.uri), array_agg(t.role), array_agg(t.event_id),
                   array_agg(t.event_type), array_agg(t.biz_step), array_agg(t.event_time),
                   array_agg(t.document))::text FROM (
              SELECT x.uri, x.role, ev.event_id, ev.event_type, ev.biz_step, ev.event_time, ev.document
              FROM epcis_event_epc x JOIN epcis_event ev ON ev.id = x.event_pk
              WHERE x.uri IN (SELECT ext.uri FROM ext) ORDER BY ev.event_time, ev.id) t)
      INTO v_ext, v_events;
  END IF;
  -- concat() copies each part once (a chain of || copies the growing text again at every step)
  RETURN concat('[', COALESCE(to_json(v_starts)::text, 'null'), ',',
    json_build_array(v_reached, v_from, v_via)::text, ',[', v_docs, '],null,',
    COALESCE((SELECT json_agg(json_build_array(i.id, i.code, i.gtin))::text FROM item i
              WHERE i.id = ANY(v_items)), '[]'), ',',
    COALESCE((SELECT json_agg(json_build_array(s.id, s.code))::text FROM supplier s
              WHERE s.id = ANY(v_suppliers)), '[]'), ',',
    COALESCE(v_ext, 'null'), ',', COALESCE(v_events, 'null'), ']',
    CASE WHEN p_full THEN E'\\x1d' END, v_hists);
END
$fn$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_functions(DOC_SELECT))
        op.execute(TRACE_LOTS)
        op.execute("SELECT trace_lot_doc_rebuild()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        m = _m0014()
        op.execute(m.REFRESH)
        op.execute(m.TRACE_LOTS)
        op.execute("SELECT trace_lot_doc_rebuild()")
