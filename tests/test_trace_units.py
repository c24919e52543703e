"""A trace lists a lot's units as the hub issues them: the serial blocks of the item's code rule (serial_block), each
with its first and last code as printed. Blocks issued before migration 0025 had no first and last code: the
migration renders them from their rule version, the same codes issuance writes."""

from __future__ import annotations

import csv
import io

import httpx
import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url

from domain.models_codes import SerialBlock
from tests.helpers import IN_SPEC_FINAL, IN_SPEC_IQC, fast_release, post_results, run_production, wait_done

pytestmark = pytest.mark.asyncio

DL = "https://id.tracehub.example/01/09506000134352/21/"


async def _made(api: httpx.AsyncClient, number: str, quantity: int = 20) -> dict:
    assert (await api.post("/api/erp/events", json=fast_release(number, quantity))).status_code == 202
    await post_results(api, number, "iqc", IN_SPEC_IQC)
    await run_production(api, number, quantity)
    await post_results(api, number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, number)
    assert done["status"]["result"] == "completed", done["status"]
    return done["status"]["codes"]


async def _units(api: httpx.AsyncClient, number: str) -> dict:
    fwd = (await api.get(f"/api/trace/forward/{number}-M1")).json()
    return next(n for n in fwd["nodes"] if n["id"] == f"{number}-L1")["units"]


def _fill_end_codes(db_url: str) -> int:
    import importlib

    m = importlib.import_module("migrations.versions.0025_serial_block_codes")
    u = make_url(db_url)
    sync = u.set(drivername="sqlite") if u.get_backend_name() == "sqlite" else u.set(drivername="postgresql+psycopg")
    engine = create_engine(sync)
    try:
        with engine.begin() as conn:
            return m._fill_end_codes(conn)
    finally:
        engine.dispose()


async def test_units_issued_by_the_hub_are_in_both_traces_with_their_first_and_last_code(api, sessionmaker,
                                                                                          wo_number):
    codes = await _made(api, wo_number, quantity=12)
    # the hub's default rule renders a unit code from its sequence number alone: the backward trace finds its block
    # inside the walk's statement (anchor unit_block), without the code service's lookup
    from domain import codes as code_service

    async with sessionmaker() as s:
        hit = await code_service.unit_sequence(s, "09506000134352", codes["last_serial"])
        assert hit is not None and hit[0] == "sgtin:09506000134352"
        assert await code_service.unit_sequence(s, "09506000134352", codes["last_serial"][1:]) is None
    block = {"first": codes["first_serial"], "last": codes["last_serial"], "count": 12,
             "first_uri": DL + codes["first_serial"], "last_uri": DL + codes["last_serial"]}
    assert await _units(api, wo_number) == {"count": 12, "blocks": [block]}
    back = (await api.get(f"/api/trace/backward/{DL}{codes['last_serial']}")).json()
    assert back["unit"] == DL + codes["last_serial"] and back["nodes"][0]["units"] == {"count": 12, "blocks": [block]}
    fwd = (await api.get(f"/api/trace/forward/{wo_number}-M1")).json()
    assert fwd["summary"]["units"] == 12
    # the CSV a quality engineer sends counts them too
    csv_text = (await api.get(f"/api/trace/forward/{wo_number}-M1", params={"format": "csv"})).text
    row = next(r for r in csv.DictReader(io.StringIO(csv_text)) if r["id"] == f"{wo_number}-L1")
    assert row["units"] == "12", row


async def test_a_block_issued_before_0025_is_rendered_by_the_migration_as_issuance_renders_it(api, sessionmaker,
                                                                                            db_url, wo_number):
    codes = await _made(api, wo_number)
    before = await _units(api, wo_number)
    assert before["count"] == 20 and before["blocks"][0]["first"] == codes["first_serial"]
    # as a block issued before the migration: no first or last code (on PostgreSQL the trigger rewrites the lot's
    # trace row, as the migration's rebuild does)
    async with sessionmaker() as s, s.begin():
        rows = (await s.execute(update(SerialBlock).where(SerialBlock.work_order == wo_number)
                                .values(first_code=None, last_code=None).returning(SerialBlock.id))).all()
    assert len(rows) == 1
    assert await _units(api, wo_number) == {"count": 20, "blocks": [{"first": None, "last": None, "count": 20}]}
    assert _fill_end_codes(db_url) >= 1
    async with sessionmaker() as s:
        first, last = (await s.execute(text("SELECT first_code, last_code FROM serial_block WHERE id = :id"),
                                       {"id": rows[0][0]})).one()
    assert (first, last) == (f"/01/09506000134352/21/{codes['first_serial']}",
                             f"/01/09506000134352/21/{codes['last_serial']}")
    assert await _units(api, wo_number) == before


async def test_a_unit_code_the_hub_never_issued_is_not_traced(api, wo_number):
    codes = await _made(api, wo_number, quantity=12)
    last = int(codes["last_serial"])
    for serial in (f"{last + 10_000:012d}", codes["last_serial"][1:], codes["last_serial"] + "0"):
        r = await api.get(f"/api/trace/backward/{DL}{serial}")
        assert r.status_code == 404 and r.json()["field"] == "code", (serial, r.text)


async def test_units_printed_from_an_offline_pool_count_in_their_lots_units(api, sessionmaker):
    import uuid
    from datetime import UTC, datetime, timedelta

    from tests.test_codes import make_item, make_lot

    item, _ = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/codes/pools", json={"number": number, "item": item, "count": 20, "line": "LINE-3"})
    assert r.status_code == 201, r.text
    block = r.json()["block"]
    t = datetime.now(UTC) - timedelta(hours=1)
    used = [{"code": (await api.get(f"/api/codes/blocks/{block['id']}/codes/{i}")).json()["digital_link"],
             "used_at": (t + timedelta(seconds=i)).isoformat(), "lot": lot} for i in range(7)]
    assert (await _units_of(api, lot))["count"] == 0
    r = await api.post(f"/api/codes/pools/{number}/uploads", json={"upload_id": f"{number}-u1", "used": used})
    assert r.status_code == 200 and r.json()["accepted"] == 7, r.text
    assert await _units_of(api, lot) == {"count": 7, "blocks": [{"count": 7, "from_pools": True}]}
    back = (await api.get(f"/api/trace/backward/{used[2]['code']}")).json()
    assert back["lot"] == lot and back["nodes"][0]["units"]["count"] == 7
    # used codes taken out again (a correction in the database): the lot's trace row follows (a statement trigger)
    async with sessionmaker() as s, s.begin():
        gone = (await s.execute(text("DELETE FROM used_code WHERE value IN (SELECT value FROM used_code WHERE "
                                     "pool_id IS NOT NULL AND lot_id = (SELECT id FROM lot WHERE number = :n) "
                                     "ORDER BY id LIMIT 2)"), {"n": lot})).rowcount
    assert gone == 2 and (await _units_of(api, lot))["count"] == 5


async def _units_of(api: httpx.AsyncClient, lot: str) -> dict:
    fwd = (await api.get(f"/api/trace/forward/{lot}")).json()
    return next(n for n in fwd["nodes"] if n["id"] == lot)["units"]
