"""A work order never dies on a refusal: it waits for a fix, and a refused number or id can be sent again.

- A release the first step would refuse (a GTIN of another item, an output lot that exists) is refused by the API
  (409 naming the field) before anything is stored or started; the corrected resend starts the work order.
- A run that failed or was terminated does not burn the number: the release starts a new run.
- A refusal found only inside the workflow (a conflict that arrived after the API's check) makes it wait, the
  status naming the field; a corrected release for the same number goes on with it.
- A scrapped order sends no Manufacture entry of quantity 0, and its completion's audit says why.
- The ERP refusing the Delivery Note, after the shipment is recorded: the work order waits for an admin retry
  (POST /api/work-orders/{n}/retry, audited) and records nothing twice.
- A recall holding the lot holds the shipment (the gate names the recall) until the recall's reviewer releases it.
- A refused operation report or purchase receipt can be resent corrected with the same id.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client, WorkflowExecutionStatus

from activities.models import OperationReport, WorkOrderInput
from domain.models import AuditLog, Shipment, WorkOrder
from domain.production import receive_lot, upsert_item
from tests.conftest import ErpSim
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    PASSWORD,
    fast_release,
    new_gtin,
    operation_report,
    post_results,
    report_operation,
    role_headers,
    run_production,
    scrap_work_order,
    wait_done,
    wait_status,
)
from tests.test_lifecycle import record_history
from workflows.work_order import WorkOrderWorkflow

pytestmark = pytest.mark.asyncio


def own_item(ev: dict[str, Any], gtin: str | None = None) -> dict[str, Any]:
    """The release made of an item of its own (the suite's default item and GTIN are shared by every test)."""
    ev["work_order"]["item"] = f"IT-{ev['work_order']['number']}"
    ev["work_order"]["gtin"] = gtin or new_gtin()
    return ev


async def other_item_with_gtin(sessionmaker) -> tuple[str, str]:
    code, gtin = f"OTHER-{uuid.uuid4().hex[:8].upper()}", new_gtin()
    async with sessionmaker() as s, s.begin():
        await upsert_item(s, code, gtin=gtin)
    return code, gtin


async def run_state(client: Client, wf_id: str) -> WorkflowExecutionStatus | None:
    try:
        return (await client.get_workflow_handle(wf_id).describe()).status
    except Exception:  # noqa: BLE001 - not found
        return None


async def erp_docs(erp_sim: ErpSim, doctype: str, work_order: str) -> list[dict[str, Any]]:
    """The ERP's documents of a doctype for the work order, by the work_order field (whatever the ERP named them)."""
    async with httpx.AsyncClient(base_url=erp_sim.url,
                                 headers={"Authorization": "token tracehub:simulator-secret"}) as erp:
        r = await erp.get(f"/api/resource/{doctype}", params={
            "fields": '["*"]', "filters": f'[["work_order", "=", "{work_order}"]]', "limit_page_length": 0})
        r.raise_for_status()
        return r.json()["data"]


async def audit_changes(sessionmaker, key: str, action: str) -> list[dict[str, Any]]:
    async with sessionmaker() as s:
        return list((await s.execute(select(AuditLog.changes).where(
            AuditLog.entity_key == key, AuditLog.action == action).order_by(AuditLog.seq))).scalars())


# --- G1: the release ---------------------------------------------------------------------------------------


async def test_a_release_with_another_items_gtin_is_refused_up_front_and_the_corrected_resend_starts(
        api: httpx.AsyncClient, client: Client, sessionmaker, wo_number):
    other, taken = await other_item_with_gtin(sessionmaker)
    ev = own_item(fast_release(wo_number), taken)
    r = await api.post("/api/erp/events", json=ev)
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "work_order.gtin" and other in r.json()["detail"], r.text
    assert await run_state(client, f"work-order-{wo_number}") is None  # nothing started
    # the same event, corrected: a release (202), not "already accepted"
    ev["work_order"]["gtin"] = new_gtin()
    r = await api.post("/api/erp/events", json=ev)
    assert r.status_code == 202, r.text
    assert r.json()["duplicate"] is False
    await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")


async def test_a_release_whose_output_lot_exists_is_refused_naming_the_field(
        api: httpx.AsyncClient, client: Client, sessionmaker, wo_number):
    taken = f"LOT-{uuid.uuid4().hex[:8].upper()}"
    async with sessionmaker() as s, s.begin():
        await receive_lot(s, work_order=None, receipt=f"PR-{taken}", received_at=None, lot=taken, supplier="ACME",
                          item="BAR-42CRMO4", supplier_lot="S1", heat_number=None, quantity=5, uom="KG",
                          certificate_ref=None, location=None, resolver="https://id.tracehub.example")
    ev = own_item(fast_release(wo_number))
    ev["work_order"]["output_lot"] = taken
    r = await api.post("/api/erp/events", json=ev)
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "work_order.output_lot" and taken in r.json()["detail"]
    assert await run_state(client, f"work-order-{wo_number}") is None
    ev["work_order"]["output_lot"] = f"{wo_number}-OUT"
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202


async def test_a_terminated_work_order_can_be_released_again_and_completes(
        api: httpx.AsyncClient, client: Client, sessionmaker, wo_number):
    ev = fast_release(wo_number)
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")
    await client.get_workflow_handle(f"work-order-{wo_number}").terminate("operator ended it")
    # the ERP releases it again: a new run, not "already accepted"
    r = await api.post("/api/erp/events", json={**ev, "event_id": ev["event_id"] + "-again"})
    assert r.status_code == 202, r.text
    runs: list = []
    for _ in range(50):  # the visibility store lists a new run a moment after it started
        runs = [w async for w in client.list_workflows(f"WorkflowId = 'work-order-{wo_number}'")]
        if len(runs) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(runs) == 2, runs
    # while that run is under way, a copy is a duplicate again
    r = await api.post("/api/erp/events", json=ev)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed"
    async with sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(WorkOrder)
                                .where(WorkOrder.number == wo_number))).scalar_one() == 1


