"""trace: lineage index, EPCIS event indexes, capture jobs, named queries, error declarations, recalls

Revision ID: 0003_trace
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_trace"
down_revision = "0001"
branch_labels = None
depends_on = None


# PostgreSQL: a whole walk and every detail of the visited lots, as one JSON text (domain/trace.py reads it:
# [starts, [reached, from, via], lots, external nodes, shipments, unit blocks, operations, inspections, NCRs,
# captured events], each kind as an array of columns). A PL/pgSQL function keeps its plans for the life of the
# connection, where a prepared statement would not survive the rollback that ends every request's session.
# The plans are generic: one start or a thousand, the walk and the details are index probes by id.
TRACE_GENEALOGY = """
CREATE OR REPLACE FUNCTION trace_genealogy(p_starts bigint[], p_up boolean, p_full boolean) RETURNS text
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
  v_starts bigint[]; v_reached bigint[]; v_from bigint[]; v_via varchar[]; v_nodes bigint[];
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
  RETURN (
    WITH lots AS MATERIALIZED (
        SELECT l.id, l.number, l.kind, l.status, l.quantity, l.quantity_remaining, l.uom, l.supplier_lot,
               l.heat_number, l.certificate_ref, l.receipt, l.location, l.concession, i.code, i.gtin,
               s.code AS supplier
        FROM unnest(v_nodes) v(id) JOIN lot l ON l.id = v.id LEFT JOIN item i ON i.id = l.item_id
        LEFT JOIN supplier s ON s.id = l.supplier_id WHERE v.id > 0),
    ext AS MATERIALIZED (
        SELECT n.id, n.uri, n.kind FROM unnest(v_nodes) v(id) JOIN trace_node n ON n.id = v.id WHERE v.id < 0),
    ids AS MATERIALIZED (SELECT ARRAY(SELECT lots.id FROM lots) AS a)
    SELECT json_build_array(v_starts, json_build_array(v_reached, v_from, v_via),
     (SELECT json_build_array(array_agg(x.id), array_agg(x.number), array_agg(x.kind), array_agg(x.status),
             array_agg(x.quantity), array_agg(x.quantity_remaining), array_agg(x.uom), array_agg(x.supplier_lot),
             array_agg(x.heat_number), array_agg(x.certificate_ref), array_agg(x.receipt), array_agg(x.location),
             array_agg(x.concession), array_agg(x.code), array_agg(x.gtin), array_agg(x.supplier)) FROM lots x),
     (SELECT json_build_array(array_agg(x.id), array_agg(x.uri), array_agg(x.kind)) FROM ext x),
     (SELECT json_build_array(array_agg(t.lot_id), array_agg(t.quantity), array_agg(t.number),
             array_agg(t.sales_order), array_agg(t.customer), array_agg(t.carrier), array_agg(t.tracking_number),
             array_agg(t.shipped_at)) FROM (
        SELECT sl.lot_id, sl.quantity, sh.number, sh.sales_order, sh.customer, sh.carrier, sh.tracking_number,
               sh.shipped_at
        FROM shipment_line sl JOIN shipment sh ON sh.id = sl.shipment_id
        WHERE sl.lot_id = ANY((SELECT a FROM ids)::int[]) ORDER BY sh.shipped_at, sl.id) t),
     (SELECT json_build_array(array_agg(t.lot_id), array_agg(t.first_seq), array_agg(t.count)) FROM (
        SELECT b.lot_id, b.first_seq, b.count FROM code_block b WHERE b.lot_id = ANY((SELECT a FROM ids)::int[])
        ORDER BY b.lot_id, b.first_seq) t),
     CASE WHEN p_full THEN (SELECT json_build_array(array_agg(t.output_lot_id), array_agg(t.seq), array_agg(t.name),
             array_agg(t.rework), array_agg(t.equipment), array_agg(t.operator), array_agg(t.shift),
             array_agg(t.started_at), array_agg(t.ended_at), array_agg(t.parameters), array_agg(t.consumed),
             array_agg(t.good_quantity), array_agg(t.scrap_quantity)) FROM (
        SELECT o.* FROM operation_record o WHERE o.output_lot_id = ANY((SELECT a FROM ids)::int[]) ORDER BY o.id) t)
     END,
     CASE WHEN p_full THEN (SELECT json_build_array(array_agg(t.id), array_agg(t.lot_id), array_agg(t.number),
             array_agg(t.kind), array_agg(t.status), array_agg(t.inspector), array_agg(t.inspected_at),
             array_agg(t.name), array_agg(t.nominal), array_agg(t.lower), array_agg(t.upper), array_agg(t.unit),
             array_agg(t."values"), array_agg(t.verdict)) FROM (
        SELECT x.id, x.lot_id, x.number, x.kind, x.status, x.inspector, x.inspected_at, c.name, c.nominal, c.lower,
               c.upper, c.unit, c."values", c.verdict
        FROM inspection x LEFT JOIN characteristic_result c ON c.inspection_id = x.id
        WHERE x.lot_id = ANY((SELECT a FROM ids)::int[]) ORDER BY x.id, c.id) t)
     END,
     CASE WHEN p_full THEN (SELECT json_build_array(array_agg(t.id), array_agg(t.lot_id), array_agg(t.number),
             array_agg(t.state), array_agg(t.disposition), array_agg(t.description), array_agg(t.opened_at),
             array_agg(t.closed_at), array_agg(t.action), array_agg(t.reviewer), array_agg(t.role),
             array_agg(t.reason), array_agg(t.decided_at)) FROM (
        SELECT r.id, r.lot_id, r.number, r.state, r.disposition, r.description, r.opened_at, r.closed_at, d.action,
               d.reviewer, d.role, d.reason, d.decided_at
        FROM ncr r LEFT JOIN ncr_decision d ON d.ncr_id = r.id
        WHERE r.lot_id = ANY((SELECT a FROM ids)::int[]) ORDER BY r.id, d.id) t)
     END,
     CASE WHEN EXISTS (SELECT 1 FROM ext) THEN (SELECT json_build_array(array_agg(t.uri), array_agg(t.role),
             array_agg(t.event_id), array_agg(t.event_type), array_agg(t.biz_step), array_agg(t.event_time),
             array_agg(t.document)) FROM (
        SELECT x.uri, x.role, ev.event_id, ev.event_type, ev.biz_step, ev.event_time, ev.document
        FROM epcis_event_epc x JOIN epcis_event ev ON ev.id = x.event_pk
        WHERE x.uri IN (SELECT ext.uri FROM ext) ORDER BY ev.event_time, ev.id) t)
     END)::text);
