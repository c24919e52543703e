"""The per-lot trace rows (trace_lot_doc, PostgreSQL): kept current by triggers wherever the facts change, and
the trace read from them answers exactly what the portable path, reading the facts' own tables, answers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from core.db import FastReader, engine_of
from domain import trace
from tests.test_trace_plant import RESOLVER, build_plant

pytestmark = pytest.mark.asyncio

_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")


def _pg_only(sessionmaker) -> None:
    if engine_of(sessionmaker).dialect.name != "postgresql":
        pytest.skip("the trace rows are PostgreSQL's; SQLite traces read the facts' own tables")


def _norm(v: Any) -> Any:
    """Timestamps as instants (PostgreSQL's JSON drops trailing zeros of the fraction, isoformat does not)."""
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, str) and _ISO.match(v):
        return datetime.fromisoformat(v)
    return v


async def _stale_rows(sessionmaker) -> list[Any]:
    """Lots whose stored trace row differs from one computed now from the facts (or is missing, or left over)."""
    from importlib import import_module

    select_all = import_module("migrations.versions.0026_trace_pool_units").DOC_SELECT.format(where="true")
    async with sessionmaker() as s:
        conn = await s.connection()
        return [r[0] for r in (await conn.exec_driver_sql(f"""
            SELECT coalesce(f.id, d.lot_id) FROM ({select_all}) f FULL JOIN trace_lot_doc d ON d.lot_id = f.id
            WHERE f.id IS NULL OR d.lot_id IS NULL OR (f.item_id, f.supplier_id, f.doc, f.hist)
                  IS DISTINCT FROM (d.item_id, d.supplier_id, d.doc, d.hist)""")).all()]


async def test_trace_rows_follow_every_fact_and_answer_as_the_tables_do(sessionmaker):
    _pg_only(sessionmaker)
    plant = await build_plant(sessionmaker)
    b1, m3 = plant.lots["B1"], plant.lots["M3"]
    # facts the plant did not write yet, and changes to what it wrote, straight in the tables
    async with sessionmaker() as s, s.begin():
        lot_id = (await s.execute(text("SELECT id FROM lot WHERE number = :n"), {"n": b1})).scalar_one()
        ncr = (await s.execute(text(
            "INSERT INTO ncr (number, workflow_id, lot_id, state, description, opened_at) "
            "VALUES (:n, :w, :lot, 'review', 'burr on the bore', :t) RETURNING id"),
            {"n": f"NCR-{plant.tag}", "w": f"ncr-{plant.tag}", "lot": lot_id,
             "t": datetime(2026, 11, 21, 12, tzinfo=UTC)})).scalar_one()
        await s.execute(text(
            "INSERT INTO ncr_decision (decision_id, ncr_id, action, reviewer, role, reason, decided_at) "
            "VALUES (:d, :ncr, 'use_as_is', 'rev-1', 'quality_engineer', 'within drawing note 4', :t)"),
            {"d": f"D-{plant.tag}", "ncr": ncr, "t": datetime(2026, 11, 21, 13, tzinfo=UTC)})
        await s.execute(text("UPDATE shipment SET carrier = 'UPS' WHERE number = :n"), {"n": f"DN-{plant.tag}"})
        await s.execute(text("UPDATE lot SET location = 'QA-CAGE' WHERE number = :n"), {"n": m3})
        await s.execute(text(
            "DELETE FROM characteristic_result WHERE inspection_id = "
            "(SELECT id FROM inspection WHERE number = :n)"), {"n": f"IQC-{plant.lots['M1']}"})
    assert await _stale_rows(sessionmaker) == []
    # a serial block issued to B1 under its item's unit code rule, as the hub issues codes (migration 0025)
    from sqlalchemy import select

    from domain import codes
    from domain.models import Lot

    async with sessionmaker() as s, s.begin():
        lot = (await s.execute(select(Lot).where(Lot.number == b1))).scalar_one()
        await s.refresh(lot, ["item"])
        rule = await codes.current_rule(s, lot.item, "unit")
        block = await codes.issue_block(s, rule=rule, count=4, key=f"SB-{plant.tag}", purpose="order", lot=lot,
                                        gtin=lot.item.gtin, actor=None)
        issued = (block.first_code, block.last_code)
    assert await _stale_rows(sessionmaker) == []

    reader = FastReader(engine_of(sessionmaker).url)
    try:
        async with sessionmaker() as s:
            fast = await trace.backward(s, plant.unit(3), resolver=RESOLVER, reader=reader)
            in_session = await trace.backward(s, plant.unit(3), resolver=RESOLVER)
            raw = await trace._fetch_portable(s, "lot", {"lot": lot_id}, up=True, full=True)
            portable = trace._assemble(raw, up=True, resolver=RESOLVER, full=True)
            await trace._sign_decisions(s, portable["nodes"])  # as backward() adds them after assembling
            fwd_fast = await trace.forward(s, resolver=RESOLVER, kind="lot", value=plant.lots["M1"], reader=reader)
            fwd_portable = trace._assemble(
                await trace._fetch_portable(s, "f_lot", {"value": plant.lots["M1"]}, up=False, full=False),
                up=False, resolver=RESOLVER, full=False)
    finally:
        await reader.close()
    assert fast == in_session
    assert _norm({k: fast[k] for k in ("nodes", "edges", "flat")}) == _norm(portable)
    # (the assembler also hands forward() each lot's summary tuple, under "lots": not part of the answer)
    assert _norm({k: fwd_fast[k] for k in ("nodes", "edges", "flat")}) == \
        _norm({k: fwd_portable[k] for k in ("nodes", "edges", "flat")})
    nodes = {n["id"]: n for n in fast["nodes"]}
    assert [n["number"] for n in nodes[b1]["ncrs"]] == [f"NCR-{plant.tag}"]
    assert nodes[b1]["ncrs"][0]["decisions"][0]["action"] == "use_as_is"
    assert nodes[b1]["shipments"][0]["carrier"] == "UPS"
    assert nodes[m3]["location"] == "QA-CAGE"
    assert nodes[plant.lots["M1"]]["inspections"][0]["characteristics"] == []
    assert nodes[plant.lots["M2"]]["inspections"][0]["characteristics"][0]["values"] == [30.2]
    serial = nodes[b1]["units"]["blocks"][-1]
    assert serial["count"] == 4 and issued[0].endswith(serial["first"]) and issued[1].endswith(serial["last"])

    # a lot that goes takes its row with it
    async with sessionmaker() as s, s.begin():
        await s.execute(text("DELETE FROM ncr_decision WHERE ncr_id = :n"), {"n": ncr})
        await s.execute(text("DELETE FROM ncr WHERE id = :n"), {"n": ncr})
    assert await _stale_rows(sessionmaker) == []


async def test_rebuild_gives_the_rows_the_triggers_keep(sessionmaker):
    _pg_only(sessionmaker)
    await build_plant(sessionmaker)
    async with sessionmaker() as s:
        before = dict((await s.execute(text(
            "SELECT lot_id, concat(doc, hist) FROM trace_lot_doc"))).all())
    async with sessionmaker() as s, s.begin():
        n = (await s.execute(text("SELECT trace_lot_doc_rebuild()"))).scalar_one()
    async with sessionmaker() as s:
        after = dict((await s.execute(text(
            "SELECT lot_id, concat(doc, hist) FROM trace_lot_doc"))).all())
    assert n == len(after) and after == before