async def test_a_release_refused_inside_the_workflow_waits_for_the_corrected_release(
        api: httpx.AsyncClient, client: Client, settings, sessionmaker, wo_number):
    """The GTIN was free when the API checked and taken before the workflow's first step (here: the run is
    started directly, as if the check had raced): the run waits, naming the field, instead of failing."""
    other, taken = await other_item_with_gtin(sessionmaker)
    ev = own_item(fast_release(wo_number), taken)
    wf_id = f"work-order-{wo_number}"
    await client.start_workflow(WorkOrderWorkflow.run, WorkOrderInput.model_validate(ev["work_order"]), id=wf_id,
                                task_queue=settings.temporal.task_queue)
    st = await wait_status(api, wo_number, lambda s: bool(s["release_refused"]), what="the refused release")
    status = st["status"]
    assert "work_order.gtin" in status["release_refused"] and other in status["release_refused"]
    assert status["last_error"] == status["release_refused"]
    assert any(w.startswith("admin: release of work order") and "work_order.gtin" in w
               for w in status["waiting_for"]), status["waiting_for"]
    assert st["workflow"] == "RUNNING"
    # a resend still carrying the other item's GTIN is refused (the run keeps waiting)
    r = await api.post("/api/erp/events", json=ev)
    assert r.status_code == 409 and r.json()["field"] == "work_order.gtin", r.text
    ev["work_order"]["gtin"] = new_gtin()
    r = await api.post("/api/erp/events", json=ev)
    assert r.status_code == 202 and "corrected release" in r.json()["message"], r.text
    st = await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")
    assert st["status"]["release_refused"] is None and st["status"]["last_error"] is None
    assert st["record"]["item"] == ev["work_order"]["item"]
    await record_history(client, wf_id, "work_order_release_refused_corrected")


# --- G2: late refusals -------------------------------------------------------------------------------------


