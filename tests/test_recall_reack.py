"""A customer who acknowledged a recall while it was still putting stock on hold, and whose notice the hold then
added a late shipment to (a lot that shipped to them between the scope and the hold), is asked to acknowledge again:
the earlier acknowledgement is kept (the notice's `earlier_acknowledgements`, the audit trail, the close report),
and the recall waits for the new one (patch recall-reack-v1)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select, text

from activities.recall import RecallActivities
from activities.recall_models import RecallAck, RecallAckInput, RecallReackInput, RecallRef
from domain.models import Lot, Shipment, ShipmentLine, utcnow
from tests.test_lifecycle import record_history
from tests.test_recall import wait_recall
from tests.test_recall_gaps import POSTGRES, _open, _wait_for_audit_lock, audit_entries, notices, recall_line
from tests.test_trace_plant import RESOLVER, build_plant, lot_status

pytestmark = pytest.mark.asyncio


async def _ship(sessionmaker, *, work_order: str, lot: str, shipment: str, customer: str) -> None:
    from domain import shipping

    async with sessionmaker() as s, s.begin():
        await shipping.ship_lot(s, work_order=work_order, lot=lot, shipment=shipment, sales_order=f"SO-{shipment}",
                                customer=customer, carrier=None, tracking_number=None, resolver=RESOLVER)


async def _wait_for_a_lot_lock_wait(sessionmaker, timeout: float = 10) -> None:
    """PostgreSQL: until a statement locking a lot's row (SELECT ... FROM lot ... FOR [NO KEY] UPDATE: a shipment, a
    recall's hold, a test's own lock) waits for a lock. Not any row-lock wait in the database: the session's other
    workflows have transactions of their own (the audit chain's head row, a work order's row), which would end the
    wait before the statement the test is about waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with sessionmaker() as s:
            waiting = (await s.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%FROM lot%' "
                "AND query ILIKE '%FOR %UPDATE%' AND pid <> pg_backend_pid()"))).scalar_one()
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no statement waited for a lot's row lock")


def _shipments(notice: dict) -> list[tuple[str, list[str]]]:
    return sorted((sh["shipment"], [x["lot"] for x in sh["lots"]]) for sh in notice["shipments"])


async def test_an_acknowledgement_during_the_hold_is_asked_again_when_the_hold_adds_a_late_shipment(
        api: httpx.AsyncClient, client, erp_sim, sessionmaker):
    """The race for real: A1 shipped to the customer before the recall (so the customer is in the scope); B1, made
    from A1, ships to the same customer while the recall's first activity scopes it (the scope still says B1 is in
    stock). A lock on B1, queued behind the shipment's, keeps the hold waiting; the customer acknowledges meanwhile
    (the recall is holding). Then the hold runs, finds B1 gone to that customer and adds it to the notice: the
    customer must acknowledge again, and the report shows both acknowledgements."""
    if not POSTGRES:
        pytest.skip("SQLite serialises writers at BEGIN: the shipment cannot race the scope (the scope sees it "
                    "shipped), so a hold never adds a shipment there; test_reopen_keeps_the_earlier_acknowledgement "
                    "covers the record on both databases")
    from domain import shipping

    plant = await build_plant(sessionmaker, ship=False)
    tag, a1, b1 = plant.tag, plant.lots["A1"], plant.lots["B1"]
    number, customer = f"RC-RA-{tag}", f"Customer Twice {tag}"
    early, late = f"DN-RA1-{tag}", f"DN-RA2-{tag}"
    await _ship(sessionmaker, work_order=f"WOA-{tag}", lot=a1, shipment=early, customer=customer)

    ship, block = sessionmaker(), sessionmaker()
    await ship.begin()
    try:
        await shipping.ship_lot(ship, work_order=f"WOB-{tag}", lot=b1, shipment=late, sales_order=f"SO-{late}",
                                customer=customer, carrier=None, tracking_number=None, resolver=RESOLVER)
        start = asyncio.create_task(api.post("/api/recalls", json={"number": number, "suspect_kind": "lot",
                                                                   "suspect": a1, "reason": "cracks"}))
        await _wait_for_audit_lock(sessionmaker)  # open_recall has read B1 in stock
        # B1's row lock, queued behind the shipment's: granted when the shipment commits, before the hold asks for it
        await block.begin()
        locking = asyncio.create_task(block.execute(
            select(Lot.id).where(Lot.number == b1).with_for_update(key_share=True)))
        await _wait_for_a_lot_lock_wait(sessionmaker)
        await ship.commit()
        await locking
        r = await start
        assert r.status_code == 202, r.text
        rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "holding", "the hold")
        await _wait_for_a_lot_lock_wait(sessionmaker)  # the hold waits for B1
        (notice,) = rec["record"]["customers"]
        assert notice["customer"] == customer and _shipments(notice) == [(early, [a1])]
        r = await api.post(f"/api/recalls/{number}/acknowledgements",
                           json={"customer": customer, "acknowledged_by": "first", "note": "A1 quarantined"})
        assert r.status_code == 200, r.text
        assert r.json()["stage"] == "holding" and r.json()["acknowledged"] == [customer]
    finally:
        await block.rollback()
        await block.close()
        await ship.close()

    # the hold found B1 shipped to the customer: the notice gained it after the acknowledgement
    rec = await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying"
                            and not x["status"]["acknowledged"], "the customer asked again")
    st = rec["status"]
    assert st["waiting_for"] == [f"customer: acknowledgement from {customer}"]
    assert st["held"] == [] and st["customers"] == [customer]
    assert st["acknowledgements_reopened"] == {customer: 1}
    (notice,) = rec["record"]["customers"]
    assert _shipments(notice) == [(early, [a1]), (late, [b1])]
    assert (notice["acknowledged_at"], notice["acknowledged_by"], notice["note"]) == (None, None, None)
    (earlier,) = notice["earlier_acknowledgements"]
    assert (earlier["acknowledged_by"], earlier["note"]) == ("first", "A1 quarantined")
    assert earlier["shipments_added"] == [{"lot": b1, "quantity": 20.0}]
    (reopened,) = await audit_entries(sessionmaker, "recall", number, "recall.acknowledgement_reopened")
    assert reopened["customer"] == customer and reopened["earlier_acknowledgement"]["acknowledged_by"] == "first"
    assert reopened["before"]["acknowledged_by"] == "first" and reopened["after"]["acknowledged_by"] is None
    assert b1 in reopened["why"]
    assert (await recall_line(sessionmaker, number, b1)).action == "shipped"
    await asyncio.sleep(0.5)  # the recall does not close on the earlier acknowledgement
    assert (await api.get(f"/api/recalls/{number}")).json()["record"]["status"] == "open"

    r = await api.post(f"/api/recalls/{number}/acknowledgements",
                       json={"customer": customer, "acknowledged_by": "second", "note": "B1 quarantined too"})
    assert r.status_code == 200, r.text
    rec = await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "close")
    (reported,) = rec["report"]["customers"]
    assert (reported["acknowledged_by"], reported["note"]) == ("second", "B1 quarantined too")
    assert [(e["acknowledged_by"], e["note"]) for e in reported["earlier_acknowledgements"]] == \
        [("first", "A1 quarantined")]
    acks = await audit_entries(sessionmaker, "recall", number, "recall.acknowledged")
    assert [e["acknowledged_by"] for e in acks] == ["first", "second"]
    assert await lot_status(sessionmaker, b1) == "shipped"
    await record_history(client, f"recall-{number}", "recall_reack_after_late_ship")


