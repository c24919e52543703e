"""The hub and the ERP simulator as ERPNext has them: recall holds as the Batch's `disabled` check, a polled release
built as the webhook's is, a rejected event's reason in the inbox, an NCR's scrap writing off what was left."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from temporalio.client import Client

from connectors.erpnext import ErpnextConnector
from connectors.errors import DeviceRejected
from domain.models import Lot
from erp_sim.app import release_event
from tests.conftest import ErpSim
from tests.connectors.test_erpnext_faithful import AUTH, erp_config, poll
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    OUT_SPEC_FINAL,
    decide,
    fast_release,
    post_results,
    remember_batches,
    run_production,
    scrap_work_order,
    wait_done,
    wait_ncr,
    wait_status,
)
from tests.test_lifecycle import record_history
from workflows.nonconformance import PATCH_SCRAP_NOTHING_LEFT

pytestmark = pytest.mark.asyncio


@pytest.fixture
def own_erp(tmp_path) -> ErpSim:
    """An ERP of the test's own, so polling sees only the documents the test made."""
    sim = ErpSim(tmp_path / "erp.json")
    sim.start()
    yield sim
    sim.stop()


# --- recall holds: the Batch's `disabled` --------------------------------------------------------------------

async def test_a_hold_disables_the_batch_and_its_release_enables_it_again(erp_sim: ErpSim):
    batch = f"B-{uuid.uuid4().hex[:8]}"
    remember_batches({batch: "BAR-42CRMO4"})
    hold = {"batch_no": batch, "item_code": "BAR-42CRMO4", "hold": 1, "qty": 5.0, "recall": "RC-1", "reason": "x"}
    async with ErpnextConnector(erp_config(erp_sim.url)) as conn:
        first = await conn.write_once("Batch Hold", hold, f"RC-1/{batch}")
        again = await conn.write_once("Batch Hold", hold, f"RC-1/{batch}")  # a retried hold is harmless
        assert first["name"] == again["name"] == batch and again["disabled"] == 1
        assert erp_sim.documents("Batch")[batch]["disabled"] == 1
        # no document of a DocType ERPNext does not have (other tests post one straight to the simulator)
        assert not [d for d in erp_sim.all_documents("Batch Hold") if d.get("batch_no") == batch]
        await conn.write_once("Batch Hold", {**hold, "hold": 0}, f"RC-1/{batch}-RELEASE")
        assert erp_sim.documents("Batch")[batch]["disabled"] == 0
        # a batch the ERP does not have yet (a lot still being made): created blocked, so it is blocked once it
        # exists; a release of a batch the ERP does not have has nothing to unblock
        later = f"B-{uuid.uuid4().hex[:8]}"
        assert await conn.write_once("Batch Hold", {**hold, "batch_no": later, "hold": 0}, f"RC-1/{later}-R") is None
        assert later not in erp_sim.documents("Batch")
        await conn.write_once("Batch Hold", {**hold, "batch_no": later}, f"RC-1/{later}")
        await conn.write_once("Batch Hold", {**hold, "batch_no": later}, f"RC-1/{later}")  # retried: no second
        made = erp_sim.documents("Batch")[later]
        assert (made["disabled"], made["item"]) == (1, "BAR-42CRMO4")
        with pytest.raises(DeviceRejected) as bad:
            await conn.write_once("Batch Hold", {**hold, "hold": 2}, f"RC-1/{batch}")
        assert not bad.value.retryable and "hold must be 1" in bad.value.message


async def test_the_erp_refuses_a_disabled_batch_in_stock_entries_and_delivery_notes(erp_sim: ErpSim):
    batch = f"B-{uuid.uuid4().hex[:8]}"
    remember_batches({batch: "BAR-42CRMO4"})
    consumption = {"stock_entry_type": "Material Consumption for Manufacture", "items": [
        {"item_code": "BAR-42CRMO4", "batch_no": batch, "qty": 1.0, "s_warehouse": "Stores"}]}
    delivery = {"customer": "Customer A", "items": [{"item_code": "BAR-42CRMO4", "batch_no": batch, "qty": 1}]}
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp:
        r = await erp.put("/api/resource/Batch/NO-SUCH-BATCH", json={"disabled": 1})
        assert r.status_code == 404 and r.json()["exc_type"] == "DoesNotExistError"
        r = await erp.put(f"/api/resource/Batch/{batch}", json={"disabled": "yes"})
        assert r.status_code == 417 and "disabled" in r.text
        assert (await erp.put(f"/api/resource/Batch/{batch}", json={"disabled": 1})).status_code == 200
        for doctype, doc in (("Stock Entry", consumption), ("Delivery Note", delivery)):
            r = await erp.post(f"/api/resource/{doctype}", json=doc)
            assert r.status_code == 417 and r.json()["exc_type"] == "ValidationError", r.text
            assert f"Batch {batch} is disabled" in json.loads(json.loads(r.json()["_server_messages"])[0])["message"]
        assert (await erp.put(f"/api/resource/Batch/{batch}", json={"disabled": 0})).status_code == 200
        for doctype, doc in (("Stock Entry", consumption), ("Delivery Note", delivery)):
            assert (await erp.post(f"/api/resource/{doctype}", json=doc)).status_code == 200


