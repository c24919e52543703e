"""trace: a per-lot trace row (trace_lot_doc), kept current by triggers, and trace_lots() reading it

Revision ID: 0014_trace_doc
Revises: 0003_trace

A trace used to probe six tables per visited lot (the lot, its operations, inspections and their measurements,
NCRs and their decisions, shipment lines and shipments, serial blocks): a dozen index and heap pages per lot.
Now trace_lot_doc holds, per lot, those facts as two JSON texts ready for the answer:
- doc: [id, number, kind, status, quantity, remaining, uom, supplier lot, heat, certificate, receipt, location,
  concession, item id, supplier id, shipments (objects, by shipped_at) or null, serial blocks ([first, count])
  or null] (all a forward trace reads);
- hist: [operations, inspections (with characteristics), NCRs (with decisions)] as the answer shows them, or
  null when the lot has none (a backward trace reads it too: one probe more per lot costs more than the wider
  rows, measured),
so a trace reads one row per lot. On PostgreSQL, row triggers on every table the row is made of rewrite it in
the transaction that changes them (the writer first locks the row, so two transactions touching one lot do not
overwrite each other's facts); item and supplier codes are joined when read (an item's rename would otherwise
rewrite all its lots). On SQLite the table exists (the models and migrations agree) but stays empty: the
portable trace path reads the facts' own tables.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_trace_doc"
down_revision = "0003_trace"
branch_labels = None
depends_on = None

# the row of every lot that `{where}` selects (one template for the trigger and the bulk build)
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
  CASE WHEN EXISTS (SELECT 1 FROM operation_record o WHERE o.output_lot_id = l.id)
         OR EXISTS (SELECT 1 FROM inspection x WHERE x.lot_id = l.id)
         OR EXISTS (SELECT 1 FROM ncr r WHERE r.lot_id = l.id) THEN
  json_build_array(
    COALESCE((SELECT json_agg(json_build_object('seq', o.seq, 'name', o.name, 'rework', o.rework,
                'equipment', o.equipment, 'operator', o.operator, 'shift', o.shift, 'started_at', o.started_at,
                'ended_at', o.ended_at, 'parameters', o.parameters, 'consumed', o.consumed,
                'good_quantity', o.good_quantity, 'scrap_quantity', o.scrap_quantity) ORDER BY o.id)
       FROM operation_record o WHERE o.output_lot_id = l.id), '[]'::json),
    COALESCE((SELECT json_agg(json_build_object('number', x.number, 'kind', x.kind, 'status', x.status,
                'inspector', x.inspector, 'inspected_at', x.inspected_at, 'characteristics', COALESCE(
                  (SELECT json_agg(json_build_object('name', c.name, 'nominal', c.nominal, 'lower', c.lower,
                      'upper', c.upper, 'unit', c.unit, 'values', c."values", 'verdict', c.verdict) ORDER BY c.id)
                   FROM characteristic_result c WHERE c.inspection_id = x.id), '[]'::json)) ORDER BY x.id)
       FROM inspection x WHERE x.lot_id = l.id), '[]'::json),
    COALESCE((SELECT json_agg(json_build_object('number', r.number, 'state', r.state,
                'disposition', r.disposition, 'description', r.description, 'opened_at', r.opened_at,
                'closed_at', r.closed_at, 'decisions', COALESCE(
                  (SELECT json_agg(json_build_object('action', d.action, 'reviewer', d.reviewer, 'role', d.role,
                      'reason', d.reason, 'decided_at', d.decided_at) ORDER BY d.id)
                   FROM ncr_decision d WHERE d.ncr_id = r.id), '[]'::json)) ORDER BY r.id)
       FROM ncr r WHERE r.lot_id = l.id), '[]'::json))::text END AS hist
FROM lot l WHERE {where}
"""

REFRESH = f"""
CREATE OR REPLACE FUNCTION trace_lot_doc_refresh(p_lot integer) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE v_item integer; v_supplier integer; v_doc text; v_hist text;
BEGIN
  IF p_lot IS NULL THEN
    RETURN;
  END IF;
  -- writers of one lot's row take turns, and each reads the facts after the previous one committed
  PERFORM 1 FROM trace_lot_doc WHERE lot_id = p_lot FOR UPDATE;
  SELECT t.item_id, t.supplier_id, t.doc, t.hist INTO v_item, v_supplier, v_doc, v_hist
    FROM ({DOC_SELECT.format(where="l.id = p_lot")}) t;
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
  INSERT INTO trace_lot_doc (lot_id, item_id, supplier_id, doc, hist) {DOC_SELECT.format(where="true")};
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$fn$;

CREATE OR REPLACE FUNCTION trace_lot_doc_trigger() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
BEGIN
  IF TG_OP <> 'INSERT' THEN r := OLD; ELSE r := NEW; END IF;
  CASE TG_TABLE_NAME
  WHEN 'lot' THEN
    IF TG_OP = 'DELETE' THEN
      DELETE FROM trace_lot_doc WHERE lot_id = OLD.id;
    ELSE
      PERFORM trace_lot_doc_refresh(NEW.id);
    END IF;
  WHEN 'operation_record' THEN
    PERFORM trace_lot_doc_refresh(r.output_lot_id);
    IF TG_OP = 'UPDATE' AND NEW.output_lot_id IS DISTINCT FROM OLD.output_lot_id THEN
      PERFORM trace_lot_doc_refresh(NEW.output_lot_id);
    END IF;
  WHEN 'inspection', 'ncr', 'shipment_line', 'code_block' THEN
    PERFORM trace_lot_doc_refresh(r.lot_id);
    IF TG_OP = 'UPDATE' AND NEW.lot_id IS DISTINCT FROM OLD.lot_id THEN
      PERFORM trace_lot_doc_refresh(NEW.lot_id);
    END IF;
  WHEN 'characteristic_result' THEN
    PERFORM trace_lot_doc_refresh((SELECT lot_id FROM inspection WHERE id = r.inspection_id));
    IF TG_OP = 'UPDATE' AND NEW.inspection_id IS DISTINCT FROM OLD.inspection_id THEN
      PERFORM trace_lot_doc_refresh((SELECT lot_id FROM inspection WHERE id = NEW.inspection_id));
    END IF;
  WHEN 'ncr_decision' THEN
    PERFORM trace_lot_doc_refresh((SELECT lot_id FROM ncr WHERE id = r.ncr_id));
    IF TG_OP = 'UPDATE' AND NEW.ncr_id IS DISTINCT FROM OLD.ncr_id THEN
      PERFORM trace_lot_doc_refresh((SELECT lot_id FROM ncr WHERE id = NEW.ncr_id));
    END IF;
  WHEN 'shipment' THEN
    PERFORM trace_lot_doc_refresh(sl.lot_id) FROM (SELECT DISTINCT lot_id FROM shipment_line
                                                    WHERE shipment_id = r.id) sl;
  END CASE;
  RETURN NULL;
END
$fn$;
"""

