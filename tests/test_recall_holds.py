"""Holds stack, the ERP hears the decisions, one recall per suspect (issue 5's audit).

- A lot held by two recalls, or by a recall and an NCR, leaves on_hold only when the last holder lets it go, and goes
  back to the status it had before the first hold; until then a release says (answer, audit) what still holds it and
  emits no `available` event.
- A release that lifts the last recall hold sends the ERP the unblock (`Batch Hold`, hold: 0); a reject writes off
  what was left (`Stock Entry`, Material Issue), once, however often the decision's activity runs.
- A second recall of a suspect an open recall already covers is refused (409 naming it) and starts nothing.
The recalls' runs are recorded for the replay test with RECORD_HISTORIES=1.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.service import RPCError

from domain.models import AuditLog, Lot
from tests.helpers import PASSWORD, role_headers
from tests.test_lifecycle import record_history
from tests.test_recall import wait_recall
from tests.test_trace_plant import RESOLVER, build_plant, lot_status

pytestmark = pytest.mark.asyncio

def qm() -> dict[str, str]:
    return role_headers("quality_manager")  # the role tokens exist once the session's fixtures made them


async def audit_entries(sessionmaker, entity: str, key: str, action: str) -> list[dict[str, Any]]:
    async with sessionmaker() as s:
        return list((await s.execute(select(AuditLog.changes).where(
            AuditLog.entity == entity, AuditLog.entity_key == key, AuditLog.action == action)
            .order_by(AuditLog.seq))).scalars())


async def wait_doc(erp_sim, doctype: str, name: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = erp_sim.documents(doctype).get(name)
        if doc is not None:
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"the ERP never got {doctype} {name}")


async def wait_batch(erp_sim, batch: str, *, disabled: int, timeout: float = 20) -> dict[str, Any]:
    """The ERP's Batch once its `disabled` check (how ERPNext blocks a batch) is `disabled`."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = erp_sim.documents("Batch").get(batch) or {}
        if doc.get("disabled") == disabled:
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"the ERP's Batch {batch} never had disabled={disabled}: {doc}")


async def released_events(api: httpx.AsyncClient, lot: str) -> list[dict[str, Any]]:
    r = await api.get("/epcis/events", params={"EQ_disposition": "available",
                                              "MATCH_epcClass": f"https://id.gs1.org/01/09506000134352/10/{lot}"})
    return r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]


async def decide(api: httpx.AsyncClient, number: str, lot: str, decision: str) -> httpx.Response:
    return await api.post(f"/api/recalls/{number}/decisions", headers=qm(),
                          json={"lot": lot, "decision": decision, "reason": f"{decision}: checked",
                                "password": PASSWORD})


