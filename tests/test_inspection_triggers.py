"""Inspection triggers from the item's plans (first-article, patrol by units and by minutes, outgoing), the
shipment gate (API 409, the workflow's status, the domain's own refusal), and the ISO 2859-1 switching state fed
by IQC verdicts through the workflow."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.errors import Conflict
from domain import quality, sampling, shipping
from domain.models import Ncr, utcnow
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    decide,
    fast_release,
    post_results,
    report_operation,
    role_headers,
    wait_done,
    wait_ncr,
    wait_status,
)
from tests.test_attachments import PNG
from worker import WORKFLOWS

pytestmark = pytest.mark.asyncio


def uid() -> str:
    return uuid.uuid4().hex[:8].upper()


def gtin() -> str:
    """A GTIN-14 of its own (a GTIN identifies one item), with its check digit."""
    body = "0" + "".join(str(random.randrange(10)) for _ in range(12))
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def release(number: str, item: str, material: str, *, with_shipment: bool = True) -> dict[str, Any]:
    """The simulator's release, for an item and a material of this test only (plans are per item)."""
    ev = fast_release(number, with_shipment=with_shipment)
    wo = ev["work_order"]
    wo["item"] = item
    wo["gtin"] = gtin()
    wo["timing"]["shipment_gate_recheck"] = 1
    for r in wo["receipts"]:
        for line in r["lots"]:
            line["item"] = material
    return ev


async def save_plan(api: httpx.AsyncClient, item: str, operation: str, characteristics: list[dict],
                    sampling_: dict, triggers: dict | None = None) -> dict:
    body = {"item": item, "operation": operation, "characteristics": characteristics, "sampling": sampling_}
    if triggers is not None:
        body["triggers"] = triggers
    r = await api.post("/api/quality/plans", json=body, headers=role_headers("quality_manager"))
    assert r.status_code == 201, r.text
    return r.json()


async def pending(api: httpx.AsyncClient, number: str, kind: str, inspection: str | None = None
                  ) -> tuple[dict, dict]:
    """The pending inspection of a kind (or that one), as the work order's status and the inspections API show
    it."""
    def match(p: dict) -> bool:
        return p["kind"] == kind and (inspection is None or p["number"] == inspection)

    st = await wait_status(api, number, lambda s: any(match(p) for p in s["pending_inspections"]),
                           what=f"a pending {kind} inspection {inspection or ''}")
    p = next(p for p in st["status"]["pending_inspections"] if match(p))
    r = await api.get(f"/api/inspections/{p['number']}")
    assert r.status_code == 200, r.text
    return st["status"], r.json()