# the lot's own columns in the row: an update that changes none of them (updated_at, work order) costs nothing
_LOT_COLS = ("number", "kind", "status", "quantity", "quantity_remaining", "uom", "supplier_lot", "heat_number",
             "certificate_ref", "receipt", "location", "concession", "item_id", "supplier_id")
_WATCHED = ("operation_record", "inspection", "characteristic_result", "ncr", "ncr_decision", "shipment_line",
            "code_block")
TRIGGERS = "\n".join(
    [f"CREATE TRIGGER trace_lot_doc AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW "
     f"EXECUTE FUNCTION trace_lot_doc_trigger();" for t in _WATCHED]
    + [("CREATE TRIGGER trace_lot_doc AFTER INSERT OR DELETE ON lot FOR EACH ROW "
        "EXECUTE FUNCTION trace_lot_doc_trigger();"),
       "CREATE TRIGGER trace_lot_doc_upd AFTER UPDATE ON lot FOR EACH ROW WHEN (("
       + ", ".join(f"OLD.{c}" for c in _LOT_COLS) + ") IS DISTINCT FROM ("
       + ", ".join(f"NEW.{c}" for c in _LOT_COLS) + ")) EXECUTE FUNCTION trace_lot_doc_trigger();",
       ("CREATE TRIGGER trace_lot_doc_upd AFTER UPDATE ON shipment FOR EACH ROW "
        "WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION trace_lot_doc_trigger();")])

# PostgreSQL: a whole walk and the rows of the visited lots as one JSON text (domain/trace.py reads it):
# [starts, [reached, from, via], [lot docs], [lot id, hist, lot id, hist, ...] (when p_full), [[item id, code, gtin]],
#  [[supplier id, code]], captured nodes [[id], [uri], [kind]], their events (arrays of columns)].
# The lot rows go out as the text they are stored as: nothing is parsed or built per lot here.
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
         string_agg(d.lot_id || ',' || d.hist, ',') FILTER (WHERE p_full AND d.hist IS NOT NULL),
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
    json_build_array(v_reached, v_from, v_via)::text, ',[', v_docs, '],',
    CASE WHEN p_full THEN concat('[', v_hists, ']') ELSE 'null' END, ',',
    COALESCE((SELECT json_agg(json_build_array(i.id, i.code, i.gtin))::text FROM item i
              WHERE i.id = ANY(v_items)), '[]'), ',',
    COALESCE((SELECT json_agg(json_build_array(s.id, s.code))::text FROM supplier s
              WHERE s.id = ANY(v_suppliers)), '[]'), ',',
    COALESCE(v_ext, 'null'), ',', COALESCE(v_events, 'null'), ']');
END
$fn$;
"""


def upgrade() -> None:
    op.create_table(
        "trace_lot_doc",
        sa.Column("lot_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("supplier_id", sa.Integer(), nullable=True),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.Column("hist", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("lot_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(REFRESH)
        op.execute(TRIGGERS)
        op.execute(TRACE_LOTS)
        op.execute("SELECT trace_lot_doc_rebuild()")  # the lots already there


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for t in (*_WATCHED, "lot", "shipment"):
            op.execute(f"DROP TRIGGER IF EXISTS trace_lot_doc ON {t}")
            op.execute(f"DROP TRIGGER IF EXISTS trace_lot_doc_upd ON {t}")
        op.execute("DROP FUNCTION IF EXISTS trace_lots(bigint[], boolean, boolean)")
        op.execute("DROP FUNCTION IF EXISTS trace_lot_doc_trigger()")
        op.execute("DROP FUNCTION IF EXISTS trace_lot_doc_rebuild()")
        op.execute("DROP FUNCTION IF EXISTS trace_lot_doc_refresh(integer)")
    op.drop_table("trace_lot_doc")
