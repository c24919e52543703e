"""What holds a lot on hold. Holds stack: a lot can be held by several recalls and NCRs at once, and it leaves
`on_hold` only when the last of them lets it go. Recalls (domain/recall.py) and NCR dispositions
(domain/quality.py) ask here before they release a lot.

A recall holds a lot while its line for the lot is `held` and undecided (the recall is open until every held lot is
decided). An NCR holds its lot while it waits for a decision (open, qa_review, mrb): once a disposition is decided
the NCR sets the lot's status itself (released, quarantine for a rework, rejected), so it holds it no longer.

Only a reviewer's decision on the recall lifts a recall's hold. While an open recall holds a lot, a change that
would otherwise set its status off hold (an NCR's rework sends it to quarantine, a passing re-inspection or IQC
releases it) is deferred (`defer_status`): the lot stays on hold, the change is recorded (`lot.status_deferred`),
and the lot takes it when its last hold ends (`deferred_status`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.audit import audit
from domain.models import AuditLog, Lot, LotStatus, Ncr
from domain.models_trace import Recall, RecallLot

NCR_HOLDING_STATES = ("open", "qa_review", "mrb")


async def recall_holds(session: AsyncSession, lot_id: int, *, except_recall: str | None = None) -> list[str]:
    """The numbers of the open recalls that hold the lot and have not decided it, oldest first."""
    q = (select(Recall.number).join(RecallLot, RecallLot.recall_id == Recall.id)
         .where(RecallLot.lot_id == lot_id, RecallLot.action == "held", RecallLot.decision.is_(None),
                Recall.status != "closed").order_by(Recall.id))
    if except_recall is not None:
        q = q.where(Recall.number != except_recall)
    return list((await session.execute(q)).scalars())


async def recalled_lots(session: AsyncSession, lot_numbers: list[str]) -> dict[str, dict[str, Any]]:
    """Of these lots, the ones a recall holds or rejected: by lot number, the lot's status in the record, the open
    recalls that hold it (recall_holds' rule), oldest first, and the recalls that rejected it. One query, for a
    status page that lists a work order's material."""
    if not lot_numbers:
        return {}
    rows = (await session.execute(
        select(Lot.number, Lot.status, Recall.number, Recall.status, RecallLot.decision)
        .join(RecallLot, RecallLot.lot_id == Lot.id).join(Recall, Recall.id == RecallLot.recall_id)
        .where(Lot.number.in_(lot_numbers), RecallLot.action == "held").order_by(Recall.id))).all()
    out: dict[str, dict[str, Any]] = {}
    for lot, status, recall, recall_status, decision in rows:
        holding = decision is None and recall_status != "closed"
        if holding or decision == "reject":
            entry = out.setdefault(lot, {"status": status, "recalls": [], "rejected_by": []})
            entry["recalls" if holding else "rejected_by"].append(recall)
    return out


async def ncr_holds(session: AsyncSession, lot_id: int, *, except_ncr: str | None = None) -> list[str]:
    """The numbers of the NCRs on the lot still waiting for a decision, oldest first."""
    q = (select(Ncr.number).where(Ncr.lot_id == lot_id, Ncr.state.in_(NCR_HOLDING_STATES), Ncr.closed_at.is_(None))
         .order_by(Ncr.id))
    if except_ncr is not None:
        q = q.where(Ncr.number != except_ncr)
    return list((await session.execute(q)).scalars())


async def holders(session: AsyncSession, lot_id: int, *, except_recall: str | None = None,
                  except_ncr: str | None = None) -> list[str]:
    """Everything else that holds the lot, as people name it: `recall RC-2`, `NCR NCR-7`."""
    return named(await recall_holds(session, lot_id, except_recall=except_recall),
                 await ncr_holds(session, lot_id, except_ncr=except_ncr))


def named(recalls: list[str], ncrs: list[str]) -> list[str]:
    """Recall and NCR numbers as people name what holds a lot: `recall RC-2`, `NCR NCR-7`."""
    return [f"recall {n}" for n in recalls] + [f"NCR {n}" for n in ncrs]


async def keep_hold(session: AsyncSession, lot: Lot, *, released_by: str, still_held_by: list[str], actor: str,
                    **context: Any) -> None:
    """Audit a release that did not release: the lot stays on hold, and the entry names what still holds it. Once per
    releasing party (a retried activity writes no second entry)."""
    seen = (await session.execute(select(AuditLog.changes).where(
        AuditLog.entity == "lot", AuditLog.entity_key == lot.number, AuditLog.action == "lot.hold_kept"))).scalars()
    if any(c.get("released_by") == released_by for c in seen):
        return
    await audit(session, actor=actor, action="lot.hold_kept", entity="lot", key=lot.number,
                changes={"status": lot.status, "released_by": released_by, "still_held_by": still_held_by,
                         "why": f"{released_by} let it go; still on hold for {', '.join(still_held_by)}",
                         **context})


async def defer_status(session: AsyncSession, lot: Lot, status: str, *, by: str, why: str, actor: str) -> list[str]:
    """While open recalls hold the lot, a change that would take it off hold (`status`: quarantine for an NCR's
    rework, released for a passing inspection) does not: the lot stays on hold, and the change is recorded for when
    its last hold ends (`deferred_status`). Returns the recalls holding it; [] when none does (the lot is not on hold,
    or only an NCR holds it), and then nothing is recorded: the caller sets the status as it would."""
    if lot.status != LotStatus.on_hold:
        return []
    recalls = await recall_holds(session, lot.id)
    if recalls:
        await audit(session, actor=actor, action="lot.status_deferred", entity="lot", key=lot.number,
                    changes={"status": lot.status, "deferred": status, "by": by, "why": why,
                             "still_held_by": named(recalls, []),
                             "note": f"{why}: the lot stays on hold until {', '.join(named(recalls, []))} decides it; "
                                     f"it is then {status}"})
    return recalls


async def deferred_status(session: AsyncSession, lot: Lot) -> str | None:
    """The status the newest change deferred while recalls held the lot asks for (`defer_status`), since the lot last
    went on hold; None when there is none. The lot takes it when its last hold ends."""
    entries = (await session.execute(
        select(AuditLog.action, AuditLog.changes)
        .where(AuditLog.entity == "lot", AuditLog.entity_key == lot.number,
               AuditLog.action.in_(("lot.status", "lot.status_deferred")))
        .order_by(AuditLog.id.desc()))).all()
    for action, changes in entries:
        if action == "lot.status_deferred":
            return str(changes["deferred"])
        before, after = (changes.get("status") or [None, None])[:2]
        if after == LotStatus.on_hold and before != LotStatus.on_hold:
            return None  # the hold this chain of holds began with: nothing deferred since
    return None


# The ERP's block of a lot's batch (the `Batch Hold` notices, workflows/recall.py) is one flag shared by every recall
# (ERPNext: the Batch's `disabled`), while the hub keeps each recall's hold apart. A recall's unblock (hold 0) is sent
# only while no other recall keeps the block: see erp_unblock_withheld and HubActivities.notify_erp.
ERP_UNBLOCK_WITHHELD = "recall.erp_unblock_withheld"
ERP_UNBLOCKED = "recall.erp_unblocked"


async def erp_block_holders(session: AsyncSession, lot_id: int, *, except_recall: str | None) -> list[str]:
    """The recalls (other than `except_recall`) whose block of the lot's ERP batch stands, as people name them: an
    open recall that holds the lot and has not decided it (recall_holds' rule: from the moment its scope lists the
    lot, before its own hold notice went out), and a recall that rejected it (a rejected lot stays blocked in the
    ERP). An NCR's hold is not sent to the ERP, so it does not keep the block."""
    rows = (await session.execute(
        select(Recall.number, Recall.status, RecallLot.decision).join(RecallLot, RecallLot.recall_id == Recall.id)
        .where(RecallLot.lot_id == lot_id, RecallLot.action == "held").order_by(Recall.id))).all()
    out = []
    for number, status, decision in rows:
        if number == except_recall:
            continue
        if decision is None and status != "closed":
            out.append(f"recall {number}")
        elif decision == "reject":
            out.append(f"recall {number} (rejected it)")
    return out


async def erp_unblock_withheld(session: AsyncSession, *, batch: str, recall: str | None, notice: str) -> list[str]:
    """Before the ERP is sent a recall's unblock of `batch` (a lot number; the `Batch Hold` notice `notice`, hold 0):
    what keeps the ERP's block now (erp_block_holders). When something does, the unblock must not be sent: this
    records why (`recall.erp_unblock_withheld` on the recall, once per notice) and returns them; [] when it may be
    sent (and a batch the hub has no lot of is not the hub's to keep blocked)."""
    lot = (await session.execute(select(Lot).where(Lot.number == batch))).scalar()
    if lot is None:
        return []
    still = await erp_block_holders(session, lot.id, except_recall=recall)
    if not still:
        return []
    entity, key = ("recall", recall) if recall else ("lot", batch)
    seen = (await session.execute(select(AuditLog.changes).where(
        AuditLog.entity == entity, AuditLog.entity_key == key, AuditLog.action == ERP_UNBLOCK_WITHHELD))).scalars()
    if not any(c.get("notice") == notice for c in seen):
        await audit(session, actor="workflow", action=ERP_UNBLOCK_WITHHELD, entity=entity, key=key,
                    changes={"lot": batch, "notice": notice, "still_blocked_by": still,
                             "why": f"the ERP's block of batch {batch} is kept for {', '.join(still)}: the unblock "
                                    f"{notice} was not sent (the last recall to release the lot sends it)"})
    return still


async def erp_unblock_sent(session: AsyncSession, *, batch: str, recall: str | None, notice: str) -> None:
    """Record that the ERP took a recall's unblock of `batch` (`recall.erp_unblocked`, once per notice)."""
    entity, key = ("recall", recall) if recall else ("lot", batch)
    seen = (await session.execute(select(AuditLog.changes).where(
        AuditLog.entity == entity, AuditLog.entity_key == key, AuditLog.action == ERP_UNBLOCKED))).scalars()
    if not any(c.get("notice") == notice for c in seen):
        await audit(session, actor="workflow", action=ERP_UNBLOCKED, entity=entity, key=key,
                    changes={"lot": batch, "notice": notice,
                             "why": f"no other recall keeps batch {batch} blocked: the ERP was sent the unblock"})
