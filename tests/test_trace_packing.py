"""Packing in the traces (issue 5, "Trace"): a backward trace from a unit names its case and pallet with their
SSCCs, pack (and unpack) events and the shipment and customer the pallet left on; from a lot, the cases and
pallets holding its units. Forward and backward, the cases and pallets are in the JSON, the CSV (rows with node
"container"), the PDF ("Packing") and `tracehub trace`, and a box a recall holds says "on hold by recall ..."."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import httpx
import pytest

from domain import gs1, recall, shipping, trace, trace_containers
from tests.helpers import SUPER_HEADERS
from tests.test_trace import hub  # noqa: F401 - the fixture (no Temporal needed)
from tests.test_trace_containers import container_rules, issue_codes
from tests.test_trace_plant import RESOLVER, Plant, build_plant, served_hub

pytestmark = pytest.mark.asyncio


def path(code: str) -> str:
    return f"/00/{gs1.parse_digital_link(code)['00']}"


async def pack(client: httpx.AsyncClient, parent: str, children: list[str]) -> str:
    r = await client.post("/api/codes/pack", json={"parent": parent, "children": children, "actor": "packer"})
    assert r.status_code == 200, r.text
    assert r.json()["event_id"].startswith("ni:///sha-256;"), r.json()
    return r.json()["event_id"]


async def packed_plant(client: httpx.AsyncClient, sessionmaker) -> dict[str, Any]:
    """A plant whose lot B1 has units in a case on a pallet, and a unit packed into a second case and taken out."""
    plant = await build_plant(sessionmaker, ship=False)
    item = f"ASSY-{plant.tag}"
    await container_rules(client, item)
    units = await issue_codes(client, item, "unit", 4, plant.lots["B1"])
    cases = await issue_codes(client, item, "case", 2)
    (pallet,) = await issue_codes(client, item, "pallet", 1)
    ev_case = await pack(client, cases[0], units[:2])
    ev_pallet = await pack(client, pallet, [cases[0]])
    ev_other = await pack(client, cases[1], [units[2]])
    r = await client.post("/api/codes/unpack", json={"parent": cases[1], "children": [units[2]], "actor": "packer"})
    assert r.status_code == 200, r.text
    return {"plant": plant, "units": units, "cases": cases, "pallet": pallet, "ev_case": ev_case,
            "ev_pallet": ev_pallet, "ev_other": ev_other, "ev_unpack": r.json()["event_id"]}


async def ship(client: httpx.AsyncClient, sessionmaker, plant: Plant, pallet: str) -> tuple[str, str]:
    dn, customer = f"DN-P-{plant.tag}", f"Customer P {plant.tag}"
    async with sessionmaker() as s, s.begin():
        await shipping.ship_lot(s, work_order=f"WOB-{plant.tag}", lot=plant.lots["B1"], shipment=dn,
                                sales_order=f"SO-P-{plant.tag}", customer=customer, carrier="DHL",
                                tracking_number="T-1", resolver=RESOLVER)
    r = await client.post("/api/codes/containers/ship", params={"code": pallet}, json={"shipment": dn, "actor": "s"})
    assert r.status_code == 200, r.text
    return dn, customer


async def test_backward_from_a_unit_names_its_case_pallet_shipment_and_customer(
        hub: httpx.AsyncClient, sessionmaker, db_url: str):  # noqa: F811
    p = await packed_plant(hub, sessionmaker)
    plant, units, case, other, pallet = p["plant"], p["units"], p["cases"][0], p["cases"][1], p["pallet"]
    dn, customer = await ship(hub, sessionmaker, plant, pallet)
    # the pallet's shipping event names the customer's order (our sales order) and the despatch advice, as the lot's
    r = await hub.get("/epcis/events", params={"EQ_bizTransaction_desadv": f"urn:tracehub:shipment:{dn}",
                                               "EQ_bizStep": "shipping"})
    (box_event,) = [e for e in r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"] if e.get("epcList")]
    assert {(b["type"], b["bizTransaction"]) for b in box_event["bizTransactionList"]} == {
        ("po", f"urn:tracehub:salesorder:SO-P-{plant.tag}"), ("desadv", f"urn:tracehub:shipment:{dn}")}

    r = await hub.get(f"/api/trace/backward/{units[0]}")
    assert r.status_code == 200, r.text
    back = r.json()
    # the genealogy is as it was
    assert back["lot"] == plant.lots["B1"] and back["unit"] == units[0] and "container" not in back
    assert {plant.lots[k] for k in ("B1", "A1", "M1")} <= {n["id"] for n in back["nodes"]}
    pk = back["packing"]
    assert pk["of"] == "unit" and pk["packed"] is True and pk["unit"].endswith(units[0].split(RESOLVER)[1])
    assert pk["shipment"] == dn and pk["customer"] == customer
    (c, pl) = pk["chain"]
    assert c["code"] == path(case) and c["level"] == "case" and c["sscc"] == path(case)[4:]
    assert c["contains"] == pk["unit"] and c["pack_event"] == p["ev_case"] and c["unpacked_at"] is None
    assert c["parent"] == path(pallet) and c["status"] == "shipped" and c["shipment"] == dn
    assert pl["code"] == path(pallet) and pl["level"] == "pallet" and pl["contains"] == path(case)
    assert pl["pack_event"] == p["ev_pallet"] and pl["customer"] == customer and pl["shipment"] == dn
    assert pl["where"] == f"shipped to {customer} ({dn})" and pl["sales_order"] == f"SO-P-{plant.tag}"
    assert pk["events"] == [p["ev_case"], p["ev_pallet"]]
    assert [h["pack_event"] for h in pk["history"]] == [p["ev_case"]]

    # a unit taken out again: where it was when it was last packed, with the unpack event; not shipped with it
    out = (await hub.get(f"/api/trace/backward/{units[2]}")).json()["packing"]
    assert out["packed"] is False and out["shipment"] is None and out["customer"] is None
    (c2,) = out["chain"]
    assert c2["code"] == path(other) and c2["pack_event"] == p["ev_other"]
    assert c2["unpack_event"] == p["ev_unpack"] and c2["unpacked_at"] is not None
    assert out["events"] == [p["ev_other"], p["ev_unpack"]] and c2["status"] == "open"
    # a unit never packed
    never = (await hub.get(f"/api/trace/backward/{units[3]}")).json()["packing"]
    assert never["packed"] is False and never["chain"] == [] and never["history"] == []

    # from the lot: the cases and pallets holding its units now
    lot = (await hub.get(f"/api/trace/backward/{plant.lots['B1']}")).json()
    assert lot["packing"]["of"] == "lot" and lot["packing"]["lot"] == plant.lots["B1"]
    boxes = {b["code"]: b for b in lot["packing"]["containers"]}
    assert set(boxes) == {path(case), path(pallet)}
    assert boxes[path(pallet)]["units"] == 2 and boxes[path(pallet)]["customer"] == customer
    assert boxes[path(pallet)]["sscc"] == path(pallet)[4:]

    # the CSV: the genealogy's rows as before, then one row per container with its packing
    r = await hub.get(f"/api/trace/backward/{units[0]}", params={"format": "csv"})
    assert r.status_code == 200, r.text
    reader = csv.DictReader(io.StringIO(r.text))
    assert reader.fieldnames[:len(trace.FLAT_COLUMNS)] == trace.FLAT_COLUMNS
    rows = list(reader)
    assert next(x["id"] for x in rows if x["node"] == "lot") == plant.lots["B1"]
    boxes = {x["id"]: x for x in rows if x["node"] == "container"}
    assert set(boxes) == {path(case), path(pallet)}
    assert boxes[path(case)]["kind"] == "case" and boxes[path(case)]["pack_event"] == p["ev_case"]
    assert boxes[path(pallet)]["pack_event"] == p["ev_pallet"] and boxes[path(pallet)]["customers"] == customer
    assert boxes[path(pallet)]["shipments"] == dn and boxes[path(case)]["parent"] == path(pallet)
    r = await hub.get(f"/api/trace/backward/{plant.lots['B1']}", params={"format": "csv"})
    assert {x["id"] for x in csv.DictReader(io.StringIO(r.text)) if x["node"] == "container"} == {
        path(case), path(pallet)}

    # the PDF: a Packing section with the SSCCs, the pack event and the customer
    r = await hub.get(f"/api/trace/backward/{units[0]}", params={"format": "pdf"})
    assert r.status_code == 200 and r.content.startswith(b"%PDF-")
    async with sessionmaker() as s:
        result = await trace.backward(s, units[0], resolver=RESOLVER)
        result["packing"] = await trace_containers.backward_packing(s, result)
    pdf = trace.to_pdf(result, compress=False)
    for text in ("Packing", path(case)[4:], path(pallet)[4:], customer, dn):
        assert text.encode() in pdf, text
    assert p["ev_pallet"].split(";")[1][:40].encode() in pdf

    # the CLI prints them, backward from the unit and forward from the heat
    backward_out, forward_out = await asyncio.to_thread(
        _cli, db_url, [["trace", "backward", units[0]], ["trace", "forward", "--heat", plant.heats["M1"]]])
    for text in (path(case), path(pallet), p["ev_case"], p["ev_pallet"], customer, dn, "packing"):
        assert text in backward_out, (text, backward_out)
    for text in ("cases and pallets", path(case), path(pallet), f"shipped to {customer} ({dn})"):
        assert text in forward_out, (text, forward_out)


async def test_forward_containers_in_every_rendering_and_on_hold_by_a_recall(
        hub: httpx.AsyncClient, sessionmaker):  # noqa: F811
    p = await packed_plant(hub, sessionmaker)
    plant, case, pallet = p["plant"], path(p["cases"][0]), path(p["pallet"])
    fwd = (await hub.get(f"/api/trace/forward/{plant.lots['M1']}")).json()
    boxes = {b["code"]: b for b in fwd["containers"]}
    assert boxes[pallet]["where"] == "in stock (open)" and boxes[case]["where"] == f"in stock, in {pallet}"
    assert boxes[pallet]["held_by"] == []

    # a recall of the raw lot holds the pallet and the case on it
    number = f"RC-P-{plant.tag}"
    async with sessionmaker() as s, s.begin():
        await recall.open_recall(s, number=number, workflow_id=f"recall-{number}", suspect_kind="lot",
                                 suspect=plant.lots["M1"], since=None, until=None, reason="cracked bar",
                                 requested_by="qm", resolver=RESOLVER)
        await recall.hold_lots(s, number=number, resolver=RESOLVER)

    fwd = (await hub.get(f"/api/trace/forward/{plant.lots['M1']}")).json()
    boxes = {b["code"]: b for b in fwd["containers"]}
    assert boxes[pallet]["status"] == "on_hold" and boxes[pallet]["held_by"] == [number]
    assert boxes[pallet]["where"] == f"on hold by recall {number}, in stock"
    assert boxes[case]["where"] == f"on hold by recall {number}, in stock in {pallet}"
    assert fwd["summary"]["containers"] == 2 and fwd["summary"]["containers_shipped"] == 0

    # the CSV and the PDF of the forward trace carry the containers too
    r = await hub.get("/api/trace/forward", params={"kind": "heat", "value": plant.heats["M1"], "format": "csv"})
    assert r.status_code == 200, r.text
    rows = {x["id"]: x for x in csv.DictReader(io.StringIO(r.text)) if x["node"] == "container"}
    assert set(rows) == {pallet, case}  # the second case is empty now: it holds nothing of these lots
    assert rows[pallet]["where"] == f"on hold by recall {number}, in stock" and rows[pallet]["held_by"] == number
    assert rows[case]["units"] == "2" and rows[case]["lots"] == plant.lots["B1"] and rows[case]["kind"] == "case"
    r = await hub.get(f"/api/trace/forward/{plant.lots['M1']}", params={"format": "pdf"})
    assert r.status_code == 200 and r.content.startswith(b"%PDF-")
    async with sessionmaker() as s:
        result = await trace.forward(s, resolver=RESOLVER, kind="lot", value=plant.lots["M1"])
        result["containers"] = await trace_containers.containers_of_lots(
            s, [n["id"] for n in result["nodes"] if n["node"] == "lot"])
    pdf = trace.to_pdf(result, compress=False)
    for text in ("Packing", pallet[4:], case[4:], f"on hold by recall {number}"):
        assert text.encode() in pdf, text

    # backward from the case's unit: its chain says on hold as well
    chain = (await hub.get(f"/api/trace/backward/{p['units'][0]}")).json()["packing"]["chain"]
    assert [b["where"] for b in chain] == [f"on hold by recall {number}, in stock in {pallet}",
                                           f"on hold by recall {number}, in stock"]
    # and backward from the pallet itself
    box = (await hub.get(f"/api/trace/backward/{p['pallet']}")).json()["container"]
    assert box["held_by"] == [number] and box["where"] == f"on hold by recall {number}, in stock"
    r = await hub.get(f"/api/trace/backward/{p['pallet']}", params={"format": "csv"})
    rows = {x["id"]: x for x in csv.DictReader(io.StringIO(r.text)) if x["node"] == "container"}
    assert set(rows) == {pallet, case} and rows[case]["parent"] == pallet and rows[pallet]["units"] == "2"
    assert rows[pallet]["held_by"] == number and plant.lots["M1"] in r.text


def _cli(db_url: str, commands: list[list[str]]) -> list[str]:
    """Run `tracehub` commands against the hub API served on a free port; their outputs."""
    from typer.testing import CliRunner

    from tracehub_cli import app as cli

    with served_hub(db_url) as url:
        env = {"COLUMNS": "250", "TRACEHUB_TOKEN": SUPER_HEADERS["Authorization"].split()[1]}
        outs = []
        for args in commands:
            out = CliRunner().invoke(cli, [*args, "--hub-url", url], env=env)
            assert out.exit_code == 0, out.output
            outs.append(out.output)
        return outs


async def test_the_trace_readers_shortcuts_answer_as_the_session_does(hub: httpx.AsyncClient,  # noqa: F811
                                                                      sessionmaker):
    """The routes ask the trace reader (an autocommit connection) whether a start is a box and whether it was ever
    packed, and whether any unit of the reached lots is in a box: with it or without, the answers are the same, for
    a packed unit, a unit never packed, a case, and forward traces with and without boxes."""
    from core.db import FastReader, engine_of

    p = await packed_plant(hub, sessionmaker)
    plant, units = p["plant"], p["units"]
    reader = FastReader(engine_of(sessionmaker).url)
    try:
        async with sessionmaker() as s:
            for code in (units[0], units[3], p["cases"][0], plant.lots["B1"]):
                with_reader = await trace_containers.backward_answer(s, code, resolver=RESOLVER, reader=reader)
                plain = await trace_containers.backward_answer(s, code, resolver=RESOLVER)
                assert with_reader == plain, code
            assert with_reader["packing"]["of"] == "lot"
            for kind, value in (("lot", plant.lots["M1"]), ("heat", plant.heats["M3"])):
                with_reader = await trace_containers.forward_answer(s, resolver=RESOLVER, kind=kind, value=value,
                                                                     reader=reader)
                plain = await trace_containers.forward_answer(s, resolver=RESOLVER, kind=kind, value=value)
                assert with_reader == plain, (kind, value)
            packed = await trace_containers.forward_answer(s, resolver=RESOLVER, kind="lot", value=plant.lots["M1"],
                                                           reader=reader)
            assert packed["summary"]["containers"] == len(packed["containers"]) >= 2
        # the reader's answer for lots none of whose units is in a box (PostgreSQL; elsewhere the session looks)
        pg = engine_of(sessionmaker).dialect.name == "postgresql"
        assert await trace_containers._any_packed([plant.lots["M2"], plant.lots["A1"]], reader) is not pg
        assert await trace_containers._any_packed([plant.lots["M2"], plant.lots["B1"]], reader) is True
    finally:
        await reader.close()