async def test_a_scrapped_order_sends_no_zero_manufacture_entry_and_says_why(
        api: httpx.AsyncClient, client: Client, erp_sim: ErpSim, sessionmaker, wo_number):
    _, done = await scrap_work_order(api, wo_number)
    assert done["status"]["result"] == "completed_short" and done["status"]["good_quantity"] == 0
    # ERPNext refuses a Manufacture row of quantity 0: none was sent
    entries = await erp_docs(erp_sim, "Stock Entry", wo_number)
    assert [e for e in entries if e.get("stock_entry_type") == "Manufacture"] == [], entries
    note = done["status"]["erp_documents"][f"{wo_number}-MFG"]
    assert note.startswith("not sent: no good unit was made")
    completed = await audit_changes(sessionmaker, wo_number, "work_order.completed")
    assert completed[-1]["erp"][f"{wo_number}-MFG"] == note
    # the consumption is its own document (sent, or refused with the ERP's reason)
    assert completed[-1]["erp"][f"{wo_number}-CONS"] == done["status"]["erp_documents"][f"{wo_number}-CONS"]
    await record_history(client, f"work-order-{wo_number}", "work_order_scrapped_no_manufacture_entry")


async def test_the_erp_refusing_the_delivery_note_waits_for_an_admin_retry(
        api: httpx.AsyncClient, client: Client, erp_sim: ErpSim, sessionmaker, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number, with_shipment=False))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    await wait_status(api, wo_number, lambda s: any(w.startswith("ERP: shipment request") for w in s["waiting_for"]),
                      what="the shipment request")
    # nothing waits on a refusal yet: a retry is refused
    r = await api.post(f"/api/work-orders/{wo_number}/retry", json={})
    assert r.status_code == 409 and "nothing to retry" in r.json()["detail"], r.text
    # the ERP refuses the next document (HTTP 417, as ERPNext answers a ValidationError)
    async with httpx.AsyncClient() as sim:
        (await sim.post(f"{erp_sim.url}/sim/faults", json={"status": 417, "count": 1})).raise_for_status()
    shipment = {"shipment": f"DN-{wo_number}", "sales_order": f"SO-{wo_number}", "customer": "Customer A"}
    assert (await api.post(f"/api/work-orders/{wo_number}/shipment", json=shipment)).status_code == 202
    st = await wait_status(api, wo_number, lambda s: bool(s["needs_retry"]), what="the refused delivery note")
    status = st["status"]
    assert st["workflow"] == "RUNNING" and status["result"] is None
    assert "Delivery Note DN-" in status["needs_retry"][0] and "417" in status["needs_retry"][0]
    assert status["last_error"] == status["needs_retry"][0]
    assert any(w.startswith("admin: the ERP refused Delivery Note") and f"/api/work-orders/{wo_number}/retry" in w
               for w in status["waiting_for"]), status["waiting_for"]
    assert status["erp_documents"][f"DN-{wo_number}"].startswith("refused: ")
    assert await erp_docs(erp_sim, "Delivery Note", wo_number) == []
    # admins only
    r = await api.post(f"/api/work-orders/{wo_number}/retry", json={}, headers=role_headers("operator"))
    assert r.status_code == 403, r.text
    r = await api.post(f"/api/work-orders/{wo_number}/retry", json={"reason": "customer master fixed"})
    assert r.status_code == 200, r.text
    assert "Delivery Note" in r.json()["retried"][0]
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed" and done["status"]["last_error"] is None
    assert done["status"]["erp_documents"][f"DN-{wo_number}"] == "sent"
    assert len(await erp_docs(erp_sim, "Delivery Note", wo_number)) == 1
    async with sessionmaker() as s:
        wo = (await s.execute(select(WorkOrder).where(WorkOrder.number == wo_number))).scalar_one()
        assert (await s.execute(select(func.count()).select_from(Shipment)
                                .where(Shipment.work_order_id == wo.id))).scalar_one() == 1
        row = (await s.execute(select(AuditLog).where(AuditLog.entity_key == wo_number,
                                                      AuditLog.action == "work_order.retry"))).scalar_one()
        assert row.changes["reason"] == "customer master fixed" and "Delivery Note" in row.changes["retried"][0]
    assert len(await audit_changes(sessionmaker, f"DN-{wo_number}", "shipment.shipped")) == 1
    await record_history(client, f"work-order-{wo_number}", "work_order_erp_refused_admin_retry")


