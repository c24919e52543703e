"""Two recall gaps (issue 5's audit, "Recall"):

- The scope and the holds run in separate transactions. A lot that ships (or is used up) between them is not put on
  hold, gets no ERP block, is listed as shipped, and its customer is added to the notices and waited for.
- A case or pallet held while its lot had shipped (lot first, box after: the order packing expects) can never be
  released by a lot decision: a reviewer decides the box itself (release or reject), and the recall waits for it.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from activities.recall import RecallActivities
from activities.recall_models import RecallRef
from domain.models import AuditLog, Lot
from domain.models_codes import Container
from domain.models_trace import Recall, RecallLot, RecallNotice
from tests.helpers import PASSWORD, role_headers
from tests.test_lifecycle import record_history
from tests.test_recall import wait_recall
from tests.test_trace_plant import RESOLVER, build_plant, lot_status

pytestmark = pytest.mark.asyncio
POSTGRES = os.environ.get("HUB_TEST_DB", "postgresql") == "postgresql"


def qm() -> dict[str, str]:
    return role_headers("quality_manager")


async def audit_entries(sessionmaker, entity: str, key: str, action: str) -> list[dict[str, Any]]:
    async with sessionmaker() as s:
        return list((await s.execute(select(AuditLog.changes).where(
            AuditLog.entity == entity, AuditLog.entity_key == key, AuditLog.action == action)
            .order_by(AuditLog.seq))).scalars())


async def recall_line(sessionmaker, number: str, lot: str) -> RecallLot:
    async with sessionmaker() as s:
        return (await s.execute(select(RecallLot).join(Recall, Recall.id == RecallLot.recall_id)
                                .join(Lot, Lot.id == RecallLot.lot_id)
                                .where(Recall.number == number, Lot.number == lot))).scalar_one()


async def notices(sessionmaker, number: str) -> dict[str, RecallNotice]:
    async with sessionmaker() as s:
        return {n.customer: n for n in (await s.execute(
            select(RecallNotice).join(Recall, Recall.id == RecallNotice.recall_id)
            .where(Recall.number == number))).scalars()}


async def _open(sessionmaker, number: str, kind: str, suspect: str) -> None:
    from domain import recall

    async with sessionmaker() as s, s.begin():
        await recall.open_recall(s, number=number, workflow_id=f"recall-{number}", suspect_kind=kind, suspect=suspect,
                                 since=None, until=None, reason="cracks", requested_by="t-quality_manager",
                                 resolver=RESOLVER)


async def _wait_for_audit_lock(sessionmaker, timeout: float = 10) -> None:
    """PostgreSQL: until a transaction waits for the audit chain's lock (held by the uncommitted shipment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with sessionmaker() as s:
            waiting = (await s.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))).scalar_one()
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("open_recall never waited for the shipment's transaction")


