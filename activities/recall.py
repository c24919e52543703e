"""Recall activities: thin adapters that open a transaction and call domain/recall.py."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.base import TransactionalActivities
from activities.errors import translated
from activities.ncr_signals import signal_shipment_gates
from activities.recall_models import (
    CustomerNotice,
    CustomerShipment,
    RecallAckInput,
    RecallContainerDecisionInput,
    RecallContainerEffect,
    RecallContainerLine,
    RecallDecisionEffect,
    RecallDecisionInput,
    RecallInput,
    RecallLotLine,
    RecallLotRef,
    RecallReackInput,
    RecallReackResult,
    RecallRef,
    RecallResult,
    RecallScope,
)
from domain import recall
from domain.audit import PLACEHOLDER_ACTOR

log = logging.getLogger("tracehub.recall")


def _scope(s: dict[str, Any]) -> RecallScope:
    return RecallScope(
        number=s["number"],
        lots=[RecallLotLine(lot=x["lot"], item=x["item"], action=x["action"], quantity=x["quantity"], uom=x["uom"])
              for x in s["lots"]],
        customers=[CustomerNotice(customer=c["customer"], quantity=c["quantity"], shipments=[
            CustomerShipment(shipment=sh["shipment"], sales_order=sh.get("sales_order"),
                             quantity=sum(x["quantity"] for x in sh.get("lots", [])))
            for sh in c["shipments"]]) for c in s["customers"]],
    )


class RecallActivities(TransactionalActivities):
    """The recall's activities; built once per worker."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, resolver: str):
        super().__init__(sessionmaker)
        self.resolver = resolver

    @activity.defn
    @translated
    async def open_recall(self, inp: RecallInput) -> RecallScope:
        """Record the recall and compute its scope (a forward trace from the suspect); idempotent."""
        async with self.tx() as s:
            return _scope(await recall.open_recall(
                s, number=inp.number, workflow_id=activity.info().workflow_id, suspect_kind=inp.suspect_kind.value,
                suspect=inp.suspect, since=inp.since, until=inp.until, reason=inp.reason,
                # the login is the requester of record; the body's name is "on behalf of" data. A recall started
                # before the login was carried names neither as trusted: the placeholder actor, the name as data
                requested_by=inp.opened_by or PLACEHOLDER_ACTOR,
                on_behalf_of=inp.requested_by, resolver=self.resolver))

    @activity.defn
    @translated
    async def hold_recall_lots(self, inp: RecallRef) -> list[RecallLotLine]:
        """Put every lot of the scope still in stock on hold. The lines are the held lots and the lots that changed
        since the scope (shipped or used up meanwhile: not held), each with the customers it added to the notices."""
        async with self.tx() as s:
            lines = await recall.hold_lots(s, number=inp.number, resolver=self.resolver)
        return [RecallLotLine(**x) for x in lines]

    @activity.defn
    @translated
    async def recall_held_containers(self, inp: RecallRef) -> list[RecallContainerLine]:
        """The cases and pallets the recall holds, and which of them wait for a decision on the box itself."""
        async with self.tx() as s:
            sc = await recall.scope(s, inp.number)
        return [RecallContainerLine(code=c["code"], level=c["level"], lots=c["lots"],
                                    waits_for_decision=c["waits_for_decision"],
                                    released=c["released_at"] is not None)
                for c in sc["containers"] if c["action"] == "held" and c["held_at"] is not None]

    @activity.defn
    @translated
    async def decide_recall_container(self, inp: RecallContainerDecisionInput) -> RecallContainerEffect:
        """Record a decision on a held case or pallet and its electronic signature in one transaction."""
        d = inp.decision
        async with self.tx() as s:
            effect = await recall.decide_container(s, number=inp.number, code=d.code, decision=d.decision.value,
                                                   reviewer=d.reviewer, role=d.role.value, reason=d.reason,
                                                   resolver=self.resolver, signature=d.signature)
        return RecallContainerEffect(**effect)

    @activity.defn
    @translated
    async def mark_recall_erp_blocked(self, inp: RecallLotRef) -> None:
        async with self.tx() as s:
            await recall.mark_erp_blocked(s, number=inp.number, lot=inp.lot)

    @activity.defn
    @translated
    async def acknowledge_recall(self, inp: RecallAckInput) -> None:
        async with self.tx() as s:
            await recall.acknowledge(s, number=inp.number, customer=inp.ack.customer, by=inp.ack.acknowledged_by,
                                     note=inp.ack.note, actor=inp.ack.recorded_by or PLACEHOLDER_ACTOR)

    @activity.defn
    @translated
    async def reopen_recall_acknowledgements(self, inp: RecallReackInput) -> RecallReackResult:
        """Set aside the acknowledgements recorded before the hold added shipments to those customers' notices (kept
        in the audit trail and the report) and ask them again; returns who is asked again."""
        async with self.tx() as s:
            return RecallReackResult(customers=await recall.reopen_acknowledgements(
                s, number=inp.number, customers=inp.customers))

    @activity.defn
    @translated
    async def decide_recall_lot(self, inp: RecallDecisionInput) -> RecallDecisionEffect:
        """Record the decision and its electronic signature in one transaction; returns what it did to the lot (a
        retry after a commit answers the same, read back from the record)."""
        d = inp.decision
        async with self.tx() as s:
            effect = await recall.decide_lot(s, number=inp.number, lot=d.lot, decision=d.decision.value,
                                             reviewer=d.reviewer, role=d.role.value, reason=d.reason,
                                             resolver=self.resolver, signature=d.signature)
        await self._wake_shipments(inp.number, [d.lot])  # committed: this recall no longer holds the lot
        return RecallDecisionEffect(**effect)

    @activity.defn
    @translated
    async def close_recall(self, inp: RecallRef) -> RecallResult:
        async with self.tx() as s:
            r = await recall.close(s, number=inp.number)
        await self._wake_shipments(inp.number, r["held"])  # closed: it holds none of its lots any more
        return RecallResult(number=r["number"], held=r["held"],
                            decisions={x["lot"]: x["decision"] for x in r["lots"] if x["decision"]},
                            customers=[c["customer"] for c in r["customers"]], shipped_quantity=r["shipped_quantity"])

    async def _wake_shipments(self, number: str, lots: list[str]) -> list[str]:
        """After a commit that ended this recall's hold on these lots: the work orders waiting to ship one of them
        (at their shipment gate, or after a refused shipment) check now instead of at their next recheck. Never
        raises: a work order finished or gone meanwhile, or Temporal briefly away, leaves the recheck as the
        fallback, and the decision stands."""
        try:
            async with self.sm() as s:
                ids = await recall.work_orders_shipping(s, lots)
            return await signal_shipment_gates(ids, f"recall {number}")
        except Exception as exc:  # noqa: BLE001 - the decision is recorded; the work order's recheck finds it
            log.warning("recall %s: work orders shipping %s not signalled (%s: %s)", number, ", ".join(lots),
                        type(exc).__name__, exc)
            return []

    def all(self) -> list[Any]:
        return [self.open_recall, self.hold_recall_lots, self.mark_recall_erp_blocked, self.acknowledge_recall,
                self.decide_recall_lot, self.close_recall, self.recall_held_containers, self.decide_recall_container,
                self.reopen_recall_acknowledgements]