async def replays(client, workflow_id: str) -> None:
    """The run's history replays against the code: the trigger paths are deterministic."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(history)


async def results(api: httpx.AsyncClient, number: str, measurements: list[dict]) -> httpx.Response:
    return await api.post(f"/api/inspections/{number}/results",
                          json={"inspector": "inspector-1", "measurements": measurements})



async def receive_lot(api: httpx.AsyncClient, wo_number: str, lot: str, receipt: str, supplier: str, item: str,
                      supplier_lot: str) -> str:
    """The ERP posts a purchase receipt of one lot of 50 to the work order; returns its IQC once it is opened."""
    doc = {"receipt": f"{receipt}-{wo_number}", "lots": [{
        "lot": lot, "supplier": supplier, "item": item, "supplier_lot": supplier_lot, "quantity": 50, "uom": "EA"}]}
    r = await api.post("/api/erp/events", json={"event_id": f"{receipt.lower()}-{wo_number}", "work_order": wo_number,
                                                "event_type": "purchase_receipt.posted", "receipt": doc})
    assert r.status_code == 202, r.text
    number = f"IQC-{lot}"
    await wait_status(api, wo_number, lambda s: any(p["number"] == number for p in s["pending_inspections"]),
                      what=f"IQC of {lot}")
    return number

async def test_plan_triggers_are_validated_and_versioned(api: httpx.AsyncClient):
    item = f"TRG-{uid()}"
    chars = [{"name": "length", "kind": "variable", "severity": "major", "lower": 1, "upper": 2}]
    smp = {"major": {"aql": 1.0}}
    r = await api.post("/api/quality/plans", headers=role_headers("quality_manager"), json={
        "item": item, "operation": "final", "characteristics": chars, "sampling": smp,
        "triggers": {"first_article": True, "outgoing": True}})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "triggers.first_article" in detail and "routing operation" in detail
    assert "triggers.outgoing" in detail and "'outgoing'" in detail
    r = await api.post("/api/quality/plans", headers=role_headers("quality_manager"), json={
        "item": item, "operation": "Turning", "characteristics": chars, "sampling": smp,
        "triggers": {"patrol_every_units": 0}})
    assert r.status_code == 422 and "patrol_every_units" in r.text

    v1 = await save_plan(api, item, "Turning", chars, smp, {"first_article": True, "patrol_every_minutes": 30})
    assert v1["triggers"] == {"first_article": True, "patrol_every_units": None, "patrol_every_minutes": 30.0,
                              "outgoing": False}
    v2 = await save_plan(api, item, "Turning", chars, smp)
    out = await save_plan(api, item, "outgoing", chars, smp)
    assert out["triggers"]["outgoing"] is True  # an outgoing plan is required unless it says otherwise
    versions = (await api.get(f"/api/quality/plans/{item}/Turning")).json()
    assert [v["triggers"]["first_article"] for v in versions] == [True, False] and v2["version"] == 2


async def test_first_article_patrol_outgoing_and_the_shipment_gate(api: httpx.AsyncClient, client, sessionmaker,
                                                                   settings, wo_number):
    item, material = f"TRG-{uid()}", f"MAT-{uid()}"
    await save_plan(api, item, "Turning", [
        {"name": "length", "kind": "variable", "severity": "major", "lower": 49.9, "upper": 50.1, "unit": "mm"},
        {"name": "finish", "kind": "visual", "severity": "minor"},
    ], {"major": {"aql": 1.0}, "minor": {"aql": 4.0}}, {"first_article": True})
    await save_plan(api, item, "Heat treatment", [
        {"name": "hardness", "kind": "variable", "severity": "major", "lower": 55, "upper": 60, "unit": "HRC"},
    ], {"major": {"aql": 4.0}}, {"patrol_every_units": 10})
    await save_plan(api, item, "outgoing", [
        {"name": "label", "kind": "attribute", "severity": "critical", "defect_codes": ["MISSING", "SMEARED"]},
    ], {"critical": {"aql": 1.0}})
    assert (await api.post("/api/erp/events", json=release(wo_number, item, material,
                                                           with_shipment=False))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)  # the material has no IQC plan: as before

    # first article: the first unit of operation 10, inspected before the run goes on
    st, fa = await pending(api, wo_number, "first_article")
    assert fa["number"] == f"FA-{wo_number}-10-1" and fa["lot"] == f"{wo_number}-L1"
    assert fa["sampling"]["trigger"] == "first_article" and fa["sampling"]["plan_version"] == 1
    assert {n: c["n"] for n, c in fa["sampling"]["characteristics"].items()} == {"length": 1, "finish": 1}
    assert any("first-article" in w and fa["number"] in w for w in st["waiting_for"])
    assert st["inspection_triggers"]["outgoing"] is True
    # the MES reports the operation before the first article is judged: accepted, held until it passes
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await asyncio.sleep(0.5)
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
    assert st["expected_operation"] == 10 and st["good_quantity"] == 0
    fa_results = [{"characteristic": "length", "values": [50.02]}, {"characteristic": "finish", "values": [0]}]
    r = await results(api, fa["number"], fa_results)
    assert r.status_code == 422 and "'finish' needs a photo" in r.json()["detail"], r.text
    r = await api.post(f"/api/inspections/{fa['number']}/characteristics/finish/photos", content=PNG,
                       headers={**role_headers("inspector"), "content-type": "image/png"})
    assert r.status_code == 201, r.text
    r = await results(api, fa["number"], fa_results)
    assert r.status_code == 202 and r.json()["verdict"] == "passed", r.text

    # the held report is recorded; operation 20 is patrolled every 10 units of the MES's progress
    st = (await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20"))["status"]
    assert st["good_quantity"] == 20
    assert any("patrol" in w and "at 10 units" in w for w in st["waiting_for"]), st["waiting_for"]
    r = await api.post(f"/api/work-orders/{wo_number}/operations/10/progress", json={"units": 3})
    assert r.status_code == 409 and "not running operation 10" in r.json()["detail"]
    r = await api.post(f"/api/work-orders/{wo_number}/operations/20/progress", json={"units": 12},
                       headers=role_headers("mes"))
    assert r.status_code == 202, r.text
    _, pat = await pending(api, wo_number, "patrol")
    assert pat["number"] == f"PAT-{wo_number}-20-1-1"
    n = pat["sampling"]["characteristics"]["hardness"]["n"]
    assert n == sampling.plan(10, "II", "4.0").units_to_inspect and pat["characteristics"][0]["sample_size"] == n
    r = await results(api, pat["number"], [{"characteristic": "hardness", "values": [57.0] * (n - 1) + [61.0]}])
    assert r.json()["verdict"] == "failed"
    ncr = await wait_ncr(api, wo_number)  # through the work order's NCR path
    assert (await api.get(f"/api/ncrs/{ncr}")).json()["lot"] == f"{wo_number}-L1"
    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="gauge misread")).status_code == 200
    st = (await wait_status(api, wo_number, lambda s: not s["open_ncrs"] and any(
        "at 20 units" in w for w in s["waiting_for"]), what="the next patrol threshold"))["status"]
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)

    # outgoing before shipment; meanwhile a field complaint opens an NCR on the material the lot consumed
    st, out = await pending(api, wo_number, "outgoing")
    assert out["number"] == f"OUT-{wo_number}-1" and st["stage"] == "outgoing_inspection"
    label = out["sampling"]["characteristics"]["label"]
    assert (label["n"], label["ac"]) == (sampling.plan(20, "II", "1.0").units_to_inspect, 0)
    r = await results(api, out["number"], [{"characteristic": "label", "values": [label["n"] + 1]}])
    assert r.status_code == 422 and f"among the {label['n']} inspected" in r.json()["detail"]
    complaint = f"NCR-FIELD-{wo_number}"
    async with sessionmaker() as s, s.begin():
        await quality.open_ncr(s, number=complaint, workflow_id=f"field-{complaint}", work_order=None,
                               lot=f"{wo_number}-M1", inspection=None, description="customer complaint: cracks",
                               resolver=settings.resolver_base_url)
    r = await results(api, out["number"], [{"characteristic": "label", "values": [0]}])
    assert r.json()["verdict"] == "passed"
    await wait_status(api, wo_number, lambda s: s["stage"] == "shipment", what="the shipment stage")

    ship = {"shipment": f"DN-{wo_number}", "sales_order": f"SO-{wo_number}", "customer": "Customer A"}
    r = await api.post(f"/api/work-orders/{wo_number}/shipment", json=ship, headers=role_headers("erp"))
    assert r.status_code == 409, r.text
    assert complaint in r.json()["detail"] and f"consumed lot {wo_number}-M1" in r.json()["detail"]
    async with sessionmaker() as s, s.begin():  # the domain refuses too, whoever calls it
        with pytest.raises(Conflict, match=complaint):
            await shipping.ship_lot(s, work_order=wo_number, lot=f"{wo_number}-L1", shipment=f"DN-X-{wo_number}",
                                    sales_order="SO-X", customer="X", carrier=None, tracking_number=None,
                                    resolver=settings.resolver_base_url)
    # the ERP's own request reaches the workflow, which holds the shipment and says why
    ev = {"event_id": f"ship-{wo_number}", "event_type": "shipment.requested", "work_order": wo_number,
          "shipment": ship}
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    st = (await wait_status(api, wo_number, lambda s: bool(s["shipment_gate"]), what="the held shipment"))["status"]
    assert any(w.startswith(f"shipment DN-{wo_number} held") and complaint in w for w in st["waiting_for"])
    r = await api.post(f"/api/work-orders/{wo_number}/shipment", json=ship, headers=role_headers("erp"))
    assert r.status_code == 409 and "already has a shipment request, held" in r.json()["detail"]
    async with sessionmaker() as s, s.begin():
        row = (await s.execute(select(Ncr).where(Ncr.number == complaint))).scalar_one()
        row.state, row.closed_at = "dismissed", utcnow()
    done = await wait_done(api, wo_number)
    assert done["status"]["shipment"] == f"DN-{wo_number}" and done["status"]["shipment_gate"] == []
    inspections = (await api.get("/api/inspections", params={"work_order": wo_number})).json()
    assert {i["kind"]: i["status"] for i in inspections} == {
        "iqc": "passed", "first_article": "passed", "patrol": "failed", "final": "passed", "outgoing": "passed"}
    await replays(client, f"work-order-{wo_number}")


async def test_time_patrol_holds_the_report_and_a_failed_first_article_is_made_again(api: httpx.AsyncClient,
                                                                                    client, wo_number):
    item, material = f"TRG-{uid()}", f"MAT-{uid()}"
    await save_plan(api, item, "10", [
        {"name": "length", "kind": "variable", "severity": "major", "lower": 49.9, "upper": 50.1},
    ], {"major": {"aql": 1.0}}, {"first_article": True, "patrol_every_minutes": 0.02})
    assert (await api.post("/api/erp/events", json=release(wo_number, item, material))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    _, fa = await pending(api, wo_number, "first_article")
    assert (await results(api, fa["number"], [{"characteristic": "length", "values": [50.3]}])).json()[
        "verdict"] == "failed"
    ncr = await wait_ncr(api, wo_number)
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="long")).status_code == 200
    r = await decide(api, ncr, "rework", "mrb_production", reason="reset the stop", rework_operation=10)
    assert r.status_code == 200, r.text
    # set-up corrected: a new first article
    st, fa2 = await pending(api, wo_number, "first_article", f"FA-{wo_number}-10-2")
    assert (await results(api, fa2["number"], [{"characteristic": "length", "values": [50.0]}])).json()[
        "verdict"] == "passed"
    # every 0.02 min (about a second on the dev server's timers) a patrol inspection
    _, pat = await pending(api, wo_number, "patrol")
    assert pat["number"] == f"PAT-{wo_number}-10-1-1"
    n = pat["sampling"]["characteristics"]["length"]["n"]
    await results(api, pat["number"], [{"characteristic": "length", "values": [50.0] * n}])
    st, pat2 = await pending(api, wo_number, "patrol", f"PAT-{wo_number}-10-1-2")
    # the report arrives while a patrol inspection is open: it is recorded once the patrol is judged
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await asyncio.sleep(0.5)
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
    assert st["expected_operation"] == 10 and st["good_quantity"] == 0
    await results(api, pat2["number"], [{"characteristic": "length", "values": [50.0] * n}])
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, wo_number)  # no outgoing plan: ships as before
    assert done["status"]["shipment"] == f"DN-{wo_number}" and done["status"]["codes"]["count"] == 20
    assert not any(p["kind"] == "patrol" for p in done["status"]["pending_inspections"])
    await replays(client, f"work-order-{wo_number}")


async def test_iqc_verdicts_move_the_switching_state_and_the_next_sample(api: httpx.AsyncClient, wo_number):
    item, material, supplier = f"TRG-{uid()}", f"MAT-{uid()}", f"SUP-{uid()}"
    await save_plan(api, material, "iqc", [
        {"name": "hardness", "kind": "variable", "severity": "major", "lower": 28, "upper": 32, "unit": "HRC"},
    ], {"major": {"aql": 2.5, "level": "II"}})
    ev = release(wo_number, item, material)
    ev["work_order"]["receipts"] = []
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    normal, tightened = sampling.plan(50, "II", "2.5", "normal"), sampling.plan(50, "II", "2.5", "tightened")
    assert normal.units_to_inspect != tightened.units_to_inspect  # what the test tells apart

    async def receive(k: int, good: bool) -> dict:
        lot = f"{wo_number}-M{k}"
        number = await receive_lot(api, wo_number, lot, f"PR{k}", supplier, material, f"S{k}")
        ins = (await api.get(f"/api/inspections/{number}")).json()
        n = ins["sampling"]["characteristics"]["hardness"]["n"]
        values = [30.0] * n if good else [30.0] * (n - 1) + [33.0]
        r = await results(api, number, [{"characteristic": "hardness", "values": values}])
        assert r.json()["verdict"] == ("passed" if good else "failed")
        # the verdict is recorded (and the switching state moved) by the work order's activity
        await wait_status(api, wo_number, lambda s: all(p["number"] != number for p in s["pending_inspections"]),
                          what=f"the verdict on {lot}")
        return ins

    first = await receive(1, True)
    assert first["sampling"]["severity"] == "normal" and first["sampling"]["supplier"] == supplier
    assert first["sampling"]["characteristics"]["hardness"]["n"] == normal.units_to_inspect
    await receive(2, False)
    third = await receive(3, True)
    assert third["sampling"]["severity"] == "normal"
    await receive(4, False)  # 2 of the last 4 lots on normal inspection not accepted: tightened
    state = (await api.get("/api/quality/sampling", params={
        "supplier": supplier, "item": material, "lot_size": 50, "aql": 2.5})).json()
    assert state["state"]["severity"] == "tightened" and state["state"]["lots"] == 4
    fifth = await receive(5, True)
    assert fifth["sampling"]["severity"] == "tightened"
    assert fifth["sampling"]["characteristics"]["hardness"]["n"] == tightened.units_to_inspect
    assert fifth["characteristics"][0]["sample_size"] == tightened.units_to_inspect
    # a work order whose item has no routing or outgoing plan runs without those triggers
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
    assert st["inspection_triggers"] == {"operations": [], "outgoing": False, "outgoing_plan_version": None}


async def test_iqc_on_reduced_inspection_takes_table_ii_c_and_a_gap_count_reinstates_normal(api: httpx.AsyncClient,
                                                                                            wo_number):
    item, material, supplier = f"TRG-{uid()}", f"MAT-{uid()}", f"SUP-{uid()}"
    await save_plan(api, material, "iqc", [
        {"name": "cracks", "kind": "attribute", "severity": "major", "defect_codes": ["CRACK"]},
    ], {"major": {"aql": 10, "level": "II"}})
    ev = release(wo_number, item, material)
    ev["work_order"]["receipts"] = []
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    # lot 50, level II: code D; AQL 10 reduced (Z1.4 Table II-C) is n 3, Ac 1, Re 3; normal (2-A) is n 8, Ac 2
    reduced, normal = sampling.plan(50, "II", "10", "reduced"), sampling.plan(50, "II", "10")
    assert (reduced.n, reduced.ac, reduced.re, normal.n, normal.ac) == (3, 1, 3, 8, 2)

    # the supplier's and item's switching state: 10 lots accepted on normal inspection (Ac 2, and accepted one
    # AQL step tighter: 3 points each) make the score 30; the quality manager then asks for reduced inspection
    for i in range(10):
        r = await api.post("/api/quality/sampling/results", headers=role_headers("inspector"), json={
            "supplier": supplier, "item": material, "lot": f"{material}-p{i}", "lot_size": 1000, "aql": 1.0,
            "nonconforming": 0})
        assert r.status_code == 200, r.text
    r = await api.post("/api/quality/sampling/reduce", headers=role_headers("quality_manager"), json={
        "supplier": supplier, "item": material, "reason": "ten clean lots, steady deliveries"})
    assert r.status_code == 200 and r.json()["state"]["severity"] == "reduced", r.text

    async def receive(k: int, cracks: int) -> tuple[dict, dict]:
        lot = f"{wo_number}-R{k}"
        number = await receive_lot(api, wo_number, lot, f"PRR{k}", supplier, material, f"S{k}")
        opened = (await api.get(f"/api/inspections/{number}")).json()
        r = await results(api, number, [{"characteristic": "cracks", "values": [cracks]}])
        assert r.status_code == 202, r.text
        await wait_status(api, wo_number, lambda s: all(p["number"] != number for p in s["pending_inspections"]),
                          what=f"the verdict on {lot}")
        return opened, (await api.get(f"/api/inspections/{number}")).json()

    opened, judged = await receive(1, 2)  # 2 nonconforming of 3: above Ac 1, below Re 3
    smp = opened["sampling"]
    assert smp["severity"] == "reduced" and smp["supplier"] == supplier
    assert {k: smp["characteristics"]["cracks"][k] for k in ("n", "ac", "re", "table")} == {
        "n": 3, "ac": 1, "re": 3, "table": "ANSI/ASQ Z1.4 Table II-C (MIL-STD-105E)"}
    assert judged["status"] == "passed"  # the lot is accepted ...
    state = (await api.get("/api/quality/sampling", params={
        "supplier": supplier, "item": material, "lot_size": 50, "aql": 10})).json()
    assert state["state"]["severity"] == "normal" and state["state"]["lots"] == 11  # ... and normal is back

    opened, judged = await receive(2, 2)  # the next lot: normal inspection, n 8, and 2 is within Ac 2
    assert opened["sampling"]["severity"] == "normal"
    assert (opened["sampling"]["characteristics"]["cracks"]["n"], judged["status"]) == (normal.n, "passed")
