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

from domain.models_trace import Recall, RecallLot, RecallNotice
from tests.helpers import PASSWORD, remember_batches, role_headers
from tests.test_trace_containers import container_rules, issue_codes, urn_of_sscc
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
        "earlier_acknowledgements": [],
        "shipments": [{"shipment": f"DN-{plant.tag}", "sales_order": f"SO-{plant.tag}",
                       "shipped_at": rec["record"]["customers"][0]["shipments"][0]["shipped_at"],
                       "lots": [{"lot": plant.lots["B1"], "item": f"ASSY-{plant.tag}", "quantity": 20.0,
                                 "uom": "EA"}]}]}]
    assert await lot_status(sessionmaker, plant.lots["A1"]) == "on_hold"
    # blocked in the ERP as ERPNext blocks a batch: the Batch's `disabled` check
    assert erp_sim.documents("Batch")[plant.lots["A1"]]["disabled"] == 1
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

    from domain import gs1
    from domain.models_codes import Container

    plant = await build_plant(sessionmaker, ship=False)
    tag, lots = plant.tag, plant.lots
    item = f"ASSY-{tag}"
    await container_rules(api, item)

    async def codes(level: str, count: int, lot: str | None = None) -> list[str]:
        return await issue_codes(api, item, level, count, lot)

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
    # held, and the recall waiting for decisions (the ERP blocks and the list of held boxes come first)
    rec = await wait_recall(api, number, lambda x: bool(x["record"]["containers"])
                            and all(c["held_at"] for c in x["record"]["containers"])
                            and (x["status"] or {}).get("stage") == "notifying", "container holds")
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


async def _rows(sessionmaker, number: str) -> tuple[int, int]:
    """How many lot lines and customer notices the recall has in the database."""
    async with sessionmaker() as s:
        rid = (await s.execute(select(Recall.id).where(Recall.number == number))).scalar_one()
        n_lots = (await s.execute(select(func.count()).select_from(RecallLot).where(RecallLot.recall_id == rid))
                  ).scalar_one()
        n_notices = (await s.execute(select(func.count()).select_from(RecallNotice)
                                     .where(RecallNotice.recall_id == rid))).scalar_one()
    return n_lots, n_notices


async def _signatures(sessionmaker, number: str, lot: str) -> list[Any]:
    from domain.signatures import signatures_for

    async with sessionmaker() as s:
        return await signatures_for(s, "recall_decision", f"{number}/{lot}")


async def test_recall_by_lot_scopes_forward_from_the_lot_and_signs_the_decision_with_it(
        api: httpx.AsyncClient, erp_sim, sessionmaker):
    """A recall by lot: M1 was fully consumed into A1 (10 still in stock), A1 into B1 (shipped). The release of A1
    is signed in the same transaction as the decision: both are there when the route answers, and a resend of
    the same decision is refused and signs nothing."""
    from domain.recall import decision_content
    from domain.signatures import content_hash, is_valid

    plant = await build_plant(sessionmaker)
    lots, number, customer = plant.lots, f"RC-LOT-{plant.tag}", f"Customer X {plant.tag}"
    body = {"number": number, "suspect_kind": "lot", "suspect": lots["M1"], "reason": "wrong alloy on cert",
            "requested_by": "qm-1"}
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 202, r.text
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is True, r.text

    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    scope = {x["lot"]: x for x in rec["record"]["lots"]}
    assert {k: v["action"] for k, v in scope.items()} == {lots["M1"]: "none", lots["A1"]: "held",
                                                          lots["B1"]: "shipped"}
    assert scope[lots["A1"]]["quantity"] == 10.0 and scope[lots["A1"]]["erp_blocked"] is True
    assert scope[lots["B1"]]["status"] == "shipped" and scope[lots["M1"]]["status"] == "consumed"
    assert [(c["customer"], c["quantity"]) for c in rec["record"]["customers"]] == [(customer, 20.0)]
    assert await lot_status(sessionmaker, lots["A1"]) == "on_hold"
    assert await lot_status(sessionmaker, lots["M3"]) == "released"  # a sibling input of B1: not downstream of M1
    assert erp_sim.documents("Batch")[lots["A1"]]["disabled"] == 1

    qm = role_headers("quality_manager")
    decision = {"lot": lots["A1"], "decision": "release", "reason": "cert corrected by supplier", "password": PASSWORD}
    assert await _signatures(sessionmaker, number, lots["A1"]) == []
    r = await api.post(f"/api/recalls/{number}/decisions", json=decision, headers=qm)
    assert r.status_code == 200, r.text
    assert r.json()["decided"] == {lots["A1"]: "release"}
    # the route has answered: the decision and its signature are both in the database
    rec = (await api.get(f"/api/recalls/{number}")).json()
    a1 = {x["lot"]: x for x in rec["record"]["lots"]}[lots["A1"]]
    assert (a1["decision"], a1["decided_by"], a1["decision_reason"]) == \
        ("release", "t-quality_manager", "cert corrected by supplier")
    (sig,) = await _signatures(sessionmaker, number, lots["A1"])
    signed = decision_content(number, lot=lots["A1"], decision="release", reviewer="t-quality_manager",
                              role="quality_manager", reason="cert corrected by supplier",
                              signed_recall={"suspect_kind": "lot", "suspect": lots["M1"], "window": None,
                                             "reason": "wrong alloy on cert", "scope": {
                                                 "action": "held", "status_before": "released", "quantity": 10.0}})
    assert sig.content == signed and sig.content_hash == content_hash(signed) and is_valid(sig, signed)
    assert (sig.signer, sig.signer_name, sig.role, sig.meaning) == \
        ("t-quality_manager", "Test quality_manager", "quality_manager", "released")
    assert await lot_status(sessionmaker, lots["A1"]) == "released"
    # a resend of the same decision is refused and adds no second signature
    r = await api.post(f"/api/recalls/{number}/decisions", json=decision, headers=qm)
    assert r.status_code == 409, r.text
    assert len(await _signatures(sessionmaker, number, lots["A1"])) == 1

    r = await api.post(f"/api/recalls/{number}/acknowledgements", json={"customer": customer, "acknowledged_by": "b"})
    assert r.status_code == 200, r.text
    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "closing")
    assert rec["report"]["held"] == [lots["A1"]] and rec["report"]["shipped_quantity"] == 20.0
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert await _rows(sessionmaker, number) == (3, 1)
    assert len(await _signatures(sessionmaker, number, lots["A1"])) == 1
    # the release sent the unblock: the Batch is enabled again (the recall closes only once the ERP has it)
    assert erp_sim.documents("Batch")[lots["A1"]]["disabled"] == 0


