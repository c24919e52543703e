"""The EPCIS events the hub itself records: packing (AggregationEvents whose eventID is the hash of the event as
stored, queryable by parent and child) and the business transactions of shipping and receiving."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select

from domain import production
from domain.epcis_hash import event_hash
from domain.events import HUB_CONTEXT
from domain.models import EpcisEvent
from tests.test_codes import _packing_setup
from tests.test_epcis import events, hub  # noqa: F401 - the fixture
from tests.test_trace_plant import RESOLVER, build_plant

pytestmark = pytest.mark.asyncio


async def _stored(sessionmaker, event_id: str) -> EpcisEvent:
    async with sessionmaker() as s:
        return (await s.execute(select(EpcisEvent).where(EpcisEvent.event_id == event_id))).scalar_one()


async def test_packing_events_carry_parent_and_children_in_their_hash_and_indexes(hub: httpx.AsyncClient,  # noqa: F811
                                                                                  sessionmaker):
    _, _, units, cases, _, _ = await _packing_setup(hub, sessionmaker)
    # two packs at the same second and read point, into different cases: two events, neither loses its children
    at = datetime(2026, 11, 21, 7, 0, tzinfo=UTC).isoformat()
    packs = []
    for case, kids in ((cases[0], units[:2]), (cases[1], units[2:4])):
        r = await hub.post("/api/codes/pack", json={"parent": case, "children": kids, "actor": "packer-1", "at": at,
                                                    "read_point": "urn:tracehub:line:PACK-1"})
        assert r.status_code == 200, r.text
        packs.append(r.json()["event_id"])
    assert packs[0] != packs[1]
    for event_id, case, kids in ((packs[0], cases[0], units[:2]), (packs[1], cases[1], units[2:4])):
        row = await _stored(sessionmaker, event_id)
        doc = row.document
        assert doc["parentID"] == case.split("?")[0] and sorted(doc["childEPCs"]) == sorted(kids)
        # the eventID is the CBV 2.0 hash of the event exactly as stored
        assert doc["eventID"] == event_id == event_hash({k: v for k, v in doc.items() if k != "eventID"},
                                                        HUB_CONTEXT)
        # the query index knows the parent and the children
        by_parent = await events(hub, MATCH_parentID=case)
        assert [e["eventID"] for e in by_parent] == [event_id]
        assert sorted(by_parent[0]["childEPCs"]) == sorted(kids)
        for kid in kids:
            assert [e["eventID"] for e in await events(hub, MATCH_epc=kid, EQ_bizStep="packing")] == [event_id]
    # unpacking: a DELETE event of its own, found by its parent too
    r = await hub.post("/api/codes/unpack", json={"parent": cases[0], "children": [units[0]], "actor": "packer-1",
                                                  "at": at})
    assert r.status_code == 200, r.text
    unpack = r.json()["event_id"]
    row = await _stored(sessionmaker, unpack)
    assert row.document["action"] == "DELETE" and row.document["childEPCs"] == [units[0].split("?")[0]]
    assert unpack == event_hash({k: v for k, v in row.document.items() if k != "eventID"}, HUB_CONTEXT)
    assert [e["eventID"] for e in await events(hub, MATCH_parentID=cases[0], EQ_action="DELETE")] == [unpack]


async def test_shipping_and_receiving_events_carry_their_business_transactions(hub: httpx.AsyncClient,  # noqa: F811
                                                                               sessionmaker):
    plant = await build_plant(sessionmaker)
    tag = plant.tag
    # shipping: the customer's PO (our sales order), the despatch advice and the work order that made the lot
    shipped = await events(hub, EQ_bizTransaction_prodorder=f"urn:tracehub:workorder:WOB-{tag}", EQ_bizStep="shipping")
    assert len(shipped) == 1
    assert {(b["type"], b["bizTransaction"]) for b in shipped[0]["bizTransactionList"]} == {
        ("po", f"urn:tracehub:salesorder:SO-{tag}"), ("desadv", f"urn:tracehub:shipment:DN-{tag}"),
        ("prodorder", f"urn:tracehub:workorder:WOB-{tag}")}
    assert [e["eventID"] for e in await events(hub, EQ_bizTransaction_po=f"urn:tracehub:salesorder:SO-{tag}")] \
        == [shipped[0]["eventID"]]
    # receiving: the purchase order the receipt line names, beside the receipt advice
    po = f"PO-{uuid.uuid4().hex[:8]}"
    async with sessionmaker() as s, s.begin():
        await production.receive_lot(
            s, work_order=None, receipt=f"PR-PO-{tag}", received_at=None, lot=f"MPO-{tag}", supplier="ACME-STEEL",
            item="BAR-42CRMO4", supplier_lot=f"S-PO-{tag}", heat_number=None, quantity=5, uom="KG",
            certificate_ref=None, location=None, resolver=RESOLVER, purchase_order=po)
    received = await events(hub, EQ_bizTransaction_po=f"urn:tracehub:purchaseorder:{po}")
    assert [e["bizStep"] for e in received] == ["receiving"]
    assert {(b["type"], b["bizTransaction"]) for b in received[0]["bizTransactionList"]} == {
        ("po", f"urn:tracehub:purchaseorder:{po}"), ("recadv", f"urn:tracehub:receipt:PR-PO-{tag}")}
    # a receipt that names no purchase order has no po
    plain = await events(hub, EQ_bizTransaction_recadv=f"urn:tracehub:receipt:PR-{tag}")
    assert len(plain) == 3 and all(b["type"] != "po" for e in plain for b in e["bizTransactionList"])
    # the mill certificate each lot came with is the event's certificationInfo (none when the receipt names none)
    assert sorted(e["certificationInfo"] for e in plain) == sorted(
        f"urn:tracehub:certificate:CERT-{h}" for h in plant.heats.values())
    assert "certificationInfo" not in received[0]


async def test_an_ncrs_hold_and_scrap_events_count_what_is_left_of_the_lot(hub: httpx.AsyncClient,  # noqa: F811
                                                                           sessionmaker):
    """M3 was received as 50 and 20 went into B1: its NCR holds, and scraps, the 30 that are left (not 50)."""
    from domain import quality

    plant = await build_plant(sessionmaker)
    m3, ncr = plant.lots["M3"], f"NCR-Q-{plant.tag}"
    async with sessionmaker() as s, s.begin():
        await quality.open_ncr(s, number=ncr, workflow_id=f"ncr-{ncr}", work_order=None, lot=m3, inspection=None,
                               description="seam in the bar", resolver=RESOLVER)
    async with sessionmaker() as s, s.begin():
        await quality.record_decision(s, ncr=ncr, decision_id=f"{ncr}-D1", action="scrap", reviewer="t-mrb",
                                      role="mrb_engineering", reason="seam", rework_operation=None, new_state="closed")
        await quality.apply_disposition(s, ncr=ncr, lot=m3, outcome="scrap", resolver=RESOLVER)
    got = {e["bizStep"]: e for e in await events(hub, EQ_bizTransaction_testres=f"urn:tracehub:ncr:{ncr}")}
    assert [q["quantity"] for q in got["holding"]["quantityList"]] == [30.0]
    assert [q["quantity"] for q in got["destroying"]["quantityList"]] == [30.0]