END
$fn$;
"""


def upgrade() -> None:
# ### commands auto generated by Alembic - please adjust! ###
    op.create_table('epcis_capture_job',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('running', sa.Boolean(), nullable=False),
    sa.Column('success', sa.Boolean(), nullable=True),
    sa.Column('error_behaviour', sa.String(length=16), nullable=False),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('stored_count', sa.Integer(), nullable=False),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('epcis_error_declaration',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('declaration_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('corrective_event_ids', sa.JSON(), nullable=False),
    sa.Column('record_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id', 'declaration_time')
    )
    with op.batch_alter_table('epcis_error_declaration', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_epcis_error_declaration_event_id'), ['event_id'], unique=False)

    op.create_table('epcis_named_query',
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('query', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('epcis_namespace',
    sa.Column('prefix', sa.String(length=64), nullable=False),
    sa.Column('iri', sa.String(length=300), nullable=False),
    sa.PrimaryKeyConstraint('prefix')
    )
    op.create_table('gs1_company_prefix',
    sa.Column('prefix', sa.String(length=12), nullable=False),
    sa.PrimaryKeyConstraint('prefix')
    )
    op.create_table('recall',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.String(length=64), nullable=False),
    sa.Column('workflow_id', sa.String(length=128), nullable=False),
    sa.Column('suspect_kind', sa.String(length=16), nullable=False),
    sa.Column('suspect', sa.String(length=120), nullable=False),
    sa.Column('window_from', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_to', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('requested_by', sa.String(length=80), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('number'),
    sa.UniqueConstraint('workflow_id')
    )
    with op.batch_alter_table('recall', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recall_status'), ['status'], unique=False)

    op.create_table('recall_notice',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('recall_id', sa.Integer(), nullable=False),
    sa.Column('customer', sa.String(length=120), nullable=False),
    sa.Column('shipments', sa.JSON(), nullable=False),
    sa.Column('quantity', sa.Float(), nullable=False),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=80), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['recall_id'], ['recall.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('recall_id', 'customer')
    )
    with op.batch_alter_table('recall_notice', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recall_notice_recall_id'), ['recall_id'], unique=False)

    op.create_table('recall_lot',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('recall_id', sa.Integer(), nullable=False),
    sa.Column('lot_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('status_before', sa.String(length=16), nullable=False),
    sa.Column('quantity', sa.Float(), nullable=False),
    sa.Column('held_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('erp_blocked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision', sa.String(length=16), nullable=True),
    sa.Column('decided_by', sa.String(length=80), nullable=True),
    sa.Column('decided_role', sa.String(length=32), nullable=True),
    sa.Column('decision_reason', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['lot_id'], ['lot.id'], ),
    sa.ForeignKeyConstraint(['recall_id'], ['recall.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('recall_id', 'lot_id')
    )
    with op.batch_alter_table('recall_lot', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recall_lot_lot_id'), ['lot_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_recall_lot_recall_id'), ['recall_id'], unique=False)

    # a hub lot's node id is its lot id; other identifiers take -nextval('trace_node_ext_seq') (PostgreSQL)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE trace_node_ext_seq")
    op.create_table('trace_node',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('uri', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('lot_id', sa.Integer(), nullable=True),
    sa.Column('lot_part', sa.String(length=80), nullable=True),
    sa.ForeignKeyConstraint(['lot_id'], ['lot.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('lot_id'),
    sa.UniqueConstraint('uri')
    )
    with op.batch_alter_table('trace_node', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trace_node_lot_part'), ['lot_part'], unique=False)

    # the query index of the event log: derived rows, written by domain/epcis_index.py in the transaction of
    # their events; no foreign key, so a captured document does not pay a lookup per identifier and field
    op.create_table('epcis_event_epc',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_pk', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('uri', sa.String(length=300), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('epcis_event_epc', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_epcis_event_epc_event_pk'), ['event_pk'], unique=False)
        batch_op.create_index('ix_epcis_event_epc_uri', ['uri', 'role'], unique=False)

    op.create_table('epcis_event_field',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_pk', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=300), nullable=False),
    sa.Column('value', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('epcis_event_field', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_epcis_event_field_event_pk'), ['event_pk'], unique=False)
        batch_op.create_index('ix_epcis_event_field_name_value', ['name', 'value'], unique=False)

    op.create_table('epcis_event_key',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('event_pk', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['event_pk'], ['epcis_event.id'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('epcis_event_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_epcis_event_key_event_pk'), ['event_pk'], unique=False)

    # a derived index written with its events: no foreign keys (a node that turns out to be a hub lot is
    # re-keyed to the lot id); the primary key carries `via` on PostgreSQL, so both walks are index-only
    op.create_table('trace_edge',
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('child_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_pk', sa.Integer(), nullable=True),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('parent_id', 'child_id', postgresql_include=['via'])
    )
    with op.batch_alter_table('trace_edge', schema=None) as batch_op:
        batch_op.create_index('ix_trace_edge_child_parent_via', ['child_id', 'parent_id', 'via'], unique=False)

    with op.batch_alter_table('epcis_event', schema=None) as batch_op:
        batch_op.create_index('ix_epcis_event_record_time', ['record_time'], unique=False)
        batch_op.create_index('ix_epcis_event_type_time', ['event_type', 'event_time'], unique=False)

    # ### end Alembic commands ###
    with op.batch_alter_table('code_block', schema=None) as batch_op:
        batch_op.create_index('ix_code_block_item_first_seq', ['item_id', 'first_seq'], unique=False)
    with op.batch_alter_table('lot', schema=None) as batch_op:
        batch_op.create_index('ix_lot_supplier_lot', ['supplier_lot'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(TRACE_GENEALOGY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS trace_genealogy(bigint[], boolean, boolean)")
    with op.batch_alter_table('lot', schema=None) as batch_op:
        batch_op.drop_index('ix_lot_supplier_lot')
    with op.batch_alter_table('code_block', schema=None) as batch_op:
        batch_op.drop_index('ix_code_block_item_first_seq')


# ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table('epcis_event', schema=None) as batch_op:
        batch_op.drop_index('ix_epcis_event_type_time')
        batch_op.drop_index('ix_epcis_event_record_time')

    with op.batch_alter_table('trace_edge', schema=None) as batch_op:
        batch_op.drop_index('ix_trace_edge_child_parent_via')

    op.drop_table('trace_edge')
    with op.batch_alter_table('epcis_event_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_epcis_event_key_event_pk'))

    op.drop_table('epcis_event_key')
    with op.batch_alter_table('epcis_event_field', schema=None) as batch_op:
        batch_op.drop_index('ix_epcis_event_field_name_value')
        batch_op.drop_index(batch_op.f('ix_epcis_event_field_event_pk'))

    op.drop_table('epcis_event_field')
    with op.batch_alter_table('epcis_event_epc', schema=None) as batch_op:
        batch_op.drop_index('ix_epcis_event_epc_uri')
        batch_op.drop_index(batch_op.f('ix_epcis_event_epc_event_pk'))

    op.drop_table('epcis_event_epc')
    with op.batch_alter_table('trace_node', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trace_node_lot_part'))

    op.drop_table('trace_node')
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS trace_node_ext_seq")
    with op.batch_alter_table('recall_lot', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recall_lot_recall_id'))
        batch_op.drop_index(batch_op.f('ix_recall_lot_lot_id'))

    op.drop_table('recall_lot')
    with op.batch_alter_table('recall_notice', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recall_notice_recall_id'))

    op.drop_table('recall_notice')
    with op.batch_alter_table('recall', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recall_status'))

    op.drop_table('recall')
    op.drop_table('gs1_company_prefix')
    op.drop_table('epcis_namespace')
    op.drop_table('epcis_named_query')
    with op.batch_alter_table('epcis_error_declaration', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_epcis_error_declaration_event_id'))

    op.drop_table('epcis_error_declaration')
    op.drop_table('epcis_capture_job')
    # ### end Alembic commands ###
