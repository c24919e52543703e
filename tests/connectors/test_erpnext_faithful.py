"""The ERPNext connector against an ERP that behaves as Frappe does: documents named by the ERP (a client's
`name` is dropped), idempotency by the hub's key field, lists that carry only what they ask for, one bad
document that does not block polling; a retried equipment read judged on the value stored; transient
device errors (OPC UA status codes, Modbus exception codes) retried instead of refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from asyncua.ua import uaerrors
from pymodbus.pdu import ExceptionResponse
from sqlalchemy import select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.connectors import ConnectorActivities
from activities.hub import HubActivities
from activities.models import ErpNotice
from activities.models_connectors import PollErpInput, PollErpResult, ReadProcessInput
from connectors.erpnext import ErpnextConnector
from connectors.errors import ConnectorConfigError, ConnectorUnavailable, DeviceRejected
from connectors.modbus.connector import ModbusConnector
from connectors.opcua.connector import OpcuaConnector
from domain.models import ErpEvent
from domain.models_connectors import ProcessReading
from erp_sim.app import create_app as create_erp_app
from erp_sim.plant import OvenSim, PlcSim
from tests.conftest import ErpSim
from tests.connectors.peers import ThreadedServer
from tests.helpers import fast_release, wait_status
from workflows.erp_poll import ErpPollWorkflow

AUTH = {"Authorization": "token tracehub:simulator-secret"}


def erp_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": url, "api_key": "tracehub", "api_secret": "simulator-secret", "timeout_s": 5, **extra}


@pytest.fixture
def own_erp(tmp_path) -> ErpSim:
    """An ERP of the test's own, so polling sees only the documents the test made."""
    sim = ErpSim(tmp_path / "erp.json")
    sim.start()
    yield sim
    sim.stop()


# --- the simulator is Frappe-shaped ---------------------------------------------------------------------

async def test_the_erp_names_documents_itself_as_frappe_does(erp_sim):
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp:
        # a naming series: the client's name is dropped
        r = await erp.post("/api/resource/Stock Entry", json={"name": "WO-1-MFG", "stock_entry_type": "Manufacture"})
        assert r.status_code == 200, r.text
        se = r.json()["data"]
        assert se["name"] != "WO-1-MFG" and se["name"].startswith("MAT-STE-") and se["naming_series"]
        again = (await erp.post("/api/resource/Stock Entry", json={"name": "WO-1-MFG",
                                                                   "stock_entry_type": "Manufacture"})).json()["data"]
        assert again["name"] != se["name"]  # posting twice makes two documents: names are no idempotency key
        assert int(again["name"].rsplit("-", 1)[1]) == int(se["name"].rsplit("-", 1)[1]) + 1
        # named by a field: Batch by its batch_id, which it needs
        batch = f"B-{uuid.uuid4().hex[:6]}"
        r = await erp.post("/api/resource/Batch", json={"name": "ignored", "batch_id": batch, "item": "X"})
        assert r.json()["data"]["name"] == batch
        r = await erp.post("/api/resource/Batch", json={"batch_id": batch, "item": "X"})
        assert r.status_code == 409 and r.json()["exc_type"] == "DuplicateEntryError"
        r = await erp.post("/api/resource/Batch", json={"name": "B-1", "item": "X"})
        assert r.status_code == 417 and r.json()["exc_type"] == "MandatoryError" and "batch_id" in r.text
        # no autoname: a hash
        r = await erp.post("/api/resource/Batch Hold", json={"name": "R-1/L-1", "batch_no": "L-1", "hold": 1})
        assert r.json()["data"]["name"] != "R-1/L-1" and len(r.json()["data"]["name"]) == 10


async def test_the_hub_key_field_is_unique_as_the_setup_makes_it(erp_sim):
    key = f"K-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp:
        doc = {"customer": "C", "custom_hub_key": key, "items": []}
        assert (await erp.post("/api/resource/Delivery Note", json=doc)).status_code == 200
        r = await erp.post("/api/resource/Delivery Note", json=doc)
    assert r.status_code == 417 and r.json()["exc_type"] == "UniqueValidationError" and "custom_hub_key" in r.text