async def test_two_recalls_on_one_lot_release_only_with_the_last_and_tell_the_erp(
        api: httpx.AsyncClient, client, erp_sim, sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    tag, lots = plant.tag, plant.lots
    a1, b1 = lots["A1"], lots["B1"]
    first, second = f"RC-H1-{tag}", f"RC-H2-{tag}"
    # by heat: A1 (10 in stock) and B1 (20, not shipped) held; then by lot A1: the same two again
    r = await api.post("/api/recalls", json={"number": first, "suspect_kind": "heat", "suspect": plant.heats["M1"],
                                             "reason": "cracks in heat"})
    assert r.status_code == 202, r.text
    await wait_recall(api, first, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    r = await api.post("/api/recalls", json={"number": second, "suspect_kind": "lot", "suspect": a1,
                                             "reason": "turning scrap found in A1"})
    assert r.status_code == 202, r.text
    rec = await wait_recall(api, second, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    scope = {x["lot"]: x for x in rec["record"]["lots"]}
    assert (scope[a1]["action"], scope[a1]["status_before"], scope[a1]["status"]) == ("held", "on_hold", "on_hold")
    (added,) = await audit_entries(sessionmaker, "lot", a1, "lot.hold_added")
    assert added["recall"] == second and added["also_held_by"] == [f"recall {first}"]

    # the first recall releases A1: the second still holds it, and the answer and the audit say so
    r = await decide(api, first, a1, "release")
    assert r.status_code == 200, r.text
    assert r.json()["still_held_by"] == {a1: [f"recall {second}"]}
    assert await lot_status(sessionmaker, a1) == "on_hold"
    (kept,) = await audit_entries(sessionmaker, "lot", a1, "lot.hold_kept")
    assert kept["released_by"] == f"recall {first}" and kept["still_held_by"] == [f"recall {second}"]
    decided = await audit_entries(sessionmaker, "recall", first, "recall.decided")
    assert decided[-1]["lot"] == a1 and decided[-1]["still_held_by"] == [f"recall {second}"]
    assert decided[-1]["after"] == {}  # the lot's status did not change
    assert await released_events(api, a1) == []  # not available: no event says it is
    # the second has not decided: the ERP block stays (no unblock from the first)
    status = (await api.get(f"/api/recalls/{first}")).json()["status"]
    assert not [w for w in status["waiting_for"] if w.startswith("ERP")]
    assert erp_sim.documents("Batch")[a1]["disabled"] == 1

    # the second releases it: the last holder; back to what it was before the first hold, and the ERP is told
    r = await decide(api, second, a1, "release")
    assert r.status_code == 200, r.text
    assert r.json()["still_held_by"] == {}
    assert await lot_status(sessionmaker, a1) == "released"
    await wait_batch(erp_sim, a1, disabled=0)  # unblocked as ERPNext unblocks a batch: `disabled` 0
    assert len(await released_events(api, a1)) == 1

    # the first rejects B1: rejected, its 20 written off in the hub and in the ERP, as an NCR's scrap is
    r = await decide(api, first, b1, "reject")
    assert r.status_code == 200, r.text
    assert await lot_status(sessionmaker, b1) == "rejected"
    scrap = await wait_doc(erp_sim, "Stock Entry", f"{first}/{b1}-SCRAP")
    assert (scrap["stock_entry_type"], scrap["purpose"]) == ("Material Issue", "scrap")
    assert [(i["batch_no"], i["qty"]) for i in scrap["items"]] == [(b1, 20.0)]
    async with sessionmaker() as s:
        assert (await s.execute(select(Lot.quantity_remaining).where(Lot.number == b1))).scalar_one() == 0.0
    # the second rejects it too: nothing left, nothing written off twice
    r = await decide(api, second, b1, "reject")
    assert r.status_code == 200, r.text
    for number in (first, second):
        await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "closing")
    scraps = [k for k in erp_sim.documents("Stock Entry") if k.startswith((f"{first}/", f"{second}/"))]
    assert scraps == [f"{first}/{b1}-SCRAP"]
    batches = erp_sim.documents("Batch")
    assert (batches[a1]["disabled"], batches[b1]["disabled"]) == (0, 1)  # a rejected lot stays blocked
    await record_history(client, f"recall-{first}", "recall_release_kept_reject_written_off")
    await record_history(client, f"recall-{second}", "recall_last_release_unblocks_erp")


async def _recall(sessionmaker, number: str, lot: str, kind: str = "lot") -> None:
    from domain import recall

    async with sessionmaker() as s, s.begin():
        await recall.open_recall(s, number=number, workflow_id=f"recall-{number}", suspect_kind=kind, suspect=lot,
                                 since=None, until=None, reason="test", requested_by="qm-1", resolver=RESOLVER)
        await recall.hold_lots(s, number=number, resolver=RESOLVER)


async def _decide(sessionmaker, number: str, lot: str, decision: str = "release") -> dict[str, Any]:
    from domain import recall

    async with sessionmaker() as s, s.begin():
        return await recall.decide_lot(s, number=number, lot=lot, decision=decision, reviewer="t-quality_manager",
                                       role="quality_manager", reason="checked", resolver=RESOLVER)


async def _set_status(sessionmaker, lot: str, status: str) -> None:
    from domain import production

    async with sessionmaker() as s, s.begin():
        await production.set_lot_status(s, await production.get_lot(s, lot), status, actor="test", why="test")


async def test_the_last_release_restores_the_status_before_the_first_hold_and_a_retry_answers_the_same(
        sessionmaker):
    """A lot in quarantine when the first recall held it goes back to quarantine, not to released, when the second
    recall (which saw it on hold) releases it last; a repeated decision (a retried activity) answers as the first."""
    plant = await build_plant(sessionmaker)
    a1, tag = plant.lots["A1"], plant.tag
    await _set_status(sessionmaker, a1, "quarantine")
    await _recall(sessionmaker, f"RC-Q1-{tag}", a1)
    await _recall(sessionmaker, f"RC-Q2-{tag}", plant.heats["M1"], "heat")  # another suspect: A1 is made of M1
    first = await _decide(sessionmaker, f"RC-Q1-{tag}", a1)
    assert (first["status"], first["released"], first["erp_unblock"], first["still_held_by"]) == \
        ("on_hold", False, False, [f"recall RC-Q2-{tag}"])
    assert await _decide(sessionmaker, f"RC-Q1-{tag}", a1) == first
    last = await _decide(sessionmaker, f"RC-Q2-{tag}", a1)
    assert (last["status"], last["released"], last["erp_unblock"], last["still_held_by"]) == \
        ("quarantine", True, True, [])
    assert await lot_status(sessionmaker, a1) == "quarantine"
    assert await _decide(sessionmaker, f"RC-Q2-{tag}", a1) == last

    # a reject writes off what is left once: the repeat answers the same quantity (the ERP document is named after
    # the recall and the lot, so a resend is done once), and nothing is written off a second time
    m3 = plant.lots["M3"]
    await _recall(sessionmaker, f"RC-Q3-{tag}", m3)
    rejected = await _decide(sessionmaker, f"RC-Q3-{tag}", m3, "reject")
    assert (rejected["status"], rejected["written_off"]) == ("rejected", 30.0)
    assert await _decide(sessionmaker, f"RC-Q3-{tag}", m3, "reject") == rejected
    assert len(await audit_entries(sessionmaker, "lot", m3, "lot.quantity")) == 1


async def test_a_recall_hold_and_an_ncr_release_the_lot_only_together(api: httpx.AsyncClient, sessionmaker):
    """An NCR used as is while a recall holds its lot: the lot stays on hold naming the recall (the concession is
    recorded); the recall's release then releases it. And the other way round: a recall's release while an NCR
    waits for its decision keeps the lot on hold naming the NCR, though the ERP's block (the recall's) is lifted."""
    from domain import quality

    plant = await build_plant(sessionmaker)
    tag, a1, m3 = plant.tag, plant.lots["A1"], plant.lots["M3"]

    async def open_ncr(number: str, lot: str) -> None:
        async with sessionmaker() as s, s.begin():
            await quality.open_ncr(s, number=number, workflow_id=f"ncr-{number}", work_order=None, lot=lot,
                                   inspection=None, description="burr on the bore", resolver=RESOLVER)

    async def use_as_is(number: str, lot: str) -> None:
        async with sessionmaker() as s, s.begin():
            await quality.record_decision(s, ncr=number, decision_id=f"{number}-D1", action="use_as_is",
                                          reviewer="t-mrb", role="mrb_engineering", reason="fit checked",
                                          rework_operation=None, new_state="closed")
            await quality.apply_disposition(s, ncr=number, lot=lot, outcome="use_as_is", resolver=RESOLVER)

    recall, ncr = f"RC-N1-{tag}", f"NCR-N1-{tag}"
    await _recall(sessionmaker, recall, a1)
    await open_ncr(ncr, a1)
    await use_as_is(ncr, a1)
    assert await lot_status(sessionmaker, a1) == "on_hold"
    (kept,) = await audit_entries(sessionmaker, "lot", a1, "lot.hold_kept")
    assert kept["released_by"] == f"NCR {ncr}" and kept["still_held_by"] == [f"recall {recall}"]
    async with sessionmaker() as s:
        assert (await s.execute(select(Lot.concession).where(Lot.number == a1))).scalar_one() == f"{ncr}: fit checked"
    # a retried disposition changes nothing more
    async with sessionmaker() as s, s.begin():
        await quality.apply_disposition(s, ncr=ncr, lot=a1, outcome="use_as_is", resolver=RESOLVER)
    assert len(await audit_entries(sessionmaker, "lot", a1, "lot.hold_kept")) == 1
    r = await api.get("/epcis/events", params={"EQ_disposition": "conformant",
                                              "MATCH_epcClass": f"https://id.gs1.org/01/09506000134352/10/{a1}"})
    assert r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == []
    effect = await _decide(sessionmaker, recall, a1)
    assert (effect["status"], effect["still_held_by"], effect["erp_unblock"]) == ("released", [], True)
    assert await lot_status(sessionmaker, a1) == "released"

    # the NCR first, then the recall
    recall2, ncr2 = f"RC-N2-{tag}", f"NCR-N2-{tag}"
    await open_ncr(ncr2, m3)
    await _recall(sessionmaker, recall2, m3)
    effect = await _decide(sessionmaker, recall2, m3)
    assert (effect["status"], effect["still_held_by"], effect["erp_unblock"]) == ("on_hold", [f"NCR {ncr2}"], True)
    assert await lot_status(sessionmaker, m3) == "on_hold"
    await use_as_is(ncr2, m3)
    assert await lot_status(sessionmaker, m3) == "released"


async def test_one_open_recall_per_suspect(api: httpx.AsyncClient, client, erp_sim, sessionmaker):
    from activities.models import ConsumedLot, OperationReport
    from domain import production

    plant = await build_plant(sessionmaker, ship=False)
    tag = plant.tag
    body = {"number": f"RC-S1-{tag}", "suspect_kind": "heat", "suspect": plant.heats["M1"], "reason": "cracks"}
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 202, r.text
    # the same number and request: the same recall, as before
    r = await api.post("/api/recalls", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is True, r.text
    await wait_recall(api, body["number"], lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    # another number for the same suspect: refused, naming the open recall and where to follow it
    r = await api.post("/api/recalls", json={**body, "number": f"RC-S2-{tag}"})
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "suspect"
    assert f"RC-S1-{tag}" in r.json()["detail"] and f"/api/recalls/RC-S1-{tag}" in r.json()["detail"]
    assert (await api.get(f"/api/recalls/RC-S2-{tag}")).status_code == 404
    with pytest.raises(RPCError):  # no workflow was started
        await client.get_workflow_handle(f"recall-RC-S2-{tag}").describe()

    # equipment: the same window, or one inside it, is covered; another window is another recall
    machine = f"CNC-{tag}"
    async with sessionmaker() as s, s.begin():
        await production.record_operation(
            s, work_order=f"WOB-{tag}", output_lot=f"C1-{tag}", operation_name="Pressing", rework=False,
            resolver=RESOLVER, report=OperationReport(
                report_id=f"R-C1-{tag}", seq=10, equipment=machine, operator="op-9", shift="B",
                started_at=datetime(2026, 11, 21, 12, tzinfo=UTC), ended_at=datetime(2026, 11, 21, 13, tzinfo=UTC),
                parameters={}, consumed=[ConsumedLot(lot=plant.lots["M3"], quantity=5)], good_quantity=5))
    eq = {"number": f"RC-E1-{tag}", "suspect_kind": "equipment", "suspect": machine, "reason": "spindle",
          "since": "2026-11-21T11:30:00Z", "until": "2026-11-21T13:30:00Z"}
    r = await api.post("/api/recalls", json=eq)
    assert r.status_code == 202, r.text
    await wait_recall(api, eq["number"], lambda x: x["record"] is not None, "scope")
    for since, until in (("2026-11-21T11:30:00Z", "2026-11-21T13:30:00Z"), ("2026-11-21T12:00:00Z",
                                                                              "2026-11-21T12:30:00Z")):
        r = await api.post("/api/recalls", json={**eq, "number": f"RC-E2-{tag}", "since": since, "until": until})
        assert r.status_code == 409 and f"RC-E1-{tag}" in r.json()["detail"], r.text
    r = await api.post("/api/recalls", json={**eq, "number": f"RC-E3-{tag}", "since": "2026-11-21T12:30:00Z",
                                             "until": "2026-11-21T14:00:00Z"})
    assert r.status_code == 202, r.text


async def test_a_case_held_by_two_recalls_goes_back_when_the_last_releases(api: httpx.AsyncClient, sessionmaker):
    """The cases and pallets follow the same rule: the first recall's hold on a case ends when it has released every
    lot inside, but the case stays on hold while another open recall holds it, then goes back to what it was."""
    from domain import gs1
    from domain.models_codes import Container
    from tests.test_trace_containers import container_rules, issue_codes

    plant = await build_plant(sessionmaker, ship=False)
    tag, lots = plant.tag, plant.lots
    item = f"ASSY-{tag}"
    await container_rules(api, item)
    units, (case,) = await issue_codes(api, item, "unit", 2, lots["B1"]), await issue_codes(api, item, "case", 1)
    r = await api.post("/api/codes/pack", json={"parent": case, "children": units, "actor": "packer"})
    assert r.status_code == 200, r.text
    path = f"/00/{gs1.parse_digital_link(case)['00']}"

    async def box() -> str:
        async with sessionmaker() as s:
            return (await s.execute(select(Container.status).where(Container.code == path))).scalar_one()

    first, second = f"RC-C1-{tag}", f"RC-C2-{tag}"
    for number, kind, suspect in ((first, "heat", plant.heats["M1"]), (second, "lot", lots["B1"])):
        r = await api.post("/api/recalls", json={"number": number, "suspect_kind": kind, "suspect": suspect,
                                                 "reason": "cracks"})
        assert r.status_code == 202, r.text
        await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    assert await box() == "on_hold"
    for lot in (lots["A1"], lots["B1"]):
        assert (await decide(api, first, lot, "release")).status_code == 200
    assert await box() == "on_hold"  # the second still holds it
    (kept,) = await audit_entries(sessionmaker, "container", path, "container.hold_kept")
    assert kept["released_by"] == f"recall {first}" and kept["still_held_by"] == [f"recall {second}"]
    r = await decide(api, second, lots["B1"], "release")
    assert r.status_code == 200, r.text
    assert await box() == "open" and await lot_status(sessionmaker, lots["B1"]) == "released"
