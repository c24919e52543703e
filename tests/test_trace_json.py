"""The traces' JSON (domain.trace.backward_json / forward_json, what the JSON routes send as they are) holds
exactly the answer domain.trace.backward / forward assemble, trace by trace: units, lots, batch codes, heats,
supplier lots, equipment and operator windows, with NCRs, shipments and a supplier's captured events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import text

from api.main import create_app
from core.db import FastReader, engine_of
from core.settings import DatabaseSettings, Settings
from domain import trace
from tests.helpers import SUPER_HEADERS
from tests.test_trace_plant import RESOLVER, Plant, build_plant

pytestmark = pytest.mark.asyncio

CTX = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld", {"acme": "https://ns.acme.example/epcis/"}]


@pytest_asyncio.fixture(scope="module")
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database=DatabaseSettings(url=db_url), resolver_base_url=RESOLVER),
                     sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


async def _plant(sessionmaker, hub: httpx.AsyncClient) -> Plant:
    """The shared small plant, plus an NCR with a decision on B1 and a supplier's captured events behind M1."""
    plant = await build_plant(sessionmaker)
    tag = plant.tag
    async with sessionmaker() as s, s.begin():
        lot_id = (await s.execute(text("SELECT id FROM lot WHERE number = :n"), {"n": plant.lots["B1"]})).scalar_one()
        ncr = (await s.execute(text(
            "INSERT INTO ncr (number, workflow_id, lot_id, state, description, opened_at) "
            "VALUES (:n, :w, :lot, 'review', 'burr on the bore', :t) RETURNING id"),
            {"n": f"NCR-{tag}", "w": f"ncr-{tag}", "lot": lot_id, "t": datetime(2026, 11, 21, 12, tzinfo=UTC)})).scalar_one()
        await s.execute(text(
            "INSERT INTO ncr_decision (decision_id, ncr_id, action, reviewer, role, reason, decided_at) "
            "VALUES (:d, :ncr, 'use_as_is', 'rev-1', 'quality_engineer', 'within drawing note 4', :t)"),
            {"d": f"D-{tag}", "ncr": ncr, "t": datetime(2026, 11, 21, 13, 0, 0, 250000, tzinfo=UTC)})
    supplier_lot = f"urn:epc:class:lgtin:4012345.012346.S-M1-{tag}"
    billet = f"urn:epc:class:lgtin:4012345.012345.BILLET-{tag}"
    melt = {"type": "TransformationEvent", "eventTime": "2026-01-01T06:00:00Z", "eventTimeZoneOffset": "+00:00",
            "inputQuantityList": [{"epcClass": billet, "quantity": 900, "uom": "KGM"}],
            "outputQuantityList": [{"epcClass": supplier_lot, "quantity": 850, "uom": "KGM"}],
            "bizStep": "commissioning", "ilmd": {"acme:heatNumber": f"SUPHEAT-{tag}"},
            "certificationInfo": f"https://acme.example/certs/{tag}"}
    ship = {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": "2026-01-02T06:00:00.5Z",
            "eventTimeZoneOffset": "+00:00", "bizStep": "shipping", "disposition": "in_transit", "epcList": [],
            "quantityList": [{"epcClass": supplier_lot, "quantity": 50, "uom": "KGM"}],
            "sourceList": [{"type": "owning_party", "source": "urn:epc:id:pgln:4012345.00000"}],
            "acme:carrier": "DHL"}
    doc = {"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": "2026-01-05T08:00:00Z",
           "epcisBody": {"eventList": [melt, ship]}}
    r = await hub.post("/epcis/capture", json=doc)
    assert r.status_code == 202, r.text
    return plant


def _cases(plant: Plant) -> list[tuple[str, dict]]:
    tag = plant.lots
    since, until = datetime(2026, 11, 21, 8, 30, tzinfo=UTC), datetime(2026, 11, 21, 10, 30, tzinfo=UTC)
    return [
        ("backward", {"code": plant.unit(3)}),
        ("backward", {"code": tag["B1"]}),
        ("backward", {"code": tag["A1"]}),
        ("backward", {"code": f"https://id.gs1.org/01/{plant.gtin_b}/10/{tag['B1']}"}),
        ("forward", {"kind": "lot", "value": tag["M1"]}),
        ("forward", {"kind": "heat", "value": plant.heats["M3"]}),
        ("forward", {"kind": "heat", "value": f"SUPHEAT-{plant.tag}"}),
        ("forward", {"kind": "supplier_lot", "value": f"S-M3-{plant.tag}"}),
        ("forward", {"kind": "equipment", "value": "LATHE-01", "since": since, "until": until}),
        ("forward", {"kind": "operator", "value": "op-9", "since": since, "until": until}),
    ]


