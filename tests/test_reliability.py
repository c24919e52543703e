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
    report_operation,
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
    queue = f"kill-test-{uuid.uuid4().hex[:6]}"
    settings = Settings(database=DatabaseSettings(url=db_url),
                        temporal=TemporalSettings(address=client.service_client.config.target_host,
                                                  task_queue=queue))
    env = {**os.environ, "HUB_DATABASE__URL": db_url, "HUB_TEMPORAL__ADDRESS": settings.temporal.address,
           "HUB_TEMPORAL__TASK_QUEUE": queue}

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    app = create_app(settings, sessionmaker=sessionmaker, temporal=client)
    proc = start_worker()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=SUPER_HEADERS) as api:
            assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
            await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
            await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
            # kill -9 right after the report is delivered: the activity recording it may be in flight
            await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
            await report_operation(api, wo_number, 20, [])
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # facts keep arriving while no worker runs: the API records nothing it cannot deliver
            proc = start_worker()
            await post_results(api, wo_number, "final", IN_SPEC_FINAL)
            done = await wait_done(api, wo_number, timeout=90)
            assert done["status"]["result"] == "completed"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

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
    assert len(erp_sim.keyed("Delivery Note", f"DN-{wo_number}")) == 1