# --- the consumption entry names batches the ERP has -------------------------------------------------------------

async def test_a_fast_release_stores_its_erp_records_so_the_consumption_entry_is_accepted(
        api: httpx.AsyncClient, erp_sim: ErpSim, wo_number):
    fast_release(wo_number)
    assert erp_sim.documents("Batch")[f"{wo_number}-M1"]["item"] == "BAR-42CRMO4"
    assert f"PR-{wo_number}" in erp_sim.documents("Purchase Receipt")
    _, done = await scrap_work_order(api, wo_number)  # releases the same event (its records stored again: kept)
    assert done["status"]["erp_documents"][f"{wo_number}-CONS"] == "sent"
    (cons,) = erp_sim.keyed("Stock Entry", f"{wo_number}-CONS")
    assert [(i["batch_no"], i["qty"]) for i in cons["items"]] == [(f"{wo_number}-M1", 10.0)]
    # a consumption naming a batch the ERP has not received is still refused, visibly
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp:
        r = await erp.post("/api/resource/Stock Entry", json={**{k: cons[k] for k in ("stock_entry_type", "items")},
                                                               "items": [{**cons["items"][0], "batch_no": "NOPE"}]})
    assert r.status_code == 417 and "Batch NOPE not found" in r.text


# --- NCR scrap: the ERP writes off what the hub wrote off -------------------------------------------------------

@pytest.mark.parametrize("left", [12.0, 0.0])
async def test_an_ncr_scrap_writes_off_in_the_erp_what_was_left_of_the_lot(
        api: httpx.AsyncClient, client: Client, erp_sim: ErpSim, sessionmaker, left: float):
    number = f"WO-{uuid.uuid4().hex[:8].upper()}"
    assert (await api.post("/api/erp/events", json=fast_release(number))).status_code == 202
    await post_results(api, number, "iqc", IN_SPEC_IQC)
    await run_production(api, number)
    await post_results(api, number, "final", OUT_SPEC_FINAL)
    ncr = await wait_ncr(api, number)
    # part of the 20 made left the lot before the decision (here set in the database: `left` is what remains)
    async with sessionmaker() as s, s.begin():
        await s.execute(update(Lot).where(Lot.number == f"{number}-L1").values(quantity_remaining=left))
    # what left the lot was in the ERP's stock, so the ERP has its Batch (the connector leaves out a write-off row of
    # a batch the ERP never had: a lot scrapped before its Manufacture entry)
    remember_batches({f"{number}-L1": "SHAFT-25"})
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    assert (await decide(api, ncr, "scrap", "mrb_production", reason="cracked")).status_code == 200
    await wait_done(api, number)
    if left:
        deadline = time.monotonic() + 20
        while not (scraps := erp_sim.keyed("Stock Entry", f"{ncr}-SCRAP")) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        (scrap,) = scraps
        assert [(i["batch_no"], i["qty"]) for i in scrap["items"]] == [(f"{number}-L1", left)]  # not the lot's 20
    else:
        # the NCR took the branch that sends nothing (its patch marker), and the ERP has no write-off
        deadline = time.monotonic() + 20
        while PATCH_SCRAP_NOTHING_LEFT not in await _markers(client, f"ncr-{ncr}"):
            assert time.monotonic() < deadline, "the NCR never decided to send no write-off"
            await asyncio.sleep(0.2)
        assert erp_sim.keyed("Stock Entry", f"{ncr}-SCRAP") == []  # ERPNext refuses a row of quantity 0
        await record_history(client, f"ncr-{ncr}", "nonconformance_scrap_nothing_left")