async def test_reopen_keeps_the_earlier_acknowledgement(sessionmaker):
    """The record on both databases, through the activities in the workflow's order: the scope, an acknowledgement,
    what a shipment racing the scope leaves (B1 gone to the same customer: the shipment's own check would now refuse
    it, the scope holds B1), the hold, then the reopen. A retried reopen, or one after an acknowledgement recorded
    after the shipment was added, asks nobody again."""
    plant = await build_plant(sessionmaker, ship=False)
    tag, a1, b1 = plant.tag, plant.lots["A1"], plant.lots["B1"]
    number, customer, late = f"RC-RO-{tag}", f"Customer Twice {tag}", f"DN-RO2-{tag}"
    await _ship(sessionmaker, work_order=f"WOA-{tag}", lot=a1, shipment=f"DN-RO1-{tag}", customer=customer)
    await _open(sessionmaker, number, "lot", a1)
    assert (await recall_line(sessionmaker, number, b1)).action == "held"
    acts = RecallActivities(sessionmaker, resolver=RESOLVER)
    await acts.acknowledge_recall(RecallAckInput(number=number, ack=RecallAck(
        customer=customer, acknowledged_by="first", note="A1 quarantined", recorded_by="t-quality_manager")))

    async with sessionmaker() as s, s.begin():
        from domain import production

        lot = await production.get_lot(s, b1, lock=True)
        row = Shipment(number=late, work_order_id=lot.work_order_id, sales_order=f"SO-{late}", customer=customer,
                       shipped_at=utcnow())
        s.add(row)
        await s.flush()
        s.add(ShipmentLine(shipment_id=row.id, lot_id=lot.id, quantity=lot.quantity_remaining))
        lot.quantity_remaining = 0.0
        await production.set_lot_status(s, lot, "shipped", actor="system", why=f"shipment {late}")
    lines = await acts.hold_recall_lots(RecallRef(number=number))
    assert [(x.lot, x.action, x.customers) for x in lines] == [(b1, "shipped", [customer])]

    # the hold kept the acknowledgement: nothing is lost before the reopen either
    assert (await notices(sessionmaker, number))[customer].acknowledged_by == "first"
    first = await acts.reopen_recall_acknowledgements(RecallReackInput(number=number, customers=[customer]))
    assert first.customers == [customer]
    again = await acts.reopen_recall_acknowledgements(RecallReackInput(number=number, customers=[customer]))
    assert again.customers == []  # a retry
    n = (await notices(sessionmaker, number))[customer]
    assert (n.acknowledged_at, n.acknowledged_by, n.note) == (None, None, None)
    assert sorted(sh["shipment"] for sh in n.shipments) == [f"DN-RO1-{tag}", late]
    (entry,) = await audit_entries(sessionmaker, "recall", number, "recall.acknowledgement_reopened")
    assert entry["customer"] == customer and entry["shipments_added"] == [{"lot": b1, "quantity": 20.0}]
    assert entry["earlier_acknowledgement"]["acknowledged_by"] == "first"

    await acts.acknowledge_recall(RecallAckInput(number=number, ack=RecallAck(
        customer=customer, acknowledged_by="second", note=None, recorded_by="t-quality_manager")))
    # recorded after the shipment was added: it covers it, and stays
    assert (await acts.reopen_recall_acknowledgements(
        RecallReackInput(number=number, customers=[customer]))).customers == []
    report = await acts.close_recall(RecallRef(number=number))
    assert report.customers == [customer]
    from domain import recall

    async with sessionmaker() as s:
        (c,) = (await recall.get_recall(s, number)).report["customers"]
    assert c["acknowledged_by"] == "second"
    assert [(e["acknowledged_by"], e["note"], e["shipments_added"]) for e in c["earlier_acknowledgements"]] == \
        [("first", "A1 quarantined", [{"lot": b1, "quantity": 20.0}])]

    from core.errors import NotFound

    with pytest.raises(NotFound) as missing:
        async with sessionmaker() as s, s.begin():
            await recall.reopen_acknowledgements(s, number=number, customers=["Nobody"])
    assert missing.value.field == "customer" and "Nobody" in str(missing.value)



