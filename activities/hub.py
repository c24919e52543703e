"""Activities: thin adapters that open a transaction or a connector and call domain/connectors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.base import TransactionalActivities
from activities.errors import translated
from activities.models import (
    ApplyDispositionInput,
    CompleteWorkOrderInput,
    ErpNotice,
    InspectionOutcome,
    InspectionResultInput,
    InspectionTriggers,
    InspectionTriggersInput,
    IssueCodesInput,
    IssueCodesResult,
    NcrDecisionInput,
    NcrNoticeInput,
    NcrStateInput,
    OpenInspectionInput,
    OpenNcrInput,
    OpenPlannedInspectionInput,
    RecordOperationInput,
    RecordReceiptInput,
    ReinspectionInput,
    ReinspectionResult,
    Severity,
    ShipInput,
    ShipmentGateInput,
    StageInput,
    StartWorkOrderInput,
    Verdict,
)
from activities.ncr_signals import signal_reinspected
from activities.recall import RecallActivities
from connectors.errors import ConnectorConfigError, ConnectorUnavailable, ProtocolError
from connectors.registry import connector_class
from core.errors import NotFound
from domain import codes, inspection_triggers, production, quality, quality_plans, shipping, spc_warnings
from domain.audit import PLACEHOLDER_ACTOR
from domain.holds import erp_unblock_sent, erp_unblock_withheld
from domain.models import Endpoint
from domain.supplier_returns import erp_acknowledged


class HubActivities(TransactionalActivities):
    """Every activity of the hub; built once per worker with its collaborators."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, resolver: str, erp_endpoint: str = "erp"):
        super().__init__(sessionmaker)
        self.resolver = resolver
        self.erp_endpoint = erp_endpoint
        # the ERP connector, open, while its endpoint's kind and config stay the same: building one costs an HTTP
        # client (tens of ms of CPU), and a work order sends several documents
        self._erp: tuple[str, Any] | None = None
        self._erp_lock = asyncio.Lock()
        # ERP calls in flight per connector (by id): a connector replaced or dropped is closed only once the
        # calls still using it are done (closing it under them failed them with "the client has been closed")
        self._erp_users: dict[int, int] = {}
        self._erp_retired: dict[int, Any] = {}

    @activity.defn
    @translated
    async def start_work_order(self, inp: StartWorkOrderInput) -> None:
        o = inp.order
        async with self.tx() as s:
            # what the API checked before starting (the receipts aside: each is refused on its own), again: a
            # conflict that arrived since is refused here, naming the field, and the workflow waits for a correction
            await production.check_release(s, number=o.number, item=o.item, gtin=o.gtin, output_lot=o.lot_number)
            await production.create_work_order(
                s, number=o.number, workflow_id=inp.workflow_id, item=o.item, item_name=o.item_name, gtin=o.gtin,
                quantity=o.quantity, uom=o.uom, line=o.line, due_date=o.due_date,
                routing=[op.model_dump() for op in o.routing],
                sales_order=o.shipment.sales_order if o.shipment else None,
                customer=o.shipment.customer if o.shipment else None, actor=o.released_by,
            )

    @activity.defn
    @translated
    async def set_stage(self, inp: StageInput) -> None:
        async with self.tx() as s:
            await production.set_stage(s, inp.work_order, inp.stage)

    @activity.defn
    @translated
    async def record_receipt(self, inp: RecordReceiptInput) -> list[str]:
        """Record the receipt's lots in quarantine and open one IQC inspection per lot; returns inspections."""
        out = []
        async with self.tx() as s:
            wo = await production.get_work_order(s, inp.work_order)
            r = inp.receipt
            for line in r.lots:
                await production.receive_lot(
                    s, work_order=wo, receipt=r.receipt, received_at=r.received_at, lot=line.lot,
                    supplier=line.supplier, item=line.item, supplier_lot=line.supplier_lot,
                    heat_number=line.heat_number, quantity=line.quantity, uom=line.uom,
                    certificate_ref=line.certificate_ref, location=line.location, resolver=self.resolver,
                    purchase_order=line.purchase_order, gtin=line.gtin, actor=r.sent_by,
                )
                number = f"IQC-{line.lot}"
                # the material item's plan at `iqc` (sample sizes by ISO 2859-1 under the supplier's switching
                # state), unless the receipt brings its own plan; without either, the work order's plan
                planned = None if r.iqc_plan else await inspection_triggers.open_planned_inspection(
                    s, number=number, trigger="iqc", work_order=inp.work_order, lot=line.lot, item=line.item,
                    operation="iqc", lot_size=max(1, round(line.quantity)), supplier=line.supplier)
                if planned is None:
                    await quality.open_inspection(s, number=number, kind="iqc", work_order=inp.work_order,
                                                  lot=line.lot, plan=r.iqc_plan or inp.plan)
                out.append(number)
        return out

    @activity.defn
    @translated
    async def open_inspection(self, inp: OpenInspectionInput) -> None:
        async with self.tx() as s:
            await quality.open_inspection(s, number=inp.number, kind=inp.kind, work_order=inp.work_order,
                                          lot=inp.lot, plan=inp.plan)

    @activity.defn
    @translated
    async def record_inspection(self, inp: InspectionResultInput) -> InspectionOutcome:
        r = inp.results
        async with self.tx() as s:
            pending = await quality.get_inspection(s, inp.inspection)
            if pending.status == "pending":  # counts within the sample, photos of visual characteristics
                await inspection_triggers.check_planned_results(s, pending, r.measurements)
            ins, failed = await quality.record_results(
                s, number=inp.inspection, inspector=r.inspector, measurements=r.measurements,
                inspected_at=r.inspected_at, result_id=r.result_id, resolver=self.resolver,
                actor=inp.submitted_by,  # the login that posted them; r.inspector (who measured) is data
            )
            # IQC: the switching state, moved by the verdict of the results the login posted
            await inspection_triggers.after_verdict(s, ins, actor=inp.submitted_by or PLACEHOLDER_ACTOR)
            await spc_warnings.check_inspection(s, ins)  # SPC rule violations: a warning, not an NCR
            severity = await quality_plans.failed_severity(s, ins, failed)
            outcome = InspectionOutcome(inspection=ins.number, lot=ins.lot.number,
                                        verdict=Verdict.failed if failed else Verdict.passed,
                                        failed_characteristics=failed,
                                        severity=Severity(severity) if severity else None)
            lot_id = ins.lot_id
        # committed: an NCR reworked on this lot and waiting for its re-inspection looks now, not at its next poll
        await signal_reinspected(self.sm, lot_id=lot_id, inspection=outcome.inspection)
        return outcome

    @activity.defn
    @translated
    async def inspection_triggers(self, inp: InspectionTriggersInput) -> InspectionTriggers:
        """The inspections the work order's item plans trigger (taken once, when the order starts)."""
        async with self.tx() as s:
            t = await inspection_triggers.work_order_triggers(
                s, work_order=inp.work_order, item=inp.item, routing=[(op.seq, op.name) for op in inp.routing])
        return InspectionTriggers(
            operations=[{"seq": int(seq), **v} for seq, v in sorted(t["operations"].items(), key=lambda kv: int(kv[0]))],
            outgoing=t["outgoing"], outgoing_plan_version=t.get("outgoing_plan_version"))

    @activity.defn
    @translated
    async def open_planned_inspection(self, inp: OpenPlannedInspectionInput) -> bool:
        """Open a first-article, patrol or outgoing inspection from the plan; False if the item has none."""
        async with self.tx() as s:
            ins = await inspection_triggers.open_planned_inspection(
                s, number=inp.number, trigger=inp.trigger, work_order=inp.work_order, lot=inp.lot, item=inp.item,
                operation=inp.operation, lot_size=inp.lot_size)
            return ins is not None

    @activity.defn
    @translated
    async def shipment_gate(self, inp: ShipmentGateInput) -> list[str]:
        """Why the lot may not ship yet (a missing outgoing inspection, open NCRs); empty when it may."""
        async with self.tx() as s:
            return await inspection_triggers.shipment_problems(s, work_order=inp.work_order, lot=inp.lot)

    @activity.defn
    @translated
    async def record_operation(self, inp: RecordOperationInput) -> None:
        async with self.tx() as s:
            await production.record_operation(
                s, work_order=inp.work_order, output_lot=inp.output_lot, operation_name=inp.operation_name,
                rework=inp.rework, report=inp.report, resolver=self.resolver,
            )

    @activity.defn
    @translated
    async def open_ncr(self, inp: OpenNcrInput) -> None:
        async with self.tx() as s:
            await quality.open_ncr(
                s, number=inp.ncr, workflow_id=activity.info().workflow_id, work_order=inp.work_order,
                lot=inp.lot, inspection=inp.inspection, description=inp.description, resolver=self.resolver,
                severity=inp.severity.value if inp.severity else None,
                timing={sev.value: {k: v.total_seconds() for k, v in t} for sev, t in inp.timing.items()},
            )

    @activity.defn
    @translated
    async def record_ncr_decision(self, inp: NcrDecisionInput) -> None:
        d = inp.decision
        async with self.tx() as s:
            await quality.record_decision(
                s, ncr=inp.ncr, decision_id=d.decision_id or "", action=d.action.value, reviewer=d.reviewer,
                role=d.role.value, reason=d.reason, rework_operation=d.rework_operation,
                new_state=inp.new_state.value, signature=d.signature,
            )

    @activity.defn
    @translated
    async def record_ncr_notice(self, inp: NcrNoticeInput) -> None:
        async with self.tx() as s:
            await quality.record_notice(s, ncr=inp.ncr, notice=inp.notice, to_role=inp.to_role)

    @activity.defn
    @translated
    async def set_ncr_state(self, inp: NcrStateInput) -> None:
        async with self.tx() as s:
            await quality.set_ncr_state(s, ncr=inp.ncr, state=inp.state.value, note=inp.note,
                                        verification=inp.verification)

    @activity.defn
    @translated
    async def check_reinspection(self, inp: ReinspectionInput) -> ReinspectionResult:
        """Has the reworked lot been inspected again (or opened another NCR)? Read-only."""
        async with self.tx() as s:
            return ReinspectionResult(**await quality.check_reinspection(s, ncr=inp.ncr, lot=inp.lot))

    @activity.defn
    @translated
    async def apply_disposition(self, inp: ApplyDispositionInput) -> dict[str, Any]:
        """Apply the NCR outcome to its lot; returns what the ERP needs to hear of the lot. `written_off`: what a
        scrap or return took off the lot (what was left of it), which the ERP's entry writes off."""
        async with self.tx() as s:
            lot = await quality.apply_disposition(s, ncr=inp.ncr, lot=inp.lot, outcome=inp.outcome.value,
                                                  resolver=self.resolver)
            gone = await quality.written_off(s, ncr=inp.ncr, lot=lot, outcome=inp.outcome.value)
            return {"lot": lot.number, "item": lot.item.code, "quantity": lot.quantity, "uom": lot.uom,
                    "supplier": lot.supplier.code if lot.supplier else None, "receipt": lot.receipt,
                    "written_off": gone}

    @activity.defn
    @translated
    async def issue_codes(self, inp: IssueCodesInput) -> IssueCodesResult:
        async with self.tx() as s:
            lot = await production.get_lot(s, inp.lot)
            issued = await codes.issue_for_lot(s, work_order=inp.work_order, lot=lot, quantity=inp.quantity,
                                               resolver=self.resolver)
            b = issued.block
            return IssueCodesResult(batch_code=issued.batch_code, first_serial=issued.first_serial,
                                    last_serial=issued.last_serial, count=b.count if b else 0)

    @activity.defn
    @translated
    async def ship(self, inp: ShipInput) -> float:
        r = inp.request
        async with self.tx() as s:
            sh = await shipping.ship_lot(
                s, work_order=inp.work_order, lot=inp.lot, shipment=r.shipment, sales_order=r.sales_order,
                customer=r.customer, carrier=r.carrier, tracking_number=r.tracking_number, resolver=self.resolver,
            )
            return sum(line.quantity for line in sh.lines)

    @activity.defn
    @translated
    async def confirm_shipment(self, shipment: str) -> None:
        async with self.tx() as s:
            await shipping.confirm_erp(s, shipment)

    @activity.defn
    @translated
    async def complete_work_order(self, inp: CompleteWorkOrderInput) -> None:
        async with self.tx() as s:
            await production.complete_work_order(s, inp.work_order, status=inp.status,
                                                 good_quantity=inp.good_quantity, scrap_quantity=inp.scrap_quantity,
                                                 erp=inp.erp)

    @activity.defn
    @translated
    async def notify_erp(self, notice: ErpNotice) -> None:
        """Push a document to the ERP endpoint once: `notice.name` is the hub's key of the document. A connector
        with `write_once(doctype, doc, key)` (ERPNext: the key in its hub key field, looked up before creating,
        since the ERP names documents itself) makes a retry after a lost answer find the first document; any
        other connector gets the key as `name`, and an existing document of that name counts as done.

        A recall's unblock (`Batch Hold`, hold 0) is sent only while no other recall keeps the ERP's block of the
        batch; otherwise it is withheld, the recall's audit trail says why, and the notice is done."""
        if notice.doctype == "Batch Hold" and notice.doc.get("hold") == 0:
            # The ERP's block is one flag per batch (ERPNext: the Batch's `disabled`; a `rest` ERP gets the document
            # as it is), shared by every recall; only the hub knows which recalls still hold the lot. The decision
            # chose to unblock when no other recall held the lot, but this notice may reach the ERP much later
            # (retried through an ERP outage), after another recall R2 held the lot and blocked the batch again. So
            # every attempt asks the record again just before it sends. Ordering: R2 commits the lot in its scope
            # (open_recall) and then its hold (hold_recall_lots) before its workflow sends R2's hold 1, and R2
            # counts from its scope's commit (erp_block_holders). An attempt whose check runs after that commit
            # withholds the unblock (R2's own release sends it when R2 is the last to let go); an attempt whose
            # check ran before it sends at once, and its request races R2's hold 1 only if it takes longer than R2's
            # whole way from that commit to its send (several activity round trips). Not covered: a request of an
            # attempt that timed out, applied by the ERP after R2's hold (the ERP has no conditional update here).
            async with self.tx() as s:
                if await erp_unblock_withheld(s, batch=str(notice.doc.get("batch_no") or ""),
                                              recall=notice.doc.get("recall"), notice=notice.name):
                    return
        async with self.sm() as s:
            ep = (await s.execute(select(Endpoint).where(Endpoint.name == self.erp_endpoint))).scalar()
        if ep is None:
            raise NotFound(f"no endpoint named {self.erp_endpoint!r}: create it (POST /api/endpoints) "
                           "or run `tracehub migrate` to seed the default")
        conn = await self._erp_connector(ep.kind, ep.config)
        write_once = getattr(conn, "write_once", None)
        try:
            if write_once is not None:
                answer = await write_once(notice.doctype, dict(notice.doc), notice.name)
            else:
                answer = await conn.write(notice.doctype, {"name": notice.name, **notice.doc})
        except (ConnectorUnavailable, ProtocolError):
            await self._drop_erp(conn)  # the connection may be broken: the next attempt connects afresh
            raise
        finally:
            await self._release_erp(conn)
        if notice.doctype == "Batch Hold" and notice.doc.get("hold") == 0:
            async with self.tx() as s:
                await erp_unblock_sent(s, batch=str(notice.doc.get("batch_no") or ""),
                                       recall=notice.doc.get("recall"), notice=notice.name)
        if notice.doctype == "Purchase Receipt" and notice.doc.get("is_return") and notice.doc.get("remarks"):
            # an NCR's purchase return, acknowledged: its supplier return is now erp_notified (a retry after a
            # lost completion finds the document already there, which counts as done, and changes nothing)
            document = answer.get("name") if isinstance(answer, dict) else None
            async with self.tx() as s:
                await erp_acknowledged(s, ncr=str(notice.doc["remarks"]), document=str(document or notice.name))

    async def _erp_connector(self, kind: str, config: dict[str, Any]) -> Any:
        """The ERP endpoint's connector, shared by the calls in flight; each call gives it back with
        _release_erp."""
        key = kind + json.dumps(config, sort_keys=True, default=str)
        async with self._erp_lock:
            conn = await self._erp_connector_locked(key, kind, config)
            self._erp_users[id(conn)] = self._erp_users.get(id(conn), 0) + 1
            return conn

    async def _erp_connector_locked(self, key: str, kind: str, config: dict[str, Any]) -> Any:
        if self._erp is not None and self._erp[0] == key:
            return self._erp[1]
        try:
            cls = connector_class(kind)
        except KeyError as exc:
            raise ConnectorConfigError(str(exc)) from exc
        conn = cls(config)
        await conn.__aenter__()
        old, self._erp = self._erp, (key, conn)
        if old is not None:  # the endpoint's config changed: the old connector goes once its calls are done
            await self._retire_erp(old[1])
        return conn

    async def _retire_erp(self, conn: Any) -> None:
        if self._erp_users.get(id(conn), 0) > 0:
            self._erp_retired[id(conn)] = conn  # closed by the last call using it (_release_erp)
        else:
            self._erp_users.pop(id(conn), None)
            await conn.__aexit__(None, None, None)

    async def _release_erp(self, conn: Any) -> None:
        async with self._erp_lock:
            left = self._erp_users.get(id(conn), 1) - 1
            self._erp_users[id(conn)] = left
            if left <= 0 and id(conn) in self._erp_retired:
                del self._erp_retired[id(conn)], self._erp_users[id(conn)]
                await conn.__aexit__(None, None, None)

    async def _drop_erp(self, conn: Any) -> None:
        async with self._erp_lock:
            if self._erp is not None and self._erp[1] is conn:
                self._erp = None
                await self._retire_erp(conn)

    def all(self) -> list[Any]:
        return [
            self.start_work_order, self.set_stage, self.record_receipt, self.open_inspection,
            self.record_inspection, self.record_operation, self.open_ncr, self.record_ncr_decision,
            self.record_ncr_notice, self.set_ncr_state, self.check_reinspection, self.apply_disposition,
            self.issue_codes, self.ship, self.confirm_shipment,
            self.complete_work_order, self.notify_erp,
            self.inspection_triggers, self.open_planned_inspection, self.shipment_gate,
        ]


def build_activities(sessionmaker: async_sessionmaker[AsyncSession], *, resolver: str) -> list[Any]:
    """The one list the worker registers."""
    recall = RecallActivities(sessionmaker, resolver=resolver).all()
    return HubActivities(sessionmaker, resolver=resolver).all() + recall
