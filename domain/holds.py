"""What holds a lot on hold. Holds stack: a lot can be held by several recalls and NCRs at once, and it leaves
`on_hold` only when the last of them lets it go. Recalls (domain/recall.py) and NCR dispositions
(domain/quality.py) ask here before they release a lot.

A recall holds a lot while its line for the lot is `held` and undecided (the recall is open until every held lot is
decided). An NCR holds its lot while it waits for a decision (open, qa_review, mrb): once a disposition is decided
the NCR sets the lot's status itself (released, quarantine for a rework, rejected), so it holds it no longer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.audit import audit
from domain.models import AuditLog, Lot, Ncr
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