async def _recalled_material(api: httpx.AsyncClient, wo_number: str) -> tuple[str, str]:
    """A work order whose IQC passed (its own view: material released), then a recall holding its material lot;
    the lot and the recall."""
    from tests.helpers import IN_SPEC_IQC, fast_release, post_results, wait_status

    lot = f"{wo_number}-M1"
    r = await api.post("/api/erp/events", json=fast_release(wo_number))
    assert r.status_code == 202, r.text
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    wo = await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="operation 10")
    assert wo["status"]["material_lots"] == {lot: "released"} and not wo["status"].get("material_recalls")
    number = f"RC-WO-{wo_number}"
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "lot", "suspect": lot,
                                             "reason": "supplier reports cracks"})
    assert r.status_code == 202, r.text
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "the hold")
    return lot, number


async def test_a_work_orders_status_shows_its_material_lot_held_by_a_recall(api: httpx.AsyncClient, erp_sim,
                                                                           wo_number: str):
    """The work order's own view of its material says `released` once IQC passed; a recall holding the lot since
    shows in its status (GET /api/work-orders/{n}) as the lot's real state, naming the recall, until a reviewer
    releases it on the recall."""
    from tests.helpers import PASSWORD, operation_report, role_headers

    lot, number = await _recalled_material(api, wo_number)
    wo = (await api.get(f"/api/work-orders/{wo_number}")).json()
    st = wo["status"]
    assert st["material_lots"] == {lot: "on_hold"}  # the workflow alone says released
    assert st["material_recalls"] == {lot: [number]}
    assert st["stage"] == "production" and st["expected_operation"] == 10
    assert any(number in w and lot in w for w in st["waiting_for"]), st["waiting_for"]
    report = operation_report(wo_number, 10, [{"lot": lot, "quantity": 10.0}])
    r = await api.post(f"/api/work-orders/{wo_number}/operations", json=report)
    assert r.status_code == 409 and number in r.json()["detail"], r.text

    r = await api.post(f"/api/recalls/{number}/decisions", headers=role_headers("quality_manager"),
                       json={"lot": lot, "decision": "release", "reason": "re-tested", "password": PASSWORD})
    assert r.status_code == 200, r.text
    wo = (await api.get(f"/api/work-orders/{wo_number}")).json()
    assert wo["status"]["material_lots"] == {lot: "released"} and wo["status"]["material_recalls"] == {}
    assert not any(number in w for w in wo["status"]["waiting_for"])
    r = await api.post(f"/api/work-orders/{wo_number}/operations", json=report)
    assert r.status_code == 202, r.text


async def test_a_work_orders_status_shows_its_material_lot_rejected_by_a_recall(api: httpx.AsyncClient, erp_sim,
                                                                              wo_number: str):
    from tests.helpers import PASSWORD, role_headers

    lot, number = await _recalled_material(api, wo_number)
    r = await api.post(f"/api/recalls/{number}/decisions", headers=role_headers("quality_manager"),
                       json={"lot": lot, "decision": "reject", "reason": "cracks confirmed", "password": PASSWORD})
    assert r.status_code == 200, r.text
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
    assert st["material_lots"] == {lot: "rejected"}  # the workflow alone says released
    assert st["material_recalls"] == {} and not any(number in w for w in st["waiting_for"])
