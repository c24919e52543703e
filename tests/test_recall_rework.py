"""Only a reviewer's decision on a recall lifts its hold (issue 5): an NCR's rework or a passing inspection while an
open recall holds the lot leaves the lot on hold; what they would have done is recorded and happens when the last hold
ends. And a lot a recall holds never ships, whatever its status says.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from activities.models import Characteristic, Measurement
from core.errors import Conflict
from domain.models import AuditLog
from tests.test_recall_holds import _decide, _recall
from tests.test_trace_plant import RESOLVER, build_plant, lot_status

pytestmark = pytest.mark.asyncio


async def _entries(sessionmaker, lot: str, action: str) -> list[dict[str, Any]]:
    async with sessionmaker() as s:
        return list((await s.execute(select(AuditLog.changes).where(
            AuditLog.entity == "lot", AuditLog.entity_key == lot, AuditLog.action == action)
            .order_by(AuditLog.seq))).scalars())


async def _ncr(sessionmaker, number: str, lot: str, outcome: str) -> None:
    """Open an NCR on the lot, decide `outcome` and carry it out, as the NCR workflow's activities do."""
    from domain import quality

    async with sessionmaker() as s, s.begin():
        await quality.open_ncr(s, number=number, workflow_id=f"ncr-{number}", work_order=None, lot=lot,
                               inspection=None, description="burr on the bore", resolver=RESOLVER)
    async with sessionmaker() as s, s.begin():
        await quality.record_decision(s, ncr=number, decision_id=f"{number}-D1", action=outcome, reviewer="t-mrb",
                                      role="mrb_engineering", reason="deburr and re-inspect", rework_operation=None,
                                      new_state="verification" if outcome == "rework" else "closed")
        await quality.apply_disposition(s, ncr=number, lot=lot, outcome=outcome, resolver=RESOLVER)


async def _inspect(sessionmaker, number: str, lot: str, value: float) -> None:
    from domain import quality

    async with sessionmaker() as s, s.begin():
        await quality.open_inspection(s, number=number, kind="final", work_order=None, lot=lot,
                                      plan=[Characteristic(name="bore", nominal=25, lower=24.9, upper=25.1, unit="mm")])
        await quality.record_results(s, number=number, inspector="inspector-1",
                                     measurements=[Measurement(characteristic="bore", values=[value])],
                                     inspected_at=None, result_id=None, resolver=RESOLVER)


async def _ship(sessionmaker, work_order: str, lot: str, shipment: str) -> None:
    from domain import shipping

    async with sessionmaker() as s, s.begin():
        await shipping.ship_lot(s, work_order=work_order, lot=lot, shipment=shipment, sales_order="SO-R",
                                customer="Customer R", carrier=None, tracking_number=None, resolver=RESOLVER)


