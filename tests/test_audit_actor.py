"""The audit trail records who was logged in, not what the request body claims: for every write through the API
(codes, inspection results and operation reports carried into the work order by signals, recalls and their
acknowledgements carried by the workflow's input and updates) the entry's actor is the token's user, and the name
the body gives (the packer, the inspector who measured, the operator, whom a recall is on behalf of, who
acknowledged at the customer) is data in the entry's changes."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from sqlalchemy import select

from domain.models import AuditLog
from tests.helpers import IN_SPEC_IQC, fast_release, operation_report, role_headers, wait_status
from tests.test_codes import make_item, make_lot, sscc_rule
from tests.test_recall import wait_recall
from tests.test_trace_plant import build_plant

pytestmark = pytest.mark.asyncio


async def entry(sessionmaker, entity: str, key: str, action: str, timeout: float = 15.0) -> AuditLog:
    """The newest entry of this action (waiting for it: workflows' activities write theirs a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        async with sessionmaker() as s:
            row = (await s.execute(select(AuditLog).where(
                AuditLog.entity == entity, AuditLog.entity_key == key, AuditLog.action == action)
                .order_by(AuditLog.seq.desc()).limit(1))).scalar()
        if row is not None:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit entry {action} for {entity} {key}")
        await asyncio.sleep(0.1)


async def test_a_body_claiming_someone_else_does_not_become_the_actor_of_a_code_change(api: httpx.AsyncClient,
                                                                                       sessionmaker):
    item, _ = await make_item(sessionmaker)
    await make_lot(sessionmaker, item)
    r = await api.post("/api/codes/rules", json={"item": item, "level": "case", "spec": sscc_rule("4012345", "1"),
                                                 "actor": "t-admin"}, headers=role_headers("quality_manager"))
    assert r.status_code == 201, r.text
    rule = await entry(sessionmaker, "code_rule", f"{item}:case", "code_rule.saved")
    assert rule.actor == "t-quality_manager"
    blocks = {}
    for key, level in (("c1", "case"), ("c2", "case")):
        r = await api.post("/api/codes/blocks", json={"key": f"{item}-{key}", "item": item, "level": level, "count": 1})
        assert r.status_code == 201, r.text
        blocks[key] = (await api.get(f"/api/codes/blocks/{r.json()['id']}/codes/0")).json()["digital_link"]
    r = await api.post("/api/codes/rules", json={"item": item, "level": "pallet", "spec": sscc_rule("4012345", "2")})
    assert r.status_code == 201, r.text
    r = await api.post("/api/codes/blocks", json={"key": f"{item}-p", "item": item, "level": "pallet", "count": 1})
    pallet = (await api.get(f"/api/codes/blocks/{r.json()['id']}/codes/0")).json()["digital_link"]

    # the operator's terminal packs, and the body names the quality manager (the field's former name, `actor`)
    r = await api.post("/api/codes/pack", headers=role_headers("operator"),
                       json={"parent": pallet, "children": [blocks["c1"]], "actor": "t-quality_manager"})
    assert r.status_code == 200, r.text
    row = await entry(sessionmaker, "container", r.json()["parent"], "codes.packed")
    assert row.actor == "t-operator" and row.changes["operator"] == "t-quality_manager"
    # the MES posts for an operator at the station, under the field's name
    r = await api.post("/api/codes/pack", headers=role_headers("mes"),
                       json={"parent": pallet, "children": [blocks["c2"]], "operator": "packer-9"})
    assert r.status_code == 200, r.text
    row = await entry(sessionmaker, "container", r.json()["parent"], "codes.packed")
    assert row.actor == "t-mes" and row.changes["operator"] == "packer-9"
    # nothing named: the login alone
    r = await api.post("/api/codes/unpack", headers=role_headers("operator"), json={"parent": pallet})
    assert r.status_code == 200, r.text
    row = await entry(sessionmaker, "container", r.json()["parent"], "codes.unpacked")
    assert row.actor == "t-operator" and "operator" not in row.changes

    # a pool revoked with an `actor` query parameter: the parameter is not an identity
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/codes/pools", json={"number": number, "item": item, "level": "case", "count": 2,
                                                 "line": "LINE-3", "actor": "someone"}, headers=role_headers("printer"))
    assert r.status_code == 201, r.text
    assert (await entry(sessionmaker, "code_pool", number, "code_pool.allocated")).actor == "t-printer"
    r = await api.post(f"/api/codes/pools/{number}/revoke", params={"actor": "t-admin"},
                       headers=role_headers("quality_manager"))
    assert r.status_code == 200, r.text
    assert (await entry(sessionmaker, "code_pool", number, "code_pool.revoked")).actor == "t-quality_manager"


