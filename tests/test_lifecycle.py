"""A work order end to end through the HTTP API, on a real database and a real Temporal server."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import httpx
import pypdfium2
import pytest

from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    OUT_SPEC_FINAL,
    decide,
    fast_release,
    post_results,
    run_production,
    scrap_work_order,
    wait_done,
    wait_ncr,
)

pytestmark = pytest.mark.asyncio


async def record_history(client, workflow_id: str, name: str) -> None:
    """With RECORD_HISTORIES=1, keep this run's history for the replay test (tests/histories)."""
    if os.environ.get("RECORD_HISTORIES") == "1":
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        (Path(__file__).parent / "histories" / f"{name}.json").write_text(history.to_json())


async def test_erp_event_to_shipment_with_ncr_then_trace_and_history(api: httpx.AsyncClient, client, erp_sim,
                                                                     wo_number):
    r = await api.post("/api/erp/events", json=fast_release(wo_number))
    assert r.status_code == 202, r.text
    assert r.json()["workflow_id"] == f"work-order-{wo_number}"

    iqc = await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    assert iqc["verdict"] == "passed"
    await run_production(api, wo_number)
    fin = await post_results(api, wo_number, "final", OUT_SPEC_FINAL)
    assert fin["verdict"] == "failed" and fin["failed_characteristics"] == ["outer diameter"]

    ncr = await wait_ncr(api, wo_number)
    lot = (await api.get(f"/api/ncrs/{ncr}")).json()["lot"]
    assert (await api.get(f"/api/trace/forward/{lot}")).json()["nodes"][0]["status"] == "on_hold"

    # refusals the reviewer sees: wrong state, missing reason, wrong role
    r = await decide(api, ncr, "use_as_is", "mrb_engineering")
    assert r.status_code == 409 and "not allowed" in r.json()["detail"]
    r = await decide(api, ncr, "confirm", "qa_supervisor", reason="  ")
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    r = await decide(api, ncr, "confirm", "mrb_production")
    assert r.status_code == 403 and "qa_supervisor" in r.json()["detail"]
    r = await decide(api, "NCR-NOPE-1", "confirm", "qa_supervisor")
    assert r.status_code == 404

    r = await decide(api, ncr, "confirm", "qa_supervisor", reason="diameter confirmed on CMM")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "mrb"
    r = await decide(api, ncr, "use_as_is", "mrb_engineering", reason="customer concession C-12")
    assert r.status_code == 200, r.text
    # a concession needs the whole board: engineering has signed, production has not
    assert r.json()["state"] == "mrb" and "mrb_production" in r.json()["waiting_for"]
    r = await decide(api, ncr, "use_as_is", "mrb_engineering", reason="again")
    assert r.status_code == 409 and "needs the signature of mrb_production" in r.json()["detail"]
    r = await decide(api, ncr, "use_as_is", "mrb_production", reason="customer concession C-12")
    assert r.status_code == 200 and r.json()["state"] == "closed", r.text

    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed"
    assert done["record"]["status"] == "completed"
    assert done["status"]["shipment"] == f"DN-{wo_number}"
    # the ERP received the completion and the delivery note
    assert f"DN-{wo_number}" in erp_sim.documents("Delivery Note")
    assert f"{wo_number}-MFG" in erp_sim.documents("Stock Entry")
    # the consumption entry names the batch the ERP received (fast_release stored the release's records in the
    # simulator first): accepted once, not noted as refused
    assert len(erp_sim.keyed("Stock Entry", f"{wo_number}-CONS")) == 1
    assert done["status"]["erp_documents"][f"{wo_number}-CONS"] == "sent"

    # backward trace from a unit serial reaches the supplier, heat and certificate
    codes = done["status"]["codes"]
    assert codes["count"] == 20
    unit = f"https://id.tracehub.example/01/09506000134352/21/{codes['first_serial']}"
    back = (await api.get(f"/api/trace/backward/{unit}")).json()
    assert back["lot"] == f"{wo_number}-L1" and back["unit"] == unit
    material = next(n for n in back["nodes"] if n["kind"] == "material")
    assert material["heat_number"] == f"H{wo_number}" and material["supplier"] == "ACME-STEEL"
    assert material["certificate_ref"] == f"CERT-H{wo_number}"
    out = back["nodes"][0]
    assert [o["seq"] for o in out["operations"]] == [10, 20]
    assert out["operations"][1]["parameters"] == {"temperature_c": 860, "soak_min": 45}
    assert out["concession"].startswith(f"{ncr}: customer concession")
    # ...and the renderings a quality engineer sends to the customer show it too
    r = await api.get(f"/api/trace/backward/{unit}", params={"format": "csv"})
    row = next(x for x in csv.DictReader(io.StringIO(r.text)) if x["id"] == f"{wo_number}-L1")
    assert row["concession"] == out["concession"]
    r = await api.get(f"/api/trace/backward/{unit}", params={"format": "pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    pdf_text = "".join(p.get_textpage().get_text_range() for p in pypdfium2.PdfDocument(r.content))
    assert f"released under concession: {ncr}: customer concession C-12" in " ".join(pdf_text.split())
    assert [d["action"] for d in out["ncrs"][0]["decisions"]] == ["confirm", "use_as_is", "use_as_is"]
    assert out["shipments"][0]["customer"] == "Customer A"
    # the lot's units as the hub issued them (its serial block under the item's code rule)
    block = {"first": codes["first_serial"], "last": codes["last_serial"], "count": 20, "first_uri": unit,
             "last_uri": f"https://id.tracehub.example/01/09506000134352/21/{codes['last_serial']}"}
    assert out["units"] == {"count": 20, "blocks": [block]}, out["units"]

    # forward trace from the material lot reaches the shipped lot, its units and its customer
    fwd = (await api.get(f"/api/trace/forward/{wo_number}-M1")).json()
    assert fwd["customers"] == ["Customer A"]
    assert {n["id"]: n["status"] for n in fwd["nodes"]}[f"{wo_number}-L1"] == "shipped"
    assert fwd["summary"]["units"] == 20
    assert next(n for n in fwd["nodes"] if n["id"] == f"{wo_number}-L1")["units"] == {"count": 20, "blocks": [block]}
    row = next(x for x in fwd["flat"] if x["id"] == f"{wo_number}-L1")
    assert row["units"] == 20

    # the history timeline an admin reads
    hist = (await api.get(f"/api/work-orders/{wo_number}/history")).json()
    kinds = [e["event"] for e in hist["events"]]
    assert kinds[0] == "workflow started" and kinds[-1] == "workflow completed"
    assert any(e.get("activity") == "notify_erp" for e in hist["events"])
    assert any(e.get("signal") == "submit_inspection" for e in hist["events"])
    child = hist["children"][f"ncr-{ncr}"]
    assert [e.get("update") for e in child if e["event"] == "update accepted"] == ["decide"] * 3
    await record_history(client, f"work-order-{wo_number}", "work_order_ncr_use_as_is_two_signatures")
    await record_history(client, f"ncr-{ncr}", "nonconformance_use_as_is_two_signatures")


async def test_scrap_completes_short_and_nothing_ships(api: httpx.AsyncClient, erp_sim, wo_number):
    ncr, done = await scrap_work_order(api, wo_number)
    assert done["status"]["result"] == "completed_short"
    assert done["status"]["shipment"] is None and done["status"]["scrap_quantity"] == 20
    fwd = (await api.get(f"/api/trace/forward/{wo_number}-L1")).json()
    assert fwd["nodes"][0]["status"] == "rejected" and fwd["customers"] == []
    assert f"DN-{wo_number}" not in erp_sim.documents("Delivery Note")
    # the ERP never had the lot (no Manufacture entry: nothing good was made), so nothing is written off there: the
    # ERPNext connector leaves out a write-off of a batch the ERP does not have (ERPNext would refuse it: not found)
    entries = erp_sim.documents("Stock Entry")
    assert f"{wo_number}-MFG" not in entries and f"{ncr}-SCRAP" not in entries
    assert f"{wo_number}-L1" not in erp_sim.documents("Batch")
    # a decided NCR takes no more decisions
    r = await decide(api, ncr, "use_as_is", "mrb_production")
    assert r.status_code == 409


async def test_rework_repeats_the_operation_and_reinspects(api: httpx.AsyncClient, client, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", OUT_SPEC_FINAL)
    ncr = await wait_ncr(api, wo_number)
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    r = await decide(api, ncr, "rework", "mrb_production", reason="regrind", rework_operation=10)
    assert r.status_code == 200, r.text
    from tests.helpers import report_operation
    await report_operation(api, wo_number, 10, [], report_id=f"{wo_number}-rework1", good=19, scrap=1)
    second = await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    assert second["inspection"] == f"FIN-{wo_number}-2" and second["verdict"] == "passed"
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed_short"  # 19 of 20 good after rework
    back = (await api.get(f"/api/trace/backward/{wo_number}-L1")).json()
    ops = back["nodes"][0]["operations"]
    assert [(o["seq"], o["rework"]) for o in ops] == [(10, False), (20, False), (10, True)]
    assert [i["status"] for i in back["nodes"][0]["inspections"]] == ["failed", "passed"]
    await record_history(client, f"work-order-{wo_number}", "work_order_rework")


async def test_a_large_order_issues_its_codes_in_a_child_workflow(api: httpx.AsyncClient, client, wo_number):
    ev = fast_release(wo_number)
    ev["work_order"]["codes_child_threshold"] = 5  # "large" for this test: 20 units
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed" and done["status"]["codes"]["count"] == 20
    child = await client.get_workflow_handle(f"issue-codes-{wo_number}").describe()
    assert child.status.name == "COMPLETED"
    unit = done["status"]["codes"]["last_serial"]
    back = (await api.get(f"/api/trace/backward/https://id.tracehub.example/01/09506000134352/21/{unit}")).json()
    assert back["lot"] == f"{wo_number}-L1"
    # the child's blocks are the lot's units in the trace
    assert back["nodes"][0]["units"]["count"] == 20 and back["nodes"][0]["units"]["blocks"][-1]["last"] == unit
