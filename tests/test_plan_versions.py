"""A result keeps the plan version it was taken under (the final inspection too), and the shipment gate refuses
a lot whose outgoing inspection is missing, pending or failed, naming it (issue 6)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from core.errors import Conflict
from domain import inspection_triggers, sampling, shipping
from domain.models import AuditLog
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    decide,
    post_results,
    report_operation,
    run_production,
    wait_done,
    wait_ncr,
    wait_status,
)
from tests.test_inspection_triggers import pending, release, replays, results, save_plan, uid

pytestmark = pytest.mark.asyncio


async def test_a_final_inspection_keeps_the_plan_version_it_was_opened_under(api: httpx.AsyncClient, client,
                                                                           sessionmaker, wo_number):
    item, material = f"VER-{uid()}", f"MAT-{uid()}"
    v1 = await save_plan(api, item, "final", [
        {"name": "outer diameter", "kind": "variable", "severity": "minor", "lower": 24.95, "upper": 25.05,
         "unit": "mm"},
    ], {"minor": {"aql": 4.0}})
    assert v1["version"] == 1
    assert (await api.post("/api/erp/events", json=release(wo_number, item, material))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    _, fin = await pending(api, wo_number, "final")
    n = sampling.plan(20, "II", "4.0").units_to_inspect
    assert fin["sampling"]["plan_version"] == 1 and fin["sampling"]["trigger"] == "final"
    assert fin["sampling"]["characteristics"]["outer diameter"]["n"] == n

    # a new version while the inspection waits: wider limits, and the characteristic made critical
    v2 = await save_plan(api, item, "final", [
        {"name": "outer diameter", "kind": "variable", "severity": "critical", "lower": 24.9, "upper": 25.1,
         "unit": "mm"},
    ], {"critical": {"aql": 0.65}})
    assert v2["version"] == 2
    # 25.08 is out of version 1's limits and within version 2's: judged by version 1
    r = await results(api, fin["number"], [{"characteristic": "outer diameter", "values": [25.0] * (n - 1) + [25.08]}])
    assert r.status_code == 202 and r.json()["verdict"] == "failed", r.text
    ncr = await wait_ncr(api, wo_number)
    got = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert got["severity"] == "minor", got  # version 1's severity, not version 2's critical
    shown = (await api.get(f"/api/inspections/{fin['number']}")).json()
    assert shown["status"] == "failed" and shown["sampling"]["plan_version"] == 1
    (c,) = shown["characteristics"]
    assert (c["lower"], c["upper"], c["sample_size"], c["verdict"]) == (24.95, 25.05, n, "failed")
    async with sessionmaker() as s:
        opened = (await s.execute(select(AuditLog).where(
            AuditLog.entity_key == fin["number"], AuditLog.action == "inspection.opened"))).scalar_one()
    assert opened.changes["plan_version"] == 1 and opened.changes["trigger"] == "final"

    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="gauge misread")).status_code == 200
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed"
    await replays(client, f"work-order-{wo_number}")


async def test_a_final_inspection_without_a_plan_uses_the_work_orders_list(api: httpx.AsyncClient, wo_number):
    item, material = f"VER-{uid()}", f"MAT-{uid()}"
    assert (await api.post("/api/erp/events", json=release(wo_number, item, material))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    _, fin = await pending(api, wo_number, "final")
    assert fin["sampling"] is None and fin["characteristics"][0]["sample_size"] == 3  # DEFAULT_FINAL_PLAN
    assert (await post_results(api, wo_number, "final", IN_SPEC_FINAL))["verdict"] == "passed"
    assert (await wait_done(api, wo_number))["status"]["result"] == "completed"


async def test_the_shipment_gate_names_the_missing_outgoing_inspection(api: httpx.AsyncClient, client, sessionmaker,
                                                                       settings, wo_number):
    item, material = f"GATE-{uid()}", f"MAT-{uid()}"
    await save_plan(api, item, "outgoing", [
        {"name": "label", "kind": "attribute", "severity": "critical", "defect_codes": ["MISSING", "SMEARED"]},
    ], {"critical": {"aql": 1.0}})
    assert (await api.post("/api/erp/events", json=release(wo_number, item, material))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    lot = f"{wo_number}-L1"
    needs = f"outgoing inspection (plan version 1 of item {item}) not passed"

    async def refused() -> str:
        async with sessionmaker() as s, s.begin():
            with pytest.raises(Conflict) as exc:
                await shipping.ship_lot(s, work_order=wo_number, lot=lot, shipment=f"DN-EARLY-{wo_number}",
                                        sales_order="SO-X", customer="X", carrier=None, tracking_number=None,
                                        resolver=settings.resolver_base_url)
        assert exc.value.field == "shipment"
        return exc.value.message

    # the lot exists once operation 10 is recorded; no outgoing inspection was opened yet
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
    msg = await refused()
    assert f"{needs}: none was opened yet" in msg, msg
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)

    # opened and waiting for its results: the refusal names it
    _, out = await pending(api, wo_number, "outgoing")
    assert out["number"] == f"OUT-{wo_number}-1"
    msg = await refused()
    assert f"lot {lot!r} of work order {wo_number} cannot ship: {needs}: OUT-{wo_number}-1 waits for results" in msg
    async with sessionmaker() as s:
        problems = await inspection_triggers.shipment_problems(s, work_order=wo_number, lot=lot)
    assert problems == [f"{needs}: OUT-{wo_number}-1 waits for results"]

    # failed, its NCR open: the inspection and the NCR are named
    r = await results(api, out["number"], [{"characteristic": "label", "values": [1]}])
    assert r.json()["verdict"] == "failed", r.text
    ncr = await wait_ncr(api, wo_number)
    await wait_status(api, wo_number, lambda s: ncr in s["open_ncrs"], what="the NCR")
    msg = await refused()
    assert f"{needs}: OUT-{wo_number}-1 failed and its NCR allows no shipment yet" in msg, msg
    assert f"NCR {ncr} is open" in msg, msg

    # dismissed: the failed inspection is released by its NCR and the lot ships
    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="label present, scanner fault")).status_code == 200
    done = await wait_done(api, wo_number)
    assert done["status"]["shipment"] == f"DN-{wo_number}" and done["status"]["shipment_gate"] == []
    await replays(client, f"work-order-{wo_number}")
