"""Supplier returns (issue 6): a return_to_supplier disposition creates the hub's own supplier-return record,
which follows the ERP's acknowledgement and the QA supervisor's verification; and a disposition's effects
happen exactly once when Temporal runs its activities again with the same input (a retry after a lost
completion). Real database, Temporal, ERP simulator and API."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.testing import ActivityEnvironment

from activities.hub import HubActivities
from activities.models import ApplyDispositionInput, ErpNotice, NcrAction
from domain.models import AuditLog, EpcisEvent, Lot
from domain.models_supplier_return import SupplierReturn
from tests.helpers import (
    OUT_SPEC_IQC,
    decide,
    fast_release,
    post_results,
    remember_batches,
    role_headers,
    wait_ncr,
)
from tests.test_ncr_review import final_ncr, wait_ncr_state

pytestmark = pytest.mark.asyncio


def erp_docs(erp_sim, doctype: str, name: str) -> list[dict]:
    """Every document the ERP holds under the hub's key `name` (a list: two would both show)."""
    return erp_sim.keyed(doctype, name)


async def effects(sessionmaker, erp_sim, ncr: str, lot: str, disposition: str, doctype: str, doc: str) -> dict:
    """What a disposition left behind: counted, so a doubled effect shows as 2."""
    async with sessionmaker() as s:
        lot_row = (await s.execute(select(Lot).where(Lot.number == lot))).scalar_one()
        events = (await s.execute(select(EpcisEvent).where(EpcisEvent.lot_id == lot_row.id,
                                                           EpcisEvent.disposition == disposition))).scalars()
        write_offs = (await s.execute(select(AuditLog).where(
            AuditLog.entity == "lot", AuditLog.entity_key == lot, AuditLog.action == "lot.quantity"))).scalars()
        returns = (await s.execute(select(func.count()).select_from(SupplierReturn)
                                   .where(SupplierReturn.number == f"RTS-{ncr}"))).scalar_one()
        requested = (await s.execute(select(func.count()).select_from(AuditLog).where(
            AuditLog.entity == "supplier_return", AuditLog.action == "supplier_return.requested",
            AuditLog.entity_key == f"RTS-{ncr}"))).scalar_one()
        return {
            "status": lot_row.status, "remaining": lot_row.quantity_remaining,
            "events": len([e for e in events if ncr in json.dumps(e.document)]),
            "write_offs": len([a for a in write_offs if ncr in json.dumps(a.changes)]),
            "erp": len(erp_docs(erp_sim, doctype, doc)),
            "supplier_returns": returns, "return_audits": requested,
        }


async def run_again(sessionmaker, settings, ncr: str, lot: str, outcome: NcrAction, notice: ErpNotice) -> None:
    """The disposition's activities once more with the same input, as a retry after a lost completion runs
    them: the database part, then the ERP notice."""
    acts = HubActivities(sessionmaker, resolver=settings.resolver_base_url)
    env = ActivityEnvironment()
    applied = await env.run(acts.apply_disposition, ApplyDispositionInput(ncr=ncr, lot=lot, outcome=outcome))
    assert applied["lot"] == lot
    await env.run(acts.notify_erp, notice)


