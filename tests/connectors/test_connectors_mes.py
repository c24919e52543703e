"""The MES into the work order, against a real Mosquitto broker and the real worker: the MQTT bridge
(activities/mes.py) turns operation reports and equipment states into workflow signals, keeps what was
published while it was down, never doubles a report, and records what it refuses. Also the HTTP route for
equipment states, and the ERP's consumption entry after a work order."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import httpx
import pytest
from sqlalchemy import func, select

from activities.mes import MesBridge
from domain.models import Lot, OperationRecord
from domain.models_connectors import EquipmentState
from tests.connectors.peers import MosquittoBroker
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    fast_release,
    operation_report,
    post_results,
    report_operation,
    role_headers,
    wait_done,
    wait_status,
)


@pytest.fixture
def prefix() -> str:
    return f"plant/{uuid.uuid4().hex[:8]}"


async def mes_endpoint(api: httpx.AsyncClient, broker: MosquittoBroker, prefix: str) -> str:
    name = f"mes-{uuid.uuid4().hex[:6]}"
    cfg = {"host": "127.0.0.1", "port": broker.port, "username": "hub", "password": "hub-secret", "timeout_s": 3,
           "topics": [{"name": "operation_reports", "filter": f"{prefix}/+/operation-report"},
                      {"name": "equipment_states", "filter": f"{prefix}/+/equipment-state"}]}
    r = await api.post("/api/endpoints", json={"name": name, "kind": "mqtt", "config": cfg})
    assert r.status_code == 201, r.text
    return name


async def publish(broker: MosquittoBroker, topic: str, payload: Any) -> None:
    import json

    body = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    async with aiomqtt.Client("127.0.0.1", broker.port, username="mes", password="mes-secret") as c:
        await c.publish(topic, body, qos=1)


@asynccontextmanager
async def running_bridge(sessionmaker, client, name: str) -> AsyncIterator[MesBridge]:
    async with MesBridge(sessionmaker, client, endpoints=[name], rescan_s=0.2, retry_max_s=1) as bridge:
        await asyncio.wait_for(bridge.is_ready(name).wait(), 10)
        yield bridge


async def until(pred: Callable[[], Any], timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred() if asyncio.iscoroutinefunction(pred) else pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def waiting_for_op10(api: httpx.AsyncClient, number: str) -> None:
    assert (await api.post("/api/erp/events", json=fast_release(number))).status_code == 202
    await post_results(api, number, "iqc", IN_SPEC_IQC)
    await wait_status(api, number, lambda s: s["expected_operation"] == 10, what="operation 10")


def mqtt_report(number: str, seq: int = 10, **kw: Any) -> dict[str, Any]:
    return {"work_order": number, **operation_report(number, seq, [{"lot": f"{number}-M1", "quantity": 10.0}]
                                                     if seq == 10 else [], **kw)}


async def records(sessionmaker, report_id: str) -> int:
    async with sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(OperationRecord)
                                .where(OperationRecord.report_id == report_id))).scalar_one()


async def rejected(api: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    r = await api.get("/api/mes/rejected", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


# --- MQTT -------------------------------------------------------------------------------------------------

async def test_an_operation_report_over_mqtt_reaches_the_work_order_once(api, client, sessionmaker, broker,
                                                                         prefix, wo_number):
    name = await mes_endpoint(api, broker, prefix)
    await waiting_for_op10(api, wo_number)
    async with running_bridge(sessionmaker, client, name) as bridge:
        report = mqtt_report(wo_number, good=18, scrap=2)
        await publish(broker, f"{prefix}/LATHE-01/operation-report", report)
        st = await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="op 10 recorded")
        assert st["status"]["good_quantity"] == 18 and st["status"]["scrap_quantity"] == 2
        # the same report again (the MES resends it): acknowledged, nothing doubled
        await publish(broker, f"{prefix}/LATHE-01/operation-report", report)
        await until(lambda: sum(bridge.outcomes.values()) == 2, what="the duplicate to be taken")
        assert bridge.outcomes == {"signalled": 1, "duplicate": 1}
        # an equipment state for the work order shows in its status
        await publish(broker, f"{prefix}/FURNACE-02/equipment-state", {
            "event_id": f"{wo_number}-st1", "equipment": "FURNACE-02", "state": "setup", "work_order": wo_number})
        await wait_status(api, wo_number, lambda s: s["equipment_states"].get("FURNACE-02") == "setup",
                          what="the equipment state")
        await until(lambda: bridge.outcomes.get("signalled") == 2, what="the state recorded and acknowledged")
    assert await records(sessionmaker, report["report_id"]) == 1
    async with sessionmaker() as s:
        lot = (await s.execute(select(Lot).where(Lot.number == f"{wo_number}-M1"))).scalar_one()
        assert lot.quantity_remaining == pytest.approx(lot.quantity - 10.0)  # consumed once
        state = (await s.execute(select(EquipmentState).where(EquipmentState.event_id == f"{wo_number}-st1")))
        assert state.scalar_one().source == "mqtt"
    assert await rejected(api, work_order=wo_number) == []


async def test_what_is_published_while_the_bridge_is_down_is_delivered_once_when_it_is_back(
        api, client, sessionmaker, broker, prefix, wo_number):
    name = await mes_endpoint(api, broker, prefix)
    async with running_bridge(sessionmaker, client, name):
        pass  # the broker now holds a persistent session for the bridge
    await waiting_for_op10(api, wo_number)
    report = mqtt_report(wo_number)
    await publish(broker, f"{prefix}/LATHE-01/operation-report", report)
    await asyncio.sleep(0.3)
    assert await records(sessionmaker, report["report_id"]) == 0  # nobody took it yet
    async with running_bridge(sessionmaker, client, name) as bridge:
        await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="op 10 recorded")
        assert bridge.outcomes == {"signalled": 1}
    # a restart of the bridge does not get it again: it was acknowledged
    async with running_bridge(sessionmaker, client, name) as bridge:
        await asyncio.sleep(0.5)
        assert bridge.outcomes == {}
    assert await records(sessionmaker, report["report_id"]) == 1


async def test_refused_messages_are_recorded_with_the_field_at_fault(api, client, sessionmaker, broker, prefix,
                                                                    wo_number):
    name = await mes_endpoint(api, broker, prefix)
    await waiting_for_op10(api, wo_number)
    bad = mqtt_report(wo_number, report_id=f"{wo_number}-bad")
    bad["good_quantity"] = -3
    unknown = mqtt_report("WO-NOSUCH-1", report_id=f"{wo_number}-unknown")
    not_expected = mqtt_report(wo_number, seq=30, report_id=f"{wo_number}-seq30")
    topic = f"{prefix}/LATHE-01/operation-report"
    async with running_bridge(sessionmaker, client, name) as bridge:
        for body in (bad, unknown, not_expected, "not json {", bad):
            await publish(broker, topic, body)
        await until(lambda: sum(bridge.outcomes.values()) == 5, what="five messages taken")
        assert bridge.outcomes == {"rejected": 5}
        # the workflow got none of them: it still waits for operation 10
        st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
        assert st["expected_operation"] == 10 and st["good_quantity"] == 0
    items = {i["message_id"]: i for i in await rejected(api, endpoint=name)}
    assert items[f"{wo_number}-bad"]["field"] == "good_quantity"
    assert "good_quantity" in items[f"{wo_number}-bad"]["reason"]
    assert items[f"{wo_number}-bad"]["times"] == 2  # the same message again is counted, not doubled
    assert items[f"{wo_number}-bad"]["payload"]["good_quantity"] == -3
    assert items[f"{wo_number}-unknown"]["field"] == "work_order" and "WO-NOSUCH-1" in \
        items[f"{wo_number}-unknown"]["reason"]
    assert items[f"{wo_number}-seq30"]["field"] == "seq" and "routing" in items[f"{wo_number}-seq30"]["reason"]
    text = items[None]
    assert text["field"] == "body" and text["payload"] == "not json {" and text["topic"] == topic
    # auditors may read the list; an operator may not
    assert (await api.get("/api/mes/rejected", headers=role_headers("auditor"))).status_code == 200
    assert (await api.get("/api/mes/rejected", headers=role_headers("operator"))).status_code == 403


async def test_a_report_for_an_operation_already_done_is_refused_not_kept(api, client, sessionmaker, broker,
                                                                         prefix, wo_number):
    name = await mes_endpoint(api, broker, prefix)
    await waiting_for_op10(api, wo_number)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
    late = mqtt_report(wo_number, report_id=f"{wo_number}-late")
    late["consumed"] = []
    async with running_bridge(sessionmaker, client, name) as bridge:
        await publish(broker, f"{prefix}/LATHE-01/operation-report", late)
        await until(lambda: bridge.outcomes.get("rejected") == 1, what="the late report refused")
    (item,) = await rejected(api, work_order=wo_number)
    assert item["field"] == "seq" and "waits for operation 20" in item["reason"]


# --- HTTP -------------------------------------------------------------------------------------------------

async def test_equipment_states_over_http(api: httpx.AsyncClient, sessionmaker, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await wait_status(api, wo_number, lambda s: s["stage"] == "material_intake", what="the workflow")
    url = f"/api/work-orders/{wo_number}/equipment-states"
    state = {"event_id": f"{wo_number}-down", "equipment": "LATHE-01", "state": "down", "reason": "tool break",
             "at": "2026-11-21T08:00:00Z"}
    r = await api.post(url, json=state, headers=role_headers("mes"))
    assert r.status_code == 202, r.text
    assert r.json()["delivered_to_workflow"] is True and r.json()["duplicate"] is False
    await wait_status(api, wo_number, lambda s: s["equipment_states"].get("LATHE-01") == "down", what="the state")
    again = await api.post(url, json=state, headers=role_headers("mes"))
    assert again.status_code == 202 and again.json()["duplicate"] is True
    async with sessionmaker() as s:
        rows = (await s.execute(select(EquipmentState).where(EquipmentState.event_id == f"{wo_number}-down")))
        (row,) = rows.scalars().all()
    assert row.source == "http" and row.work_order == wo_number and row.reason == "tool break"
    # bad input names the field
    r = await api.post(url, json={**state, "event_id": "x2", "state": ""})
    assert r.status_code == 422 and "state" in r.text
    r = await api.post(url, json={**state, "event_id": "x3", "work_order": "WO-OTHER"})
    assert r.status_code == 422 and "work_order" in r.json()["detail"]
    r = await api.post("/api/work-orders/WO-NOSUCH-2/equipment-states", json={**state, "event_id": "x4"})
    assert r.status_code == 404
    assert (await api.post(url, json=state, headers=role_headers("inspector"))).status_code == 403


# --- ERP consumption ------------------------------------------------------------------------------------------

async def test_the_erp_gets_the_consumed_batches_after_a_work_order(api: httpx.AsyncClient, erp_sim):
    prefix = f"WO-C{uuid.uuid4().hex[:6].upper()}-"
    async with httpx.AsyncClient(base_url=erp_sim.url) as erp:
        # the ERP releases the order (its purchase receipt creates the batch) without telling the hub ...
        r = await erp.post("/sim/work-orders", json={"count": 1, "prefix": prefix, "start": 1, "quantity": 20,
                                                     "notify": "none"})
        (number,) = r.json()["released"]
    # ... and the hub gets the same release as the ERP's event
    assert (await api.post("/api/erp/events", json=fast_release(number))).status_code == 202
    await post_results(api, number, "iqc", IN_SPEC_IQC)
    await report_operation(api, number, 10, [{"lot": f"{number}-M1", "quantity": 10.0}])
    await report_operation(api, number, 20, [{"lot": f"{number}-M1", "quantity": 2.5}])
    await post_results(api, number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, number)
    assert done["status"]["last_error"] is None
    entries = erp_sim.documents("Stock Entry")
    cons = entries[f"{number}-CONS"]
    assert cons["stock_entry_type"] == "Material Consumption for Manufacture" and cons["work_order"] == number
    assert cons["items"] == [{"item_code": "BAR-42CRMO4", "batch_no": f"{number}-M1", "qty": 12.5, "uom": "KG",
                              "s_warehouse": "Stores", "is_finished_item": 0}]
    assert [i["is_finished_item"] for i in entries[f"{number}-MFG"]["items"]] == [1]


async def test_the_erp_simulator_refuses_consumption_as_erpnext_does(erp_sim):
    auth = {"Authorization": "token tracehub:simulator-secret"}
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=auth) as erp:
        r = await erp.post("/sim/work-orders", json={"count": 1, "prefix": f"WO-S{uuid.uuid4().hex[:5]}-",
                                                     "start": 1, "notify": "none"})
        (number,) = r.json()["released"]
        batch = f"{number}-M1"

        async def entry(**row: Any) -> httpx.Response:
            return await erp.post("/api/resource/Stock Entry", json={
                "name": f"SE-{uuid.uuid4().hex[:6]}", "stock_entry_type": "Material Consumption for Manufacture",
                "items": [{"item_code": "BAR-42CRMO4", "batch_no": batch, "qty": 1.0, "s_warehouse": "Stores",
                           **row}]})

        assert (await entry()).status_code == 200
        for row, says in (({"batch_no": "NO-SUCH-BATCH"}, "Batch NO-SUCH-BATCH not found"),
                          ({"qty": 0}, "greater than 0"), ({"item_code": "OTHER-ITEM"}, "does not belong"),
                          ({"s_warehouse": None}, "Source Warehouse")):
            r = await entry(**row)
            assert r.status_code == 417 and says in r.text, (row, r.text)
