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


_M0014 = _m0014()

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
_HIST_PARTS = f"""concat_ws(E'\\x1f',
    (SELECT count(*) FROM operation_record o WHERE o.output_lot_id = l.id),
    (SELECT count(*) FROM inspection x WHERE x.lot_id = l.id),
    to_json(COALESCE((SELECT string_agg(r.number, ', ' ORDER BY r.id) FROM ncr r WHERE r.lot_id = l.id), ''))::text,
    {_OPS},
    {_INS},
    {_NCRS})"""


def _replace(text: str, old: str, new: str) -> str:
    """`text` with its one `old` part as `new` (the definitions below are 0014's with these parts changed)."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


# the row of every lot that `{where}` selects: 0014's, with the history (between THEN and END) in parts
_HEAD, _, _REST = _M0014.DOC_SELECT.partition("THEN\n  json_build_array(")
DOC_SELECT = _HEAD + "THEN\n  " + _HIST_PARTS + " END AS hist" + _REST.partition(")::text END AS hist")[2]


def _functions(doc_select: str) -> str:
    """trace_lot_doc_refresh() and trace_lot_doc_rebuild() over `doc_select` (the trigger calls the first)."""
    text = _M0014.REFRESH.partition("\nCREATE OR REPLACE FUNCTION trace_lot_doc_trigger()")[0]  # the trigger stays
    for where in ("l.id = p_lot", "true"):
        text = _replace(text, _M0014.DOC_SELECT.format(where=where), doc_select.format(where=where))
    return text


# PostgreSQL: a whole walk and the rows of the visited lots: one JSON text (domain/trace.py reads it)
# [starts, [reached, from, via], [lot docs], null, [[item id, code, gtin]], [[supplier id, code]],
#  captured nodes [[id], [uri], [kind]], their events (arrays of columns)]
# then, when p_full, GS and the histories: lot id US hist, records separated by RS. 0014's function otherwise.
TRACE_LOTS = _replace(_replace(_replace(
    _M0014.TRACE_LOTS,
    "string_agg(d.lot_id || ',' || d.hist, ',')",
    "string_agg(d.lot_id || E'\\x1f' || d.hist, E'\\x1e')"),
    """',[', v_docs, '],',
    CASE WHEN p_full THEN concat('[', v_hists, ']') ELSE 'null' END, ',',""",
    """',[', v_docs, '],null,',"""),
    "COALESCE(v_ext, 'null'), ',', COALESCE(v_events, 'null'), ']');",
    """COALESCE(v_ext, 'null'), ',', COALESCE(v_events, 'null'), ']',
    CASE WHEN p_full THEN E'\\x1d' END, v_hists);""")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_functions(DOC_SELECT))
        op.execute(TRACE_LOTS)
        op.execute("SELECT trace_lot_doc_rebuild()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_M0014.REFRESH)
        op.execute(_M0014.TRACE_LOTS)
        op.execute("SELECT trace_lot_doc_rebuild()")
