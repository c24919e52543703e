"""The ERP around the work order: signed webhooks, an ERP answering 503 for a while, and polling by a
Temporal Schedule for an ERP without webhooks (no duplicates across polls)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from connectors.erpnext import verify_webhook
from domain.models import ErpEvent
from erp_sim.app import release_event, sign
from tests.conftest import ErpSim
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    delete_schedule_and_runs,
    fast_release,
    post_results,
    run_production,
    wait_done,
    wait_status,
)
from workflows.erp_poll import ensure_poll_schedule

AUTH = {"Authorization": "token tracehub:simulator-secret"}


async def make_endpoint(api: httpx.AsyncClient, url: str, **extra: object) -> str:
    name = f"erp-{uuid.uuid4().hex[:6]}"
    cfg = {"base_url": url, "api_key": "tracehub", "api_secret": "simulator-secret", "timeout_s": 5, **extra}
    r = await api.post("/api/endpoints", json={"name": name, "kind": "erpnext", "config": cfg})
    assert r.status_code == 201, r.text
    return name


# --- webhooks ---------------------------------------------------------------------------------------------

async def test_signed_webhooks_are_verified_and_bad_ones_refused_unread(api: httpx.AsyncClient, client, erp_sim,
                                                                       sessionmaker, wo_number,
                                                                       caplog: pytest.LogCaptureFixture):
    ep = await make_endpoint(api, erp_sim.url, webhook_secret="hook-secret-1")
    body = json.dumps(fast_release(wo_number)).encode()
    url = f"/api/erp/events?endpoint={ep}"
    headers = {"Content-Type": "application/json"}
    with caplog.at_level(logging.WARNING, logger="tracehub.erp.webhook"):
        missing = await api.post(url, content=body, headers=headers)
        forged = await api.post(url, content=body, headers={**headers,
                                                           "X-Frappe-Webhook-Signature": sign("guessed", body)})
        tampered = await api.post(url, content=body.replace(b'"quantity": 20', b'"quantity": 9999'),
                                  headers={**headers, "X-Frappe-Webhook-Signature": sign("hook-secret-1", body)})
    for r in (missing, forged, tampered):
        assert r.status_code == 401, r.text
        assert "X-Frappe-Webhook-Signature" in r.json()["detail"]
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "tracehub.erp.webhook"]
    assert len(logged) == 3 and "missing" in logged[0] and "bad" in logged[1] and ep in logged[0]
    # refused unread: nothing in the inbox, no workflow
    async with sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(ErpEvent)
                                .where(ErpEvent.business_key == wo_number))).scalar_one() == 0
    assert [w async for w in client.list_workflows(f"WorkflowId = 'work-order-{wo_number}'")] == []

    # as an ERP sends it: signed, with no API token; the audit trail names the endpoint whose secret signed it
    async with httpx.AsyncClient(transport=api._transport, base_url="http://hub") as erp:  # type: ignore[attr-defined]
        ok = await erp.post(url, content=body, headers={**headers, "X-Frappe-Webhook-Signature": sign("hook-secret-1",
                                                                                                       body)})
    assert ok.status_code == 202, ok.text
    from tests.test_audit_actor import entry

    assert (await entry(sessionmaker, "work_order", wo_number, "work_order.released")).actor == f"webhook:{ep}"


def test_the_simulator_signs_as_erpnext_does():
    body = json.dumps(release_event("WO-1", 5)).encode()
    assert verify_webhook("s", body, sign("s", body)) and not verify_webhook("s", body, sign("t", body))


# --- an ERP answering 503 ------------------------------------------------------------------------------------

async def test_erp_answering_503_for_a_while_is_waited_for_and_nothing_doubles(api: httpx.AsyncClient, erp_sim,
                                                                               wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    async with httpx.AsyncClient() as raw:
        (await raw.post(f"{erp_sim.url}/sim/faults", json={"status": 503, "seconds": 6})).raise_for_status()
    try:
        await post_results(api, wo_number, "final", IN_SPEC_FINAL)
        st = await wait_status(api, wo_number, lambda s: any(
            w.startswith("retry: notify_erp attempt") and "503" in w for w in s["waiting_for"]),
            timeout=30, what="the status to show the 503 retries")
        waiting = " ".join(st["status"]["waiting_for"])
        assert erp_sim.url in waiting and "answered 503" in waiting
        assert st["status"]["result"] is None
    finally:
        async with httpx.AsyncClient() as raw:
            await raw.delete(f"{erp_sim.url}/sim/faults")
    done = await wait_done(api, wo_number, timeout=90)
    assert done["status"]["result"] == "completed"
    assert len(erp_sim.keyed("Stock Entry", f"{wo_number}-MFG")) == 1
    assert len(erp_sim.keyed("Delivery Note", f"DN-{wo_number}")) == 1


# --- polling an ERP without webhooks ------------------------------------------------------------------------

@pytest.fixture
def quiet_erp(tmp_path) -> ErpSim:
    sim = ErpSim(tmp_path / "erp.json")
    sim.start()
    yield sim
    sim.stop()


async def test_a_schedule_polls_the_erp_and_starts_each_work_order_once(api: httpx.AsyncClient, client, settings,
                                                                       quiet_erp: ErpSim, sessionmaker):
    ep = await make_endpoint(api, quiet_erp.url, page_length=2)
    prefix = f"WP{uuid.uuid4().hex[:4].upper()}-"
    async with httpx.AsyncClient(base_url=quiet_erp.url, headers=AUTH) as erp:
        r = await erp.post("/sim/work-orders", json={"count": 3, "quantity": 20, "prefix": prefix, "notify": "none"})
        numbers = r.json()["released"]
        sid = await ensure_poll_schedule(client, endpoint=ep, every=timedelta(seconds=1),
                                         task_queue=settings.temporal.task_queue)
        handle = client.get_schedule_handle(sid)
        try:
            for n in numbers:
                st = await wait_status(api, n, lambda s: bool(s["pending_inspections"]), timeout=30,
                                       what="the polled work order's IQC")
                assert st["record"]["quantity"] == 20 and st["status"]["material_lots"] == {f"{n}-M1": "quarantine"}

            # a change in the ERP is seen by the next poll, and starts nothing new
            (await erp.put(f"/api/resource/Work Order/{numbers[0]}", json={"qty": 25})).raise_for_status()
            # a purchase receipt posted later reaches its running work order as a signal
            receipt = {"name": f"PR-LATE-{numbers[1]}", "supplier": "ACME-STEEL", "custom_work_order": numbers[1],
                       "items": [{"item_code": "BAR-42CRMO4", "qty": 12, "stock_uom": "KG",
                                  "batch_no": f"{numbers[1]}-M2", "custom_heat_number": "H77"}]}
            (await erp.post("/api/resource/Purchase Receipt", json=receipt)).raise_for_status()
            await wait_status(api, numbers[1], lambda s: f"{numbers[1]}-M2" in s["material_lots"], timeout=30,
                              what="the late receipt")
            # the audit trail names the poll of this endpoint as what brought the release and the receipts in
            from tests.test_audit_actor import entry

            assert (await entry(sessionmaker, "work_order", numbers[0], "work_order.released")).actor == f"poll:{ep}"
            assert (await entry(sessionmaker, "lot", f"{numbers[1]}-M2", "lot.received")).actor == f"poll:{ep}"
            runs_before = len((await handle.describe()).info.recent_actions)
            deadline = time.monotonic() + 30
            while len((await handle.describe()).info.recent_actions) < runs_before + 3:
                assert time.monotonic() < deadline, "the schedule stopped polling"
                await asyncio.sleep(0.5)
        finally:
            await delete_schedule_and_runs(client, sid)

    for n in numbers:
        runs = [w async for w in client.list_workflows(f"WorkflowId = 'work-order-{n}'")]
        assert len(runs) == 1, n
    async with sessionmaker() as s:
        rows = (await s.execute(select(ErpEvent.event_id, ErpEvent.business_key)
                                .where(ErpEvent.business_key.in_(numbers)))).all()
    kinds = {n: sorted(e.split(":")[2] for e, k in rows if k == n) for n in numbers}
    # one row per document version seen: a change is a new version, a re-poll of the same version is not
    assert kinds[numbers[0]] == ["Purchase Receipt", "Work Order", "Work Order"]  # released, then changed
    assert kinds[numbers[1]] == ["Purchase Receipt", "Purchase Receipt", "Work Order"]  # and the late receipt
    assert kinds[numbers[2]] == ["Purchase Receipt", "Work Order"]
    assert len({e for e, _ in rows}) == len(rows)


async def test_an_erpnext_endpoint_with_poll_every_s_is_polled_by_its_schedule(api: httpx.AsyncClient, client,
                                                                                quiet_erp: ErpSim):
    from temporalio.service import RPCError

    ep = await make_endpoint(api, quiet_erp.url, poll_every_s=3600)
    handle = client.get_schedule_handle(f"erp-poll-{ep}")
    try:
        assert (await handle.describe()).schedule.spec.intervals[0].every == timedelta(hours=1)
        prefix = f"WS{uuid.uuid4().hex[:4].upper()}-"
        async with httpx.AsyncClient(base_url=quiet_erp.url, headers=AUTH) as erp:
            r = await erp.post("/sim/work-orders", json={"count": 1, "quantity": 20, "prefix": prefix, "notify": "none"})
        number = r.json()["released"][0]
        await handle.trigger()
        await wait_status(api, number, lambda s: bool(s["pending_inspections"]), timeout=30,
                          what="the scheduled poll's work order")
        assert (await api.delete(f"/api/endpoints/{ep}")).status_code == 204
        with pytest.raises(RPCError):
            await handle.describe()
    finally:
        await delete_schedule_and_runs(client, f"erp-poll-{ep}")
