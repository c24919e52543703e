"""A recall decision's electronic signature covers what was recalled and why (21 CFR Part 11 style): besides the
decision, the recall's suspect (kind and value), its window, its reason and the decided lot's or box's line in the
scope. GET /api/recalls/{n} shows each decision's signature with `valid`, worked out from the record as it is now:
a change to any of that after signing shows it invalid. Nothing in the API changes a recall's suspect or reason, so
the tests change the rows directly (as a bad migration or someone with database access would).

Signatures made before the recall was covered (content version 1: the decision only) still verify while their
decision is unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from domain.models import Lot
from domain.models_trace import Recall, RecallContainer, RecallLot
from tests.helpers import PASSWORD, remember_batches, role_headers
from tests.test_recall import wait_recall
from tests.test_recall_gaps import _case_of_b1
from tests.test_trace_plant import RESOLVER, build_plant

pytestmark = pytest.mark.asyncio


def at(h: int, m: int = 0) -> datetime:
    return datetime(2026, 11, 21, h, m, tzinfo=UTC)


async def set_recall(sessionmaker, number: str, **values: Any) -> None:
    async with sessionmaker() as s, s.begin():
        await s.execute(update(Recall).where(Recall.number == number).values(**values))


async def set_lot_line(sessionmaker, number: str, lot: str, **values: Any) -> None:
    async with sessionmaker() as s, s.begin():
        rid = (await s.execute(select(Recall.id).where(Recall.number == number))).scalar_one()
        lid = (await s.execute(select(Lot.id).where(Lot.number == lot))).scalar_one()
        await s.execute(update(RecallLot).where(RecallLot.recall_id == rid, RecallLot.lot_id == lid).values(**values))


async def set_box_line(sessionmaker, number: str, code: str, **values: Any) -> None:
    async with sessionmaker() as s, s.begin():
        rid = (await s.execute(select(Recall.id).where(Recall.number == number))).scalar_one()
        await s.execute(update(RecallContainer).where(RecallContainer.recall_id == rid, RecallContainer.code == code)
                        .values(**values))


async def lot_signature(api: httpx.AsyncClient, number: str, lot: str) -> dict[str, Any] | None:
    r = await api.get(f"/api/recalls/{number}")
    assert r.status_code == 200, r.text
    return {x["lot"]: x for x in r.json()["record"]["lots"]}[lot]["signature"]


async def box_signature(api: httpx.AsyncClient, number: str, code: str) -> dict[str, Any] | None:
    r = await api.get(f"/api/recalls/{number}")
    assert r.status_code == 200, r.text
    return {x["code"]: x for x in r.json()["record"]["containers"]}[code]["signature"]


async def test_a_lot_decision_signature_turns_invalid_when_the_recalls_suspect_window_reason_or_scope_change(
        api: httpx.AsyncClient, erp_sim, sessionmaker):
    from activities.models import ConsumedLot, OperationReport
    from domain import production
    from domain.models import LotStatus

    plant = await build_plant(sessionmaker)
    tag = plant.tag
    machine, lot, number = f"CNC-{tag}", f"C1-{tag}", f"RC-SIG-{tag}"
    async with sessionmaker() as s, s.begin():
        await production.record_operation(
            s, work_order=f"WOB-{tag}", output_lot=lot, operation_name="Pressing", rework=False, resolver=RESOLVER,
            report=OperationReport(report_id=f"R-{lot}", seq=10, equipment=machine, operator="op-9", shift="B",
                                   started_at=at(12), ended_at=at(13), parameters={},
                                   consumed=[ConsumedLot(lot=plant.lots["M3"], quantity=5)], good_quantity=5))
        await production.set_lot_status(s, await production.get_lot(s, lot), LotStatus.released, actor="test",
                                        why="inspected")
    remember_batches({lot: f"ASSY-{tag}"})
    r = await api.post("/api/recalls", json={
        "number": number, "suspect_kind": "equipment", "suspect": machine, "since": "2026-11-21T11:30:00Z",
        "until": "2026-11-21T13:30:00Z", "reason": "spindle out of calibration", "requested_by": "qm-1"})
    assert r.status_code == 202, r.text
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    assert await lot_signature(api, number, lot) is None  # not decided: nothing signed
    r = await api.post(f"/api/recalls/{number}/decisions", headers=role_headers("quality_manager"),
                       json={"lot": lot, "decision": "release", "reason": "bores re-measured", "password": PASSWORD})
    assert r.status_code == 200, r.text
    await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "close")

    sig = await lot_signature(api, number, lot)
    assert sig is not None
    assert (sig["signer"], sig["role"], sig["meaning"], sig["content_version"], sig["valid"]) == \
        ("t-quality_manager", "quality_manager", "released", 2, True)

    # each change to what was recalled, or to the lot's line in the scope, invalidates it; undone, it holds again
    # (the window set back as the same instants: the signed content does not depend on how the backend reads them)
    for change, undo in (
            ({"reason": "spindle fine after all"}, {"reason": "spindle out of calibration"}),
            ({"suspect": f"CNC-X-{tag}"}, {"suspect": machine}),
            ({"suspect_kind": "operator"}, {"suspect_kind": "equipment"}),
            ({"window_to": at(13, 31)}, {"window_to": at(13, 30)}),
            ({"window_from": None, "window_to": None}, {"window_from": at(11, 30), "window_to": at(13, 30)})):
        await set_recall(sessionmaker, number, **change)
        assert (await lot_signature(api, number, lot))["valid"] is False, change
        await set_recall(sessionmaker, number, **undo)
        assert (await lot_signature(api, number, lot))["valid"] is True, undo
    for change, undo in (({"quantity": 4.0}, {"quantity": 5.0}),
                         ({"status_before": "quarantine"}, {"status_before": "released"}),
                         ({"decision_reason": "no reason"}, {"decision_reason": "bores re-measured"})):
        await set_lot_line(sessionmaker, number, lot, **change)
        assert (await lot_signature(api, number, lot))["valid"] is False, change
        await set_lot_line(sessionmaker, number, lot, **undo)
        assert (await lot_signature(api, number, lot))["valid"] is True, undo


async def test_a_case_decision_signature_turns_invalid_when_the_recall_or_the_cases_line_changes(
        api: httpx.AsyncClient, sessionmaker):
    plant, _case, path = await _case_of_b1(api, sessionmaker)
    tag, b1 = plant.tag, plant.lots["B1"]
    number, customer = f"RC-SIGC-{tag}", f"Customer X {tag}"
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": "lot", "suspect": b1,
                                             "reason": "cracks"})
    assert r.status_code == 202, r.text
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")
    assert await box_signature(api, number, path) is None
    r = await api.post(f"/api/recalls/{number}/acknowledgements", json={"customer": customer, "acknowledged_by": "x"})
    assert r.status_code == 200, r.text
    r = await api.post(f"/api/recalls/{number}/containers{path}/decisions", headers=role_headers("quality_manager"),
                       json={"decision": "reject", "reason": "cracked units found", "password": PASSWORD})
    assert r.status_code == 200, r.text
    await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "close")

    sig = await box_signature(api, number, path)
    assert sig is not None
    assert (sig["signer"], sig["meaning"], sig["content_version"], sig["valid"]) == \
        ("t-quality_manager", "rejected", 2, True)
    for change, undo in (({"reason": "no cracks"}, {"reason": "cracks"}),
                         ({"suspect": plant.lots["A1"]}, {"suspect": b1})):
        await set_recall(sessionmaker, number, **change)
        assert (await box_signature(api, number, path))["valid"] is False, change
        await set_recall(sessionmaker, number, **undo)
        assert (await box_signature(api, number, path))["valid"] is True, undo
    for change, undo in (({"units": 1}, {"units": 2}), ({"lots": []}, {"lots": [b1]}),
                         ({"level": "pallet"}, {"level": "case"})):
        await set_box_line(sessionmaker, number, path, **change)
        assert (await box_signature(api, number, path))["valid"] is False, change
        await set_box_line(sessionmaker, number, path, **undo)
        assert (await box_signature(api, number, path))["valid"] is True, undo


async def test_signatures_made_before_the_recall_was_covered_still_verify_against_their_decision(
        api: httpx.AsyncClient, sessionmaker):
    """A version 1 signature (made as the hub made them before: the decision only) is checked in that form: valid
    while its decision is unchanged, whatever happens to the recall it never covered; invalid once the decision
    changes."""
    from domain import recall
    from domain.signatures import record_signature

    # a lot: recall of A1 (in stock, held), decided, signed the old way
    plant = await build_plant(sessionmaker)
    number, lot = f"RC-SIG1-{plant.tag}", plant.lots["A1"]
    async with sessionmaker() as s, s.begin():
        await recall.open_recall(s, number=number, workflow_id=f"recall-{number}", suspect_kind="lot", suspect=lot,
                                 since=None, until=None, reason="wrong alloy", requested_by="qm-1", resolver=RESOLVER)
        await recall.hold_lots(s, number=number, resolver=RESOLVER)
    async with sessionmaker() as s, s.begin():
        await recall.decide_lot(s, number=number, lot=lot, decision="release", reviewer="t-quality_manager",
                                role="quality_manager", reason="re-tested", resolver=RESOLVER)
        await record_signature(s, signer="t-quality_manager", signer_name="Test quality_manager",
                               role="quality_manager", meaning="released", entity="recall_decision",
                               key=f"{number}/{lot}",
                               content=recall.decision_content(number, lot=lot, decision="release",
                                                               reviewer="t-quality_manager", role="quality_manager",
                                                               reason="re-tested"))
    sig = await lot_signature(api, number, lot)
    assert sig is not None and (sig["content_version"], sig["valid"]) == (1, True)
    await set_recall(sessionmaker, number, reason="changed later")
    assert (await lot_signature(api, number, lot))["valid"] is True  # version 1 never covered the recall
    await set_lot_line(sessionmaker, number, lot, decision_reason="changed later")
    assert (await lot_signature(api, number, lot))["valid"] is False

    # a case: decided, signed the old way
    plant, _case, path = await _case_of_b1(api, sessionmaker)
    number, b1 = f"RC-SIG1C-{plant.tag}", plant.lots["B1"]
    async with sessionmaker() as s, s.begin():
        await recall.open_recall(s, number=number, workflow_id=f"recall-{number}", suspect_kind="lot", suspect=b1,
                                 since=None, until=None, reason="cracks", requested_by="qm-1", resolver=RESOLVER)
        await recall.hold_lots(s, number=number, resolver=RESOLVER)
    async with sessionmaker() as s, s.begin():
        await recall.decide_container(s, number=number, code=path, decision="reject", reviewer="t-quality_manager",
                                      role="quality_manager", reason="cracked units found", resolver=RESOLVER)
        await record_signature(s, signer="t-quality_manager", signer_name="Test quality_manager",
                               role="quality_manager", meaning="rejected", entity="recall_container_decision",
                               key=f"{number}/{path}",
                               content=recall.container_decision_content(
                                   number, code=path, decision="reject", reviewer="t-quality_manager",
                                   role="quality_manager", reason="cracked units found"))
    sig = await box_signature(api, number, path)
    assert sig is not None and (sig["content_version"], sig["valid"]) == (1, True)
    await set_recall(sessionmaker, number, reason="changed later")
    assert (await box_signature(api, number, path))["valid"] is True
