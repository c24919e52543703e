"""Every change is audited with who, when, before and after: one change of each kind through the API (codes,
users, tokens, endpoints; lots, inspections, photos and NCRs through a work order whose critical final
characteristic fails and is reworked), then the chain still verifies. The order's runs are recorded for the
replay test with RECORD_HISTORIES=1 (a plain order with today's patches; an NCR rework under the review states)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from domain import identity, sampling
from domain.audit import MASK, verify_chain
from domain.models import AuditLog, Lot, Shipment, ShipmentLine
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    PASSWORD,
    decide,
    fast_release,
    post_results,
    report_operation,
    role_headers,
    run_production,
    wait_done,
    wait_ncr,
    wait_status,
)
from tests.test_attachments import PNG
from tests.test_codes import make_item, make_lot, sscc_rule
from tests.test_inspection_triggers import release, save_plan, uid
from tests.test_lifecycle import record_history

pytestmark = pytest.mark.asyncio

SUITE = "test-suite"  # the subject of SUPER_HEADERS' token (tests/conftest.py)


async def entries(sessionmaker, entity: str, key: str, action: str | None = None) -> list[AuditLog]:
    async with sessionmaker() as s:
        q = select(AuditLog).where(AuditLog.entity == entity, AuditLog.entity_key == key)
        if action:
            q = q.where(AuditLog.action == action)
        return list((await s.execute(q.order_by(AuditLog.seq))).scalars())


async def audited(sessionmaker, entity: str, key: str, action: str, *, actor: str | None = None,
                  created: bool = False, deleted: bool = False, where: Any = None) -> dict[str, Any]:
    """The newest entry of this change (of those whose changes `where` accepts): who, when, before and after
    are there (before None only for a record created, after None only for one deleted). Returns its changes."""
    rows = [r for r in await entries(sessionmaker, entity, key, action) if where is None or where(r.changes)]
    assert rows, f"no audit entry {action} for {entity} {key}"
    row = rows[-1]
    assert row.actor and row.at is not None, (action, row.actor, row.at)
    if actor is not None:
        assert row.actor == actor, (action, row.actor)
    ch = row.changes
    assert "before" in ch and "after" in ch, (action, ch)
    assert (ch["before"] is None) == created, (action, ch)
    assert (ch["after"] is None) == deleted, (action, ch)
    if not created and not deleted:
        assert ch["before"] != ch["after"], (action, ch)
    return ch


async def chain_ok(sessionmaker) -> None:
    async with sessionmaker() as s:
        report = await verify_chain(s)
    assert report.ok, report.problems[:5]


async def test_codes_users_tokens_and_endpoints_are_audited_with_before_and_after(api: httpx.AsyncClient,
                                                                                  sessionmaker):
    # --- users and tokens
    user = f"u-{uuid.uuid4().hex[:8]}"
    r = await api.post("/api/users", json={"username": user, "password": PASSWORD, "roles": ["operator"],
                                           "full_name": "Audit Test"})
    assert r.status_code == 201, r.text
    ch = await audited(sessionmaker, "user", user, "user.created", actor=SUITE, created=True)
    assert ch["after"]["roles"] == ["operator"] and ch["after"]["password"] == MASK
    async with sessionmaker() as s, s.begin():  # the domain path the CLI and POST /api/users/{u}/password share
        await identity.set_password(s, user, PASSWORD + "!", actor="tracehub-cli")
    ch = await audited(sessionmaker, "user", user, "user.password_set", actor="tracehub-cli")
    assert PASSWORD not in json.dumps(ch)
    token_name = f"sys-{uuid.uuid4().hex[:8]}"
    r = await api.post("/api/tokens", json={"name": token_name, "roles": ["mes"], "expires_in_days": 2})
    assert r.status_code == 201, r.text
    ch = await audited(sessionmaker, "token", token_name, "token.created", actor=SUITE, created=True)
    assert ch["after"]["roles"] == ["mes"] and r.json()["token"] not in json.dumps(ch)
    r = await api.post("/api/auth/login", json={"username": user, "password": PASSWORD + "!"})
    assert r.status_code == 200, r.text
    r = await api.post("/api/auth/logout", headers={"Authorization": f"Bearer {r.json()['token']}"})
    assert r.status_code == 204, r.text
    ch = await audited(sessionmaker, "token", user, "token.revoked", actor=user)
    assert ch["before"] == {"revoked_at": None} and ch["after"]["revoked_at"]

    # --- endpoints: secrets masked, before and after of what changed
    ep = f"rest-{uuid.uuid4().hex[:8]}"
    cfg = {"base_url": "https://erp.example.com", "auth": "bearer", "token": "s3cret-one", "timeout_s": 5}
    assert (await api.post("/api/endpoints", json={"name": ep, "kind": "rest", "config": cfg})).status_code == 201
    ch = await audited(sessionmaker, "endpoint", ep, "endpoint.created", actor=SUITE, created=True)
    assert ch["after"]["config"]["token"] == MASK and ch["after"]["config"]["timeout_s"] == 5
    r = await api.put(f"/api/endpoints/{ep}", json={"config": {**cfg, "token": "s3cret-two", "timeout_s": 9}})
    assert r.status_code == 200, r.text
    ch = await audited(sessionmaker, "endpoint", ep, "endpoint.updated", actor=SUITE)
    assert ch["before"] == {"token": MASK, "timeout_s": 5} and ch["after"] == {"token": MASK, "timeout_s": 9}
    assert (await api.delete(f"/api/endpoints/{ep}")).status_code == 204
    ch = await audited(sessionmaker, "endpoint", ep, "endpoint.deleted", actor=SUITE, deleted=True)
    assert ch["before"]["config"]["token"] == MASK
    for row in await entries(sessionmaker, "endpoint", ep):
        assert "s3cret" not in json.dumps(row.changes), row.changes

    # --- codes: rule versions, blocks, packing, unpacking, container shipping (the codes' used state with them)
    item, _ = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    for level, ext in (("case", "1"), ("pallet", "2")):
        r = await api.post("/api/codes/rules", json={"item": item, "level": level, "spec": sscc_rule("4012345", ext)})
        assert r.status_code == 201, r.text
    ch = await audited(sessionmaker, "code_rule", f"{item}:case", "code_rule.saved", actor=SUITE, created=True)
    assert ch["after"]["version"] == 1
    r = await api.post("/api/codes/rules", json={"item": item, "level": "case", "spec": sscc_rule("4012345", "1")
                                                 | {"largest_order": 500}})
    assert r.status_code == 201, r.text
    ch = await audited(sessionmaker, "code_rule", f"{item}:case", "code_rule.saved", actor=SUITE)
    assert ch["before"]["version"] == 1 and ch["after"]["version"] == 2
    blocks = {}
    for key, level, count in (("u", "unit", 3), ("c", "case", 1), ("p", "pallet", 1)):
        body = {"key": f"{item}-{key}", "item": item, "level": level, "count": count}
        if level == "unit":
            body["lot"] = lot
        r = await api.post("/api/codes/blocks", json=body)
        assert r.status_code == 201, r.text
        blocks[key] = r.json()
        ch = await audited(sessionmaker, "code_block", f"{item}-{key}", "code_block.issued", actor=SUITE,
                           created=True)
        assert ch["after"]["count"] == count

    async def code(key: str, i: int) -> str:
        return (await api.get(f"/api/codes/blocks/{blocks[key]['id']}/codes/{i}")).json()["digital_link"]
    units, case, pallet = [await code("u", i) for i in range(3)], await code("c", 0), await code("p", 0)
    r = await api.post("/api/codes/pack", json={"parent": case, "children": units, "actor": "packer-1"})
    assert r.status_code == 200, r.text
    case_code, unit_codes = r.json()["parent"], r.json()["packed"]
    # the token's user is the actor; the packer the body names is data
    ch = await audited(sessionmaker, "container", case_code, "codes.packed", actor=SUITE)
    assert ch["operator"] == "packer-1"
    assert ch["before"]["contains"] == [] and sorted(ch["after"]["contains"]) == sorted(unit_codes)
    assert ch["before"]["states"][unit_codes[0]] == "issued" and ch["after"]["states"][unit_codes[0]] == "packed"
    r = await api.post("/api/codes/unpack", json={"parent": case, "children": [units[0]], "actor": "packer-2"})
    assert r.status_code == 200, r.text
    ch = await audited(sessionmaker, "container", case_code, "codes.unpacked", actor=SUITE)
    assert ch["operator"] == "packer-2"
    assert ch["before"]["contains"] == [unit_codes[0]] and ch["after"]["contains"] == []
    r = await api.post("/api/codes/pack", json={"parent": pallet, "children": [case], "actor": "fork-1"})
    assert r.status_code == 200, r.text
    pallet_code = r.json()["parent"]
    dn = f"DN-{uuid.uuid4().hex[:6]}"
    async with sessionmaker() as s, s.begin():
        lot_id = (await s.execute(select(Lot.id).where(Lot.number == lot))).scalar_one()
        sh = Shipment(number=dn, sales_order="SO-A", customer="ACME")
        s.add(sh)
        await s.flush()
        s.add(ShipmentLine(shipment_id=sh.id, lot_id=lot_id, quantity=10))
    r = await api.post("/api/codes/containers/ship", params={"code": pallet}, json={"shipment": dn, "actor": "shipper"})
    assert r.status_code == 200, r.text
    ch = await audited(sessionmaker, "container", pallet_code, "container.shipped", actor=SUITE)
    assert ch["operator"] == "shipper"
    assert ch["before"]["status"] != "shipped" and ch["after"] == {"status": "shipped", "shipment": dn,
                                                                    "code_state": "shipped"}

    # --- offline pools: allocation, upload (codes used), revocation, reconciliation (unused codes voided)
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/codes/pools", json={"number": number, "item": item, "count": 5, "line": "LINE-3"})
    assert r.status_code == 201, r.text
    await audited(sessionmaker, "code_pool", number, "code_pool.allocated", actor=SUITE, created=True)
    pool_block = r.json()["block"]
    used = (await api.get(f"/api/codes/blocks/{pool_block['id']}/codes/0")).json()["digital_link"]
    r = await api.post(f"/api/codes/pools/{number}/uploads", json={"upload_id": f"{number}-1", "used": [
        {"code": used, "used_at": (datetime.now().astimezone() - timedelta(minutes=5)).isoformat(), "lot": lot}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    ch = await audited(sessionmaker, "code_pool", number, "code_pool.uploaded", actor=SUITE, created=True)
    assert ch["line"] == "LINE-3"
    assert ch["after"]["state"] == "commissioned" and len(ch["after"]["codes"]) == 1
    assert (await api.post(f"/api/codes/pools/{number}/revoke")).status_code == 200
    ch = await audited(sessionmaker, "code_pool", number, "code_pool.revoked", actor=SUITE)
    assert ch["before"]["state"] == "allocated" and ch["after"]["state"] == "revoked"
    r = await api.post(f"/api/codes/pools/{number}/reconcile", json={"action": "void", "actor": "planner"})
    assert r.status_code == 200, r.text
    ch = await audited(sessionmaker, "code_pool", number, "code_pool.reconciled", actor=SUITE)
    assert ch["operator"] == "planner"
    assert ch["before"] == {"state": "revoked", "unused_codes": "unassigned"}
    assert ch["after"] == {"state": "reconciled", "unused_codes": "voided"} and ch["unused"] == 4

    await chain_ok(sessionmaker)


def _timing() -> dict[str, Any]:
    return {"ncr_reminder_after": 600, "ncr_escalate_after": 1200, "ncr_reinspection_poll": 1,
            "ncr_severity": {"critical": {"reminder_after": 1, "escalate_after": 2, "due_after": 3},
                             "major": {"reminder_after": 600, "escalate_after": 1200, "due_after": 3600}}}


async def wait_ncr_where(api: httpx.AsyncClient, ncr: str, pred, what: str, timeout: float = 20.0) -> dict:
    deadline, n = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        n = (await api.get(f"/api/ncrs/{ncr}")).json()
        if pred(n):
            return n
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} on {ncr}; last: {n}")


async def test_a_plain_order_with_todays_patches_is_recorded(api: httpx.AsyncClient, client, wo_number):
    """IQC, production, final inspection and shipment, nothing failing: the history of a plain order under every
    patch the work order has today (inspection triggers, ERP consumption, NCR review states)."""
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    assert (await post_results(api, wo_number, "final", IN_SPEC_FINAL))["verdict"] == "passed"
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed" and not done["status"]["ncrs"]
    await record_history(client, f"work-order-{wo_number}", "work_order_plain_patched")


async def test_order_changes_are_audited_and_a_critical_failure_opens_a_critical_ncr(api: httpx.AsyncClient, client,
                                                                                      sessionmaker, wo_number):
    item, material = f"AUD-{uid()}", f"AUDM-{uid()}"
    # the material's IQC plan has a visual characteristic (a photo); the item's final plan makes the outer
    # diameter critical, so its failure opens a critical NCR, timed by the critical durations
    await save_plan(api, material, "iqc", [
        {"name": "hardness", "kind": "variable", "severity": "major", "lower": 28, "upper": 32, "unit": "HRC"},
        {"name": "surface", "kind": "visual", "severity": "minor"},
    ], {"major": {"aql": 1.0}, "minor": {"aql": 4.0}})
    await save_plan(api, item, "final", [
        {"name": "outer diameter", "kind": "variable", "severity": "critical", "lower": 24.9, "upper": 25.1,
         "unit": "mm"},
    ], {"critical": {"aql": 0.65}})
    ev = release(wo_number, item, material)
    ev["work_order"]["timing"] = {**ev["work_order"]["timing"], **_timing()}
    assert (await api.post("/api/erp/events", json=ev)).status_code == 202
    m_lot, out_lot = f"{wo_number}-M1", f"{wo_number}-L1"

    # IQC from the material's plan: a photo, then results
    st = await wait_status(api, wo_number, lambda s: any(p["kind"] == "iqc" for p in s["pending_inspections"]),
                           what="IQC")
    iqc = next(p for p in st["status"]["pending_inspections"] if p["kind"] == "iqc")["number"]
    ins = (await api.get(f"/api/inspections/{iqc}")).json()
    n = ins["sampling"]["characteristics"]["hardness"]["n"]
    r = await api.post(f"/api/inspections/{iqc}/characteristics/surface/photos", content=PNG,
                       headers={**role_headers("inspector"), "content-type": "image/png"})
    assert r.status_code == 201, r.text
    r = await api.post(f"/api/inspections/{iqc}/results", headers=role_headers("inspector"), json={
        "inspector": "inspector-1", "measurements": [{"characteristic": "hardness", "values": [30.1] * n},
                                                     {"characteristic": "surface", "values": [0]}]})
    assert r.status_code == 202 and r.json()["verdict"] == "passed", r.text
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="operation 10")
    ch = await audited(sessionmaker, "lot", m_lot, "lot.received", actor=SUITE, created=True)  # who sent the receipt
    assert ch["after"]["status"] == "quarantine"
    ch = await audited(sessionmaker, "inspection", iqc, "inspection.photo_attached", actor="t-inspector",
                       created=True)
    assert ch["after"]["characteristic"] == "surface"
    # the inspector's token is the actor; who measured, as the body names them, is data
    ch = await audited(sessionmaker, "inspection", iqc, "inspection.recorded", actor="t-inspector")
    assert ch["inspector"] == "inspector-1" and ch["after"]["inspector"] == "inspector-1"
    assert ch["before"]["status"] == "pending" and ch["after"]["status"] == "passed"
    assert ch["after"]["results"]["hardness"] == {"values": [30.1] * n, "verdict": "passed"}
    ch = await audited(sessionmaker, "lot", m_lot, "lot.status")
    assert ch["before"]["status"] == "quarantine" and ch["after"]["status"] == "released"

    # production, then the final inspection fails on the critical characteristic
    await run_production(api, wo_number)
    ch = await audited(sessionmaker, "lot", out_lot, "lot.created", created=True)
    # the operation that consumed the material (the next one, which consumes nothing, may be recorded already)
    ch = await audited(sessionmaker, "work_order", wo_number, "operation.recorded", actor=SUITE,
                       where=lambda c: bool(c.get("consumed")))
    assert ch["operator"] == "op-7"
    assert ch["before"]["lots"][m_lot]["quantity_remaining"] > ch["after"]["lots"][m_lot]["quantity_remaining"]
    # the final inspection is opened from the item's plan at `final`: its limits, its ISO 2859-1 sample (lot of 20)
    n_fin = sampling.plan(20, "II", "0.65").units_to_inspect
    fin = await post_results(api, wo_number, "final",
                             [{"characteristic": "outer diameter", "values": [25.0] * (n_fin - 1) + [25.2]}])
    assert fin["verdict"] == "failed"
    ncr = await wait_ncr(api, wo_number)
    n_ = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n_["severity"] == "critical", n_
    opened = datetime.fromisoformat(n_["opened_at"])
    assert datetime.fromisoformat(n_["due_at"]) - opened == timedelta(seconds=3)
    # the critical reminder (1 s) and escalation (2 s), not the major ones (10 and 20 minutes)
    n_ = await wait_ncr_where(api, ncr, lambda n: n["escalated_at"] is not None, "the critical escalation", 15)
    assert n_["reminded_at"] is not None and n_["escalated_to"]["role"] == "quality_manager"
    st = await client.get_workflow_handle(f"ncr-{ncr}").query("status")
    assert st["severity"] == "critical" and st["reminded"] and st["escalated"]
    ch = await audited(sessionmaker, "ncr", ncr, "ncr.opened", actor="system", created=True)
    assert ch["after"]["severity"] == "critical" and ch["after"]["state"] == "open"
    await audited(sessionmaker, "ncr", ncr, "ncr.reminder", actor="system")
    await audited(sessionmaker, "ncr", ncr, "ncr.escalation", actor="system")
    ch = await audited(sessionmaker, "lot", out_lot, "lot.status")
    assert ch["after"]["status"] == "on_hold"

    # the NCR's fields: classification, containment, root cause, decisions
    r = await api.patch(f"/api/ncrs/{ncr}", headers=role_headers("qa_supervisor"), json={"quantity_affected": 5})
    assert r.status_code == 200, r.text
    ch = await audited(sessionmaker, "ncr", ncr, "ncr.updated", actor="t-qa_supervisor")
    assert ch["before"] == {"quantity_affected": None} and ch["after"] == {"quantity_affected": 5}
    r = await api.post(f"/api/ncrs/{ncr}/containment", headers=role_headers("qa_supervisor"),
                       json={"action": "sort the stock", "owner": "t-operator"})
    assert r.status_code == 201, r.text
    await audited(sessionmaker, "ncr", ncr, "ncr.containment_added", actor="t-qa_supervisor", created=True)
    r = await api.patch(f"/api/ncrs/{ncr}/containment/1", headers=role_headers("qa_supervisor"), json={"done": True})
    assert r.status_code == 200, r.text
    ch = await audited(sessionmaker, "ncr", ncr, "ncr.containment_updated", actor="t-qa_supervisor")
    assert ch["before"]["done_at"] is None and ch["after"]["done_at"]
    r = await api.patch(f"/api/ncrs/{ncr}/root-cause", headers=role_headers("qa_supervisor"),
                        json={"category": "machine", "text": "worn insert"})
    assert r.status_code == 200, r.text
    await audited(sessionmaker, "ncr", ncr, "ncr.root_cause", actor="t-qa_supervisor")
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    ch = await audited(sessionmaker, "ncr", ncr, "ncr.confirm", actor="t-qa_supervisor")
    assert ch["before"]["state"] in ("open", "qa_review") and ch["after"]["state"] == "mrb"
    r = await decide(api, ncr, "rework", "mrb_production", reason="regrind", rework_operation=10)
    assert r.status_code == 200 and r.json()["state"] == "verification", r.text
    ch = await audited(sessionmaker, "ncr", ncr, "ncr.rework", actor="t-mrb_production")
    assert ch["after"]["state"] in ("disposition", "verification")

    # the rework, the re-inspection that verifies it, and the order completes
    await report_operation(api, wo_number, 10, [], report_id=f"{wo_number}-rework1", good=20)
    assert (await post_results(api, wo_number, "final", [{"characteristic": "outer diameter",
                                                           "values": [25.0] * n_fin}]))["verdict"] == "passed"
    await wait_ncr_where(api, ncr, lambda n: n["state"] == "closed", "closing by the re-inspection")
    ch = await audited(sessionmaker, "ncr", ncr, "ncr.state", actor="system")
    assert ch["after"] == {"state": "closed"}
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed"
    await client.get_workflow_handle(f"ncr-{ncr}").result()
    # the inspection opened from the plan, the decisions' signatures, the stages and the shipment
    ch = await audited(sessionmaker, "inspection", iqc, "inspection.opened", created=True)
    assert ch["trigger"] == "iqc" and ch["after"]["status"] == "pending" and ch["after"]["lot"] == m_lot
    rework = next(d for d in (await api.get(f"/api/ncrs/{ncr}")).json()["decisions"] if d["action"] == "rework")
    ch = await audited(sessionmaker, "ncr_decision", rework["decision_id"], "signature.signed",
                       actor="t-mrb_production", created=True)
    assert ch["after"]["signer"] == "t-mrb_production" and ch["after"]["content_hash"] == ch["content_hash"]
    ch = await audited(sessionmaker, "work_order", wo_number, "work_order.stage", actor="workflow")
    assert set(ch["before"]) == set(ch["after"]) and set(ch["after"]) <= {"stage", "status"}
    ch = await audited(sessionmaker, "shipment", f"DN-{wo_number}", "shipment.shipped", actor="system")
    assert ch["lot"] == out_lot and ch["before"]["lot_status"] == "released" and ch["after"]["lot_status"] == "shipped"
    assert ch["before"]["lot_quantity_remaining"] == ch["quantity"] > 0 and ch["after"]["lot_quantity_remaining"] == 0
    await chain_ok(sessionmaker)
    await record_history(client, f"work-order-{wo_number}", "work_order_critical_ncr_rework_review_states")
    await record_history(client, f"ncr-{ncr}", "nonconformance_critical_rework_reinspected")