async def test_a_recall_holding_the_lot_holds_the_shipment_until_its_reviewer_releases_it(
        api: httpx.AsyncClient, client: Client, sessionmaker, wo_number):
    ev = fast_release(wo_number)
    ev["work_order"]["timing"]["shipment_gate_recheck"] = 1
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="the output lot made")
    lot, recall = f"{wo_number}-L1", f"RC-{wo_number}"
    r = await api.post("/api/recalls", json={"number": recall, "suspect_kind": "lot", "suspect": lot,
                                             "reason": "suspect turning", "requested_by": "qm-1"})
    assert r.status_code == 202, r.text
    for _ in range(300):
        rec = (await api.get(f"/api/recalls/{recall}")).json()
        if (rec.get("status") or {}).get("stage") == "notifying":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"recall {recall} never held its scope: {rec}")
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    st = await wait_status(api, wo_number, lambda s: any(f"recall {recall}" in g for g in s["shipment_gate"]),
                           what="the gate held by the recall")
    await asyncio.sleep(2.5)  # a few rechecks: still held, still running
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()
    assert st["workflow"] == "RUNNING" and st["status"]["result"] is None and st["status"]["shipment"] is None
    assert any(f"recall {recall} holds the lot" in w for w in st["status"]["waiting_for"])
    r = await api.post(f"/api/recalls/{recall}/decisions", headers=role_headers("quality_manager"),
                       json={"lot": lot, "decision": "release", "reason": "measured: fine", "password": PASSWORD})
    assert r.status_code == 200, r.text
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed" and done["status"]["shipment"] == f"DN-{wo_number}"
    await record_history(client, f"work-order-{wo_number}", "work_order_ship_held_by_recall")


# --- G3: refused ids ---------------------------------------------------------------------------------------


async def test_a_refused_operation_report_can_be_resent_corrected_with_the_same_id(
        api: httpx.AsyncClient, client: Client, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="operation 10")
    # what the API let through but the record refuses (as when a lot is recalled between the two): a lot that
    # does not exist, delivered straight to the workflow
    bad = operation_report(wo_number, 10, [{"lot": f"{wo_number}-NOPE", "quantity": 10.0}])
    await client.get_workflow_handle(f"work-order-{wo_number}").signal(
        WorkOrderWorkflow.report_operation, OperationReport.model_validate(bad))
    st = await wait_status(api, wo_number, lambda s: bool(s["last_error"]), what="the refused report")
    assert f"operation report {wo_number}-op10 refused" in st["status"]["last_error"]
    assert st["status"]["expected_operation"] == 10
    # the corrected report, same report id: recorded
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    st = await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, timeout=15,
                           what="the corrected report recorded")
    assert st["status"]["last_error"] is None
    await record_history(client, f"work-order-{wo_number}", "work_order_refused_report_resent")


async def test_a_refused_purchase_receipt_can_be_resent_corrected_with_the_same_receipt_id(
        api: httpx.AsyncClient, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")
    receipt = {"receipt": f"PR2-{wo_number}", "lots": [{
        "lot": f"{wo_number}-M1",  # already received on PR-<n>: refused
        "supplier": "ACME-STEEL", "item": "BAR-42CRMO4", "supplier_lot": "S2", "quantity": 5.0, "uom": "KG"}]}
    ev = {"event_id": f"erp-pr2-{wo_number}", "event_type": "purchase_receipt.posted", "work_order": wo_number,
          "receipt": receipt}
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    st = await wait_status(api, wo_number, lambda s: bool(s["last_error"]), what="the refused receipt")
    assert f"purchase receipt PR2-{wo_number} refused" in st["status"]["last_error"]
    receipt["lots"][0]["lot"] = f"{wo_number}-M2"
    r = await api.post("/api/erp/events", json={**ev, "event_id": ev["event_id"] + "-corrected"})
    assert r.status_code == 202, r.text
    await wait_status(api, wo_number, lambda s: any(p["number"] == f"IQC-{wo_number}-M2"
                                                    for p in s["pending_inspections"]),
                      timeout=15, what="the corrected receipt's IQC")
