"""The nonconformance review: states and who moves them, classification and content (audited), verification
of dispositions, escalation per severity, overdue NCRs, and CAPA records. Real database, Temporal and API."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from domain.models import AuditLog
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    OUT_SPEC_FINAL,
    OUT_SPEC_IQC,
    PASSWORD,
    decide,
    fast_release,
    post_results,
    remember_in_erp,
    report_operation,
    role_headers,
    run_production,
    wait_done,
    wait_ncr,
)
from tests.test_lifecycle import record_history

pytestmark = pytest.mark.asyncio


def release(number: str, **timing: Any) -> dict:
    ev = fast_release(number)
    ev["work_order"]["timing"].update(timing)
    return ev


async def wait_ncr_state(api: httpx.AsyncClient, ncr: str, pred, what: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    n: dict = {}
    while time.monotonic() < deadline:
        n = (await api.get(f"/api/ncrs/{ncr}")).json()
        if pred(n):
            return n
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} on {ncr}; last: {n}")


async def final_ncr(api: httpx.AsyncClient, number: str, **timing: Any) -> str:
    assert (await api.post("/api/erp/events", json=release(number, **timing))).status_code == 202
    await post_results(api, number, "iqc", IN_SPEC_IQC)
    await run_production(api, number)
    await post_results(api, number, "final", OUT_SPEC_FINAL)
    return await wait_ncr(api, number)


async def test_review_content_scrap_and_signed_verification(api: httpx.AsyncClient, client, erp_sim, sessionmaker,
                                                            wo_number):
    ncr = await final_ncr(api, wo_number)
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["state"] == "open" and n["severity"] == "major" and n["overdue"] is False
    assert n["waiting_on"] == ["qa_supervisor", "quality_manager"] and "review" in n["waiting_for"]
    opened = datetime.fromisoformat(n["opened_at"])
    # fast_release's legacy durations apply to every severity: due 7 days after opening
    assert datetime.fromisoformat(n["due_at"]) - opened == timedelta(days=7)

    # transitions: refused with the state and what is allowed; the role comes from the login
    r = await decide(api, ncr, "verify", "qa_supervisor")
    assert r.status_code == 409 and "is open" in r.json()["detail"] and "allowed now: confirm, dismiss, review" \
        in r.json()["detail"]
    r = await decide(api, ncr, "review", "mrb_production")
    assert r.status_code == 403 and "qa_supervisor" in r.json()["detail"]
    r = await decide(api, ncr, "review", "qa_supervisor", reason="containment started")
    assert r.status_code == 200 and r.json()["state"] == "qa_review", r.text
    assert r.json()["waiting_on"] == ["qa_supervisor", "quality_manager"]
    r = await decide(api, ncr, "review", "qa_supervisor", reason="again")
    assert r.status_code == 409 and "is qa_review" in r.json()["detail"]

    # classification: defect codes from the catalogue raise the severity; quantity within the lot
    qa = role_headers("qa_supervisor")
    r = await api.patch(f"/api/ncrs/{ncr}", headers=role_headers("inspector"), json={"severity": "minor"})
    assert r.status_code == 403
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={"defect_codes": ["NOPE-1"]})
    assert r.status_code == 422 and "defect_codes" in r.json()["detail"] and "NOPE-1" in r.json()["detail"]
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={"quantity_affected": 1000})
    assert r.status_code == 422 and "quantity_affected" in r.json()["detail"]
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={})
    assert r.status_code == 422 and "at least one" in r.json()["detail"]
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={"defect_codes": ["SURF-CRACK"], "quantity_affected": 5})
    assert r.status_code == 200, r.text
    n = r.json()
    assert n["severity"] == "critical" and n["defect_codes"] == ["SURF-CRACK"] and n["quantity_affected"] == 5
    assert datetime.fromisoformat(n["due_at"]) - opened == timedelta(days=7)  # the legacy table: same due

    # containment and root cause
    r = await api.post(f"/api/ncrs/{ncr}/containment", headers=qa,
                       json={"action": "sort finished stock", "owner": "t-inspector", "due": "2026-12-01T12:00:00"})
    assert r.status_code == 422 and "due" in r.json()["detail"]  # no UTC offset
    r = await api.post(f"/api/ncrs/{ncr}/containment", headers=qa,
                       json={"action": "sort finished stock", "owner": "t-inspector", "due": "2026-12-01T12:00:00Z"})
    assert r.status_code == 201 and r.json()["seq"] == 1 and r.json()["done_at"] is None
    r = await api.patch(f"/api/ncrs/{ncr}/containment/1", headers=qa, json={"done": True})
    assert r.status_code == 200 and r.json()["done_at"]
    assert (await api.patch(f"/api/ncrs/{ncr}/containment/9", headers=qa, json={"done": True})).status_code == 404
    r = await api.patch(f"/api/ncrs/{ncr}/root-cause", headers=qa, json={"category": "luck", "text": "bad day"})
    assert r.status_code == 422 and "category" in r.json()["detail"] and "machine" in r.json()["detail"]
    r = await api.patch(f"/api/ncrs/{ncr}/root-cause", headers=qa,
                        json={"category": "machine", "text": "worn grinding wheel"})
    assert r.status_code == 200 and r.json()["root_cause"] == {"category": "machine", "text": "worn grinding wheel"}
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert [c["action"] for c in n["containment"]] == ["sort finished stock"] and n["containment"][0]["done_at"]

    # each change is audited with who, before and after
    async with sessionmaker() as s:
        rows = (await s.execute(select(AuditLog).where(AuditLog.entity_key == ncr).order_by(AuditLog.seq))).scalars()
        entries = {a.action: a for a in rows}
    upd = entries["ncr.updated"]
    assert upd.actor == "t-qa_supervisor"
    assert upd.changes["before"]["severity"] == "major" and upd.changes["after"]["severity"] == "critical"
    assert entries["ncr.root_cause"].changes["after"] == {"category": "machine", "text": "worn grinding wheel"}
    assert entries["ncr.containment_updated"].changes["before"]["done_at"] is None

    # MRB decides scrap: carried out, and the work order moves on while the NCR waits for verification
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="confirmed on CMM")).status_code == 200
    r = await decide(api, ncr, "scrap", "mrb_production", reason="cracked")
    assert r.status_code == 200 and r.json()["state"] in ("disposition", "verification"), r.text
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed_short" and done["status"]["scrap_quantity"] == 20
    # the lot never reached the ERP (nothing good was made, no Manufacture entry): no write-off of it there
    assert f"{ncr}-SCRAP" not in erp_sim.documents("Stock Entry")
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] == "verification", "verification")
    assert n["disposition"] == "scrap" and n["waiting_on"] == ["qa_supervisor", "quality_manager"]
    assert "verify scrapped material destroyed" in n["waiting_for"]
    r = await decide(api, ncr, "use_as_is", "mrb_production")
    assert r.status_code == 409 and "is verification" in r.json()["detail"] and "allowed now: verify" \
        in r.json()["detail"]
    r = await decide(api, ncr, "verify", "mrb_engineering")
    assert r.status_code == 403
    r = await decide(api, ncr, "verify", "qa_supervisor", reason="scrap bin emptied, destruction note 77")
    assert r.status_code == 200 and r.json()["state"] == "closed", r.text
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["state"] == "closed" and n["closed_at"] and n["waiting_for"] is None and n["waiting_on"] == []
    assert n["verification"]["result"] == "verified" and n["verification"]["by"] == "t-qa_supervisor"
    last = n["decisions"][-1]
    assert last["action"] == "verify" and last["signature"]["meaning"] == "verified" and last["signature"]["valid"]
    assert [d["action"] for d in n["decisions"]] == ["review", "confirm", "scrap", "verify"]
    # a closed NCR's classification is history; its root cause may still be completed
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={"severity": "minor"})
    assert r.status_code == 409 and "closed" in r.json()["detail"]
    await client.get_workflow_handle(f"ncr-{ncr}").result()
    await record_history(client, f"ncr-{ncr}", "nonconformance_review_scrap_verified")


async def test_rework_is_verified_by_the_passed_reinspection(api: httpx.AsyncClient, client, wo_number):
    ncr = await final_ncr(api, wo_number, ncr_reinspection_poll=1)
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    r = await decide(api, ncr, "rework", "mrb_production", reason="regrind", rework_operation=10)
    assert r.status_code == 200 and r.json()["state"] == "verification", r.text
    assert r.json()["waiting_on"][0] == "inspector" and "re-inspection" in r.json()["waiting_for"]
    # the work order goes on with the rework while the NCR waits for its re-inspection
    await report_operation(api, wo_number, 10, [], report_id=f"{wo_number}-rework1", good=20)
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["state"] == "verification" and n["verification"] is None
    second = await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    assert second["verdict"] == "passed"
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] == "closed", "closing by the re-inspection")
    assert n["verification"]["result"] == "verified"
    assert n["verification"]["note"] == f"re-inspection FIN-{wo_number}-2 passed"
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed"
    await client.get_workflow_handle(f"ncr-{ncr}").result()
    await record_history(client, f"ncr-{ncr}", "nonconformance_review_rework_reinspected")


async def test_escalation_per_severity_overdue_and_capa(api: httpx.AsyncClient, wo_number):
    sev = {"major": {"reminder_after": 600, "escalate_after": 1200, "due_after": 3600},
           "critical": {"reminder_after": 1, "escalate_after": 2, "due_after": 1},
           "minor": {"reminder_after": 3600, "escalate_after": 7200, "due_after": 86400}}
    ev = fast_release(wo_number, with_shipment=False)
    ev["work_order"]["timing"] = {"ncr_severity": sev}
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", OUT_SPEC_IQC)
    ncr = await wait_ncr(api, wo_number)
    await asyncio.sleep(1.5)
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    # major: nothing due yet
    assert n["severity"] == "major" and n["reminded_at"] is None and n["overdue"] is False
    assert ncr not in [x["number"] for x in (await api.get("/api/ncrs?overdue=true")).json()]

    # reclassified critical: the NCR's reminder and escalation follow the critical durations at once
    r = await api.patch(f"/api/ncrs/{ncr}", headers=role_headers("quality_manager"), json={"severity": "critical"})
    assert r.status_code == 200 and r.json()["overdue"] is True, r.text  # due 1 s after opening
    n = await wait_ncr_state(api, ncr, lambda n: n["escalated_at"] is not None, "escalation", timeout=15)
    assert n["reminded_at"] and n["escalated_to"]["role"] == "quality_manager"
    assert "t-quality_manager" in n["escalated_to"]["users"]
    listed = (await api.get("/api/ncrs?overdue=true&limit=1000")).json()
    assert ncr in [x["number"] for x in listed] and all(x["overdue"] for x in listed)
    assert ncr not in [x["number"] for x in (await api.get("/api/ncrs?overdue=false&limit=1000")).json()]
    r = await api.get("/api/ncrs?overdue=maybe")
    assert r.status_code == 422 and "overdue" in r.json()["detail"]

    # dismissed: no longer overdue
    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="gauge out of calibration")).status_code == 200
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] == "dismissed", "dismissal")
    assert n["overdue"] is False and n["waiting_on"] == []
    assert ncr not in [x["number"] for x in (await api.get("/api/ncrs?overdue=true&limit=1000")).json()]

    # a CAPA for it: its own number, actions with due dates, overdue actions listed
    qa, qm = role_headers("qa_supervisor"), role_headers("quality_manager")
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    body = {"title": "gauge calibration", "problem": "hardness tester read high", "root_cause_category": "luck",
            "ncrs": [ncr], "actions": []}
    r = await api.post("/api/capas", headers=qa, json=body)
    assert r.status_code == 422 and "root_cause_category" in r.json()["detail"]
    r = await api.post("/api/capas", headers=qa, json={**body, "root_cause_category": "measurement",
                                                        "ncrs": ["NCR-NOPE-1"]})
    assert r.status_code == 404 and "NCR-NOPE-1" in r.json()["detail"]
    assert (await api.post("/api/capas", headers=role_headers("inspector"), json=body)).status_code == 403
    r = await api.post("/api/capas", headers=qa, json={
        **body, "root_cause_category": "measurement", "root_cause": "calibration interval too long",
        "effectiveness_criteria": "no hardness NCR from this tester for 3 months",
        "actions": [{"kind": "corrective", "description": "recalibrate tester", "owner": "t-inspector", "due": past},
                    {"kind": "preventive", "description": "shorten interval", "owner": "t-qa_supervisor",
                     "due": future}]})
    assert r.status_code == 201, r.text
    capa = r.json()
    number = capa["number"]
    assert number.startswith("CAPA-") and capa["state"] == "open" and capa["ncrs"] == [ncr]
    assert capa["overdue_actions"] == [1] and [a["kind"] for a in capa["actions"]] == ["corrective", "preventive"]
    assert (await api.get(f"/api/ncrs/{ncr}")).json()["capa"] == number
    assert number in [c["number"] for c in (await api.get("/api/capas?overdue_actions=true")).json()]
    r = await api.post(f"/api/capas/{number}/close", headers=qm,
                       json={"effective": True, "result": "fine", "password": PASSWORD})
    assert r.status_code == 409 and "[1, 2]" in r.json()["detail"]
    r = await api.patch(f"/api/capas/{number}/actions/1", headers=qa, json={"status": "finished"})
    assert r.status_code == 422 and "status" in r.json()["detail"]
    r = await api.patch(f"/api/capas/{number}/actions/1", headers=qa, json={"status": "done"})
    assert r.status_code == 200 and r.json()["done_at"] and r.json()["overdue"] is False
    assert (await api.get(f"/api/capas/{number}")).json()["state"] == "in_progress"
    assert number not in [c["number"] for c in (await api.get("/api/capas?overdue_actions=true")).json()]
    r = await api.post(f"/api/capas/{number}/actions", headers=qa, json={
        "kind": "preventive", "description": "add tester to the calibration system", "owner": "t-quality_manager",
        "due": future})
    assert r.status_code == 201 and r.json()["seq"] == 3
    for seq in (2, 3):
        assert (await api.patch(f"/api/capas/{number}/actions/{seq}", headers=qa,
                                json={"status": "done"})).status_code == 200
    assert (await api.get(f"/api/capas/{number}")).json()["state"] == "effectiveness_check"
    r = await api.post(f"/api/capas/{number}/close", headers=qa,
                       json={"effective": True, "result": "fine", "password": PASSWORD})
    assert r.status_code == 403
    r = await api.post(f"/api/capas/{number}/close", headers=qm,
                       json={"effective": True, "result": "fine", "password": "not my password"})
    assert r.status_code == 401
    r = await api.post(f"/api/capas/{number}/close", headers=qm, json={
        "effective": True, "result": "no hardness NCR in 3 months", "password": PASSWORD})
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["state"] == "closed" and c["effectiveness"]["effective"] is True and c["closed_at"]
    assert [(s["signer"], s["meaning"], s["valid"]) for s in c["signatures"]] == [
        ("t-quality_manager", "approved", True)]
    r = await api.post(f"/api/capas/{number}/actions", headers=qa, json={
        "kind": "corrective", "description": "late", "owner": "x", "due": future})
    assert r.status_code == 409 and "closed" in r.json()["detail"]
    assert number in [c["number"] for c in (await api.get("/api/capas?state=closed")).json()]


async def test_defect_code_catalogue(api: httpx.AsyncClient, wo_number):
    codes = {c["code"]: c for c in (await api.get("/api/defect-codes", headers=role_headers("inspector"))).json()}
    assert codes["DIM-OOT"]["default_severity"] == "major" and codes["SURF-CRACK"]["default_severity"] == "critical"
    body = {"code": f"X-{wo_number[3:]}", "description": "burr on the edge", "default_severity": "minor"}
    assert (await api.post("/api/defect-codes", headers=role_headers("qa_supervisor"), json=body)).status_code == 403
    r = await api.post("/api/defect-codes", headers=role_headers("quality_manager"),
                       json={**body, "default_severity": "terrible"})
    assert r.status_code == 422 and "default_severity" in r.json()["detail"]
    r = await api.post("/api/defect-codes", headers=role_headers("quality_manager"), json={**body, "code": "x y"})
    assert r.status_code == 422 and "code" in r.json()["detail"]
    r = await api.post("/api/defect-codes", headers=role_headers("quality_manager"), json=body)
    assert r.status_code == 201 and r.json()["code"] == body["code"]
    r = await api.post("/api/defect-codes", headers=role_headers("quality_manager"), json=body)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert body["code"] in [c["code"] for c in (await api.get("/api/defect-codes")).json()]


async def test_settings_give_each_severity_its_durations(api: httpx.AsyncClient, client, wo_number):
    from erp_sim.app import release_event

    ev = release_event(wo_number, 20, with_shipment=False)  # no timing: the settings' table (HUB_NCR__...)
    remember_in_erp(ev)  # the ERP's records of the release, as fast_release stores them
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    await post_results(api, wo_number, "iqc", OUT_SPEC_IQC)
    ncr = await wait_ncr(api, wo_number)
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    opened = datetime.fromisoformat(n["opened_at"])
    assert datetime.fromisoformat(n["due_at"]) - opened == timedelta(days=7)  # major
    r = await api.patch(f"/api/ncrs/{ncr}", headers=role_headers("qa_supervisor"), json={"severity": "critical"})
    assert r.status_code == 200 and datetime.fromisoformat(r.json()["due_at"]) - opened == timedelta(days=1)
    # the NCR workflow's own status says the same as the API: state, what it waits for and who
    st = await client.get_workflow_handle(f"ncr-{ncr}").query("status")
    assert st["state"] == "open" and st["waiting_on"] == ["qa_supervisor", "quality_manager"]
    assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="retest passed")).status_code == 200
