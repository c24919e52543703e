"""Faults: duplicate ERP events, an ERP outage, and a worker killed in the middle of a work order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import Client

from api.main import create_app
from core.settings import DatabaseSettings, Settings, TemporalSettings
from domain.models import AuditLog, EpcisEvent, Inspection, LotEdge, OperationRecord, Shipment, WorkOrder
from tests.conftest import ROOT
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    SUPER_HEADERS,
    fast_release,
    post_results,
    run_production,
    wait_done,
    wait_status,
)

pytestmark = pytest.mark.asyncio


async def test_ten_concurrent_duplicate_events_start_one_workflow(api: httpx.AsyncClient, client: Client,
                                                                  sessionmaker, wo_number):
    ev = fast_release(wo_number)
    responses = await asyncio.gather(*(api.post("/api/erp/events", json=ev) for _ in range(10)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 9 + [202], [r.text for r in responses]
    dup = next(r.json() for r in responses if r.status_code == 200)
    assert dup["duplicate"] is True and "already accepted" in dup["message"]
    # a different event id for the same work order is refused too
    again = {**ev, "event_id": ev["event_id"] + "-resent"}
    r = await api.post("/api/erp/events", json=again)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    runs = [w async for w in client.list_workflows(f"WorkflowId = 'work-order-{wo_number}'")]
    assert len(runs) == 1
    await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")
    async with sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(WorkOrder)
                                .where(WorkOrder.number == wo_number))).scalar_one() == 1


async def test_erp_outage_makes_the_work_order_wait_and_retry(api: httpx.AsyncClient, erp_sim, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    erp_sim.stop()
    try:
        await post_results(api, wo_number, "final", IN_SPEC_FINAL)
        st = await wait_status(
            api, wo_number,
            lambda s: any(w.startswith("retry: notify_erp attempt") and "unreachable" in w for w in s["waiting_for"]),
            timeout=30, what="the status to say the ERP call is being retried")
        # the first ERP call of the completion: the material consumption (then the Manufacture entry)
        assert any(w.startswith(("ERP: material consumption of the work order", "ERP: completion of the work order"))
                   for w in st["status"]["waiting_for"]), st["status"]["waiting_for"]
        assert st["status"]["result"] is None
    finally:
        erp_sim.start()
    done = await wait_done(api, wo_number, timeout=60)
    assert done["status"]["result"] == "completed"
    assert f"DN-{wo_number}" in erp_sim.documents("Delivery Note")


@pytest.mark.timeout(180)
async def test_worker_killed_mid_work_order_completes_exactly_once(db_url, client: Client, sessionmaker, erp_sim,
                                                                   seeded, wo_number):
    """kill -9 the worker inside an activity whose write has happened: the ERP has stored the work order's
    Manufacture entry and holds its answer (erp_sim /sim/hold) when the worker dies. Temporal retries the
    activity on a new worker after its start-to-close timeout (ERP_TIMEOUT, 30 s), the retry finds the entry
    by the hub's key, and the work order completes with every record and ERP document once."""
    queue = f"kill-test-{uuid.uuid4().hex[:6]}"
    settings = Settings(database=DatabaseSettings(url=db_url),
                        temporal=TemporalSettings(address=client.service_client.config.target_host,
                                                  task_queue=queue))
    env = {**os.environ, "HUB_DATABASE__URL": db_url, "HUB_TEMPORAL__ADDRESS": settings.temporal.address,
           "HUB_TEMPORAL__TASK_QUEUE": queue}

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    mfg = f"{wo_number}-MFG"
    app = create_app(settings, sessionmaker=sessionmaker, temporal=client)
    erp_sim.hold("Stock Entry", mfg)
    proc = start_worker()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=SUPER_HEADERS) as api:
            assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
            await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
            await run_production(api, wo_number)
            await post_results(api, wo_number, "final", IN_SPEC_FINAL)
            # the worker's notify_erp has posted the Manufacture entry: the ERP stored it and holds the answer
            deadline = asyncio.get_running_loop().time() + 60
            while not any(h["key"] == mfg for h in erp_sim.held()):
                assert asyncio.get_running_loop().time() < deadline, f"the ERP never received {mfg}"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert len(erp_sim.keyed("Stock Entry", mfg)) == 1  # the write the killed activity made
            history = (await api.get(f"/api/work-orders/{wo_number}/history")).json()
            # the kill hit the activity in flight: its first attempt was still running (the connector's own
            # 5 s timeout had not ended it)
            assert [(p["activity"], p["attempt"], p["state"]) for p in history["pending"]] == \
                [("notify_erp", 1, "started")], history["pending"]
            erp_sim.release()  # the held answer goes to a connection nobody reads
            proc = start_worker()
            done = await wait_done(api, wo_number, timeout=90)
            assert done["status"]["result"] == "completed"
            events = (await api.get(f"/api/work-orders/{wo_number}/history")).json()["events"]
    finally:
        erp_sim.release()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    # the ERP pushes of the completion (material consumption, Manufacture entry, delivery note): only the
    # killed one was tried twice, each was recorded once
    attempts = [e["attempt"] for e in events if e.get("activity") == "notify_erp" and "attempt" in e]
    assert attempts == [1, 2, 1], attempts
    assert next(e for e in events if e.get("activity") == "notify_erp" and e.get("attempt") == 2) \
        .get("last_failure", "").startswith("activity StartToClose timeout"), events
    for doctype, key in (("Stock Entry", f"{wo_number}-CONS"), ("Stock Entry", mfg),
                         ("Delivery Note", f"DN-{wo_number}")):
        assert len(erp_sim.keyed(doctype, key)) == 1, (doctype, key)

    async with sessionmaker() as s:
        wo = (await s.execute(select(WorkOrder).where(WorkOrder.number == wo_number))).scalar_one()

        async def count(model, *where) -> int:
            return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()

        assert await count(OperationRecord, OperationRecord.work_order_id == wo.id) == 2
        assert await count(LotEdge, LotEdge.child_lot_id.in_(
            select(OperationRecord.output_lot_id).where(OperationRecord.work_order_id == wo.id))) == 1
        assert await count(Inspection, Inspection.work_order_id == wo.id) == 2
        assert await count(Shipment, Shipment.work_order_id == wo.id) == 1
        assert await count(EpcisEvent, EpcisEvent.work_order_id == wo.id) == 7  # receive, 2 inspect, 2 ops, commission, ship
        assert await count(AuditLog, AuditLog.entity_key == wo_number,
                           AuditLog.action == "operation.recorded") == 2