async def test_recall_by_equipment_takes_only_what_it_made_in_the_window(
        api: httpx.AsyncClient, erp_sim, sessionmaker):
    """A recall by equipment and time window: the lots the machine made in the window and everything made from
    them are in scope (held, shipped or used up); what the same machine made outside the window is not."""
    from datetime import UTC, datetime

    from activities.models import ConsumedLot, OperationReport
    from domain import production, shipping
    from domain.models import LotStatus
    from tests.test_trace_plant import RESOLVER

    plant = await build_plant(sessionmaker)
    tag, lots = plant.tag, plant.lots
    machine, wo = f"CNC-{tag}", f"WOB-{tag}"
    c = {k: f"{k}-{tag}" for k in ("C1", "C2", "C3", "C4")}

    def at(h: int, m: int = 0) -> datetime:
        return datetime(2026, 11, 21, h, m, tzinfo=UTC)

    async with sessionmaker() as s, s.begin():
        # (output, equipment, start, end, consumed): C4 and C1 on the machine in the window, C3 made from C4 on
        # another bench (downstream), C2 on the machine after the window
        for out, eq, t0, t1, consumed in (
                (c["C4"], machine, at(11, 45), at(12, 15), lots["M3"]), (c["C1"], machine, at(12), at(13), lots["M3"]),
                (c["C3"], f"BENCH-{tag}", at(12, 30), at(12, 50), c["C4"]),
                (c["C2"], machine, at(14), at(15), lots["M3"])):
            await production.record_operation(
                s, work_order=wo, output_lot=out, operation_name="Pressing", rework=False, resolver=RESOLVER,
                report=OperationReport(report_id=f"R-{out}", seq=10, equipment=eq, operator="op-9", shift="B",
                                       started_at=t0, ended_at=t1, parameters={},
                                       consumed=[ConsumedLot(lot=consumed, quantity=5)], good_quantity=5))
            lot_row = await production.get_lot(s, out)
            if lot_row.status != LotStatus.consumed:
                await production.set_lot_status(s, lot_row, LotStatus.released, actor="test", why="inspected")
        await shipping.ship_lot(s, work_order=wo, lot=c["C1"], shipment=f"DN2-{tag}", sales_order=f"SO2-{tag}",
                                customer=f"Customer Y {tag}", carrier=None, tracking_number=None, resolver=RESOLVER)
    remember_batches({lot: f"ASSY-{tag}" for lot in c.values()})  # the ERP has them, as it has every lot

    number = f"RC-EQ-{tag}"
    # a window in which the machine made nothing matches nothing: refused before Temporal
    r = await api.post("/api/recalls", json={"number": f"{number}-X", "suspect_kind": "equipment", "suspect": machine,
                                             "since": "2026-11-21T16:00:00Z", "until": "2026-11-21T17:00:00Z",
                                             "reason": "x", "requested_by": "qm-1"})
    assert r.status_code == 404 and machine in r.json()["detail"], r.text
    assert (await api.get(f"/api/recalls/{number}-X")).status_code == 404

    body = {"number": number, "suspect_kind": "equipment", "suspect": machine, "since": "2026-11-21T11:30:00Z",
            "until": "2026-11-21T13:30:00Z", "reason": "spindle out of calibration", "requested_by": "qm-1"}
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 202, r.text
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is True, r.text

    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    scope = {x["lot"]: x for x in rec["record"]["lots"]}
    assert {k: v["action"] for k, v in scope.items()} == {c["C4"]: "none", c["C1"]: "shipped", c["C3"]: "held"}
    assert c["C2"] not in scope  # same machine, outside the window
    assert not {lots[k] for k in ("M1", "M2", "M3", "A1", "B1")} & set(scope)  # made on other machines
    assert scope[c["C3"]]["quantity"] == 5.0 and scope[c["C3"]]["erp_blocked"] is True
    customers = rec["record"]["customers"]
    assert [(x["customer"], x["quantity"]) for x in customers] == [(f"Customer Y {tag}", 5.0)]
    assert [sh["shipment"] for sh in customers[0]["shipments"]] == [f"DN2-{tag}"]
    assert await lot_status(sessionmaker, c["C3"]) == "on_hold"
    assert await lot_status(sessionmaker, c["C2"]) == "released"
    assert await lot_status(sessionmaker, lots["A1"]) == "released"
    assert sorted(rec["status"]["waiting_for"]) == sorted([
        f"customer: acknowledgement from Customer Y {tag}", f"reviewer: release or reject held lot {c['C3']}"])

    qm = role_headers("quality_manager")
    decision = {"lot": c["C3"], "decision": "reject", "reason": "bore oversize", "password": PASSWORD}
    r = await api.post(f"/api/recalls/{number}/decisions", json=decision, headers=qm)
    assert r.status_code == 200, r.text
    assert await lot_status(sessionmaker, c["C3"]) == "rejected"
    (sig,) = await _signatures(sessionmaker, number, c["C3"])
    assert sig.meaning == "rejected" and sig.content["decision"] == "reject" and sig.content["lot"] == c["C3"]
    r = await api.post(f"/api/recalls/{number}/decisions", json={**decision, "decision": "release"}, headers=qm)
    assert r.status_code == 409, r.text
    assert len(await _signatures(sessionmaker, number, c["C3"])) == 1
    r = await api.post(f"/api/recalls/{number}/acknowledgements",
                       json={"customer": f"Customer Y {tag}", "acknowledged_by": "buyer@y"})
    assert r.status_code == 200, r.text
    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "closing")
    assert rec["report"]["held"] == [c["C3"]] and rec["report"]["shipped_quantity"] == 5.0

    # starting it again after it closed doubles nothing: lot lines, notices, ERP blocks, signatures
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert await _rows(sessionmaker, number) == (3, 1)
    batches = erp_sim.documents("Batch")
    assert [k for k in c if batches[c[k]].get("disabled")] == ["C3"]  # the one lot it blocked in the ERP
    assert len(await _signatures(sessionmaker, number, c["C3"])) == 1