async def test_a_lot_shipped_between_the_scope_and_the_hold_is_not_held_and_its_customer_is_notified(
        sessionmaker):
    """The shipment's transaction checks the recall's holds before open_recall commits the scope, and commits after
    open_recall has read the lot as in stock: the scope says `held`, the lot has left. The hold sees it and does not
    hold it. (SQLite serialises writers at BEGIN: there open_recall waits for the shipment and scopes it as shipped,
    and the answer is the same.)"""
    from domain import shipping

    plant = await build_plant(sessionmaker, ship=False)
    tag, b1 = plant.tag, plant.lots["B1"]
    number, customer, shipment = f"RC-LS-{tag}", f"Customer Late {tag}", f"DN-LS-{tag}"

    ship = sessionmaker()
    await ship.begin()
    try:
        await shipping.ship_lot(ship, work_order=f"WOB-{tag}", lot=b1, shipment=shipment, sales_order=f"SO-LS-{tag}",
                                customer=customer, carrier=None, tracking_number=None, resolver=RESOLVER)
        opening = asyncio.create_task(_open(sessionmaker, number, "lot", b1))
        if POSTGRES:
            await _wait_for_audit_lock(sessionmaker)
        else:
            await asyncio.sleep(0.5)
        await ship.commit()
    finally:
        await ship.close()
    await opening
    if POSTGRES:  # the race happened: the scope holds a lot that has left, and names no customer
        assert (await recall_line(sessionmaker, number, b1)).action == "held"
        assert customer not in await notices(sessionmaker, number)

    acts = RecallActivities(sessionmaker, resolver=RESOLVER)
    first = await acts.hold_recall_lots(RecallRef(number=number))
    again = await acts.hold_recall_lots(RecallRef(number=number))  # a retried activity answers the same
    assert first == again
    assert not [x for x in first if x.action == "held"]  # nothing held: the workflow sends the ERP no Batch Hold
    if POSTGRES:
        (line,) = first
        assert (line.lot, line.action, line.quantity, line.customers) == (b1, "shipped", 20.0, [customer])

    assert await lot_status(sessionmaker, b1) == "shipped"
    rl = await recall_line(sessionmaker, number, b1)
    assert (rl.action, rl.quantity, rl.held_at, rl.erp_blocked_at) == ("shipped", 20.0, None, None)
    (notice,) = (await notices(sessionmaker, number)).values()
    assert (notice.customer, notice.quantity) == (customer, 20.0)
    assert [(sh["shipment"], [(x["lot"], x["quantity"]) for x in sh["lots"]]) for sh in notice.shipments] == \
        [(shipment, [(b1, 20.0)])]
    assert not await audit_entries(sessionmaker, "lot", b1, "lot.hold_added")
    statuses = [c["status"] for c in await audit_entries(sessionmaker, "lot", b1, "lot.status")]
    assert ["released", "on_hold"] not in statuses and statuses[-1] == ["released", "shipped"]
    changed = await audit_entries(sessionmaker, "recall", number, "recall.scope_changed")
    if POSTGRES:  # once, however often the activity ran
        (entry,) = changed
        assert entry["lot"] == b1 and entry["customers"] == [customer]
        assert entry["before"] == {"action": "held"} and entry["after"] == {"action": "shipped"}


async def test_a_lot_used_up_between_the_scope_and_the_hold_is_not_held(sessionmaker):
    """A consumption after the scope is refused (the lot is recalled from the moment the scope records it). One
    whose transaction checked just before the scope committed can still use the lot up: it is then not put on
    hold (it is gone), and a lot still in stock is held for what it has now, not what the scope saw."""
    from activities.models import ConsumedLot, OperationReport
    from core.errors import Conflict
    from domain import production

    plant = await build_plant(sessionmaker, ship=False)
    tag, a1, b1 = plant.tag, plant.lots["A1"], plant.lots["B1"]
    number = f"RC-LU-{tag}"
    await _open(sessionmaker, number, "heat", plant.heats["M1"])
    assert (await recall_line(sessionmaker, number, a1)).action == "held"
    assert (await recall_line(sessionmaker, number, b1)).quantity == 20.0
    with pytest.raises(Conflict) as refused:
        async with sessionmaker() as s, s.begin():
            t0, t1 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC), datetime(2026, 11, 21, 13, 0, tzinfo=UTC)
            await production.record_operation(
                s, work_order=f"WOB-{tag}", output_lot=b1, operation_name="Pressing", rework=False,
                report=OperationReport(report_id=f"RB2-{tag}", seq=20, equipment="PRESS-09", operator="op-9",
                                       shift="B", started_at=t0, ended_at=t1, parameters={"force_kn": 80},
                                       consumed=[ConsumedLot(lot=a1, quantity=10)], good_quantity=5),
                resolver=RESOLVER)
    assert number in str(refused.value) and refused.value.field == "consumed"
    # what a consumption racing the scope leaves: A1 used up, B1 with more in it than the scope saw
    async with sessionmaker() as s, s.begin():
        lot_a1, lot_b1 = await production.get_lot(s, a1), await production.get_lot(s, b1)
        lot_a1.quantity_remaining = 0.0
        await production.set_lot_status(s, lot_a1, "consumed", actor="test", why="consumed by a racing report")
        lot_b1.quantity_remaining = 25.0
    acts = RecallActivities(sessionmaker, resolver=RESOLVER)
    lines = {x.lot: x for x in await acts.hold_recall_lots(RecallRef(number=number))}
    assert lines[a1].action == "none" and lines[a1].customers == []
    assert lines[b1].action == "held" and lines[b1].quantity == 25.0  # what the ERP is told to block: what is there
    assert await lot_status(sessionmaker, a1) == "consumed"
    assert await lot_status(sessionmaker, b1) == "on_hold"
    rl = await recall_line(sessionmaker, number, a1)
    assert (rl.action, rl.held_at) == ("none", None)
    assert {e["lot"] for e in await audit_entries(sessionmaker, "recall", number, "recall.scope_changed")} == {a1, b1}


