"""Measurements from gauges through connectors: a plan characteristic names its gauge as `<endpoint>:<point>`
(versioned with the plan); POST /api/inspections/{number}/read-gauges reads the points through the endpoint's
connector (here the in-process Modbus PLC of erp_sim.plant), records each value with its source and the hub
judges them. The order runs first-article, patrol (a critical characteristic failing opens a critical NCR) and
outgoing inspections; with RECORD_HISTORIES=1 its history is kept for the replay test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from domain.audit import verify_chain
from domain.models import AuditLog
from erp_sim.plant import PlcSim
from tests.connectors.peers import free_port
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    decide,
    post_results,
    report_operation,
    role_headers,
    wait_done,
    wait_ncr,
    wait_status,
)
from tests.test_inspection_triggers import pending, release, save_plan, uid
from tests.test_lifecycle import record_history

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(scope="session")
async def plc_gauge() -> AsyncIterator[PlcSim]:
    sim = await PlcSim().start()
    yield sim
    await sim.stop()


async def gauge_endpoint(api: httpx.AsyncClient, plc: PlcSim) -> str:
    name = f"gauge-{uuid.uuid4().hex[:8]}"
    r = await api.post("/api/endpoints", json={"name": name, "kind": "modbus", "config": plc.endpoint_config()})
    assert r.status_code == 201, r.text
    return name


async def read_gauges(api: httpx.AsyncClient, number: str, **body) -> httpx.Response:
    return await api.post(f"/api/inspections/{number}/read-gauges", headers=role_headers("inspector"),
                          json={"inspector": "inspector-1", **body})


async def test_a_gauge_is_named_as_endpoint_and_point_in_the_plan(api: httpx.AsyncClient):
    item = f"GAU-{uid()}"
    r = await api.post("/api/quality/plans", headers=role_headers("quality_manager"), json={
        "item": item, "operation": "Turning", "sampling": {"major": {"aql": 1.0}}, "characteristics": [
            {"name": "offset", "kind": "variable", "severity": "major", "lower": -1, "upper": 1, "unit": "mm",
             "gauge": "bad name:axis_offset"}]})
    assert r.status_code == 422 and r.json().get("field") == "characteristics[0].gauge", r.text
    assert "`<endpoint>:<point>`" in r.json()["detail"]
    plain = await save_plan(api, item, "Turning", [
        {"name": "offset", "kind": "variable", "severity": "major", "lower": -1, "upper": 1, "unit": "mm",
         "gauge": "caliper 12"}], {"major": {"aql": 1.0}})  # a label without a colon is still just a label
    wired = await save_plan(api, item, "Turning", [
        {"name": "offset", "kind": "variable", "severity": "major", "lower": -1, "upper": 1, "unit": "mm",
         "gauge": "plc-line1:axis_offset"}], {"major": {"aql": 1.0}})
    assert (plain["version"], wired["version"]) == (1, 2)
    assert wired["characteristics"][0]["gauge"] == "plc-line1:axis_offset"
    versions = (await api.get(f"/api/quality/plans/{item}/Turning")).json()
    assert {v["version"]: v["characteristics"][0]["gauge"] for v in versions} == {
        1: "caliper 12", 2: "plc-line1:axis_offset"}


async def test_gauges_feed_first_article_and_patrol_and_a_critical_failure_opens_a_critical_ncr(
        api: httpx.AsyncClient, client, sessionmaker, plc_gauge: PlcSim, wo_number):
    plc = plc_gauge
    ep = await gauge_endpoint(api, plc)
    item, material = f"GAU-{uid()}", f"GAUM-{uid()}"
    await save_plan(api, item, "Turning", [
        {"name": "offset", "kind": "variable", "severity": "major", "lower": -0.2, "upper": 0.2, "unit": "mm",
         "gauge": f"{ep}:axis_offset"},
    ], {"major": {"aql": 1.0}}, {"first_article": True})
    await save_plan(api, item, "Heat treatment", [
        {"name": "force", "kind": "variable", "severity": "critical", "lower": 30, "upper": 45, "unit": "kN",
         "gauge": f"{ep}:press_force"},
        {"name": "colour", "kind": "variable", "severity": "minor", "lower": 0, "upper": 10},
    ], {"critical": {"aql": 1.0}, "minor": {"aql": 4.0}}, {"patrol_every_units": 10})
    await save_plan(api, item, "outgoing", [
        {"name": "label", "kind": "attribute", "severity": "major", "defect_codes": ["MISSING"]},
    ], {"major": {"aql": 1.0}})
    ev = release(wo_number, item, material)
    ev["work_order"]["timing"]["ncr_severity"] = {
        "critical": {"reminder_after": 1, "escalate_after": 2, "due_after": 5},
        "major": {"reminder_after": 600, "escalate_after": 1200, "due_after": 3600}}
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)

    # first article: the PLC's axis offset is read and judged
    _, fa = await pending(api, wo_number, "first_article")
    r = await api.post(f"/api/inspections/{fa['number']}/results", headers=role_headers("inspector"), json={
        "inspector": "x", "measurements": [{"characteristic": "offset", "values": [0.0],
                                            "source": {"endpoint": ep, "point": "axis_offset",
                                                       "at": "2026-01-01T00:00:00Z"}}]})
    assert r.status_code == 422 and "source" in r.json()["detail"], r.text  # a client cannot claim a gauge read
    # the device unreachable: 503 naming the cause, nothing recorded; the inspector triggers the read again
    r = await api.put(f"/api/endpoints/{ep}", json={"config": plc.endpoint_config(port=free_port(), timeout_s=1)})
    assert r.status_code == 200, r.text
    r = await read_gauges(api, fa["number"])
    assert r.status_code == 503, r.text
    assert (await api.get(f"/api/inspections/{fa['number']}")).json()["status"] == "pending"
    assert (await api.put(f"/api/endpoints/{ep}", json={"config": plc.endpoint_config()})).status_code == 200
    await plc.set("axis_offset", 0.05)
    r = await read_gauges(api, fa["number"])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["verdict"] == "passed" and len(body["read"]) == 1
    read = body["read"][0]
    assert (read["characteristic"], read["endpoint"], read["point"], read["unit"]) == ("offset", ep, "axis_offset",
                                                                                       "mm")
    assert read["value"] == pytest.approx(0.05) and datetime.fromisoformat(read["at"])
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
    ins = (await api.get(f"/api/inspections/{fa['number']}")).json()
    assert ins["status"] == "passed" and ins["characteristics"][0]["values"] == [pytest.approx(0.05)]
    async with sessionmaker() as s:
        row = (await s.execute(select(AuditLog).where(AuditLog.entity_key == fa["number"],
                                                      AuditLog.action == "inspection.recorded"))).scalar_one()
    src = row.changes["sources"]["offset"]
    assert (src["endpoint"], src["point"], src["index"]) == (ep, "axis_offset", 0) and src["at"]

    # patrol: a gauge reads the press force of one unit, the inspector gives the rest of the sample; the force
    # (critical) is out of its limits, so the NCR opens critical with the critical durations
    r = await api.post(f"/api/work-orders/{wo_number}/operations/20/progress", json={"units": 12},
                       headers=role_headers("mes"))
    assert r.status_code == 202, r.text
    _, pat = await pending(api, wo_number, "patrol")
    n = {c: v["n"] for c, v in pat["sampling"]["characteristics"].items()}
    r = await read_gauges(api, pat["number"], measurements=[{"characteristic": "colour", "values": [5.0] * n["colour"]}])
    assert r.status_code == 422 and "'force' has 1 value(s)" in r.json()["detail"], r.text  # sample not complete
    await plc.set("press_force", 52.5)
    manual = [{"characteristic": "colour", "values": [5.0] * n["colour"]}]
    if n["force"] > 1:
        manual.append({"characteristic": "force", "values": [40.0] * (n["force"] - 1)})
    r = await read_gauges(api, pat["number"], measurements=manual)
    assert r.status_code == 202, r.text
    assert r.json()["verdict"] == "failed" and r.json()["failed_characteristics"] == ["force"]
    assert r.json()["read"][0]["value"] == pytest.approx(52.5) and r.json()["read"][0]["index"] == n["force"] - 1
    ncr = await wait_ncr(api, wo_number)
    got = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert got["severity"] == "critical", got
    assert (datetime.fromisoformat(got["due_at"]) - datetime.fromisoformat(got["opened_at"])).total_seconds() == 5
    st = await client.get_workflow_handle(f"ncr-{ncr}").query("status")
    assert st["severity"] == "critical"
    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="gauge fixture loose")).status_code == 200
    await wait_status(api, wo_number, lambda s: not s["open_ncrs"], what="the NCR dismissed")
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)

    # outgoing: no gauge in its plan, so read-gauges says where results go
    _, out = await pending(api, wo_number, "outgoing")
    r = await read_gauges(api, out["number"])
    assert r.status_code == 422 and f"/api/inspections/{out['number']}/results" in r.json()["detail"], r.text
    r = await api.post(f"/api/inspections/{out['number']}/results", headers=role_headers("inspector"),
                       json={"inspector": "inspector-1", "measurements": [{"characteristic": "label", "values": [0]}]})
    assert r.status_code == 202 and r.json()["verdict"] == "passed", r.text
    r = await read_gauges(api, fa["number"])
    assert r.status_code == 409 and "already has its verdict" in r.json()["detail"]
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed"
    async with sessionmaker() as s:
        assert (await verify_chain(s)).ok
    await record_history(client, f"work-order-{wo_number}", "work_order_first_article_patrol_outgoing")