async def test_a_list_carries_only_the_fields_it_asks_for_and_never_child_tables(erp_sim):
    key = f"K-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp:
        created = (await erp.post("/api/resource/Delivery Note", json={
            "customer": "C", "custom_hub_key": key, "items": [{"item_code": "I", "qty": 1}]})).json()["data"]
        flt = {"filters": json.dumps([["custom_hub_key", "=", key]])}
        plain = (await erp.get("/api/resource/Delivery Note", params=flt)).json()["data"]
        star = (await erp.get("/api/resource/Delivery Note", params={**flt, "fields": '["*"]'})).json()["data"]
        some = (await erp.get("/api/resource/Delivery Note",
                              params={**flt, "fields": '["name", "modified"]'})).json()["data"]
        child = await erp.get("/api/resource/Delivery Note", params={**flt, "fields": '["items"]'})
        full = (await erp.get(f"/api/resource/Delivery Note/{created['name']}")).json()["data"]
    assert plain == [{"name": created["name"]}]
    assert star[0]["customer"] == "C" and star[0]["custom_hub_key"] == key and "items" not in star[0]
    assert some == [{"name": created["name"], "modified": created["modified"]}]
    assert child.status_code == 417 and "items" in child.text
    assert full["items"] == [{"item_code": "I", "qty": 1}]


# --- H1: idempotent writes against an ERP that names its documents ------------------------------------------

async def test_notify_erp_retried_creates_one_document(erp_sim, seeded, sessionmaker, settings):
    """A retry of notify_erp (after a timeout, a lost answer or a killed worker) runs it again with the same
    notice: the ERP must still hold one document."""
    key = f"DN-{uuid.uuid4().hex[:8]}"
    notice = ErpNotice(doctype="Delivery Note", name=key,
                       doc={"customer": "Customer A", "items": [{"item_code": "SHAFT-25", "qty": 5}]})
    acts = HubActivities(sessionmaker, resolver=settings.resolver_base_url)
    env = ActivityEnvironment()
    for _ in range(3):
        await env.run(acts.notify_erp, notice)
    docs = erp_sim.keyed("Delivery Note", key)
    assert len(docs) == 1 and docs[0]["customer"] == "Customer A" and docs[0]["name"].startswith("MAT-DN-")
    assert docs[0]["docstatus"] == 1  # submitted: a REST create is otherwise a draft that moves no stock


async def test_documents_are_drafts_when_the_endpoint_says_so(erp_sim):
    key = f"DN-{uuid.uuid4().hex[:8]}"
    doc = {"customer": "Customer A", "items": [{"item_code": "SHAFT-25", "qty": 5}]}
    async with ErpnextConnector(erp_config(erp_sim.url, submit=False)) as conn:
        await conn.write_once("Delivery Note", doc, key)
    assert erp_sim.keyed("Delivery Note", key)[0]["docstatus"] == 0
    # what is not a stock document is created as it is sent (a Batch is no submittable DocType)
    async with ErpnextConnector(erp_config(erp_sim.url)) as conn:
        batch = await conn.write_once("Batch", {"batch_id": f"B-{key}", "item": "SHAFT-25"}, f"B-{key}")
    assert batch.get("docstatus", 0) == 0


async def test_two_attempts_racing_past_the_lookup_still_make_one_document(erp_sim):
    key = f"SE-{uuid.uuid4().hex[:8]}"
    doc = {"stock_entry_type": "Manufacture", "items": [{"item_code": "SHAFT-25", "qty": 1, "is_finished_item": 1}]}
    async with ErpnextConnector(erp_config(erp_sim.url)) as a, ErpnextConnector(erp_config(erp_sim.url)) as b:
        first, second = await asyncio.gather(a.write_once("Stock Entry", doc, key), b.write_once("Stock Entry", doc,
                                                                                                    key))
    assert first["name"] == second["name"] and len(erp_sim.keyed("Stock Entry", key)) == 1


async def test_an_erp_without_the_hub_key_field_is_a_config_error_naming_it(tmp_path):
    # a site where the README's one-time setup was not done: Frappe drops fields a DocType does not have
    server = ThreadedServer(create_erp_app(state_file=tmp_path / "erp.json", missing_fields=("custom_hub_key",)))
    server.start()
    try:
        async with ErpnextConnector(erp_config(server.url)) as conn:
            with pytest.raises(ConnectorConfigError) as info:
                await conn.write_once("Delivery Note", {"customer": "C", "items": []}, "DN-1")
    finally:
        server.stop()
    assert info.value.field == "hub_key_field"
    assert "custom_hub_key" in info.value.message and "Unique" in info.value.message
    assert "Unknown column" in info.value.message  # what the ERP said


def test_hub_key_field_is_configurable_and_must_be_a_fieldname():
    assert ErpnextConnector(erp_config("http://erp.example")).config.hub_key_field == "custom_hub_key"
    conn = ErpnextConnector(erp_config("http://erp.example", hub_key_field="custom_trace_key"))
    assert conn.config.hub_key_field == "custom_trace_key"
    with pytest.raises(ConnectorConfigError) as info:
        ErpnextConnector(erp_config("http://erp.example", hub_key_field="Hub Key"))
    assert info.value.field == "hub_key_field" and "fieldname" in info.value.message


# --- H2: polling a Frappe-shaped ERP; one bad document ------------------------------------------------------

