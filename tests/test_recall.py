"""RecallWorkflow end to end on a real Temporal server and database: scope, holds, ERP blocks, customer
acknowledgements, reviewers' decisions, report; a duplicate start changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from domain.models_trace import RecallLot, RecallNotice
from tests.helpers import PASSWORD, role_headers
from tests.test_trace_containers import urn_of_sscc
from tests.test_trace_plant import build_plant, lot_status

pytestmark = pytest.mark.asyncio


async def wait_recall(api: httpx.AsyncClient, number: str, pred: Callable[[dict[str, Any]], bool],
                      what: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await api.get(f"/api/recalls/{number}")
        if r.status_code == 200:
            last = r.json()
            if pred(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} on {number}; last: {last}")


async def test_recall_by_heat_holds_blocks_notifies_and_closes(api: httpx.AsyncClient, erp_sim, sessionmaker):
    plant = await build_plant(sessionmaker)
    number = f"RC-{plant.tag}"
    customer = f"Customer X {plant.tag}"
    body = {"number": number, "suspect_kind": "heat", "suspect": plant.heats["M1"],
            "reason": "supplier reports cracks in heat", "requested_by": "qm-1"}
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["workflow_id"] == f"recall-{number}"
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is True

    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    lots = {x["lot"]: x for x in rec["record"]["lots"]}
    assert lots[plant.lots["A1"]]["action"] == "held" and lots[plant.lots["A1"]]["erp_blocked"] is True
    assert lots[plant.lots["A1"]]["quantity"] == 10.0
    assert lots[plant.lots["B1"]]["action"] == "shipped" and lots[plant.lots["M1"]]["action"] == "none"
    assert plant.lots["M3"] not in lots  # another heat: not in scope
    assert rec["record"]["customers"] == [{
        "customer": customer, "quantity": 20.0, "acknowledged_at": None, "acknowledged_by": None, "note": None,
        "shipments": [{"shipment": f"DN-{plant.tag}", "sales_order": f"SO-{plant.tag}",
                       "shipped_at": rec["record"]["customers"][0]["shipments"][0]["shipped_at"],
                       "lots": [{"lot": plant.lots["B1"], "item": f"ASSY-{plant.tag}", "quantity": 20.0,
                                 "uom": "EA"}]}]}]
    assert await lot_status(sessionmaker, plant.lots["A1"]) == "on_hold"
    hold = erp_sim.documents("Batch Hold")[f"{number}/{plant.lots['A1']}"]
    assert hold["hold"] == 1 and hold["batch_no"] == plant.lots["A1"]
    assert sorted(rec["status"]["waiting_for"]) == sorted([
        f"customer: acknowledgement from {customer}", f"reviewer: release or reject held lot {plant.lots['A1']}"])
    # the hold is an EPCIS event with the CBV disposition `recalled`
    r = await api.get("/epcis/events", params={"EQ_disposition": "recalled",
                                              "MATCH_epcClass": f"https://id.gs1.org/01/09506000134352/10/{plant.lots['A1']}"})
    assert len(r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 1

    # refusals the caller sees, and that leave no trace in the workflow
    r = await api.post(f"/api/recalls/{number}/acknowledgements", json={"customer": "Nobody", "acknowledged_by": "x"})
    assert r.status_code == 404 and customer in r.json()["detail"]
    decision = {"lot": plant.lots["A1"], "decision": "release", "reason": "re-tested hardness OK",
                "password": PASSWORD}
    r = await api.post(f"/api/recalls/{number}/decisions", json=decision, headers=role_headers("mrb_production"))
    assert r.status_code == 403 and "quality_manager" in r.json()["detail"]
    qm = role_headers("quality_manager")
    r = await api.post(f"/api/recalls/{number}/decisions", json={**decision, "reason": " "}, headers=qm)
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    r = await api.post(f"/api/recalls/{number}/decisions", json={**decision, "lot": plant.lots["B1"]}, headers=qm)
    assert r.status_code == 404
    r = await api.post(f"/api/recalls/{number}/decisions", json={**decision, "password": "wrong"}, headers=qm)
    assert r.status_code == 401

    r = await api.post(f"/api/recalls/{number}/decisions", json=decision, headers=qm)
    assert r.status_code == 200, r.text
    assert await lot_status(sessionmaker, plant.lots["A1"]) == "released"
    r = await api.post(f"/api/recalls/{number}/decisions", json=decision, headers=qm)
    assert r.status_code == 409
    r = await api.post(f"/api/recalls/{number}/acknowledgements",
                       json={"customer": customer, "acknowledged_by": "buyer@x", "note": "quarantined 20 pcs"})
    assert r.status_code == 200, r.text

    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "closing")
    report = rec["report"]
    assert report["held"] == [plant.lots["A1"]] and report["shipped_quantity"] == 20.0
    assert report["customers"][0]["acknowledged_by"] == "buyer@x"
    assert {x["lot"]: x["decision"] for x in report["lots"] if x["decision"]} == {plant.lots["A1"]: "release"}
    # a start after it closed is still the same recall: nothing doubles
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    async with sessionmaker() as s:
        n_lots = (await s.execute(select(func.count()).select_from(RecallLot).join(
            RecallNotice, RecallNotice.recall_id == RecallLot.recall_id).where(RecallNotice.customer == customer))
        ).scalar_one()
    assert n_lots == 3


async def test_recall_payloads_are_checked_before_temporal(api: httpx.AsyncClient):
    r = await api.post("/api/recalls", json={"number": "RC-NONE-1", "suspect_kind": "heat", "suspect": "NO-SUCH-HEAT",
                                             "reason": "x", "requested_by": "qm"})
    assert r.status_code == 404 and "NO-SUCH-HEAT" in r.json()["detail"]
    r = await api.post("/api/recalls", json={"number": "RC-NONE-2", "suspect_kind": "equipment", "suspect": "LATHE-01",
                                             "reason": "x", "requested_by": "qm"})
    assert r.status_code == 422 and "since and until" in r.json()["detail"]
    assert (await api.get("/api/recalls/RC-NONE-1")).status_code == 404


async def test_recall_holds_the_cases_and_pallets_in_stock_until_their_lots_are_released(
        api: httpx.AsyncClient, sessionmaker):
    """Issue 5: the recall holds every affected lot *and case* still in stock: the cases and pallets holding units
    of the scope's lots are recorded with the recall, put on hold with an EPCIS holding event (disposition
    recalled), and go back to what they were once a reviewer has released every recalled lot inside them."""
    import uuid

    from domain import gs1
    from domain.models_codes import Container
    from tests.test_codes import sscc_rule

    plant = await build_plant(sessionmaker, ship=False)
    tag, lots = plant.tag, plant.lots
    item = f"ASSY-{tag}"
    for level, ext in (("case", "5"), ("pallet", "6")):
        r = await api.post("/api/codes/rules", json={"item": item, "level": level, "spec": sscc_rule("4012345", ext)})
        assert r.status_code == 201, r.text

    async def codes(level: str, count: int, lot: str | None = None) -> list[str]:
        body = {"key": f"{item}-{level}-{uuid.uuid4().hex[:4]}", "item": item, "count": count,
                **({"level": level} if level != "unit" else {}), **({"lot": lot} if lot else {})}
        b = await api.post("/api/codes/blocks", json=body)
        assert b.status_code in (200, 201), b.text
        return [(await api.get(f"/api/codes/blocks/{b.json()['id']}/codes/{i}")).json()["digital_link"]
                for i in range(count)]

    units, (case,), (pallet,) = await codes("unit", 2, lots["B1"]), await codes("case", 1), await codes("pallet", 1)
    for parent, children in ((case, units), (pallet, [case])):
        r = await api.post("/api/codes/pack", json={"parent": parent, "children": children, "actor": "packer"})
        assert r.status_code == 200, r.text
    path = {c: f"/00/{gs1.parse_digital_link(c)['00']}" for c in (case, pallet)}

    async def box_status(code: str) -> str:
        async with sessionmaker() as s:
            return (await s.execute(select(Container.status).where(Container.code == path[code]))).scalar_one()

    number = f"RC-BOX-{tag}"
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "heat", "suspect": plant.heats["M1"],
                                             "reason": "cracks in heat", "requested_by": "qm-1"})
    assert r.status_code == 202, r.text
    rec = await wait_recall(api, number, lambda x: bool(x["record"]["containers"])
                            and all(c["held_at"] for c in x["record"]["containers"]), "container holds")
    boxes = {c["code"]: c for c in rec["record"]["containers"]}
    assert set(boxes) == {path[case], path[pallet]}
    for code in (case, pallet):
        b = boxes[path[code]]
        assert (b["action"], b["status_before"], b["status"], b["lots"], b["units"]) == \
            ("held", "open", "on_hold", [lots["B1"]], 2)
        assert await box_status(code) == "on_hold"
    # each hold is an EPCIS event on the SSCC, disposition recalled
    r = await api.get("/epcis/events", params={"EQ_disposition": "recalled", "MATCH_epc": urn_of_sscc(pallet)})
    assert len(r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 1

    # a held box takes nothing more and goes nowhere: the refusal names the recall
    (case2,) = await codes("case", 1)
    r = await api.post("/api/codes/pack", json={"parent": pallet, "children": [case2], "actor": "packer"})
    assert r.status_code == 409 and number in r.json()["detail"] and "on hold" in r.json()["detail"], r.text
    qm = role_headers("quality_manager")
    held = [x["lot"] for x in rec["record"]["lots"] if x["action"] == "held"]
    assert lots["B1"] in held and lots["A1"] in held
    # releasing another lot leaves the boxes held; releasing the lot inside them releases them
    r = await api.post(f"/api/recalls/{number}/decisions", headers=qm, json={
        "lot": lots["A1"], "decision": "release", "reason": "re-tested", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert await box_status(case) == "on_hold"
    r = await api.post(f"/api/recalls/{number}/decisions", headers=qm, json={
        "lot": lots["B1"], "decision": "release", "reason": "re-tested", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert await box_status(case) == "open" and await box_status(pallet) == "open"
    r = await api.post("/api/codes/pack", json={"parent": pallet, "children": [case2], "actor": "packer"})
    assert r.status_code == 200, r.text
    rec = (await api.get(f"/api/recalls/{number}")).json()
    assert all(c["released_at"] and c["status"] == "open" for c in rec["record"]["containers"])