async def test_inspection_results_and_operation_reports_name_the_login_that_sent_them(api: httpx.AsyncClient,
                                                                                      sessionmaker, wo_number):
    """Carried into the work order by signals: the login travels in the signal's payload to the activity that
    writes the entry. A gauge posting for an inspector is normal, and the entry shows both."""
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    st = await wait_status(api, wo_number, lambda s: any(p["kind"] == "iqc" for p in s["pending_inspections"]),
                           what="IQC")
    iqc = next(p for p in st["status"]["pending_inspections"] if p["kind"] == "iqc")["number"]
    r = await api.post(f"/api/inspections/{iqc}/results", headers=role_headers("gauge"),
                       json={"inspector": "t-inspector", "measurements": IN_SPEC_IQC})
    assert r.status_code == 202, r.text
    row = await entry(sessionmaker, "inspection", iqc, "inspection.recorded")
    assert row.actor == "t-gauge", row.actor
    assert row.changes["inspector"] == "t-inspector" and row.changes["after"]["inspector"] == "t-inspector"
    ins = (await api.get(f"/api/inspections/{iqc}")).json()
    assert ins["inspector"] == "t-inspector"  # who measured stays on the record

    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="operation 10")
    report = operation_report(wo_number, 10, [])
    # the sender is the hub's to set: a body naming one is refused, and nothing reaches the work order
    r = await api.post(f"/api/work-orders/{wo_number}/operations", headers=role_headers("operator"),
                       json={**report, "reported_by": "t-admin"})
    assert r.status_code == 422 and "reported_by" in r.json()["detail"], r.text
    r = await api.post(f"/api/work-orders/{wo_number}/operations", headers=role_headers("operator"),
                       json={**report, "operator": "t-qa_supervisor"})
    assert r.status_code == 202, r.text
    row = await entry(sessionmaker, "work_order", wo_number, "operation.recorded")
    assert row.actor == "t-operator" and row.changes["operator"] == "t-qa_supervisor"


async def test_a_recall_is_requested_by_the_login_and_on_behalf_of_the_body(api: httpx.AsyncClient, erp_sim,
                                                                            sessionmaker):
    """Carried by the recall's input and its acknowledge update: the login is the actor of recall.opened, of every
    hold and of the acknowledgement; the names the body gives are data."""
    plant = await build_plant(sessionmaker)
    number, customer = f"RC-A-{plant.tag}", f"Customer X {plant.tag}"
    qm = role_headers("quality_manager")
    body = {"number": number, "suspect_kind": "heat", "suspect": plant.heats["M1"], "reason": "cracks in heat",
            "requested_by": "t-admin"}
    r = await api.post("/api/recalls", json={**body, "opened_by": "t-admin"}, headers=qm)
    assert r.status_code == 422, r.text  # who opened it is the login's, never the body's
    r = await api.post("/api/recalls", json=body, headers=qm)
    assert r.status_code == 202, r.text
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    row = await entry(sessionmaker, "recall", number, "recall.opened")
    assert row.actor == "t-quality_manager" and row.changes["on_behalf_of"] == "t-admin"
    hold = await entry(sessionmaker, "lot", plant.lots["A1"], "lot.status")
    assert hold.actor == "t-quality_manager" and hold.changes["after"]["status"] == "on_hold"

    r = await api.post(f"/api/recalls/{number}/acknowledgements", headers=role_headers("qa_supervisor"),
                       json={"customer": customer, "acknowledged_by": "t-quality_manager", "note": "quarantined"})
    assert r.status_code == 200, r.text
    row = await entry(sessionmaker, "recall", number, "recall.acknowledged")
    assert row.actor == "t-qa_supervisor" and row.changes["acknowledged_by"] == "t-quality_manager"
    rec = (await api.get(f"/api/recalls/{number}")).json()
    assert rec["record"]["customers"][0]["acknowledged_by"] == "t-quality_manager"



async def test_an_erp_release_and_its_lots_name_who_sent_them_and_a_body_cannot_say(api: httpx.AsyncClient,
                                                                                   sessionmaker, wo_number):
    ev = fast_release(wo_number)
    lot = ev["work_order"]["receipts"][0]["lots"][0]["lot"]
    for body, field in ((dict(ev, work_order=dict(ev["work_order"], released_by="the-plant-manager")),
                         "work_order.released_by"),
                        (dict(ev, work_order=dict(ev["work_order"], receipts=[
                            dict(ev["work_order"]["receipts"][0], sent_by="someone")])), "work_order.receipts.sent_by")):
        r = await api.post("/api/erp/events", json=body, headers=role_headers("erp"))
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    r = await api.post("/api/erp/events", json=ev, headers=role_headers("erp"))
    assert r.status_code == 202, r.text
    assert (await entry(sessionmaker, "work_order", wo_number, "work_order.released")).actor == "t-erp"
    assert (await entry(sessionmaker, "lot", lot, "lot.received")).actor == "t-erp"
    # a receipt posted on its own: its sender too
    second = f"{lot}-2"
    receipt = dict(ev["work_order"]["receipts"][0], receipt=f"PR2-{wo_number}",
                   lots=[dict(ev["work_order"]["receipts"][0]["lots"][0], lot=second)])
    pr = {"event_id": f"{wo_number}-pr2", "event_type": "purchase_receipt.posted", "work_order": wo_number,
          "receipt": receipt}
    r = await api.post("/api/erp/events", json=dict(pr, receipt=dict(receipt, sent_by="x")), headers=role_headers("erp"))
    assert r.status_code == 422 and r.json()["field"] == "receipt.sent_by", r.text
    r = await api.post("/api/erp/events", json=pr, headers=role_headers("admin"))
    assert r.status_code == 202, r.text
    assert (await entry(sessionmaker, "lot", second, "lot.received")).actor == "t-admin"