def _as_json(d: dict) -> dict:
    """The dict as JSON reads it back (tuples become lists)."""
    return orjson.loads(orjson.dumps(d))


async def _both(s, reader, direction: str, args: dict) -> tuple[bytes, dict]:
    if direction == "backward":
        return (await trace.backward_json(s, args["code"], resolver=RESOLVER, reader=reader),
                _as_json(await trace.backward(s, args["code"], resolver=RESOLVER)))
    return (await trace.forward_json(s, resolver=RESOLVER, reader=reader, **args),
            _as_json(await trace.forward(s, resolver=RESOLVER, **args)))


async def test_sql_built_answers_equal_the_assembled_ones(sessionmaker, hub: httpx.AsyncClient):
    plant = await _plant(sessionmaker, hub)
    pg = engine_of(sessionmaker).dialect.name == "postgresql"
    reader = FastReader(engine_of(sessionmaker).url) if pg else None
    try:
        async with sessionmaker() as s:
            for direction, args in _cases(plant):
                body, expected = await _both(s, reader, direction, args)
                assert isinstance(body, bytes) and orjson.loads(body) == expected, (direction, args)
            # the answers do carry what the comparison is about
            b = orjson.loads(await trace.backward_json(s, plant.unit(3), resolver=RESOLVER, reader=reader))
            nodes = {n["id"]: n for n in b["nodes"]}
            assert nodes[plant.lots["B1"]]["ncrs"][0]["decisions"][0]["action"] == "use_as_is"
            assert nodes[plant.lots["B1"]]["shipments"][0]["customer"] == f"Customer X {plant.tag}"
            ext = [n for n in b["nodes"] if n["node"] == "external"]
            assert len(ext) == 2 and b["supplier_lots_upstream"] == [n["id"] for n in ext]
            shipping = next(e for n in ext for e in n["events"] if e["biz_step"] == "shipping")
            assert shipping["extensions"] == {"acme:carrier": "DHL"} and shipping["source"][0]["type"] == "owning_party"
            f = orjson.loads(await trace.forward_json(s, resolver=RESOLVER, kind="heat",
                                                      value=f"SUPHEAT-{plant.tag}", reader=reader))
            assert f["by_customer"][0]["quantity"] == 20 and f["summary"]["units"] == 20
            with pytest.raises(Exception, match="NOPE"):
                await trace.forward_json(s, resolver=RESOLVER, kind="heat", value=f"NOPE-{plant.tag}", reader=reader)
    finally:
        if reader is not None:
            await reader.close()


async def test_json_routes_send_the_built_answer(sessionmaker, hub: httpx.AsyncClient):
    plant = await build_plant(sessionmaker)
    r = await hub.get(f"/api/trace/backward/{plant.unit(0)}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    # orjson's bytes, not the standard library's spaced JSON (the lots' histories inside are the trace rows' texts
    # as stored, where process parameters keep PostgreSQL's spacing)
    assert r.content.startswith(b'{"direction":"backward","query":')
    async with sessionmaker() as s:
        got = r.json()
        assert got.pop("packing")["of"] == "unit"  # the route adds the unit's packing (domain/trace_containers.py)
        assert got == _as_json(await trace.backward(s, plant.unit(0), resolver=RESOLVER))
        expected = _as_json(await trace.forward(s, resolver=RESOLVER, kind="heat", value=plant.heats["M1"]))
    r = await hub.get("/api/trace/forward", params={"kind": "heat", "value": plant.heats["M1"]})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got.pop("containers") == [] and got["summary"].pop("containers") == 0
    assert got["summary"].pop("containers_shipped") == 0 and got == expected
    r = await hub.get(f"/api/trace/forward/{plant.lots['M2']}")
    assert r.status_code == 200 and plant.lots["B1"] in {n["id"] for n in r.json()["nodes"]}
    r = await hub.get("/api/trace/forward", params={"kind": "heat", "value": f"NOPE-{plant.tag}"})
    assert r.status_code == 404 and "NOPE" in r.text
    r = await hub.get(f"/api/trace/backward/NOPE-{plant.tag}")
    assert r.status_code == 404 and "NOPE" in r.text
