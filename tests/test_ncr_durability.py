"""No lost NCRs, no five-minute waits: a duplicate code's NCR starts even when the API died after the upload's
commit (the worker's sweeper); a reworked NCR verifies as soon as its re-inspection is recorded, and a held
shipment leaves as soon as the NCR of a consumed lot stops holding it (signals; the polls stay as fallbacks).
Real database, Temporal, worker and API."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from activities.models import NcrAction, NonconformanceInput, Timing
from activities.ncr_sweeper import NcrSweeper, start_duplicate_ncrs
from domain import code_pools, codes
from domain.models import AuditLog, Lot, Ncr
from domain.models_codes import CodeAlert
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    decide,
    post_results,
    report_operation,
    run_production,
    wait_done,
    wait_status,
)
from tests.test_codes import make_item, make_lot
from tests.test_inspection_triggers import release, replays, uid
from tests.test_ncr_review import final_ncr, wait_ncr_state

pytestmark = pytest.mark.asyncio


async def wait_for(pred, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await pred()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def runs_of(client, workflow_id: str) -> int:
    return len([w async for w in client.list_workflows(f'WorkflowId = "{workflow_id}"')])


async def test_a_duplicate_ncr_not_started_by_the_api_is_started_once_by_the_sweeper(client, settings, sessionmaker,
                                                                                     worker):
    item, _ = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    t = datetime.now(UTC) - timedelta(hours=1)
    # the upload route up to its commit, and then the process dies: the NCR is named, its workflow not started
    async with sessionmaker() as s, s.begin():
        pool = await code_pools.allocate_pool(s, number=number, item=item, level="unit", count=10, line="LINE-9",
                                              printer=None, actor="tests")
        view = await codes.block_view(s, pool.block_id)
        code = view.code(2, settings.resolver_base_url).digital_link
        used = [{"code": view.code(i, settings.resolver_base_url).digital_link, "used_at": t + timedelta(seconds=i),
                 "lot": lot} for i in range(5)]
        used.append({"code": code, "used_at": t + timedelta(minutes=1), "lot": lot})
        out = await code_pools.upload(s, number=number, upload_id=f"{number}-u1", used=used,
                                      resolver=settings.resolver_base_url)
    dup = next(a for a in out["alerts"] if a["kind"] == "duplicate")
    ncr = dup["ncr"]
    assert ncr == f"NCR-DUP-{dup['id']}" and dup["ncr_started_at"] is None
    async with sessionmaker() as s:
        assert (await s.execute(select(Lot.status).where(Lot.number == lot))).scalar_one() == "released"

    sweeper = NcrSweeper(sessionmaker, client, task_queue=settings.temporal.task_queue,
                         ncr_table=settings.ncr.table())
    # younger than the sweeper's minimum age: the upload route's to start, left alone
    assert ncr not in await sweeper.sweep()
    assert await runs_of(client, f"ncr-{ncr}") == 0

    assert ncr in await sweeper.sweep(min_age_s=0)
    desc = await client.get_workflow_handle(f"ncr-{ncr}").describe()
    assert desc.workflow_type == "NonconformanceWorkflow"

    async def held():
        async with sessionmaker() as s:
            status = (await s.execute(select(Lot.status).where(Lot.number == lot))).scalar_one()
            row = (await s.execute(select(Ncr).where(Ncr.number == ncr))).scalar()
            return status == "on_hold" and row is not None and row.state == "open" and row
    row = await wait_for(held, f"{ncr} recorded and {lot} on hold")
    assert "used twice" in row.description
    async with sessionmaker() as s:
        alert = await s.get(CodeAlert, dup["id"])
        assert alert is not None and alert.ncr_started_at is not None
        marks = (await s.execute(select(AuditLog).where(AuditLog.entity == "code_alert",
                                                        AuditLog.entity_key == str(dup["id"])))).scalars().all()
    assert [(a.action, a.actor) for a in marks] == [("code_alert.ncr_started", "system:ncr-sweeper")]
    assert marks[0].changes["before"] == {"ncr_started_at": None} and marks[0].changes["ncr"] == ncr

    # again: nothing to do, nothing doubles
    assert ncr not in await sweeper.sweep(min_age_s=0)
    # the mark lost (say the marking transaction failed): the NCR is recorded, so it is only marked again
    async with sessionmaker() as s, s.begin():
        await s.execute(update(CodeAlert).where(CodeAlert.id == dup["id"]).values(ncr_started_at=None))
    assert ncr in await sweeper.sweep(min_age_s=0)
    # a start for a workflow that exists counts as started, and starts nothing
    async with sessionmaker() as s:
        d = await code_pools.duplicate_ncrs(s, [dup["id"]])
    assert await start_duplicate_ncrs(client, d, timing=Timing(), task_queue=settings.temporal.task_queue) \
        == [dup["id"]]
    assert await runs_of(client, f"ncr-{ncr}") == 1
    async with sessionmaker() as s:
        assert len((await s.execute(select(Ncr).where(Ncr.lot_id == row.lot_id))).scalars().all()) == 1


async def test_the_upload_route_marks_the_ncrs_it_started(api: httpx.AsyncClient, client, settings, sessionmaker):
    item, _ = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/codes/pools", json={"number": number, "item": item, "count": 10, "line": "LINE-8"})
    assert r.status_code == 201, r.text
    block = r.json()["block"]["id"]
    code = (await api.get(f"/api/codes/blocks/{block}/codes/1")).json()["digital_link"]
    t = datetime.now(UTC) - timedelta(hours=1)
    used = [{"code": code, "used_at": t.isoformat(), "lot": lot},
            {"code": code, "used_at": (t + timedelta(minutes=1)).isoformat(), "lot": lot}]
    r = await api.post(f"/api/codes/pools/{number}/uploads", json={"upload_id": f"{number}-u1", "used": used})
    assert r.status_code == 200, r.text
    dup = next(a for a in r.json()["alerts"] if a["kind"] == "duplicate")
    alert = next(a for a in (await api.get("/api/codes/alerts", params={"kind": "duplicate"})).json()
                 if a["id"] == dup["id"])
    assert alert["ncr"] == dup["ncr"] and alert["ncr_started_at"] is not None
    assert (await client.get_workflow_handle(f"ncr-{dup['ncr']}").describe()).workflow_type == \
        "NonconformanceWorkflow"
    async with sessionmaker() as s:
        marks = (await s.execute(select(AuditLog).where(AuditLog.entity == "code_alert",
                                                        AuditLog.entity_key == str(dup["id"])))).scalars().all()
    assert [(a.action, a.actor) for a in marks] == [("code_alert.ncr_started", "test-suite")]
    # the sweeper has nothing to do for it, and the same upload again marks nothing twice
    sweeper = NcrSweeper(sessionmaker, client, task_queue=settings.temporal.task_queue,
                         ncr_table=settings.ncr.table())
    assert dup["ncr"] not in await sweeper.sweep(min_age_s=0)
    r = await api.post(f"/api/codes/pools/{number}/uploads", json={"upload_id": f"{number}-u1", "used": used})
    assert r.status_code == 200 and r.json()["duplicate_upload"] is True
    async with sessionmaker() as s:
        assert len((await s.execute(select(AuditLog).where(
            AuditLog.entity == "code_alert", AuditLog.entity_key == str(dup["id"])))).scalars().all()) == 1
    assert await runs_of(client, f"ncr-{dup['ncr']}") == 1


# --- signals instead of polls --------------------------------------------------------------------------------

async def test_a_rework_is_verified_within_seconds_of_its_reinspection(api: httpx.AsyncClient, client, wo_number):
    # the poll set to ten minutes: only the signal of the recorded re-inspection can close the NCR in time
    ncr = await final_ncr(api, wo_number, ncr_reinspection_poll=600)
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    r = await decide(api, ncr, "rework", "mrb_production", reason="regrind", rework_operation=10)
    assert r.status_code == 200 and r.json()["state"] == "verification", r.text
    await report_operation(api, wo_number, 10, [], report_id=f"{wo_number}-rework1", good=20)
    assert (await api.get(f"/api/ncrs/{ncr}")).json()["verification"] is None
    second = await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    assert second["verdict"] == "passed"
    t0 = time.monotonic()
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] == "closed", "closing by the re-inspection", timeout=15)
    assert time.monotonic() - t0 < 15
    assert n["verification"]["result"] == "verified"
    assert n["verification"]["note"] == f"re-inspection FIN-{wo_number}-2 passed"
    await client.get_workflow_handle(f"ncr-{ncr}").result()
    await replays(client, f"ncr-{ncr}")
    await wait_done(api, wo_number)


async def test_a_held_shipment_leaves_within_seconds_of_the_consumed_lots_ncr_dismissal(api: httpx.AsyncClient,
                                                                                       client, settings, wo_number):
    ev = release(wo_number, f"GATE-{uid()}", f"MAT-{uid()}")
    ev["work_order"]["timing"]["shipment_gate_recheck"] = 600  # only the NCR's signal can release it in time
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)  # operation 10 consumes the material lot M1 into L1
    # a field complaint on the material, reviewed by its own NCR workflow (no work order of its own)
    ncr = f"NCR-FIELD-{wo_number}"
    await client.start_workflow(
        "NonconformanceWorkflow",
        NonconformanceInput(ncr=ncr, work_order="", lot=f"{wo_number}-M1", inspection="", stage="field",
                            description="customer complaint: cracks",
                            timing=Timing(ncr_reminder_after=timedelta(hours=1), ncr_escalate_after=timedelta(hours=2))),
        id=f"ncr-{ncr}", task_queue=settings.temporal.task_queue)
    await wait_ncr_state(api, ncr, lambda n: n.get("state") == "open", "the complaint's NCR")
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    st = (await wait_status(api, wo_number, lambda s: bool(s["shipment_gate"]), what="the held shipment"))["status"]
    assert any(ncr in p and f"consumed lot {wo_number}-M1" in p for p in st["shipment_gate"]), st
    await asyncio.sleep(1.5)  # past the first check: the shipment now waits on its (ten-minute) timer
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
    assert st["result"] is None and st["shipment"] is None and st["shipment_gate"]

    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="not our material")).status_code == 200
    t0 = time.monotonic()
    done = await wait_done(api, wo_number, timeout=15)
    assert time.monotonic() - t0 < 15
    assert done["status"]["shipment"] == f"DN-{wo_number}" and done["status"]["shipment_gate"] == []
    assert (await client.get_workflow_handle(f"ncr-{ncr}").result())["outcome"] == NcrAction.dismiss.value
    await replays(client, f"work-order-{wo_number}")
    await replays(client, f"ncr-{ncr}")