async def poll(client: Client, settings, endpoint: str) -> PollErpResult:
    return await client.execute_workflow(
        ErpPollWorkflow.run, PollErpInput(endpoint=endpoint, task_queue=settings.temporal.task_queue),
        id=f"poll-test-{uuid.uuid4().hex[:8]}", task_queue=settings.temporal.task_queue, result_type=PollErpResult)


async def test_polling_reads_full_documents_and_a_bad_one_does_not_block(api: httpx.AsyncClient, client, settings,
                                                                        own_erp: ErpSim, sessionmaker):
    name = f"erp-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/endpoints", json={"name": name, "kind": "erpnext",
                                               "config": erp_config(own_erp.url, page_length=2)})
    assert r.status_code == 201, r.text
    prefix = f"WF{uuid.uuid4().hex[:4].upper()}-"
    async with httpx.AsyncClient(base_url=own_erp.url, headers=AUTH) as erp:
        async def release(start: int) -> str:
            r = await erp.post("/sim/work-orders", json={"count": 1, "quantity": 20, "prefix": prefix,
                                                         "start": start, "notify": "none"})
            return r.json()["released"][0]

        bad = await release(1)
        # the ERP's user breaks it before the hub sees it: modified before the good one
        (await erp.put(f"/api/resource/Work Order/{bad}", json={"qty": 0})).raise_for_status()
        good = await release(2)

        first = await poll(client, settings, name)
        assert first.started == [good] and first.rejected == [f"Work Order {bad}"]
        st = await wait_status(api, good, lambda s: bool(s["pending_inspections"]), what="the good order's IQC")
        # read in full: the routing (operations) and the receipt's lots (items) are child tables
        assert [op["name"] for op in st["record"]["routing"]] == ["Turning", "Heat treatment"]
        assert st["status"]["material_lots"] == {f"{good}-M1": "quarantine"}

        r = await api.get(f"/api/endpoints/{name}/rejected")
        assert r.status_code == 200, r.text
        (rej,) = r.json()["items"]
        assert rej["document"] == bad and rej["field"] == "Work Order: qty" and rej["resolved"] is False
        assert "qty" in rej["reason"] and "Correct it in the ERP" in rej["reason"]

        # the watermark moved past the bad document: later polls neither fail on it nor record it again
        again = await poll(client, settings, name)
        assert again.started == [] and again.rejected == []
        assert r.json()["total"] == (await api.get(f"/api/endpoints/{name}/rejected")).json()["total"] == 1

        # corrected in the ERP: a new version, which the next poll takes
        (await erp.put(f"/api/resource/Work Order/{bad}", json={"qty": 20})).raise_for_status()
        fixed = await poll(client, settings, name)
        assert fixed.started == [bad] and fixed.rejected == []
        (rej,) = (await api.get(f"/api/endpoints/{name}/rejected")).json()["items"]
        assert rej["resolved"] is True
    async with sessionmaker() as s:
        types = (await s.execute(select(ErpEvent.event_type).where(ErpEvent.business_key == bad)
                                 .order_by(ErpEvent.id))).scalars().all()
    assert types[0] == "work_order.rejected" and "work_order.released" in types
    assert (await api.get("/api/endpoints/nope/rejected")).status_code == 404


async def test_a_bad_receipt_line_names_the_receipt_row_and_field(api: httpx.AsyncClient, client, settings,
                                                                 own_erp: ErpSim):
    name = f"erp-{uuid.uuid4().hex[:6]}"
    assert (await api.post("/api/endpoints", json={"name": name, "kind": "erpnext",
                                                   "config": erp_config(own_erp.url)})).status_code == 201
    async with httpx.AsyncClient(base_url=own_erp.url, headers=AUTH) as erp:
        r = await erp.post("/sim/work-orders", json={"count": 1, "quantity": 20, "notify": "none",
                                                     "prefix": f"WR{uuid.uuid4().hex[:4].upper()}-"})
        number = r.json()["released"][0]
        pr = f"PR-{number}"
        doc = (await erp.get(f"/api/resource/Purchase Receipt/{pr}")).json()["data"]
        items = [{**doc["items"][0], "qty": -3}]
        (await erp.put(f"/api/resource/Purchase Receipt/{pr}", json={"items": items})).raise_for_status()
    result = await poll(client, settings, name)
    assert result.started == [] and f"Work Order {number}" in result.rejected
    items = (await api.get(f"/api/endpoints/{name}/rejected")).json()["items"]
    assert {i["field"] for i in items} >= {f"Purchase Receipt {pr}: items row 1: qty"}


# --- H3: a retried equipment read is judged on the value stored ------------------------------------------------

