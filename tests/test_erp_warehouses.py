"""ERPNext stock entries name the site's warehouses, and a write-off of a batch a recall's hold disabled goes through.

The ERP simulator refuses, as ERPNext does, a stock entry row that takes material without its Source Warehouse, a
Manufacture entry's finished row without its Target Warehouse, and any use of a disabled batch. The ERPNext connector
fills the endpoint's `source_warehouse` / `target_warehouse` on rows that name none, and enables a disabled batch for
the one entry that takes from it, disabling it again after (also after a crash, also when the entry is refused)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from connectors.erpnext import ErpnextConnector
from connectors.errors import ConnectorConfigError, DeviceRejected
from erp_sim.app import create_app as create_erp_app
from tests.conftest import ErpSim
from tests.connectors.peers import ThreadedServer
from tests.connectors.test_erpnext_faithful import AUTH, erp_config
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    OUT_SPEC_IQC,
    decide,
    fast_release,
    post_results,
    run_production,
    wait_done,
    wait_ncr,
)
from tests.test_recall import wait_recall
from tests.test_recall_holds import decide as decide_recall
from tests.test_recall_holds import wait_batch, wait_doc
from tests.test_trace_plant import build_plant

pytestmark = pytest.mark.asyncio

SOURCE, TARGET = "Stores - TH", "Finished Goods - TH"  # ERPNext names a warehouse "<name> - <company abbr>"


@pytest_asyncio.fixture
async def site_warehouses(api: httpx.AsyncClient, erp_sim: ErpSim) -> AsyncIterator[None]:
    """The hub's ERP endpoint (`erp`) names the site's warehouses for the test (PUT /api/endpoints/erp, as an
    integrator sets them); afterwards it is as the session seeded it."""
    seeded = erp_config(erp_sim.url)
    r = await api.put("/api/endpoints/erp", json={"config": {**seeded, "source_warehouse": SOURCE,
                                                             "target_warehouse": TARGET}})
    assert r.status_code == 200, r.text
    try:
        yield
    finally:
        assert (await api.put("/api/endpoints/erp", json={"config": seeded})).status_code == 200


# --- through the hub ----------------------------------------------------------------------------------------------

async def test_an_ncr_scrap_is_written_off_from_the_configured_source_warehouse(
        api: httpx.AsyncClient, erp_sim: ErpSim, site_warehouses: None, wo_number: str):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", OUT_SPEC_IQC)  # the received material fails incoming inspection
    ncr = await wait_ncr(api, wo_number)
    lot = (await api.get(f"/api/ncrs/{ncr}")).json()["lot"]
    assert lot == f"{wo_number}-M1"  # a batch the ERP received (its purchase receipt)
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    r = await decide(api, ncr, "scrap", "mrb_production", reason="hardness out of tolerance")
    assert r.status_code == 200, r.text
    scrap = await wait_doc(erp_sim, "Stock Entry", f"{ncr}-SCRAP")
    assert (scrap["stock_entry_type"], scrap["docstatus"]) == ("Material Issue", 1)
    assert [(i["batch_no"], i.get("s_warehouse")) for i in scrap["items"]] == [(lot, SOURCE)]


async def test_a_recall_reject_of_a_held_batch_is_written_off_and_the_batch_stays_disabled(
        api: httpx.AsyncClient, erp_sim: ErpSim, sessionmaker: Any, site_warehouses: None):
    plant = await build_plant(sessionmaker, ship=False)
    b1, number = plant.lots["B1"], f"RC-WH-{plant.tag}"
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "lot", "suspect": b1,
                                             "reason": "cracked housings"})
    assert r.status_code == 202, r.text
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    await wait_batch(erp_sim, b1, disabled=1)  # held: blocked as ERPNext blocks a batch
    r = await decide_recall(api, number, b1, "reject")
    assert r.status_code == 200, r.text
    scrap = await wait_doc(erp_sim, "Stock Entry", f"{number}/{b1}-SCRAP")
    assert (scrap["stock_entry_type"], scrap["docstatus"]) == ("Material Issue", 1)
    assert [(i["batch_no"], i["qty"], i.get("s_warehouse")) for i in scrap["items"]] == [(b1, 20.0, SOURCE)]
    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "closing")
    assert not [w for w in rec["status"]["waiting_for"] if w.startswith("ERP")]
    # blocked again after the write-off (what is left stays blocked), and the connector's mark is gone
    (batch,) = [b for b in erp_sim.all_documents("Batch") if b["name"] == b1]
    assert batch["disabled"] == 1 and not batch.get("custom_hub_key")


async def test_the_manufacture_entry_puts_the_finished_lot_into_the_target_warehouse(
        api: httpx.AsyncClient, erp_sim: ErpSim, site_warehouses: None, wo_number: str):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, wo_number)
    assert done["status"]["erp_documents"].get(f"{wo_number}-CONS") == "sent", done["status"]
    (mfg,) = erp_sim.keyed("Stock Entry", f"{wo_number}-MFG")
    assert [(i["batch_no"], i["qty"], i.get("t_warehouse")) for i in mfg["items"]] == [(f"{wo_number}-L1", 20, TARGET)]
    (cons,) = erp_sim.keyed("Stock Entry", f"{wo_number}-CONS")
    assert {i.get("s_warehouse") for i in cons["items"]} == {"Stores"}  # the warehouse the work order names stays


async def test_an_empty_warehouse_is_refused_naming_the_field(api: httpx.AsyncClient, erp_sim: ErpSim):
    for field in ("source_warehouse", "target_warehouse"):
        r = await api.post("/api/endpoints", json={"name": f"erp-{uuid.uuid4().hex[:8]}", "kind": "erpnext",
                                                   "config": {**erp_config(erp_sim.url), field: "  "}})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == f"config.{field}"
        assert f"{field}: " in r.json()["detail"] and "name an ERPNext Warehouse" in r.json()["detail"]
    schema = next(c for c in (await api.get("/api/connectors")).json() if c["kind"] == "erpnext")["config_schema"]
    assert "Warehouse" in schema["properties"]["source_warehouse"]["description"]
    assert schema["properties"]["target_warehouse"]["default"] == "Finished Goods"


# --- the connector against the simulator: each step converges --------------------------------------------------

async def _batch(erp: httpx.AsyncClient, **fields: Any) -> str:
    name = f"B-{uuid.uuid4().hex[:8].upper()}"
    r = await erp.post("/api/resource/Batch", json={"batch_id": name, "item": "BAR-42CRMO4", **fields})
    assert r.status_code == 200, r.text
    return name


async def _state(erp: httpx.AsyncClient, batch: str) -> tuple[int, Any]:
    doc = (await erp.get(f"/api/resource/Batch/{batch}")).json()["data"]
    return doc.get("disabled"), doc.get("custom_hub_key")


def _issue(batch: str, qty: float = 2.0) -> dict[str, Any]:
    return {"stock_entry_type": "Material Issue", "items": [{"item_code": "BAR-42CRMO4", "batch_no": batch,
                                                             "qty": qty, "uom": "KG"}]}


async def test_a_retry_after_a_crash_at_any_step_leaves_one_entry_and_the_batch_disabled(erp_sim: ErpSim):
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp, \
            ErpnextConnector(erp_config(erp_sim.url)) as conn:
        # the whole way: held batch enabled for the entry, then disabled again
        held = await _batch(erp, disabled=1)
        doc = await conn.write_once("Stock Entry", _issue(held), f"K-{held}")
        assert doc["items"][0]["s_warehouse"] == "Stores" and await _state(erp, held) == (1, None)
        # a retry after a lost answer finds the entry and leaves the blocked batch alone (not enabled for a moment)
        before = (await erp.get(f"/api/resource/Batch/{held}")).json()["data"]["modified"]
        assert (await conn.write_once("Stock Entry", _issue(held), f"K-{held}"))["name"] == doc["name"]
        assert (await erp.get(f"/api/resource/Batch/{held}")).json()["data"]["modified"] == before
        # a crash after the enable (the batch enabled and marked, no entry yet): the retry writes and disables
        b = await _batch(erp, disabled=0)
        assert (await erp.put(f"/api/resource/Batch/{b}", json={"custom_hub_key": f"{b} / K-{b}"})).status_code == 200
        await conn.write_once("Stock Entry", _issue(b), f"K-{b}")
        assert len(erp_sim.keyed("Stock Entry", f"K-{b}")) == 1 and await _state(erp, b) == (1, None)
        # a crash after the entry (made, batch still enabled and marked): the retry makes no second one, disables
        c = await _batch(erp, disabled=0)
        assert (await erp.put(f"/api/resource/Batch/{c}", json={"custom_hub_key": f"{c} / K-{c}"})).status_code == 200
        r = await erp.post("/api/resource/Stock Entry", json={**_issue(c), "custom_hub_key": f"K-{c}", "items": [
            {**_issue(c)["items"][0], "s_warehouse": "Stores"}]})
        assert r.status_code == 200, r.text
        again = await conn.write_once("Stock Entry", _issue(c), f"K-{c}")
        assert again["name"] == r.json()["data"]["name"] and len(erp_sim.keyed("Stock Entry", f"K-{c}")) == 1
        assert await _state(erp, c) == (1, None)
        # a batch no hold blocked is written off and left enabled
        free = await _batch(erp)
        await conn.write_once("Stock Entry", _issue(free), f"K-{free}")
        assert len(erp_sim.keyed("Stock Entry", f"K-{free}")) == 1 and (await _state(erp, free))[0] in (0, None)


async def test_an_entry_refused_for_another_reason_leaves_the_batch_disabled(erp_sim: ErpSim):
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp, \
            ErpnextConnector(erp_config(erp_sim.url)) as conn:
        held = await _batch(erp, disabled=1)
        with pytest.raises(DeviceRejected, match="greater than 0"):
            await conn.write_once("Stock Entry", _issue(held, qty=0), f"K-{held}")
        assert await _state(erp, held) == (1, None) and erp_sim.keyed("Stock Entry", f"K-{held}") == []


async def test_a_site_whose_batch_lacks_the_hub_key_field_is_a_config_error_and_the_batch_stays_disabled(tmp_path):
    # the mark that makes a retry after a crash disable the batch again needs the custom field on Batch too
    server = ThreadedServer(create_erp_app(state_file=tmp_path / "erp.json",
                                           missing_fields=("Batch.custom_hub_key",)))
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as erp, \
                ErpnextConnector(erp_config(server.url)) as conn:
            held = await _batch(erp, disabled=1)
            with pytest.raises(ConnectorConfigError) as info:
                await conn.write_once("Stock Entry", _issue(held), f"K-{held}")
            assert await _state(erp, held) == (1, None)
            r = await erp.get("/sim/documents", params={"doctype": "Stock Entry"})
            assert r.json()["data"] == []  # stopped before the entry
    finally:
        server.stop()
    assert info.value.field == "hub_key_field" and "to Batch" in info.value.message


async def test_the_simulator_refuses_rows_without_their_warehouses_as_erpnext_does(erp_sim: ErpSim):
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as erp:
        b = await _batch(erp)
        r = await erp.post("/api/resource/Stock Entry", json=_issue(b))  # a write-off naming no source warehouse
        assert r.status_code == 417 and "Source Warehouse is mandatory" in r.text
        finished = {"item_code": "SHAFT-25", "batch_no": f"{b}-L1", "qty": 5, "is_finished_item": 1}
        r = await erp.post("/api/resource/Stock Entry", json={"stock_entry_type": "Manufacture", "items": [finished]})
        assert r.status_code == 417 and "Target Warehouse is mandatory" in r.text
        r = await erp.post("/api/resource/Stock Entry", json={"stock_entry_type": "Manufacture", "items": [
            {**finished, "t_warehouse": TARGET}, {**_issue(b)["items"][0], "s_warehouse": SOURCE}]})
        assert r.status_code == 200, r.text
