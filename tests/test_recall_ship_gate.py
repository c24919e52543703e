"""A recall's release reaches the work orders waiting to ship the lot, and the recall's close report says closed.

- A work order held at its shipment gate by a recall ships within seconds of the reviewer's release (the recall's
  decision signals it), with the gate's recheck timer left at its default of minutes.
- The close report (stored, and as GET /api/recalls/{n} answers it) says `closed`, with the record's closing time;
  a release whose lot's work order has no running workflow any more is not refused for it.
- The ship step refusing after the gate passed (wo-ship-recall-gate-v1; PostgreSQL, a recall's hold landing between
  the gate check and the ship activity, for real): the work order waits, its status naming the refusal, and ships
  exactly once as soon as the reviewer releases the lot (wo-ship-refused-wake-v1).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from temporalio.client import Client

from activities.models import Timing
from domain import recall
from domain.models import AuditLog, Lot, Shipment, WorkOrder
from tests.conftest import ErpSim
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    PASSWORD,
    fast_release,
    post_results,
    remember_batches,
    report_operation,
    role_headers,
    wait_done,
    wait_status,
)
from tests.test_lifecycle import record_history
from tests.test_recall import wait_recall
from tests.test_recall_gaps import POSTGRES
from tests.test_recall_reack import _wait_for_a_lot_lock_wait
from tests.test_trace_plant import build_plant, lot_status
from tests.test_work_order_refusals import erp_docs

pytestmark = pytest.mark.asyncio

# the gate's recheck is left at its default in these tests: only the recall's signal can release it in time
RECHECK = Timing().shipment_gate_recheck.total_seconds()
PROMPT = 20.0  # seconds: well under the recheck


async def _release(api: httpx.AsyncClient, number: str, lot: str, reason: str = "measured: fine") -> dict[str, Any]:
    r = await api.post(f"/api/recalls/{number}/decisions", headers=role_headers("quality_manager"),
                       json={"lot": lot, "decision": "release", "reason": reason, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


async def _recall_lot(api: httpx.AsyncClient, number: str, lot: str) -> None:
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "lot", "suspect": lot,
                                             "reason": "suspect turning", "requested_by": "qm-1"})
    assert r.status_code == 202, r.text


async def _waiting_for_shipment_request(api: httpx.AsyncClient, wo_number: str) -> str:
    """Release the work order (no shipment in the release) and run it to its shipment stage: the lot made, passed,
    in the ERP (its Manufacture entry: a recall's ERP block needs the batch there), waiting for the shipment
    request, the gate not checked yet. The output lot."""
    ev = fast_release(wo_number, with_shipment=False)
    assert "shipment_gate_recheck" not in ev["work_order"]["timing"] and RECHECK >= 60
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    st = await wait_status(api, wo_number, lambda s: any(w.startswith("ERP: shipment request")
                                                         for w in s["waiting_for"]), what="the shipment request")
    assert st["status"]["erp_documents"][f"{wo_number}-MFG"] == "sent"
    return f"{wo_number}-L1"


async def _request_shipment(api: httpx.AsyncClient, wo_number: str) -> None:
    shipment = {"shipment": f"DN-{wo_number}", "sales_order": f"SO-{wo_number}", "customer": "Customer A"}
    r = await api.post(f"/api/work-orders/{wo_number}/shipment", json=shipment)
    assert r.status_code == 202, r.text


async def _shipped_once(api: httpx.AsyncClient, erp_sim: ErpSim, sessionmaker, wo_number: str) -> None:
    async with sessionmaker() as s:
        wo = (await s.execute(select(WorkOrder).where(WorkOrder.number == wo_number))).scalar_one()
        assert (await s.execute(select(func.count()).select_from(Shipment)
                                .where(Shipment.work_order_id == wo.id))).scalar_one() == 1
        assert (await s.execute(select(func.count()).select_from(AuditLog).where(
            AuditLog.action == "shipment.shipped", AuditLog.entity_key == f"DN-{wo_number}"))).scalar_one() == 1
    assert len(await erp_docs(erp_sim, "Delivery Note", wo_number)) == 1


async def test_a_recall_release_wakes_the_work_order_held_at_its_shipment_gate(
        api: httpx.AsyncClient, client: Client, erp_sim: ErpSim, sessionmaker, wo_number):
    """The shipment request comes with the release; the recall holds the lot while it is made (the API refuses a
    shipment request for a lot a recall holds, so the gate is where the two meet)."""
    ev = fast_release(wo_number)
    assert "shipment_gate_recheck" not in ev["work_order"]["timing"] and RECHECK >= 60
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="the output lot made")
    lot, number = f"{wo_number}-L1", f"RC-G-{wo_number}"
    remember_batches({lot: ev["work_order"]["item"]})  # the ERP has the batch the recall blocks
    await _recall_lot(api, number, lot)
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "the hold")
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    st = await wait_status(api, wo_number, lambda s: any(f"recall {number}" in g for g in s["shipment_gate"]),
                           what="the gate held by the recall")
    assert st["status"]["shipment"] is None and st["status"]["result"] is None
    assert any(f"recall {number} holds the lot" in w for w in st["status"]["waiting_for"])

    released = time.monotonic()
    await _release(api, number, lot)
    done = await wait_done(api, wo_number, timeout=PROMPT)
    assert time.monotonic() - released < min(PROMPT, RECHECK)
    assert done["status"]["result"] == "completed" and done["status"]["shipment"] == f"DN-{wo_number}"
    assert done["status"]["shipment_gate"] == [] and done["status"]["needs_retry"] == []
    await _shipped_once(api, erp_sim, sessionmaker, wo_number)
    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "the close")
    assert rec["report"]["status"] == "closed" and rec["report"]["closed_at"]
    await record_history(client, f"work-order-{wo_number}", "work_order_gate_woken_by_recall_release")


async def test_the_close_report_says_the_recall_is_closed_with_its_closing_time(
        api: httpx.AsyncClient, erp_sim: ErpSim, sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    a1, b1 = plant.lots["A1"], plant.lots["B1"]
    number = f"RC-CR-{plant.tag}"
    # B1's work order waits to ship it, but its workflow is gone: signalling it must not refuse the release
    async with sessionmaker() as s, s.begin():
        await s.execute(update(WorkOrder).where(WorkOrder.number == f"WOB-{plant.tag}").values(stage="shipment"))
    await _recall_lot(api, number, a1)
    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "the hold")
    assert sorted(rec["status"]["held"]) == sorted([a1, b1]) and rec["status"]["customers"] == []
    assert rec["report"] is None
    for lot in (a1, b1):
        await _release(api, number, lot, "re-tested: fine")
        assert await lot_status(sessionmaker, lot) == "released"

    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "the close")
    listed = next(x for x in (await api.get("/api/recalls")).json() if x["number"] == number)
    report = rec["report"]
    assert report["status"] == "closed" and rec["record"]["status"] == "closed"
    assert report["closed_at"] is not None and report["closed_at"] == listed["closed_at"]
    assert report["held"] == sorted([a1, b1])
    async with sessionmaker() as s:
        row = await recall.get_recall(s, number)
        assert row.report["status"] == "closed" and row.report["closed_at"] == row.closed_at.isoformat()

    # a report stored before this fix (built while the recall was still open) answers closed too
    async with sessionmaker() as s, s.begin():
        row = await recall.get_recall(s, number)
        row.report = {**row.report, "status": "open", "closed_at": "2000-01-01T00:00:00+00:00"}
    rec = (await api.get(f"/api/recalls/{number}")).json()
    assert rec["report"]["status"] == "closed" and rec["report"]["closed_at"] == listed["closed_at"]
    assert rec["report"]["held"] == sorted([a1, b1])


async def test_a_shipment_refused_after_the_gate_passed_waits_and_ships_once_on_the_recall_release(
        api: httpx.AsyncClient, client: Client, erp_sim: ErpSim, sessionmaker, wo_number):
    """The race for real: the gate finds nothing holding the lot; the ship activity then waits for the lot's row
    lock (held here), and a recall of the lot records its scope meanwhile. When the lock goes, the ship activity
    finds the recall holding the lot and is refused: the work order waits (wo-ship-recall-gate-v1) until the
    reviewer's release wakes it, and ships once."""
    if not POSTGRES:
        pytest.skip("SQLite serialises every transaction at BEGIN IMMEDIATE: the gate's check and the ship activity "
                    "cannot be parted by a lock there; test_a_recall_release_wakes_the_work_order_held_at_its_"
                    "shipment_gate covers the recall's release on both databases")
    lot = await _waiting_for_shipment_request(api, wo_number)
    number = f"RC-S-{wo_number}"

    block = sessionmaker()
    await block.begin()
    try:
        # FOR NO KEY UPDATE: the ship activity's FOR UPDATE waits for it; the recall's scope (its rows' foreign keys
        # take FOR KEY SHARE) does not
        await block.execute(select(Lot.id).where(Lot.number == lot).with_for_update(key_share=True))
        await _request_shipment(api, wo_number)
        # the gate passed and the ship activity started (the status says so) and waits for the lot's row lock (its
        # statement, not any other transaction of the session's workflows waiting for a row of theirs)
        st = (await wait_status(api, wo_number, lambda s: "database: recording the shipment" in s["waiting_for"],
                                what="the ship activity"))["status"]
        assert st["shipment_gate"] == [], st
        await _wait_for_a_lot_lock_wait(sessionmaker)
        await _recall_lot(api, number, lot)
        await wait_recall(api, number, lambda x: x.get("record") is not None
                          and any(x_["lot"] == lot and x_["action"] == "held" for x_ in x["record"]["lots"]),
                          "the recall's scope")
    finally:
        await block.rollback()
        await block.close()

    st = await wait_status(api, wo_number, lambda s: bool(s["needs_retry"]), what="the refused shipment")
    status = st["status"]
    assert st["workflow"] == "RUNNING" and status["result"] is None and status["shipment"] is None
    (refused,) = status["needs_retry"]
    assert refused.startswith(f"shipment DN-{wo_number} of lot {lot} refused") and f"recall {number}" in refused
    assert status["last_error"] == refused
    assert any(w.startswith(f"admin: shipment DN-{wo_number} of lot {lot} refused") and "recall's release" in w
               for w in status["waiting_for"]), status["waiting_for"]
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "the hold")
    assert await lot_status(sessionmaker, lot) == "on_hold"
    async with sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(Shipment)
                                .where(Shipment.number == f"DN-{wo_number}"))).scalar_one() == 0
    assert await erp_docs(erp_sim, "Delivery Note", wo_number) == []
    await asyncio.sleep(1.0)  # still waiting: nothing holds it less
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()
    assert st["status"]["needs_retry"] == [refused] and st["status"]["shipment"] is None

    released = time.monotonic()
    await _release(api, number, lot)
    done = await wait_done(api, wo_number, timeout=PROMPT)
    assert time.monotonic() - released < min(PROMPT, RECHECK)
    assert done["status"]["result"] == "completed" and done["status"]["shipment"] == f"DN-{wo_number}"
    assert done["status"]["needs_retry"] == [] and done["status"]["last_error"] is None
    assert done["status"]["erp_documents"][f"DN-{wo_number}"] == "sent"
    await _shipped_once(api, erp_sim, sessionmaker, wo_number)
    await record_history(client, f"work-order-{wo_number}", "work_order_ship_refused_woken_by_recall_release")