async def _markers(client: Client, workflow_id: str) -> str:
    """The workflow's recorded markers (patches), as text."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return " ".join(str(e.marker_recorded_event_attributes) for e in history.events
                    if e.HasField("marker_recorded_event_attributes"))


# --- polling builds the release as the webhook does; the inbox says why it rejected ----------------------------

def _started_input(history: Any) -> dict[str, Any]:
    attrs = history.events[0].workflow_execution_started_event_attributes
    return json.loads(attrs.input.payloads[0].data)


async def test_a_polled_release_gets_the_ncr_timing_defaults_a_webhook_release_gets(
        api: httpx.AsyncClient, client: Client, settings, own_erp: ErpSim):
    name = f"erp-{uuid.uuid4().hex[:6]}"
    assert (await api.post("/api/endpoints", json={"name": name, "kind": "erpnext",
                                                   "config": erp_config(own_erp.url)})).status_code == 201
    async with httpx.AsyncClient(base_url=own_erp.url) as erp:
        r = await erp.post("/sim/work-orders", json={"count": 1, "quantity": 20, "notify": "none",
                                                     "prefix": f"WT{uuid.uuid4().hex[:4].upper()}-"})
        polled = r.json()["released"][0]
    assert (await poll(client, settings, name)).started == [polled]
    hooked = f"WO-{uuid.uuid4().hex[:8].upper()}"
    ev = release_event(hooked, 20, with_shipment=False)  # no timing of its own, as the ERP's work order has none
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    timing = {}
    for number in (polled, hooked):
        history = await client.get_workflow_handle(f"work-order-{number}").fetch_history()
        timing[number] = _started_input(history)["timing"]
    assert timing[polled]["ncr_severity"] == timing[hooked]["ncr_severity"]
    assert set(timing[polled]["ncr_severity"]) == {"critical", "major", "minor"}
    assert timing[polled] == timing[hooked]


async def test_the_erp_inbox_shows_why_an_event_was_rejected(api: httpx.AsyncClient, client: Client, settings,
                                                            own_erp: ErpSim):
    name = f"erp-{uuid.uuid4().hex[:6]}"
    assert (await api.post("/api/endpoints", json={"name": name, "kind": "erpnext",
                                                   "config": erp_config(own_erp.url)})).status_code == 201
    async with httpx.AsyncClient(base_url=own_erp.url, headers=AUTH) as erp:
        r = await erp.post("/sim/work-orders", json={"count": 1, "quantity": 20, "notify": "none",
                                                     "prefix": f"WX{uuid.uuid4().hex[:4].upper()}-"})
        bad = r.json()["released"][0]
        (await erp.put(f"/api/resource/Work Order/{bad}", json={"qty": 0})).raise_for_status()
    assert (await poll(client, settings, name)).rejected == [f"Work Order {bad}"]
    events = (await api.get("/api/erp/events", params={"limit": 500})).json()
    (rejected,) = [e for e in events if e["work_order"] == bad]
    assert rejected["event_type"] == "work_order.rejected"
    assert rejected["field"] == "Work Order: qty"
    assert "qty" in rejected["reason"] and "Correct it in the ERP" in rejected["reason"]
    # an event the hub took has no rejection to show
    taken = next(e for e in events if not e["event_type"].endswith(".rejected"))
    assert "reason" not in taken and "field" not in taken


async def test_a_delivery_note_of_a_batch_the_erp_still_blocks_waits_and_goes_once_it_is_enabled(
        api: httpx.AsyncClient, erp_sim: ErpSim, wo_number: str):
    """A recall's release wakes the work order waiting to ship at once, while the ERP's unblock goes in the recall's
    own activity: the delivery note may reach the ERP first, and be refused for a batch still disabled there. That
    is waited out and retried (the status says why), not left for an admin."""
    ev = fast_release(wo_number, with_shipment=False)
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    await wait_status(api, wo_number, lambda s: s["stage"] == "shipment", what="the shipment stage")
    lot = f"{wo_number}-L1"
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp:
        assert (await erp.put(f"/api/resource/Batch/{lot}", json={"disabled": 1})).status_code == 200
        ship = {"event_id": f"ship-{wo_number}", "event_type": "shipment.requested", "work_order": wo_number,
                "shipment": {"shipment": f"DN-{wo_number}", "sales_order": f"SO-{wo_number}",
                             "customer": "Customer A"}}
        assert (await api.post("/api/erp/events", json=ship)).status_code == 202
        st = await wait_status(api, wo_number, lambda s: any("still blocks a batch" in w for w in s["waiting_for"]),
                               what="the refused delivery note being retried", timeout=40)
        assert st["workflow"] == "RUNNING"
        assert erp_sim.keyed("Delivery Note", f"DN-{wo_number}") == []
        assert (await erp.put(f"/api/resource/Batch/{lot}", json={"disabled": 0})).status_code == 200
    done = await wait_done(api, wo_number, timeout=60)
    assert done["status"]["result"] == "completed" and done["status"]["shipment"] == f"DN-{wo_number}"
    assert len(erp_sim.keyed("Delivery Note", f"DN-{wo_number}")) == 1