async def _case_of_b1(api: httpx.AsyncClient, sessionmaker, *, shipped: bool = True):
    """The plant (B1 not shipped), two units of B1 packed in a case; B1 shipped at lot level, the case not."""
    from domain import gs1, shipping
    from tests.test_trace_containers import container_rules, issue_codes

    plant = await build_plant(sessionmaker, ship=False)
    tag, b1 = plant.tag, plant.lots["B1"]
    item = f"ASSY-{tag}"
    await container_rules(api, item)
    units, (case,) = await issue_codes(api, item, "unit", 2, b1), await issue_codes(api, item, "case", 1)
    r = await api.post("/api/codes/pack", json={"parent": case, "children": units, "actor": "packer"})
    assert r.status_code == 200, r.text
    if shipped:
        async with sessionmaker() as s, s.begin():
            await shipping.ship_lot(s, work_order=f"WOB-{tag}", lot=b1, shipment=f"DN-{tag}", sales_order=f"SO-{tag}",
                                    customer=f"Customer X {tag}", carrier=None, tracking_number=None,
                                    resolver=RESOLVER)
    return plant, case, f"/00/{gs1.parse_digital_link(case)['00']}"


async def box_status(sessionmaker, path: str) -> str:
    async with sessionmaker() as s:
        return (await s.execute(select(Container.status).where(Container.code == path))).scalar_one()


async def ship_box(sessionmaker, case: str, shipment: str) -> dict[str, Any]:
    from domain import packing

    async with sessionmaker() as s, s.begin():
        return await packing.ship_container(s, code=case, shipment=shipment, actor="shipper", resolver=RESOLVER)