async def test_return_to_supplier_is_a_record_and_happens_once(api: httpx.AsyncClient, client, erp_sim, settings,
                                                                sessionmaker, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number, with_shipment=False))).status_code == 202
    await post_results(api, wo_number, "iqc", OUT_SPEC_IQC)
    ncr = await wait_ncr(api, wo_number)
    lot = f"{wo_number}-M1"
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="hardness 35 HRC")).status_code == 200
    r = await decide(api, ncr, "return_to_supplier", "mrb_engineering", reason="heat off spec")
    assert r.status_code == 200, r.text
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] == "verification", "verification")
    assert "verify material shipped back" in n["waiting_for"]

    # the record: created with the disposition, the ERP's purchase return acknowledged
    qa = role_headers("qa_supervisor")
    r = await api.get(f"/api/supplier-returns/RTS-{ncr}", headers=qa)
    assert r.status_code == 200, r.text
    ret = r.json()
    assert ret["ncr"] == ncr and ret["lot"] == lot and ret["supplier"] == "ACME-STEEL"
    assert ret["reason"] == "heat off spec" and ret["quantity"] > 0 and ret["uom"]
    (erp_return,) = erp_docs(erp_sim, "Purchase Receipt", f"{ncr}-RETURN")
    # the ERP names its documents itself (a naming series): the record keeps the ERP's name
    assert ret["status"] == "erp_notified" and ret["erp_document"] == erp_return["name"] != f"{ncr}-RETURN"
    assert erp_return["items"][0]["qty"] == -ret["quantity"]
    listed = (await api.get("/api/supplier-returns", headers=qa,
                            params={"supplier": "ACME-STEEL", "status": "erp_notified"})).json()
    assert f"RTS-{ncr}" in [x["number"] for x in listed]
    assert f"RTS-{ncr}" not in [x["number"] for x in (await api.get(
        "/api/supplier-returns", headers=qa, params={"supplier": "OTHER-STEEL"})).json()]
    assert f"RTS-{ncr}" not in [x["number"] for x in (await api.get(
        "/api/supplier-returns", headers=qa, params={"status": "shipped"})).json()]
    r = await api.get("/api/supplier-returns", headers=qa, params={"status": "lost"})
    assert r.status_code == 422 and "status" in r.text
    r = await api.get("/api/supplier-returns/RTS-NOPE", headers=qa)
    assert r.status_code == 404 and "GET /api/supplier-returns" in r.json()["detail"]
    assert (await api.get("/api/supplier-returns", headers=role_headers("operator"))).status_code == 403
    assert (await api.get("/api/supplier-returns", headers=role_headers("auditor"))).status_code == 200

    # exactly once: the disposition's activities run again with the same input change nothing
    notice = ErpNotice(doctype="Purchase Receipt", name=f"{ncr}-RETURN",
                       doc={"is_return": 1, "return_against": f"PR-{wo_number}", "supplier": "ACME-STEEL",
                            "remarks": ncr, "items": [{"item_code": "BAR-42CRMO4", "batch_no": lot,
                                                       "qty": -ret["quantity"], "uom": ret["uom"]}]})
    first = await effects(sessionmaker, erp_sim, ncr, lot, "returned", "Purchase Receipt", f"{ncr}-RETURN")
    assert first == {"status": "rejected", "remaining": 0.0, "events": 1, "write_offs": 1, "erp": 1,
                     "supplier_returns": 1, "return_audits": 1}
    await run_again(sessionmaker, settings, ncr, lot, NcrAction.return_to_supplier, notice)
    await run_again(sessionmaker, settings, ncr, lot, NcrAction.return_to_supplier, notice)
    assert await effects(sessionmaker, erp_sim, ncr, lot, "returned", "Purchase Receipt", f"{ncr}-RETURN") == first
    again = (await api.get(f"/api/supplier-returns/RTS-{ncr}", headers=qa)).json()
    assert again == ret  # not even updated_at moved

    # shipped: the QA supervisor's signed verification of the NCR, audited with before and after
    r = await decide(api, ncr, "verify", "qa_supervisor", reason="collected by carrier, CMR 4471")
    assert r.status_code == 200 and r.json()["state"] == "closed", r.text
    shipped = (await api.get(f"/api/supplier-returns/RTS-{ncr}", headers=qa)).json()
    assert shipped["status"] == "shipped" and shipped["erp_document"] == erp_return["name"]
    async with sessionmaker() as s:
        rows = list((await s.execute(select(AuditLog).where(
            AuditLog.entity == "supplier_return", AuditLog.entity_key == f"RTS-{ncr}").order_by(AuditLog.seq)))
            .scalars())
    assert [a.action for a in rows] == ["supplier_return.requested", "supplier_return.erp_notified",
                                        "supplier_return.shipped"]
    assert rows[0].changes["before"] is None and rows[0].changes["after"]["status"] == "requested"
    assert rows[1].changes["before"] == {"status": "requested", "erp_document": None}
    assert rows[1].changes["after"] == {"status": "erp_notified", "erp_document": erp_return["name"]}
    assert rows[2].actor == "t-qa_supervisor" and rows[2].changes["before"] == {"status": "erp_notified"}
    assert rows[2].changes["after"] == {"status": "shipped"} and "CMR 4471" in rows[2].changes["note"]
    # a late retry of the ERP notice does not move a shipped return back
    await run_again(sessionmaker, settings, ncr, lot, NcrAction.return_to_supplier, notice)
    assert (await api.get(f"/api/supplier-returns/RTS-{ncr}", headers=qa)).json()["status"] == "shipped"
    await client.get_workflow_handle(f"ncr-{ncr}").result()


async def test_scrap_happens_once(api: httpx.AsyncClient, client, erp_sim, settings, sessionmaker, wo_number):
    ncr = await final_ncr(api, wo_number)
    # the ERP has the lot's batch (in its stock), so the scrap has something to write off there (the ERPNext connector
    # leaves out a write-off of a batch the ERP never had)
    remember_batches({f"{wo_number}-L1": "SHAFT-25"})
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    assert (await decide(api, ncr, "scrap", "mrb_production", reason="cracked")).status_code == 200
    await wait_ncr_state(api, ncr, lambda n: n["state"] == "verification", "verification")
    lot = (await api.get(f"/api/ncrs/{ncr}")).json()["lot"]
    assert lot == f"{wo_number}-L1"
    first = await effects(sessionmaker, erp_sim, ncr, lot, "destroyed", "Stock Entry", f"{ncr}-SCRAP")
    assert first == {"status": "rejected", "remaining": 0.0, "events": 1, "write_offs": 1, "erp": 1,
                     "supplier_returns": 0, "return_audits": 0}
    doc = erp_docs(erp_sim, "Stock Entry", f"{ncr}-SCRAP")[0]
    notice = ErpNotice(doctype="Stock Entry", name=f"{ncr}-SCRAP",
                       doc={k: doc[k] for k in ("stock_entry_type", "purpose", "remarks", "items")})
    await run_again(sessionmaker, settings, ncr, lot, NcrAction.scrap, notice)
    await run_again(sessionmaker, settings, ncr, lot, NcrAction.scrap, notice)
    assert await effects(sessionmaker, erp_sim, ncr, lot, "destroyed", "Stock Entry", f"{ncr}-SCRAP") == first
    assert (await decide(api, ncr, "verify", "qa_supervisor", reason="destruction note 78")).status_code == 200
    await client.get_workflow_handle(f"ncr-{ncr}").result()
