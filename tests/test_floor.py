"""What the floor and the ERP see when they send something wrong, and the other paths of a work order."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    OUT_SPEC_IQC,
    decide,
    fast_release,
    operation_report,
    post_results,
    report_operation,
    wait_done,
    wait_ncr,
    wait_status,
)

pytestmark = pytest.mark.asyncio


async def test_bad_erp_event_names_each_field_and_starts_nothing(api: httpx.AsyncClient, wo_number):
    ev = fast_release(wo_number)
    ev["work_order"]["quantity"] = 0
    ev["work_order"]["routing"] = [{"seq": 10, "name": "A"}, {"seq": 10, "name": "B"}]
    ev["work_order"]["final_plan"] = [{"name": "d", "lower": 2, "upper": 1}]
    r = await api.post("/api/erp/events", json=ev)
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"work_order.quantity", "work_order.routing", "work_order.final_plan.0"} <= fields, fields
    assert "lower limit 2.0 is above upper limit 1.0" in r.json()["detail"]
    assert (await api.get(f"/api/work-orders/{wo_number}")).status_code == 404


async def test_receipt_for_unknown_work_order_is_refused(api: httpx.AsyncClient):
    r = await api.post("/api/erp/events", json={
        "event_id": "pr-unknown", "event_type": "purchase_receipt.posted", "work_order": "WO-NOPE",
        "receipt": {"receipt": "PR-1", "lots": [{"lot": "L-1", "supplier": "S", "item": "I", "supplier_lot": "x",
                                                 "quantity": 1}]}})
    assert r.status_code == 404 and "send work_order.released first" in r.json()["detail"]


async def test_floor_input_is_validated_before_the_workflow(api: httpx.AsyncClient, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    st = await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")
    iqc = st["status"]["pending_inspections"][0]["number"]

    r = await api.post(f"/api/inspections/{iqc}/results", json={
        "inspector": "i1", "measurements": [{"characteristic": "hardnes", "values": [30]}]})
    assert r.status_code == 422
    assert "'hardnes' is not in the plan" in r.json()["detail"] and "'hardness' is missing" in r.json()["detail"]
    assert (await api.post("/api/inspections/NOPE/results", json={
        "inspector": "i1", "measurements": [{"characteristic": "x", "values": [1]}]})).status_code == 404

    # material still in quarantine: no operation may consume it yet
    r = await api.post(f"/api/work-orders/{wo_number}/operations",
                       json=operation_report(wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 1}]))
    assert r.status_code == 409 and "not waiting for operation 10" in r.json()["detail"]

    first = await api.post(f"/api/inspections/{iqc}/results", json={"inspector": "i1", "measurements": IN_SPEC_IQC})
    assert first.status_code == 202 and first.json()["verdict"] == "passed"
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="operation 10")
    again = await api.post(f"/api/inspections/{iqc}/results", json={"inspector": "i1", "measurements": IN_SPEC_IQC})
    assert again.status_code == 200 and "already recorded" in again.json()["message"]
    changed = await api.post(f"/api/inspections/{iqc}/results",
                             json={"inspector": "i2", "measurements": [{"characteristic": "hardness", "values": [29]}]})
    assert changed.status_code == 409

    bad = operation_report(wo_number, 20, [])
    assert (await api.post(f"/api/work-orders/{wo_number}/operations", json=bad)).status_code == 409
    bad = operation_report(wo_number, 30, [])
    r = await api.post(f"/api/work-orders/{wo_number}/operations", json=bad)
    assert r.status_code == 422 and "not in the routing" in r.json()["detail"]
    bad = operation_report(wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 1e6}])
    r = await api.post(f"/api/work-orders/{wo_number}/operations", json=bad)
    assert r.status_code == 409 and "left; the report consumes" in r.json()["detail"]
    bad = operation_report(wo_number, 10, [])
    bad["ended_at"] = "2026-11-21T07:00:00Z"
    r = await api.post(f"/api/work-orders/{wo_number}/operations", json=bad)
    assert r.status_code == 422 and "ended_at is before started_at" in r.json()["detail"]


async def test_iqc_failure_returned_to_supplier_then_new_receipt(api: httpx.AsyncClient, erp_sim, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number, with_shipment=False))).status_code == 202
    await post_results(api, wo_number, "iqc", OUT_SPEC_IQC)
    ncr = await wait_ncr(api, wo_number)
    r = await decide(api, ncr, "confirm", "qa_supervisor", reason="hardness 35 HRC")
    assert r.status_code == 200
    r = await decide(api, ncr, "rework", "mrb_production")
    assert r.status_code == 409 and "cannot be reworked" in r.json()["detail"]
    assert (await decide(api, ncr, "return_to_supplier", "mrb_engineering", reason="heat off spec")).status_code == 200
    st = await wait_status(api, wo_number, lambda s: s["material_lots"].get(f"{wo_number}-M1") == "rejected",
                           what="the lot to be rejected")
    assert any("every lot received so far was rejected" in w for w in st["status"]["waiting_for"])
    ret = erp_sim.documents("Purchase Receipt")[f"{ncr}-RETURN"]
    assert ret["is_return"] == 1 and ret["return_against"] == f"PR-{wo_number}" and ret["supplier"] == "ACME-STEEL"
    assert ret["items"][0]["batch_no"] == f"{wo_number}-M1" and ret["items"][0]["qty"] < 0

    receipt = {"receipt": f"PR2-{wo_number}", "lots": [{
        "lot": f"{wo_number}-M2", "supplier": "OTHER-STEEL", "item": "BAR-42CRMO4", "supplier_lot": "B-9",
        "heat_number": "H-GOOD", "quantity": 30, "uom": "KG", "certificate_ref": "CERT-GOOD"}]}
    ev = {"event_id": f"pr2-{wo_number}", "event_type": "purchase_receipt.posted", "work_order": wo_number,
          "receipt": receipt}
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    assert (await api.post("/api/erp/events", json=ev)).status_code == 200  # resent: no second receipt
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M2", "quantity": 30}])
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    st = await wait_status(api, wo_number, lambda s: s["stage"] == "shipment", what="shipment stage")
    assert "ERP: shipment request (sales order) for the lot" in st["status"]["waiting_for"]
    ship = {"event_id": f"ship-{wo_number}", "event_type": "shipment.requested", "work_order": wo_number,
            "shipment": {"shipment": f"DN2-{wo_number}", "sales_order": "SO-77", "customer": "Customer B"}}
    assert (await api.post("/api/erp/events", json=ship)).status_code == 202
    done = await wait_done(api, wo_number)
    assert done["status"]["shipment"] == f"DN2-{wo_number}"
    fwd = (await api.get(f"/api/trace/forward/{wo_number}-M1")).json()
    assert fwd["nodes"][0]["status"] == "rejected" and len(fwd["nodes"]) == 1  # the returned lot went nowhere
    back = (await api.get(f"/api/trace/backward/{wo_number}-L1")).json()
    assert back["suppliers"] == [["OTHER-STEEL", "B-9", "H-GOOD"]]
    assert erp_sim.documents("Delivery Note")[f"DN2-{wo_number}"]["customer"] == "Customer B"


async def test_ncr_reminder_and_escalation_from_input_durations(api: httpx.AsyncClient, wo_number):
    ev = fast_release(wo_number)
    ev["work_order"]["timing"] = {"ncr_reminder_after": 1, "ncr_escalate_after": 2}
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", OUT_SPEC_IQC)
    ncr = await wait_ncr(api, wo_number)
    for _ in range(100):
        n = (await api.get(f"/api/ncrs/{ncr}")).json()
        if n["escalated_at"]:
            break
        await asyncio.sleep(0.1)
    assert n["reminded_at"] and n["escalated_at"] and n["state"] == "open"
    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="gauge out of calibration")).status_code == 200
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="production after dismissal")


async def test_health(api: httpx.AsyncClient):
    assert (await api.get("/health")).json() == {"status": "ok"}
    r = await api.get("/health/ready")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "temporal": "ok"}


async def test_openapi_documents_the_routes(api: httpx.AsyncClient):
    paths = (await api.get("/openapi.json")).json()["paths"]
    for p in ["/api/erp/events", "/api/work-orders/{number}", "/api/work-orders/{number}/history",
              "/api/ncrs/{number}/decisions", "/api/inspections/{number}/results",
              "/api/work-orders/{number}/operations", "/api/trace/backward/{code}", "/api/trace/forward/{lot}"]:
        assert p in paths, p
