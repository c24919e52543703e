"""Trace both ways over the lineage index, through the HTTP API (no Temporal needed): JSON, CSV, PDF."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from api.main import create_app
from core.settings import DatabaseSettings, Settings
from domain.models import Lot
from domain.models_trace import TraceEdge, TraceNode
from tests.helpers import SUPER_HEADERS
from tests.test_trace_plant import RESOLVER, Plant, build_plant, served_hub

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(scope="session")
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database=DatabaseSettings(url=db_url), resolver_base_url=RESOLVER),
                     sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=SUPER_HEADERS) as c:
        yield c


@pytest_asyncio.fixture(scope="module")
async def plant(sessionmaker) -> Plant:
    return await build_plant(sessionmaker)


async def test_lineage_is_written_with_the_events(sessionmaker, plant: Plant):
    async with sessionmaker() as s:
        ids = dict((await s.execute(select(Lot.number, Lot.id).where(Lot.number.in_(plant.lots.values())))).all())
        node = dict((await s.execute(select(TraceNode.lot_id, TraceNode.id)
                                     .where(TraceNode.lot_id.in_(ids.values())))).all())
        edges = set((await s.execute(select(TraceEdge.parent_id, TraceEdge.child_id)
                                     .where(TraceEdge.child_id.in_(node.values())))).all())
    n = {k: node[ids[v]] for k, v in plant.lots.items()}
    assert edges == {(n["M1"], n["A1"]), (n["M2"], n["A1"]), (n["A1"], n["B1"]), (n["M3"], n["B1"])}


async def test_backward_from_a_unit_reaches_suppliers_heats_and_certificates(hub: httpx.AsyncClient, plant: Plant):
    r = await hub.get(f"/api/trace/backward/{plant.unit(3)}")
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["lot"] == plant.lots["B1"] and t["unit"] == plant.unit(3)
    by_id = {n["id"]: n for n in t["nodes"]}
    assert set(by_id) == {plant.lots[k] for k in ("B1", "A1", "M1", "M2", "M3")}
    assert {(n["id"], n["level"]) for n in t["nodes"]} == {
        (plant.lots["B1"], 0), (plant.lots["A1"], 1), (plant.lots["M3"], 1), (plant.lots["M1"], 2),
        (plant.lots["M2"], 2)}
    assert t["suppliers"] == sorted([["ACME-STEEL", f"S-M1-{plant.tag}", plant.heats["M1"]],
                                     ["ACME-STEEL", f"S-M2-{plant.tag}", plant.heats["M2"]],
                                     ["BOLT-CO", f"S-M3-{plant.tag}", plant.heats["M3"]]])
    assert t["certificates"] == sorted(f"CERT-{h}" for h in plant.heats.values())
    b1 = by_id[plant.lots["B1"]]
    assert b1["operations"][0]["equipment"] == "PRESS-09" and b1["operations"][0]["operator"] == "op-9"
    assert b1["operations"][0]["parameters"] == {"force_kn": 80}
    assert b1["shipments"][0]["customer"] == f"Customer X {plant.tag}"
    assert b1["units"]["count"] == 20
    m1 = by_id[plant.lots["M1"]]
    assert m1["inspections"][0]["characteristics"][0]["values"] == [30.2]
    assert m1["inspections"][0]["status"] == "passed"
    assert {(e["from"], e["to"]) for e in t["edges"]} == {
        (plant.lots["A1"], plant.lots["B1"]), (plant.lots["M3"], plant.lots["B1"]),
        (plant.lots["M1"], plant.lots["A1"]), (plant.lots["M2"], plant.lots["A1"])}
    # the flat list has one row per node, in level order
    assert [row["level"] for row in t["flat"]] == sorted(row["level"] for row in t["flat"])


async def test_backward_accepts_a_lot_number_a_batch_dl_and_an_epc_urn(hub: httpx.AsyncClient, plant: Plant):
    assert (await hub.get(f"/api/trace/backward/{plant.lots['A1']}")).json()["lot"] == plant.lots["A1"]
    dl = f"https://example.org/01/09506000134352/10/{plant.lots['A1']}"
    assert (await hub.get(f"/api/trace/backward/{dl}")).json()["lot"] == plant.lots["A1"]
    r = await hub.get("/api/trace/backward/NO-SUCH-LOT-XYZ")
    assert r.status_code == 404 and "not known" in r.json()["detail"]


async def test_forward_from_a_heat_lists_every_lot_unit_and_customer(hub: httpx.AsyncClient, plant: Plant):
    r = await hub.get("/api/trace/forward", params={"kind": "heat", "value": plant.heats["M1"]})
    assert r.status_code == 200, r.text
    t = r.json()
    where = {n["id"]: n["where"] for n in t["nodes"]}
    assert set(where) == {plant.lots["M1"], plant.lots["A1"], plant.lots["B1"]}
    assert where[plant.lots["M1"]] == "consumed"
    assert where[plant.lots["A1"]].startswith("in stock (released) at LINE-1")
    assert where[plant.lots["B1"]] == f"shipped to Customer X {plant.tag} (DN-{plant.tag})"
    assert t["customers"] == [f"Customer X {plant.tag}"]
    assert t["by_customer"][0]["shipments"][0]["lots"][0] == {
        "lot": plant.lots["B1"], "item": f"ASSY-{plant.tag}", "quantity": 20.0, "uom": "EA"}
    assert t["summary"]["units"] == 20 and t["summary"]["in_stock"] == [plant.lots["A1"]]


async def test_forward_from_supplier_lot_equipment_and_operator_windows(hub: httpx.AsyncClient, plant: Plant):
    r = await hub.get("/api/trace/forward", params={"kind": "supplier_lot", "value": f"S-M3-{plant.tag}"})
    assert {n["id"] for n in r.json()["nodes"]} == {plant.lots["M3"], plant.lots["B1"]}
    inside = {"kind": "equipment", "value": "LATHE-01", "since": "2026-11-21T08:30:00Z",
              "until": "2026-11-21T08:45:00Z"}
    r = await hub.get("/api/trace/forward", params=inside)
    ids = {n["id"] for n in r.json()["nodes"]}
    assert plant.lots["A1"] in ids and plant.lots["B1"] in ids and plant.lots["M1"] not in ids
    r = await hub.get("/api/trace/forward", params={**inside, "since": "2026-11-21T12:00:00Z",
                                                   "until": "2026-11-21T13:00:00Z"})
    assert r.status_code == 404 and "window" in r.json()["detail"]
    r = await hub.get("/api/trace/forward", params={"kind": "operator", "value": "op-9",
                                                   "since": "2026-11-21T10:00:00Z", "until": "2026-11-21T10:01:00Z"})
    assert plant.lots["B1"] in {n["id"] for n in r.json()["nodes"]}
    r = await hub.get("/api/trace/forward", params={"kind": "operator", "value": "op-9"})
    assert r.status_code == 422 and r.json()["field"] == "since"


async def test_csv_and_pdf_renderings(hub: httpx.AsyncClient, plant: Plant):
    r = await hub.get(f"/api/trace/backward/{plant.lots['B1']}", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["id"]: row["heat_number"] for row in rows if row["heat_number"]} == {
        plant.lots[k]: plant.heats[k] for k in ("M1", "M2", "M3")}
    r = await hub.get("/api/trace/forward", params={"kind": "heat", "value": plant.heats["M3"], "format": "pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-") and len(r.content) > 1000


async def test_pdf_report_names_what_the_customer_needs(sessionmaker, plant: Plant):
    from domain import trace

    async with sessionmaker() as s:
        result = await trace.backward(s, plant.lots["B1"], resolver=RESOLVER)
    pdf = trace.to_pdf(result, compress=False)
    for text in (plant.heats["M1"], f"CERT-{plant.heats['M3']}", "PRESS-09", "force_kn=80", "ACME-STEEL"):
        assert text.encode() in pdf, text


async def test_walks_survive_a_cycle_in_captured_lineage(sessionmaker, hub: httpx.AsyncClient, plant: Plant):
    # a bad upstream document could claim B1 went into M1: the walk must still end, each node once
    from domain.epcis_index import add_edges

    async with sessionmaker() as s, s.begin():
        ids = dict((await s.execute(select(Lot.number, Lot.id).where(Lot.number.in_(plant.lots.values())))).all())
        node = dict((await s.execute(select(TraceNode.lot_id, TraceNode.id)
                                     .where(TraceNode.lot_id.in_(ids.values())))).all())
        await add_edges(s, [(node[ids[plant.lots["B1"]]], node[ids[plant.lots["M1"]]], "transformation", None)])
    try:
        t = (await hub.get(f"/api/trace/backward/{plant.lots['A1']}")).json()
        assert sorted(n["id"] for n in t["nodes"]) == sorted(plant.lots[k] for k in ("A1", "M1", "M2", "B1", "M3"))
    finally:
        async with sessionmaker() as s, s.begin():
            await s.execute(TraceEdge.__table__.delete().where(
                TraceEdge.parent_id == node[ids[plant.lots["B1"]]], TraceEdge.child_id == node[ids[plant.lots["M1"]]]))
        async with sessionmaker() as s:
            assert (await s.execute(select(func.count()).select_from(TraceEdge).where(
                TraceEdge.child_id == node[ids[plant.lots["M1"]]]))).scalar_one() == 0


async def test_cli_prints_the_tree(db_url: str, plant: Plant):
    import asyncio

    await asyncio.to_thread(_cli_checks, db_url, plant)


def _cli_checks(db_url: str, plant: Plant) -> None:
    from typer.testing import CliRunner

    from tracehub_cli import app as cli

    with served_hub(db_url) as url:
        env = {"COLUMNS": "200", "TRACEHUB_TOKEN": SUPER_HEADERS["Authorization"].split()[1]}
        out = CliRunner().invoke(cli, ["trace", "backward", plant.lots["B1"], "--hub-url", url], env=env)
        assert out.exit_code == 0, out.output
        for text in (plant.lots["M1"], plant.heats["M2"], f"CERT-{plant.heats['M3']}", "PRESS-09"):
            assert text in out.output, text
        out = CliRunner().invoke(cli, ["trace", "forward", "--heat", plant.heats["M3"], "--hub-url", url], env=env)
        assert out.exit_code == 0 and f"customer Customer X {plant.tag}: 20" in out.output, out.output
        out = CliRunner().invoke(cli, ["trace", "forward", "--heat", "NOPE", "--hub-url", url], env=env)
        assert out.exit_code == 1 and "NOPE" in out.output
        out = CliRunner().invoke(cli, ["trace", "forward", "--heat", "NOPE", "--hub-url", url],
                                 env={"TRACEHUB_TOKEN": ""})
        assert out.exit_code == 2 and "TRACEHUB_TOKEN" in out.output