async def test_a_retried_read_reports_and_judges_the_stored_value(api: httpx.AsyncClient, plc: PlcSim,
                                                                 sessionmaker, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="the work order's record")
    ep = f"plc-{uuid.uuid4().hex[:6]}"
    assert (await api.post("/api/endpoints", json={"name": ep, "kind": "modbus",
                                                   "config": plc.endpoint_config()})).status_code == 201
    inp = ReadProcessInput.model_validate({
        "work_order": wo_number, "seq": 10, "run": 1, "phase": "start",
        "parameters": [{"name": "coolant", "endpoint": ep, "point": "coolant_temp", "when": "start",
                        "lower": 15, "upper": 30, "unit": "°C"}]})
    acts = ConnectorActivities(sessionmaker)
    env = ActivityEnvironment()
    before = await plc.get("coolant_temp")
    try:
        await plc.set("coolant_temp", 21.5)
        first = await env.run(acts.read_process, inp)
        # the attempt's result was lost (a worker killed after the commit): the retry reads the PLC again,
        # which now shows another value
        await plc.set("coolant_temp", 45.0)
        retry = await env.run(acts.read_process, inp)
    finally:
        await plc.set("coolant_temp", before)
    assert first.values[0].value == pytest.approx(21.5) and first.deviations == []
    assert retry.model_dump() == first.model_dump()
    async with sessionmaker() as s:
        rows = (await s.execute(select(ProcessReading).where(ProcessReading.parameter == "coolant",
                                                             ProcessReading.endpoint == ep))).scalars().all()
    assert [(r.value, r.in_window) for r in rows] == [(pytest.approx(21.5), True)]


# --- H4: transient device errors are retried, not refused --------------------------------------------------------

@pytest.mark.parametrize("code", [5, 6, 10, 11])
async def test_modbus_busy_and_gateway_exceptions_are_transient(plc: PlcSim, code: int):
    try:
        plc.answer_exception = code
        async with ModbusConnector(plc.endpoint_config()) as conn:
            with pytest.raises(ConnectorUnavailable) as info:
                await conn.read("coolant_temp")
    finally:
        plc.answer_exception = None
    assert info.value.retryable and f"exception {code}" in info.value.message
    async with ModbusConnector(plc.endpoint_config()) as conn:  # and the same read succeeds after
        assert (await conn.read("coolant_temp")).value is not None


async def test_modbus_exceptions_that_say_no_stay_rejections(plc: PlcSim):
    try:
        plc.answer_exception = 4  # server device failure: the request itself failed
        async with ModbusConnector(plc.endpoint_config()) as conn:
            with pytest.raises(DeviceRejected):
                await conn.read("coolant_temp")
    finally:
        plc.answer_exception = None


def test_modbus_translate_classifies_every_code():
    conn = ModbusConnector({"host": "127.0.0.1", "port": 502, "registers": []})
    kinds = {code: type(conn._translate(ExceptionResponse(3, code))).__name__ for code in (1, 2, 3, 4, 5, 6, 8, 10, 11)}
    assert kinds == {1: "DeviceRejected", 2: "DeviceRejected", 3: "DeviceRejected", 4: "DeviceRejected",
                     5: "ConnectorUnavailable", 6: "ConnectorUnavailable", 8: "DeviceRejected",
                     10: "ConnectorUnavailable", 11: "ConnectorUnavailable"}


async def test_opcua_value_without_communication_is_transient(oven: OvenSim):
    cfg = oven.endpoint_config(security_mode="None")
    try:
        for status in ("BadNoCommunication", "BadWaitingForInitialData"):
            await oven.set_quality("Temperature", status)
            async with OpcuaConnector(cfg) as conn:
                with pytest.raises(ConnectorUnavailable) as info:
                    await conn.read("oven_temp")
            assert status in info.value.message
    finally:
        await oven.set_quality("Temperature")
    async with OpcuaConnector(cfg) as conn:
        assert isinstance((await conn.read("oven_temp")).value, float)


@pytest.mark.parametrize("name", ["BadNotConnected", "BadNoCommunication", "BadWaitingForInitialData",
                                  "BadServerTooBusy", "BadResourceUnavailable", "BadSessionIdInvalid",
                                  "BadSessionClosed", "BadShutdown"])
def test_opcua_translate_treats_unavailability_as_transient(name: str):
    conn = OpcuaConnector({"url": "opc.tcp://127.0.0.1:4840/x", "nodes": []})
    err = conn._translate(getattr(uaerrors, name)())
    assert isinstance(err, ConnectorUnavailable) and name in err.message


def test_opcua_translate_keeps_refusals():
    conn = OpcuaConnector({"url": "opc.tcp://127.0.0.1:4840/x", "nodes": []})
    assert isinstance(conn._translate(uaerrors.BadOutOfRange()), DeviceRejected)
    assert isinstance(conn._translate(uaerrors.BadNodeIdUnknown()), ConnectorConfigError)