async def test_a_rework_and_a_passing_reinspection_do_not_release_a_recalled_lot(sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    tag, a1 = plant.tag, plant.lots["A1"]
    recall, ncr = f"RC-RW-{tag}", f"NCR-RW-{tag}"
    await _recall(sessionmaker, recall, a1)
    assert await lot_status(sessionmaker, a1) == "on_hold"

    # the MRB sends the lot to rework: it stays on hold (the recall's), and the entry says what happens when it ends
    await _ncr(sessionmaker, ncr, a1, "rework")
    assert await lot_status(sessionmaker, a1) == "on_hold"
    (deferred,) = await _entries(sessionmaker, a1, "lot.status_deferred")
    assert (deferred["deferred"], deferred["by"], deferred["still_held_by"]) == \
        ("quarantine", f"NCR {ncr}", [f"recall {recall}"])

    # the reworked lot passes its re-inspection: still on hold; recorded as released-when-the-hold-ends
    await _inspect(sessionmaker, f"FIN-RW-{tag}", a1, 25.0)
    assert await lot_status(sessionmaker, a1) == "on_hold"
    assert [e["deferred"] for e in await _entries(sessionmaker, a1, "lot.status_deferred")] == \
        ["quarantine", "released"]

    # it cannot ship: the refusal names the recall
    with pytest.raises(Conflict) as e:
        await _ship(sessionmaker, f"WOA-{tag}", a1, f"DN-RW-{tag}")
    assert recall in str(e.value) and e.value.field == "lot"

    # the reviewer's release ends the hold: the lot takes what the passing re-inspection asked for
    effect = await _decide(sessionmaker, recall, a1)
    assert (effect["status"], effect["released"], effect["still_held_by"]) == ("released", True, [])
    assert await lot_status(sessionmaker, a1) == "released"
    await _ship(sessionmaker, f"WOA-{tag}", a1, f"DN-RW-{tag}")
    assert await lot_status(sessionmaker, a1) == "shipped"


async def test_a_rework_still_waiting_for_its_reinspection_goes_to_quarantine_when_the_recall_releases(
        sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    tag, a1 = plant.tag, plant.lots["A1"]
    recall, ncr = f"RC-RQ-{tag}", f"NCR-RQ-{tag}"
    await _recall(sessionmaker, recall, a1)
    await _ncr(sessionmaker, ncr, a1, "rework")
    effect = await _decide(sessionmaker, recall, a1)
    assert (effect["status"], effect["released"]) == ("quarantine", True)
    assert await lot_status(sessionmaker, a1) == "quarantine"
    # the re-inspection then releases it, as a rework's does
    await _inspect(sessionmaker, f"FIN-RQ-{tag}", a1, 25.0)
    assert await lot_status(sessionmaker, a1) == "released"


async def test_an_inspection_passed_during_the_hold_releases_the_lot_when_the_recall_does(sessionmaker):
    """A lot in quarantine (waiting for its inspection) when the recall held it: the inspection passes during the
    hold, so the release makes it released, not quarantine with nothing left to release it."""
    from domain import production

    plant = await build_plant(sessionmaker, ship=False)
    tag, a1 = plant.tag, plant.lots["A1"]
    async with sessionmaker() as s, s.begin():
        await production.set_lot_status(s, await production.get_lot(s, a1), "quarantine", actor="test", why="test")
    recall = f"RC-IP-{tag}"
    await _recall(sessionmaker, recall, a1)
    await _inspect(sessionmaker, f"FIN-IP-{tag}", a1, 25.0)
    assert await lot_status(sessionmaker, a1) == "on_hold"
    effect = await _decide(sessionmaker, recall, a1)
    assert effect["status"] == "released"
    assert [e["by"] for e in await _entries(sessionmaker, a1, "lot.status_deferred")] == [f"inspection FIN-IP-{tag}"]


async def test_without_a_recall_rework_and_reinspection_work_as_before(sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    tag, a1 = plant.tag, plant.lots["A1"]
    ncr = f"NCR-NR-{tag}"
    await _ncr(sessionmaker, ncr, a1, "rework")
    assert await lot_status(sessionmaker, a1) == "quarantine"
    await _inspect(sessionmaker, f"FIN-NR-{tag}", a1, 25.0)
    assert await lot_status(sessionmaker, a1) == "released"
    assert await _entries(sessionmaker, a1, "lot.status_deferred") == []


async def test_an_ncr_released_last_keeps_a_rework_deferred_during_a_recall(sessionmaker):
    """Recall holds; NCR 1 sends the lot to rework (deferred); NCR 2 opens; the recall releases (NCR 2 still holds);
    NCR 2 is dismissed: the lot goes to quarantine for NCR 1's re-inspection, not to released."""
    from domain import quality

    plant = await build_plant(sessionmaker, ship=False)
    tag, a1 = plant.tag, plant.lots["A1"]
    recall = f"RC-N2-{tag}"
    await _recall(sessionmaker, recall, a1)
    await _ncr(sessionmaker, f"NCR-A-{tag}", a1, "rework")
    async with sessionmaker() as s, s.begin():
        await quality.open_ncr(s, number=f"NCR-B-{tag}", workflow_id=f"ncr-NCR-B-{tag}", work_order=None, lot=a1,
                               inspection=None, description="scratch", resolver=RESOLVER)
    effect = await _decide(sessionmaker, recall, a1)
    assert (effect["status"], effect["still_held_by"]) == ("on_hold", [f"NCR NCR-B-{tag}"])
    async with sessionmaker() as s, s.begin():
        await quality.record_decision(s, ncr=f"NCR-B-{tag}", decision_id=f"NCR-B-{tag}-D1", action="dismiss",
                                      reviewer="t-qa", role="qa_supervisor", reason="cosmetic, within spec",
                                      rework_operation=None, new_state="closed")
        await quality.apply_disposition(s, ncr=f"NCR-B-{tag}", lot=a1, outcome="dismiss", resolver=RESOLVER)
    assert await lot_status(sessionmaker, a1) == "quarantine"