async def test_recall_decision_and_signature_commit_together_and_a_retry_signs_once(sessionmaker):
    """The activity's transaction: a signature that cannot be written takes the decision with it (no decision
    without its signature), and a retried activity after the commit neither decides nor signs twice."""
    from activities.models import DecisionSignature
    from core.errors import InvalidInput
    from domain import recall

    plant = await build_plant(sessionmaker)
    number, lot = f"RC-TX-{plant.tag}", plant.lots["A1"]
    async with sessionmaker() as s, s.begin():
        await recall.open_recall(s, number=number, workflow_id=f"recall-{number}", suspect_kind="lot",
                                 suspect=lot, since=None, until=None, reason="test", requested_by="qm-1",
                                 resolver="https://id.tracehub.example")
        await recall.hold_lots(s, number=number, resolver="https://id.tracehub.example")
    args = {"number": number, "lot": lot, "decision": "release", "reviewer": "t-quality_manager",
            "role": "quality_manager", "reason": "re-tested", "resolver": "https://id.tracehub.example"}

    async def decided() -> str | None:
        async with sessionmaker() as s:
            return {x["lot"]: x["decision"] for x in (await recall.scope(s, number))["lots"]}[lot]

    with pytest.raises(InvalidInput):
        async with sessionmaker() as s, s.begin():
            await recall.decide_lot(s, **args, signature=DecisionSignature(signer="t-quality_manager",
                                                                           meaning="bogus"))
    assert await decided() is None and await lot_status(sessionmaker, lot) == "on_hold"
    assert await _signatures(sessionmaker, number, lot) == []

    sig = DecisionSignature(signer="t-quality_manager", signer_name="Test quality_manager", meaning="released")
    for _ in range(2):  # the second is a retried activity
        async with sessionmaker() as s, s.begin():
            await recall.decide_lot(s, **args, signature=sig)
    assert await decided() == "release" and await lot_status(sessionmaker, lot) == "released"
    (one,) = await _signatures(sessionmaker, number, lot)
    assert one.content == recall.decision_content(
        number, lot=lot, decision="release", reviewer="t-quality_manager", role="quality_manager", reason="re-tested",
        signed_recall={"suspect_kind": "lot", "suspect": lot, "window": None, "reason": "test",
                       "scope": {"action": "held", "status_before": "released", "quantity": 10.0}})