async def test_a_case_held_after_its_lot_shipped_is_released_by_a_decision_on_the_case_and_the_recall_closes(
        api: httpx.AsyncClient, client, sessionmaker):
    from core.errors import Conflict

    plant, case, path = await _case_of_b1(api, sessionmaker)
    tag, b1 = plant.tag, plant.lots["B1"]
    number, customer = f"RC-CD-{tag}", f"Customer X {tag}"
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "lot", "suspect": b1,
                                             "reason": "cracks"})
    assert r.status_code == 202, r.text
    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    assert await box_status(sessionmaker, path) == "on_hold"
    (lot,) = rec["record"]["lots"]
    assert (lot["lot"], lot["action"]) == (b1, "shipped")  # no lot decision possible
    (box,) = rec["record"]["containers"]
    assert (box["code"], box["action"], box["status"], box["waits_for_decision"], box["decision"]) == \
        (path, "held", "on_hold", True, None)
    assert rec["status"]["containers"] == [path] and rec["status"]["containers_waiting"] == [path]
    assert f"reviewer: release or reject held case {path} (no lot decision releases it)" in \
        rec["status"]["waiting_for"]
    with pytest.raises(Conflict, match="on hold by recall"):
        await ship_box(sessionmaker, case, f"DN-{tag}")

    # the customer acknowledges: the recall still waits for the case
    r = await api.post(f"/api/recalls/{number}/acknowledgements", json={"customer": customer, "acknowledged_by": "x"})
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == "notifying" and r.json()["containers_waiting"] == [path]

    # refusals, which leave nothing behind
    url = f"/api/recalls/{number}/containers{path}/decisions"
    body = {"decision": "release", "reason": "units inspected: no cracks", "password": PASSWORD}
    r = await api.post(url, json=body, headers=role_headers("mrb_production"))
    assert r.status_code == 403 and "quality_manager" in r.json()["detail"]
    r = await api.post(url, json={**body, "reason": " "}, headers=qm())
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    r = await api.post(url, json={**body, "password": "wrong password!"}, headers=qm())
    assert r.status_code == 401, r.text
    r = await api.post(f"/api/recalls/{number}/containers/00/000000000000000000/decisions", json=body, headers=qm())
    assert r.status_code == 404 and path in r.json()["detail"]
    assert await box_status(sessionmaker, path) == "on_hold"

    # the bare SSCC names the box too
    r = await api.post(f"/api/recalls/{number}/containers/{path.rsplit('/', 1)[1]}/decisions", json=body,
                       headers=qm())
    assert r.status_code == 200, r.text
    assert r.json()["container_decisions"] == {path: "release"}
    r = await api.post(url, json=body, headers=qm())
    assert r.status_code == 409  # decided already (and the recall closes at once: it waited for nothing else)

    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "close")
    (box,) = rec["record"]["containers"]
    assert (box["status"], box["waits_for_decision"], box["decision"], box["decided_by"]) == \
        ("open", False, "release", "t-quality_manager")
    assert box["released_at"] is not None
    assert await box_status(sessionmaker, path) == "open"
    (decided,) = await audit_entries(sessionmaker, "recall", number, "recall.container_decided")
    assert decided["container"] == path and decided["decision"] == "release" and decided["lots"] == [b1]
    (released,) = await audit_entries(sessionmaker, "container", path, "container.released")
    assert released["before"] == {"status": "on_hold"} and released["after"] == {"status": "open"}
    r = await api.get("/epcis/events", params={"EQ_disposition": "available", "MATCH_epc": case})
    assert len(r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 1
    # and the case can now leave on its lot's shipment
    shipped = await ship_box(sessionmaker, case, f"DN-{tag}")
    assert shipped["shipment"] == f"DN-{tag}" and await box_status(sessionmaker, path) == "shipped"
    await record_history(client, f"recall-{number}", "recall_container_released_late_ship")


async def test_a_rejected_case_never_ships_and_a_case_of_held_lots_waits_for_their_decision(
        api: httpx.AsyncClient, sessionmaker):
    from core.errors import Conflict

    plant, case, path = await _case_of_b1(api, sessionmaker)
    tag, b1 = plant.tag, plant.lots["B1"]
    number = f"RC-CR-{tag}"
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "lot", "suspect": b1,
                                             "reason": "cracks"})
    assert r.status_code == 202, r.text
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    r = await api.post(f"/api/recalls/{number}/containers{path}/decisions", headers=qm(),
                       json={"decision": "reject", "reason": "cracked units found", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json()["containers_waiting"] == []
    assert await box_status(sessionmaker, path) == "rejected"
    r = await api.post(f"/api/recalls/{number}/containers{path}/decisions", headers=qm(),
                       json={"decision": "release", "reason": "second thoughts", "password": PASSWORD})
    assert r.status_code == 409 and "already decided (reject)" in r.json()["detail"]
    (rejected,) = await audit_entries(sessionmaker, "container", path, "container.rejected")
    assert rejected["after"] == {"status": "rejected"} and rejected["reason"] == "cracked units found"
    with pytest.raises(Conflict, match="rejected"):
        await ship_box(sessionmaker, case, f"DN-{tag}")

    # a case whose lot is still in stock and held: its lot's decision releases it, as before
    plant, case, path = await _case_of_b1(api, sessionmaker, shipped=False)
    tag, b1 = plant.tag, plant.lots["B1"]
    number = f"RC-CH-{tag}"
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "lot", "suspect": b1,
                                             "reason": "cracks"})
    assert r.status_code == 202, r.text
    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    (box,) = rec["record"]["containers"]
    assert box["status"] == "on_hold" and box["waits_for_decision"] is False
    assert rec["status"]["containers_waiting"] == []
    url = f"/api/recalls/{number}/containers{path}/decisions"
    r = await api.post(url, headers=qm(), json={"decision": "release", "reason": "ok", "password": PASSWORD})
    assert r.status_code == 409 and "decide the lot first" in r.json()["detail"]
    r = await api.post(f"/api/recalls/{number}/decisions", headers=qm(),
                       json={"lot": b1, "decision": "release", "reason": "re-tested", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert await box_status(sessionmaker, path) == "open"
    await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "close")


async def test_the_recall_waits_for_the_customer_of_a_lot_that_shipped_while_it_was_scoped(
        api: httpx.AsyncClient, client, erp_sim, sessionmaker):
    """The same race through the workflow: the lot ships while the recall's first activity scopes it. The ERP gets
    no Batch Hold for it, its customer is among those the recall waits for, and it closes once they acknowledged."""
    from domain import shipping

    plant = await build_plant(sessionmaker, ship=False)
    tag, b1 = plant.tag, plant.lots["B1"]
    number, customer = f"RC-LW-{tag}", f"Customer Late {tag}"
    ship = sessionmaker()
    await ship.begin()
    try:
        await shipping.ship_lot(ship, work_order=f"WOB-{tag}", lot=b1, shipment=f"DN-LW-{tag}",
                                sales_order=f"SO-LW-{tag}", customer=customer, carrier=None, tracking_number=None,
                                resolver=RESOLVER)
        # (SQLite: the start's own transaction waits for the shipment's, so the request runs beside it)
        start = asyncio.create_task(api.post("/api/recalls", json={"number": number, "suspect_kind": "lot",
                                                                   "suspect": b1, "reason": "cracks"}))
        if POSTGRES:
            await _wait_for_audit_lock(sessionmaker)  # open_recall has read the lot in stock
        else:
            await asyncio.sleep(0.5)
        await ship.commit()
    finally:
        await ship.close()
    r = await start
    assert r.status_code == 202, r.text
    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    assert rec["status"]["held"] == [] and rec["status"]["customers"] == [customer]
    assert rec["status"]["waiting_for"] == [f"customer: acknowledgement from {customer}"]
    (lot,) = rec["record"]["lots"]
    assert (lot["lot"], lot["action"], lot["status"], lot["erp_blocked"]) == (b1, "shipped", "shipped", False)
    assert [c["customer"] for c in rec["record"]["customers"]] == [customer]
    assert not erp_sim.documents("Batch")[b1].get("disabled")  # not blocked in the ERP
    if POSTGRES:  # the hold found it gone (SQLite: the scope already saw it shipped)
        assert [e["lot"] for e in await audit_entries(sessionmaker, "recall", number, "recall.scope_changed")] == [b1]
    r = await api.post(f"/api/recalls/{number}/acknowledgements", json={"customer": customer, "acknowledged_by": "y"})
    assert r.status_code == 200, r.text
    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "close")
    assert rec["report"]["customers"][0]["acknowledged_by"] == "y"
    assert await lot_status(sessionmaker, b1) == "shipped"
    if POSTGRES:
        await record_history(client, f"recall-{number}", "recall_late_ship_customer_waited_for")


async def test_two_recalls_of_one_suspect_started_at_the_same_moment_record_one_scope(sessionmaker):
    """The API refuses a second recall of a suspect an open recall covers, but two started at the same moment both
    pass that check: the first to record its scope wins, the other records nothing and names it."""
    from core.errors import Conflict

    plant = await build_plant(sessionmaker, ship=False)
    tag, heat = plant.tag, plant.heats["M1"]
    first, second = f"RC-T1-{tag}", f"RC-T2-{tag}"
    results = await asyncio.gather(_open(sessionmaker, first, "heat", heat), _open(sessionmaker, second, "heat", heat),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], Conflict), results
    (loser,) = [n for n, r in zip((first, second), results, strict=True) if r is refused[0]]
    (winner,) = {first, second} - {loser}
    assert winner in str(refused[0]) and refused[0].field == "suspect"
    async with sessionmaker() as s:
        numbers = set((await s.execute(select(Recall.number).where(Recall.number.in_([first, second])))).scalars())
    assert numbers == {winner}
    assert (await recall_line(sessionmaker, winner, plant.lots["A1"])).action == "held"
