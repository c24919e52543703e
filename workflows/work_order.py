"""WorkOrderWorkflow: one ERP work order from material intake to shipment, waiting for the floor."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    FailureError,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.codes_models import IssueCodeBlocksInput, IssueCodeBlocksResult
    from activities.models import (
        CompleteWorkOrderInput,
        ErpNotice,
        InspectionOutcome,
        InspectionResultInput,
        InspectionResults,
        InspectionTriggers,
        InspectionTriggersInput,
        IssueCodesInput,
        IssueCodesResult,
        NcrAction,
        NonconformanceInput,
        NonconformanceResult,
        OpenInspectionInput,
        OpenPlannedInspectionInput,
        OperationProgress,
        OperationReport,
        OperationTriggers,
        PurchaseReceipt,
        ReceivedLot,
        RecordOperationInput,
        RecordReceiptInput,
        RoutingOperation,
        ShipInput,
        ShipmentGateInput,
        ShipmentRequest,
        StageInput,
        StartWorkOrderInput,
        Verdict,
        WorkOrderInput,
    )
    from activities.models_connectors import (
        CertificateResult,
        EquipmentStateReport,
        FetchCertificateInput,
        MaterialSpec,
        ProcessParameter,
        ReadProcessInput,
        ReadProcessResult,
        SampleProcessInput,
        SampleProcessResult,
        SkipInspectionInput,
    )
    from workflows.connector_policies import (
        CERTIFICATE_TIMEOUT,
        DEVICE_RETRY,
        DEVICE_TIMEOUT,
        sampling_timeouts,
    )
    from workflows.issue_codes import IssueCodesWorkflow
    from workflows.nonconformance import NonconformanceWorkflow
    from workflows.policies import DB_LOCAL_RETRY, DB_RETRY, DB_TIMEOUT, ERP_RETRY, ERP_TIMEOUT
    from workflows.work_order_models import PendingInspection, RetryRequest, WorkOrderResult, WorkOrderStatus

# Changes of the command sequence since the recorded histories (tests/histories): each is taken only by
# work orders whose input names endpoints for it, so every other work order runs exactly as before.
PATCH_CERTIFICATES = "material-certificates-v1"
PATCH_DEVICE_DATA = "device-data-v1"
# inspection triggers from the item's plans (first-article, patrol, outgoing) and the shipment gate: every work
# order started since asks for its triggers once; one whose item has no such plan then runs as before
PATCH_TRIGGERS = "inspection-triggers-v1"
# the login that posted an inspection's results travels with them to record_inspection (the audit entry's actor);
# results recorded before this patch carry none
PATCH_AUDIT_ACTOR = "audit-actor-v1"
# a held shipment checks its gate as soon as an NCR that may hold it stops holding (the NCR's workflow signals,
# activities/ncr_signals.py); the timer every timing.shipment_gate_recheck stays as the fallback
PATCH_GATE_SIGNAL = "gate-signal-v1"
# the final inspection is opened from the item's versioned plan at `final` when it has one (its limits, sample
# sizes and severities, and the version kept with the result); the work order's own final_plan otherwise
PATCH_FINAL_PLAN = "final-plan-v1"
# a refusal never fails the work order: a release refused by start_work_order (a GTIN of another item, an output lot
# of another work order, found only after the API's checks) waits for a corrected work_order.released or an admin
# retry; a document the ERP refuses (Manufacture entry, Delivery Note) waits for an admin retry; a shipment refused
# (a recall holds the lot) waits, checked again every timing.shipment_gate_recheck or on an admin retry
PATCH_RELEASE_WAIT = "wo-release-refusal-wait-v1"
PATCH_ERP_REJECT_WAIT = "wo-erp-reject-wait-v1"
PATCH_SHIP_WAIT = "wo-ship-recall-gate-v1"
# a refused shipment is tried again (the gate first) as soon as something that held the lot lets it go (a recall's
# decision or close, an NCR: the recheck_shipment_gate signal), not only every timing.shipment_gate_recheck
PATCH_SHIP_WAKE = "wo-ship-refused-wake-v1"
# a scrapped order (no good unit) sends no Manufacture entry of quantity 0 (ERPNext refuses it: "Qty is mandatory")
PATCH_NO_ZERO_MFG = "wo-no-zero-manufacture-v1"
# an operation report or purchase receipt whose recording was refused is no longer "seen": a corrected resend with
# the same id is recorded
PATCH_REFUSED_ID = "wo-refused-id-resend-v1"
# a stage write (set_stage, one row) runs as a local activity, in the worker, without a schedule/start/complete on the
# Temporal server nor a workflow task of its own; the history keeps it as a marker (the history API shows it as an
# activity). A database outage is retried in the worker (DB_LOCAL_RETRY, about 6 s), then by the regular activity
# (DB_RETRY, until the database is back, its attempts in the history's pending list), which also takes any refusal as
# before. Asked once per run, at its first stage write
PATCH_STAGE_LOCAL = "wo-stage-local-v1"
# the stage writes (local activities) run in the background, in order, and the work order goes on at once: it waits
# for them only before it completes. Awaited inline, the code after a stage write ran where the local activity's
# result arrived, and a status query arriving while the local activity ran could make the worker report that result
# in a workflow task of its own: the original run then took its next patch decision one workflow task later than
# a replay does (the replay resolves the local activity from its marker in the earlier task), and the history no
# longer replayed ("patch marker encountered ... but there is no corresponding change command"): a status query of a
# completed work order failed, and a worker that evicted such a work order could not resume it. Asked with
# PATCH_STAGE_LOCAL, at the first stage write (after a regular activity: a patch decision the replay takes in the
# same workflow task)
PATCH_STAGE_BACKGROUND = "wo-stage-background-v1"


@workflow.defn
class WorkOrderWorkflow:
    def __init__(self) -> None:
        self.order: WorkOrderInput | None = None
        # "starting" until the work order is recorded (start_work_order): a status read before then must not say
        # material_intake while the record does not exist yet (a report sent on the strength of it was refused)
        self.stage = "starting"
        self.activity_wait: str | None = None
        self.receipts: list[PurchaseReceipt] = []
        self.seen_receipts: set[str] = set()
        self.pending: dict[str, PendingInspection] = {}
        self.results: dict[str, InspectionResults] = {}
        self.submitters: dict[str, str | None] = {}  # inspection -> the login that posted its results
        self.reports: dict[int, OperationReport] = {}
        self.seen_reports: set[str] = set()
        self.expected_op: RoutingOperation | None = None
        self.material: dict[str, str] = {}
        self.open_ncrs: dict[str, str] = {}
        self.ncrs: list[str] = []
        self.ship_request: ShipmentRequest | None = None
        self.good = 0
        self.scrap = 0
        self.codes: IssueCodesResult | None = None
        self.shipment: str | None = None
        self.last_error: str | None = None
        self.result: str | None = None
        self.iqc_tasks: list[asyncio.Task[None]] = []
        # device data and certificates (only for work orders whose input names endpoints)
        self.waits: dict[str, str] = {}
        self.cert_checks: set[str] = set()
        self.certificates: dict[str, str] = {}
        self.op_runs: dict[int, int] = {}
        self.process_values: dict[str, float | int | str | bool] = {}
        self.deviations: list[str] = []
        self.equipment: dict[str, str] = {}
        self.process_scrapped = False
        # inspection triggers (work orders started since PATCH_TRIGGERS)
        self.triggers: InspectionTriggers | None = None
        self.progress: dict[int, int] = {}
        self.gate: list[str] = []
        self.gate_signals = 0  # recheck_shipment_gate signals received (PATCH_GATE_SIGNAL)
        # refusals waiting for a fix (key -> what was refused and why), admin retries, a corrected release
        self.needs_retry: dict[str, str] = {}
        self.retry_requests = 0
        self.corrected_order: WorkOrderInput | None = None
        self.erp_documents: dict[str, str] = {}
        self.stage_local: bool | None = None  # PATCH_STAGE_LOCAL, asked at the first stage write
        self.stage_background: bool | None = None  # PATCH_STAGE_BACKGROUND, asked with it
        self.stage_queue: list[StageInput] = []  # stage writes not yet taken by the writer
        self.stage_writer: asyncio.Task[None] | None = None

    # --- entry --------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, order: WorkOrderInput) -> WorkOrderResult:
        self.order = order
        while True:
            try:
                await self._db("start_work_order",
                               StartWorkOrderInput(order=order, workflow_id=workflow.info().workflow_id))
                break
            except ActivityError as err:
                if not workflow.patched(PATCH_RELEASE_WAIT):
                    raise
                field = _field(err) or "number"
                field = field if field.startswith("work_order.") else f"work_order.{field}"
                problem = await self._wait_for_retry(
                    "release", f"release of work order {order.number} refused ({field}): {_message(err)}",
                    f"send work_order.released for {order.number} again with {field} corrected (or fix the record it "
                    "conflicts with)", corrected=True)
                if self.corrected_order is not None:
                    order = self.order = self.corrected_order
                    self.corrected_order = None
                self._clear_error(problem)
        if workflow.patched(PATCH_TRIGGERS):
            triggers = await self._db("inspection_triggers", InspectionTriggersInput(
                work_order=order.number, item=order.item, routing=order.routing), result_type=InspectionTriggers)
            assert isinstance(triggers, InspectionTriggers)
            self.triggers = triggers
        for r in order.receipts:
            self.receive_material(r)
        intake = asyncio.create_task(self._intake_loop())

        # 1. material intake: until every received lot is decided and at least one is released
        await self._stage("material_intake")
        await workflow.wait_condition(
            lambda: bool(self.material) and not self.receipts and not self.pending_iqc()
            and not self.open_material_ncrs() and "released" in self.material.values()
        )

        # 2. production, operation by operation as the MES reports them
        await self._stage("production")
        for op in order.routing:
            await self._operation(op, rework=False)
            if self.process_scrapped:
                break

        # 3. final inspection, with NCR review and rework loops
        scrapped = False
        if self.process_scrapped:  # a process deviation's NCR decided scrap: nothing left to inspect
            scrapped = True
            self.scrap += self.good
            self.good = 0
        attempt = 0
        while not scrapped:
            attempt += 1
            await self._stage("final_inspection")
            outcome = await self._inspect(f"FIN-{order.number}-{attempt}", "final", order.lot_number)
            if outcome.verdict == Verdict.passed:
                break
            await self._stage("nonconformance_review")
            ncr = await self._ncr(outcome, "final")
            if ncr.outcome in (NcrAction.dismiss, NcrAction.use_as_is):
                break
            if ncr.outcome == NcrAction.rework:
                op = next((o for o in order.routing if o.seq == ncr.rework_operation), order.routing[-1])
                await self._stage("production")
                await self._operation(op, rework=True)
                continue
            scrapped = True
            self.scrap += self.good
            self.good = 0
            break

        # 4. tell the ERP what was made and consumed
        await self._stage("erp_completion")
        # what the operations consumed (the released lots, as the MES reported them) goes to the ERP as its
        # "Material Consumption for Manufacture" entry, before the Manufacture entry of the finished lot.
        # Its own document, so an ERP that refuses it (a batch it does not know) leaves a visible error here
        # and the completion still goes through. Taken only by work orders run since the patch.
        if workflow.patched("erp-consumption-v1"):
            consumed = await self._db("work_order_consumption", order.number, result_type=list[dict])
            assert isinstance(consumed, list)
            if consumed:
                try:
                    await self._erp(ErpNotice(
                        doctype="Stock Entry", name=f"{order.number}-CONS",
                        doc={"stock_entry_type": "Material Consumption for Manufacture", "work_order": order.number,
                             "items": [{"item_code": c["item"], "batch_no": c["lot"], "qty": c["quantity"],
                                        "uom": c["uom"], "s_warehouse": "Stores", "is_finished_item": 0}
                                       for c in consumed]}),
                        "ERP: material consumption of the work order")
                    self.erp_documents[f"{order.number}-CONS"] = "sent"
                except ActivityError as err:
                    self.last_error = f"ERP refused the material consumption {order.number}-CONS: {_message(err)}"
                    self.erp_documents[f"{order.number}-CONS"] = f"refused: {_message(err)}"
        mfg = f"{order.number}-MFG"
        if self.good <= 0 and workflow.patched(PATCH_NO_ZERO_MFG):
            # nothing good was made: a Manufacture entry needs a finished quantity above 0 (ERPNext refuses qty 0)
            self.erp_documents[mfg] = (
                f"not sent: no good unit was made (good 0, scrap {self.scrap}), and a Manufacture entry of quantity 0 "
                "is refused by the ERP; the material consumed went as its own entry, and what an NCR scrapped is "
                "written off by the NCR's scrap entry")
        else:
            await self._erp_until_sent(ErpNotice(
                doctype="Stock Entry", name=mfg,
                doc={"stock_entry_type": "Manufacture", "work_order": order.number,
                     "items": [{"item_code": order.item, "batch_no": order.lot_number, "qty": self.good,
                                "is_finished_item": 1}],
                     "scrap_qty": self.scrap}), "ERP: completion of the work order")

        if not scrapped and self.good > 0:
            # 5. codes for the lot and each unit
            await self._stage("code_issuance")
            # the threshold is checked first, so orders of today's size keep their recorded command sequence
            if self.good > order.codes_child_threshold and workflow.patched("codes-child-workflow"):
                big = await workflow.execute_child_workflow(
                    IssueCodesWorkflow.run,
                    IssueCodeBlocksInput(work_order=order.number, lot=order.lot_number, quantity=self.good),
                    id=f"issue-codes-{order.number}", result_type=IssueCodeBlocksResult)
                self.codes = IssueCodesResult(batch_code=big.batch_code, first_serial=big.first_serial,
                                              last_serial=big.last_serial, count=big.count)
            else:
                self.codes = await workflow.execute_activity(
                    "issue_codes", IssueCodesInput(work_order=order.number, lot=order.lot_number,
                                                   quantity=self.good),
                    start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=IssueCodesResult,
                )
            # the outgoing inspection the item's plan requires (work orders started since PATCH_TRIGGERS)
            shippable = await self._outgoing() if self.triggers is not None and self.triggers.outgoing else True
            if shippable:
                await self._ship()  # 6. shipment against the sales order, or when the ERP asks for it

        status = "completed" if self.good >= order.quantity else "completed_short"
        await self._stages_written()
        await self._db("complete_work_order", CompleteWorkOrderInput(
            work_order=order.number, status=status, good_quantity=self.good, scrap_quantity=self.scrap,
            erp=dict(self.erp_documents)))
        self.stage = "done"
        self.result = status
        intake.cancel()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return WorkOrderResult(number=order.number, status=status, output_lot=order.lot_number,
                               good_quantity=self.good, scrap_quantity=self.scrap, shipment=self.shipment,
                               ncrs=self.ncrs)

    # --- shipment ---------------------------------------------------------------------------------

    async def _ship(self) -> None:
        """Ship the lot against the sales order, or when the ERP asks for it, and tell the ERP."""
        order = self.order
        assert order is not None
        await self._stage("shipment")
        if order.shipment and not self.ship_request:
            self.ship_request = order.shipment
        await workflow.wait_condition(lambda: self.ship_request is not None)
        req = self.ship_request
        assert req is not None
        while True:
            if self.triggers is not None:
                await self._shipment_gate(req)
            self.activity_wait = "database: recording the shipment"
            signals = self.gate_signals  # before the attempt: a release meanwhile ends the wait below at once
            try:
                shipped_qty = await workflow.execute_activity(
                    "ship", ShipInput(work_order=order.number, lot=order.lot_number, request=req),
                    start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=float,
                )
                break
            except ActivityError as err:
                if not workflow.patched(PATCH_SHIP_WAIT):
                    raise
                self.activity_wait = None
                # checked again (the gate first) every shipment_gate_recheck, or at once on an admin retry, and
                # (PATCH_SHIP_WAKE) when a recall or NCR that held the lot lets it go
                recheck = order.timing.shipment_gate_recheck
                wake = workflow.patched(PATCH_SHIP_WAKE)
                when = (f"as soon as what holds the lot lets it go (a recall's release, an NCR's decision), and "
                        f"every {recheck.total_seconds():g} s" if wake else
                        f"every {recheck.total_seconds():g} s once what holds the lot lets it go")
                await self._wait_for_retry(
                    "shipment", f"shipment {req.shipment} of lot {order.lot_number} refused: {_message(err)}",
                    f"it is tried again {when}", timeout=recheck, woken_after=signals if wake else None)
        if self.last_error is not None and self.last_error.startswith(f"shipment {req.shipment} of lot"):
            self.last_error = None
        self.shipment = req.shipment
        await self._erp_until_sent(ErpNotice(
            doctype="Delivery Note", name=req.shipment,
            doc={"customer": req.customer, "against_sales_order": req.sales_order, "work_order": order.number,
                 "carrier": req.carrier, "tracking_number": req.tracking_number,
                 "items": [{"item_code": order.item, "batch_no": order.lot_number, "qty": shipped_qty}]}),
            "ERP: delivery note for the shipment")
        await self._db("confirm_shipment", req.shipment)

    async def _shipment_gate(self, req: ShipmentRequest) -> None:
        """Hold the shipment while the lot lacks a passed outgoing inspection its plan requires or an NCR is
        open on it or on a lot consumed into it; the status names which. NCRs of consumed lots are decided in
        other workflows: the gate is checked again when one of them signals that it stops holding, and every
        `timing.shipment_gate_recheck` (the fallback, and NCRs closed otherwise)."""
        assert self.order is not None
        key = "shipment-gate"
        signalled = workflow.patched(PATCH_GATE_SIGNAL)
        while True:
            seen = self.gate_signals  # before the check: a signal during it makes the wait below return at once
            problems = await self._db("shipment_gate", ShipmentGateInput(
                work_order=self.order.number, lot=self.order.lot_number), result_type=list[str])
            assert isinstance(problems, list)
            self.gate = list(problems)
            if not problems:
                self.waits.pop(key, None)
                return
            self.waits[key] = f"shipment {req.shipment} held: " + "; ".join(problems)
            open_now = len(self.open_ncrs)
            try:
                await workflow.wait_condition(
                    lambda n=open_now, g=seen: len(self.open_ncrs) != n or (signalled and self.gate_signals != g),
                    timeout=self.order.timing.shipment_gate_recheck)
            except TimeoutError:
                pass

    # --- inspections the item's plans trigger (PATCH_TRIGGERS) ---------------------------------------------

    async def _open_planned(self, number: str, trigger: str, operation: str, lot_size: int) -> bool:
        assert self.order is not None
        opened = await self._db("open_planned_inspection", OpenPlannedInspectionInput(
            number=number, trigger=trigger, work_order=self.order.number, lot=self.order.lot_number,
            item=self.order.item, operation=operation, lot_size=max(1, lot_size)), result_type=bool)
        if not opened:
            self.last_error = f"{trigger} inspection {number}: item {self.order.item} has no plan at {operation!r}"
        return bool(opened)

    async def _outgoing(self) -> bool:
        """The outgoing inspection before shipment, with NCR review and rework; False when the lot is scrapped."""
        order = self.order
        assert order is not None
        attempt = 0
        while True:
            attempt += 1
            number = f"OUT-{order.number}-{attempt}"
            await self._stage("outgoing_inspection")
            if not await self._open_planned(number, "outgoing", "outgoing", self.good):
                return True  # no plan after all: the shipment gate says what is missing
            outcome = await self._inspect(number, "outgoing", order.lot_number, opened=True)
            if outcome.verdict == Verdict.passed:
                return True
            await self._stage("nonconformance_review")
            ncr = await self._ncr(outcome, "outgoing")
            if ncr.outcome in (NcrAction.dismiss, NcrAction.use_as_is):
                return True
            if ncr.outcome == NcrAction.rework:
                op = next((o for o in order.routing if o.seq == ncr.rework_operation), order.routing[-1])
                await self._stage("production")
                await self._operation(op, rework=True)
                continue
            self.scrap += self.good
            self.good = 0
            return False

    async def _first_article(self, op: RoutingOperation, t: OperationTriggers) -> bool:
        """The first unit of the operation's first run is inspected; the run continues (its report is recorded)
        once it passes. A failed first article opens an NCR: dismiss or use as is continues the run, rework means
        the set-up is corrected and a new first article inspected; scrap ends production (False)."""
        assert self.order is not None
        key = f"first-article:{op.seq}"
        attempt = 0
        try:
            while True:
                attempt += 1
                number = f"FA-{self.order.number}-{op.seq}-{attempt}"
                self.waits[key] = (f"first-article: operation {op.seq} ({op.name}) continues, and its report is "
                                   f"recorded, once first-article inspection {number} passes")
                if not await self._open_planned(number, "first_article", t.operation, 1):
                    return True
                outcome = await self._inspect(number, "first_article", self.order.lot_number, opened=True)
                if outcome.verdict == Verdict.passed:
                    return True
                ncr = await self._ncr(outcome, "first_article")
                if ncr.outcome in (NcrAction.dismiss, NcrAction.use_as_is):
                    return True
                if ncr.outcome != NcrAction.rework:
                    return False
        finally:
            self.waits.pop(key, None)

    async def _patrol(self, op: RoutingOperation, run: int, t: OperationTriggers) -> NcrAction | None:
        """Patrol inspections while the operation runs: every N units of the MES's progress reports and/or every
        N minutes, one at a time, until the operation's report arrives. A failed one opens an NCR; rework or
        scrap ends the patrol and is returned (applied when the operation's report is recorded)."""
        assert self.order is not None
        every_u, every_m = t.patrol_every_units, t.patrol_every_minutes
        next_units = every_u
        key = f"patrol:{op.seq}"
        k = 0
        try:
            while True:
                when = ([f"at {next_units} units"] if next_units else []) + \
                       ([f"every {every_m:g} min"] if every_m else [])
                self.waits[key] = (f"patrol: next inspection of operation {op.seq} ({op.name}) "
                                   f"{' or '.join(when)}, until its report")
                try:
                    await workflow.wait_condition(
                        lambda nu=next_units: op.seq in self.reports
                        or (nu is not None and self.progress.get(op.seq, 0) >= nu),
                        timeout=timedelta(minutes=every_m) if every_m else None)
                except TimeoutError:
                    pass
                if op.seq in self.reports:
                    return None
                self.waits.pop(key, None)
                k += 1
                if every_u:
                    next_units = (self.progress.get(op.seq, 0) // every_u + 1) * every_u
                number = f"PAT-{self.order.number}-{op.seq}-{run}-{k}"
                if not await self._open_planned(number, "patrol", t.operation, every_u or self.order.quantity):
                    return None
                outcome = await self._inspect(number, "patrol", self.order.lot_number, opened=True)
                if outcome.verdict == Verdict.passed:
                    continue
                ncr = await self._ncr(outcome, "patrol")
                if ncr.outcome not in (NcrAction.dismiss, NcrAction.use_as_is):
                    return ncr.outcome
        finally:
            self.waits.pop(key, None)

    # --- signals and queries ------------------------------------------------------------------------

    @workflow.signal
    def receive_material(self, receipt: PurchaseReceipt) -> None:
        """ERP purchase receipt for this work order."""
        if receipt.receipt not in self.seen_receipts:
            self.seen_receipts.add(receipt.receipt)
            self.receipts.append(receipt)

    @workflow.signal
    def submit_inspection(self, inp: InspectionResultInput) -> None:
        """Measurements from an inspector or a gauge (validated by the API)."""
        if inp.inspection in self.pending and inp.inspection not in self.results:
            self.results[inp.inspection] = inp.results
            self.submitters[inp.inspection] = inp.submitted_by

    @workflow.signal
    def report_operation(self, report: OperationReport) -> None:
        """An operation report from the MES or an operator (validated by the API)."""
        if report.report_id not in self.seen_reports:
            self.seen_reports.add(report.report_id)
            self.reports[report.seq] = report

    @workflow.signal
    def report_progress(self, progress: OperationProgress) -> None:
        """Units made so far in a running operation, from the MES (validated by the API): patrol triggers."""
        if progress.units > self.progress.get(progress.seq, 0):
            self.progress[progress.seq] = progress.units

    @workflow.signal
    def equipment_state(self, report: EquipmentStateReport) -> None:
        """An equipment state from the MES (shown in the status)."""
        self.equipment[report.equipment] = report.state

    @workflow.signal
    def recheck_shipment_gate(self, ncr: str) -> None:
        """An NCR on the lot or on a lot consumed into it stopped holding, or a recall ended its hold on the lot
        (`ncr` then names the recall: `recall RC-1`): a held shipment checks its gate now, and a refused one is
        tried again (PATCH_SHIP_WAKE). Ignored by shipments held since before PATCH_GATE_SIGNAL."""
        self.gate_signals += 1

    @workflow.signal
    def request_shipment(self, req: ShipmentRequest) -> None:
        if self.ship_request is None:
            self.ship_request = req

    @workflow.signal
    def correct_release(self, order: WorkOrderInput) -> None:
        """A corrected work_order.released for this number, while its release waits after a refusal (the API
        delivers it only then); ignored otherwise."""
        assert self.order is not None
        if "release" in self.needs_retry and order.number == self.order.number:
            self.corrected_order = order

    @workflow.update
    def retry(self, req: RetryRequest) -> list[str]:
        """An admin retries what the work order waits on after a refusal, once its cause is fixed; returns what
        is retried."""
        self.retry_requests += 1
        return list(self.needs_retry.values())

    @retry.validator
    def _retry_allowed(self, req: RetryRequest) -> None:
        assert self.order is not None
        if not self.needs_retry:
            raise ApplicationError(
                f"work order {self.order.number} waits on no refusal (stage {self.stage}): there is nothing to retry",
                {"field": "number"}, type="Conflict")

    @workflow.query
    def status(self) -> WorkOrderStatus:
        assert self.order is not None
        return WorkOrderStatus(
            number=self.order.number, stage=self.stage, waiting_for=self._waiting_for(),
            pending_inspections=list(self.pending.values()),
            expected_operation=self.expected_op.seq if self.expected_op else None,
            open_ncrs=list(self.open_ncrs), ncrs=self.ncrs, material_lots=dict(self.material),
            output_lot=self.order.lot_number, good_quantity=self.good, scrap_quantity=self.scrap,
            codes=self.codes, shipment=self.shipment, last_error=self.last_error, result=self.result,
            certificates=dict(self.certificates), process_values=dict(self.process_values),
            deviations=list(self.deviations), equipment_states=dict(self.equipment),
            inspection_triggers=self.triggers, shipment_gate=list(self.gate),
            needs_retry=list(self.needs_retry.values()),
            release_refused=self.needs_retry.get("release"), erp_documents=dict(self.erp_documents),
        )

    def _waiting_for(self) -> list[str]:
        w = []
        if self.activity_wait:
            w.append(self.activity_wait)
        w.extend(self.waits.values())
        if "release" in self.needs_retry:  # nothing else is waited for before the release is recorded
            return w
        if self.stage == "material_intake" and not self.material and not self.receipts:
            w.append("ERP: purchase receipt of material for this work order")
        elif self.stage == "material_intake" and self.material and "released" not in self.material.values() \
                and not self.pending_iqc() and not self.open_material_ncrs():
            w.append("ERP: purchase receipt (every lot received so far was rejected)")
        for p in self.pending.values():
            if p.number not in self.results:
                w.append(f"inspector: results for {p.kind} inspection {p.number} (lot {p.lot})")
        if self.expected_op is not None:
            w.append(f"MES: operation report for operation {self.expected_op.seq} ({self.expected_op.name})")
        for ncr in self.open_ncrs:
            w.append(f"reviewer: decision on {ncr}")
        if self.stage == "shipment" and self.ship_request is None:
            w.append("ERP: shipment request (sales order) for the lot")
        return w

    def pending_iqc(self) -> bool:
        return any(p.kind == "iqc" for p in self.pending.values()) or bool(self.cert_checks)

    def open_material_ncrs(self) -> bool:
        return any(lot in self.material for lot in self.open_ncrs.values())

    # --- steps -------------------------------------------------------------------------------------

    async def _stage(self, stage: str) -> None:
        assert self.order is not None
        if self.stage != stage or stage == "material_intake":
            self.stage = stage
            inp = StageInput(work_order=self.order.number, stage=stage)
            if self.stage_local is None:
                self.stage_local = workflow.patched(PATCH_STAGE_LOCAL)
                self.stage_background = self.stage_local and workflow.patched(PATCH_STAGE_BACKGROUND)
            if self.stage_background:
                self.stage_queue.append(inp)
                if self.stage_writer is None or self.stage_writer.done():
                    self.stage_writer = asyncio.create_task(self._write_stages())
                return
            if self.stage_local:
                await self._write_stage(inp)
                return
            await self._db("set_stage", inp)

    async def _write_stage(self, inp: StageInput) -> None:
        try:
            await workflow.execute_local_activity(
                "set_stage", inp, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_LOCAL_RETRY)
            return
        except FailureError as err:  # a local activity's failure comes as is, or as an ActivityError
            if isinstance(err, CancelledError) or isinstance(err.cause, CancelledError):
                raise
            # the worker's attempts ran out (the database is down) or the write was refused: the regular
            # activity takes over, as before the patch (retried until the database is back, or failing)
        await self._db("set_stage", inp)

    async def _write_stages(self) -> None:
        """PATCH_STAGE_BACKGROUND: the queued stage writes, one after the other, in the order of the stages."""
        while self.stage_queue:
            await self._write_stage(self.stage_queue.pop(0))

    async def _stages_written(self) -> None:
        """Wait for the stage writes in flight (before the completion writes the work order's last state)."""
        if self.stage_writer is not None:
            await self.stage_writer

    async def _db(self, activity: str, arg: object, result_type: type | None = None) -> object:
        return await workflow.execute_activity(
            activity, arg, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=result_type
        )

    async def _wait_for_retry(self, key: str, problem: str, todo: str, *, timeout: timedelta | None = None,
                              corrected: bool = False, woken_after: int | None = None) -> str:
        """A refusal: the status names it (last_error, waiting_for, needs_retry) and the work order waits for an
        admin retry (the `retry` update), a corrected release (`corrected`), a recheck_shipment_gate signal after
        the `woken_after`-th, or `timeout`. Returns the problem."""
        assert self.order is not None
        self.last_error = problem
        self.needs_retry[key] = problem
        self.waits[key] = (f"admin: {problem}. To do: {todo}; then retry it "
                           f"(POST /api/work-orders/{self.order.number}/retry)")
        seen = self.retry_requests
        try:
            await workflow.wait_condition(
                lambda: self.retry_requests != seen or (corrected and self.corrected_order is not None)
                or (woken_after is not None and self.gate_signals != woken_after),
                timeout=timeout)
        except TimeoutError:
            pass
        finally:
            self.waits.pop(key, None)
            self.needs_retry.pop(key, None)
        return problem

    def _clear_error(self, problem: str) -> None:
        if self.last_error == problem:
            self.last_error = None

    async def _erp_until_sent(self, notice: ErpNotice, what: str) -> None:
        """Send the document; a refusal (not an outage: that is retried by the policy) waits for an admin retry
        after the cause is fixed, instead of failing the work order. The ERP takes a resent document once."""
        while True:
            try:
                await self._erp(notice, what)
                self.erp_documents[notice.name] = "sent"
                return
            except ActivityError as err:
                if not workflow.patched(PATCH_ERP_REJECT_WAIT):
                    raise
                message = _message(err)
                self.erp_documents[notice.name] = f"refused: {message}"
                problem = await self._wait_for_retry(
                    f"erp:{notice.name}",
                    f"the ERP refused {notice.doctype} {notice.name} ({what.removeprefix('ERP: ')}): {message}",
                    "correct what the ERP names (its master data, stock or settings)")
                self._clear_error(problem)

    async def _erp(self, notice: ErpNotice, what: str) -> None:
        self.activity_wait = f"{what} (retried until the ERP answers)"
        try:
            await workflow.execute_activity(
                "notify_erp", notice, start_to_close_timeout=ERP_TIMEOUT, retry_policy=ERP_RETRY
            )
        finally:
            self.activity_wait = None

    async def _intake_loop(self) -> None:
        assert self.order is not None
        while True:
            await workflow.wait_condition(lambda: bool(self.receipts))
            receipt = self.receipts[0]
            try:
                numbers = await workflow.execute_activity(
                    "record_receipt",
                    RecordReceiptInput(work_order=self.order.number, receipt=receipt, plan=self.order.iqc_plan),
                    start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=list[str],
                )
            except ActivityError as err:
                self.last_error = f"purchase receipt {receipt.receipt} refused: {_message(err)}"
                self.receipts.pop(0)
                if workflow.patched(PATCH_REFUSED_ID):
                    self.seen_receipts.discard(receipt.receipt)  # a corrected resend with this id is recorded
                continue
            self.receipts.pop(0)
            for line, number in zip(receipt.lots, numbers, strict=True):
                self.material[line.lot] = "quarantine"
                spec = self._material_spec(line.item)
                if spec is not None and workflow.patched(PATCH_CERTIFICATES):
                    self.cert_checks.add(line.lot)  # intake waits for it from now on
                else:
                    spec = None
                self.iqc_tasks.append(asyncio.create_task(self._iqc(number, line, spec)))

    def _material_spec(self, item: str) -> MaterialSpec | None:
        assert self.order is not None
        return next((m for m in self.order.material_specs if m.item == item), None)

    async def _iqc(self, number: str, line: ReceivedLot, spec: MaterialSpec | None = None) -> None:
        lot = line.lot
        if spec is not None and not await self._certificate(number, line, spec):
            return
        outcome = await self._inspect(number, "iqc", lot, opened=True)
        if outcome.verdict == Verdict.passed:
            self.material[lot] = "released"
            return
        self.material[lot] = "on_hold"
        ncr = await self._ncr(outcome, "iqc")
        self.material[lot] = "released" if ncr.outcome in (NcrAction.dismiss, NcrAction.use_as_is) else "rejected"

    async def _certificate(self, number: str, line: ReceivedLot, spec: MaterialSpec) -> bool:
        """Fetch and judge the lot's certificate; out of specification opens an NCR. False: lot rejected."""
        assert self.order is not None
        lot, key = line.lot, f"certificate:{line.lot}"
        self.waits[key] = (f"supplier: certificate of heat {line.heat_number} for lot {lot} from "
                           f"{spec.certificate_endpoint} (retried until the service answers)")
        try:
            res = await workflow.execute_activity(
                "fetch_certificate",
                FetchCertificateInput(work_order=self.order.number, lot=lot, supplier=line.supplier,
                                      heat_number=line.heat_number, spec=spec),
                start_to_close_timeout=CERTIFICATE_TIMEOUT, retry_policy=DEVICE_RETRY, result_type=CertificateResult,
            )
            failures = res.failures
            self.certificates[lot] = (f"{res.verdict}: certificate {res.certificate_no or '-'} grade "
                                      f"{res.grade or '-'}" + (f" ({'; '.join(failures)})" if failures else ""))
        except ActivityError as err:
            message = _message(err)
            self.last_error = f"certificate of lot {lot} (heat {line.heat_number}): {message}"
            self.certificates[lot] = f"unavailable: {message}"
            failures = [f"certificate unavailable: {message}"]
        finally:
            self.waits.pop(key, None)
            self.cert_checks.discard(lot)
        if not failures:
            return True
        self.material[lot] = "on_hold"
        outcome = InspectionOutcome(inspection=f"CERT-{lot}", lot=lot, verdict=Verdict.failed,
                                    failed_characteristics=failures)
        ncr = await self._ncr(outcome, "iqc", description=f"material certificate of lot {lot} (heat "
                                                           f"{line.heat_number}) nonconforming: " + "; ".join(failures))
        if ncr.outcome in (NcrAction.dismiss, NcrAction.use_as_is):
            self.material[lot] = "quarantine"  # accepted on its papers: incoming inspection still decides
            return True
        await self._db("skip_inspection", SkipInspectionInput(
            inspection=number, reason=f"lot {lot} rejected on its certificate ({ncr.ncr}: {ncr.outcome.value})"))
        # after the record, so whoever sees "rejected" in the status also finds the inspection skipped
        self.material[lot] = "rejected"
        return False

    async def _inspect(self, number: str, kind: str, lot: str, opened: bool = False) -> InspectionOutcome:
        assert self.order is not None
        if not opened and kind == "final" and workflow.patched(PATCH_FINAL_PLAN):
            opened = bool(await self._db("open_planned_inspection", OpenPlannedInspectionInput(
                number=number, trigger="final", work_order=self.order.number, lot=lot, item=self.order.item,
                operation="final", lot_size=max(1, self.good)), result_type=bool))
        if not opened:
            await self._db("open_inspection", OpenInspectionInput(
                number=number, kind=kind, work_order=self.order.number, lot=lot, plan=self.order.final_plan))
        self.pending[number] = PendingInspection(number=number, kind=kind, lot=lot)
        while True:
            await workflow.wait_condition(lambda: number in self.results)
            submitted_by = self.submitters.get(number) if workflow.patched(PATCH_AUDIT_ACTOR) else None
            try:
                outcome = await workflow.execute_activity(
                    "record_inspection", InspectionResultInput(inspection=number, results=self.results[number],
                                                               submitted_by=submitted_by),
                    start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=InspectionOutcome,
                )
                break
            except ActivityError as err:
                # results the API let through but the record refused: say so and wait for a correct set
                self.last_error = f"results for {number} refused: {_message(err)}"
                del self.results[number]
                self.submitters.pop(number, None)
        del self.pending[number]
        del self.results[number]
        self.submitters.pop(number, None)
        return outcome

    async def _ncr(self, outcome: InspectionOutcome, stage: str, description: str | None = None) -> NonconformanceResult:
        assert self.order is not None
        number = f"NCR-{self.order.number}-{len(self.ncrs) + 1}"
        self.ncrs.append(number)
        self.open_ncrs[number] = outcome.lot
        ncr_input = NonconformanceInput(
            ncr=number, work_order=self.order.number, lot=outcome.lot, inspection=outcome.inspection,
            stage=stage, timing=self.order.timing,
            # the most severe failed characteristic of the plan version the inspection was taken under (the
            # record_inspection activity knows it); major without a plan. Input contents are replay-safe.
            **({"severity": outcome.severity} if outcome.severity is not None else {}),
            description=description or f"{stage} inspection {outcome.inspection} failed: "
                        + ", ".join(outcome.failed_characteristics) + " out of specification",
        )
        try:
            if workflow.patched("ncr-review-states-v1"):
                # The NCR signals once its disposition is carried out, and this work order goes on; the NCR
                # itself stays open for the verification (scrap destroyed, return shipped, re-inspection) and
                # outlives this work order if need be (ABANDON). Severity starts at the plan's; the QA supervisor
                # reclassifies it (PATCH /api/ncrs/{n}) and the NCR re-times its reminder and escalation.
                disposed: list[NonconformanceResult] = []
                signal = f"ncr-disposed-{number}"

                def on_disposed(result: dict) -> None:
                    disposed.append(NonconformanceResult.model_validate(result))

                workflow.set_signal_handler(signal, on_disposed)
                child = await workflow.start_child_workflow(
                    NonconformanceWorkflow.run, ncr_input.model_copy(update={"notify_parent": signal}),
                    id=f"ncr-{number}", parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                )
                await workflow.wait_condition(lambda: bool(disposed) or child.done())
                workflow.set_signal_handler(signal, None)
                return disposed[0] if disposed else await child
            return await workflow.execute_child_workflow(NonconformanceWorkflow.run, ncr_input, id=f"ncr-{number}")
        except ChildWorkflowError as err:
            raise ApplicationError(f"{number} failed: {_message(err)}") from err
        finally:
            self.open_ncrs.pop(number, None)

    async def _operation(self, op: RoutingOperation, *, rework: bool) -> None:
        assert self.order is not None
        proc = op.process_data if op.process_data and workflow.patched(PATCH_DEVICE_DATA) else []
        while True:  # once, or again when a process deviation's NCR decides rework
            run = self.op_runs[op.seq] = self.op_runs.get(op.seq, 0) + 1
            self.expected_op = op
            trig = self.triggers.for_op(op.seq) if self.triggers is not None else None
            self.progress.pop(op.seq, None)
            if trig is not None and trig.first_article and run == 1 and not rework \
                    and not await self._first_article(op, trig):
                self.expected_op = None
                self.process_scrapped = True
                return
            patrol = asyncio.create_task(self._patrol(op, run, trig)) \
                if trig is not None and (trig.patrol_every_units or trig.patrol_every_minutes) else None
            patrol_outcome: NcrAction | None = None
            deviations: list[str] = []
            samplers: list[asyncio.Task[SampleProcessResult | None]] = []
            if proc:
                deviations += await self._read_process(op, run, "start")
                samplers = [asyncio.create_task(self._sample(op, run, p)) for p in proc if p.when == "during"]
            while True:
                await workflow.wait_condition(lambda: op.seq in self.reports)
                if patrol is not None:  # a patrol inspection under way is finished (and decided) first
                    patrol_outcome = await patrol
                    patrol = None
                report = self.reports[op.seq]
                if proc:
                    report, more = await self._finish_process(op, run, report, samplers)
                    deviations += more
                    samplers = []
                try:
                    await workflow.execute_activity(
                        "record_operation",
                        RecordOperationInput(work_order=self.order.number, output_lot=self.order.lot_number,
                                             operation_name=op.name, rework=rework, report=report),
                        start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
                    )
                    break
                except ActivityError as err:
                    self.last_error = f"operation report {report.report_id} refused: {_message(err)}"
                    del self.reports[op.seq]
                    if workflow.patched(PATCH_REFUSED_ID):
                        self.seen_reports.discard(report.report_id)  # a corrected resend with this id is recorded
            del self.reports[op.seq]
            self.expected_op = None
            self.last_error = None
            self.scrap += report.scrap_quantity
            self.good = report.good_quantity
            if patrol_outcome is not None and patrol_outcome != NcrAction.rework:
                self.process_scrapped = True  # a patrol's NCR decided scrap
                return
            if patrol_outcome == NcrAction.rework and not deviations:
                rework = True
                continue
            if not deviations:
                return
            # a process value outside its window: the lot goes on hold with an NCR, reviewers decide
            self.deviations.extend(deviations)
            outcome = InspectionOutcome(inspection=f"PROC-{self.order.number}-{op.seq}-{run}",
                                        lot=self.order.lot_number, verdict=Verdict.failed,
                                        failed_characteristics=[d.split(" ", 1)[0] for d in deviations])
            await self._stage("nonconformance_review")
            ncr = await self._ncr(outcome, "process", description=f"process deviation in operation {op.seq} "
                                                                  f"({op.name}): " + "; ".join(deviations))
            await self._stage("production")
            if ncr.outcome == NcrAction.rework:
                rework = True
                continue
            if ncr.outcome == NcrAction.scrap:
                self.process_scrapped = True
            return

    async def _read_process(self, op: RoutingOperation, run: int, phase: str) -> list[str]:
        assert self.order is not None
        params = [p for p in op.process_data if p.when == phase]
        if not params:
            return []
        key = f"read:{op.seq}:{phase}"
        self.waits[key] = (f"equipment: {phase} values of operation {op.seq} from "
                           f"{', '.join(sorted({p.endpoint for p in params}))} (retried until it answers)")
        try:
            res = await workflow.execute_activity(
                "read_process", ReadProcessInput(work_order=self.order.number, seq=op.seq, run=run, phase=phase,
                                                 parameters=params),
                start_to_close_timeout=DEVICE_TIMEOUT, retry_policy=DEVICE_RETRY, result_type=ReadProcessResult,
            )
        except ActivityError as err:
            message = _message(err)
            self.last_error = f"operation {op.seq}: {phase} values: {message}"
            return [f"{','.join(p.name for p in params)} not read at the {phase} of operation {op.seq}: {message}"]
        finally:
            self.waits.pop(key, None)
        for v in res.values:
            if v.value is not None:
                self.process_values[f"{op.seq}.{v.parameter}.{phase}"] = v.value
        return res.deviations

    async def _sample(self, op: RoutingOperation, run: int, p: ProcessParameter) -> SampleProcessResult | None:
        assert self.order is not None and p.every_s is not None
        key = f"sample:{op.seq}:{p.name}"
        self.waits[key] = f"equipment: sampling {p.name} every {p.every_s:g} s from {p.endpoint} ({p.point})"
        total, heartbeat = sampling_timeouts(p.every_s, p.for_s)
        try:
            return await workflow.execute_activity(
                "sample_process", SampleProcessInput(work_order=self.order.number, seq=op.seq, run=run, parameter=p,
                                                     started_at=workflow.now()),
                start_to_close_timeout=total, heartbeat_timeout=heartbeat, retry_policy=DEVICE_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                result_type=SampleProcessResult,
            )
        except asyncio.CancelledError:
            return None  # the operation ended first: the curve stored so far is the curve
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                return None
            self.last_error = f"operation {op.seq}: sampling {p.name}: {_message(err)}"
            return SampleProcessResult(parameter=p.name, samples=0,
                                       deviation=f"{p.name} not sampled in operation {op.seq}: {_message(err)}")
        finally:
            self.waits.pop(key, None)

    async def _finish_process(self, op: RoutingOperation, run: int, report: OperationReport,
                              samplers: list[asyncio.Task[SampleProcessResult | None]]
                              ) -> tuple[OperationReport, list[str]]:
        """The operation is reported: stop sampling, take the end values, and add what the equipment said
        to the report's parameters (so the trace shows them beside the MES's)."""
        for t in samplers:
            if not t.done():
                t.cancel()
        results = [await t for t in samplers]
        deviations = await self._read_process(op, run, "end")
        extra: dict[str, float | int | str | bool] = {}
        for r in results:
            if r is None:
                continue
            if r.deviation:
                deviations.insert(0, r.deviation)
            extra[f"{r.parameter}.samples"] = r.samples
            if r.minimum is not None and r.maximum is not None:
                extra[f"{r.parameter}.min"], extra[f"{r.parameter}.max"] = r.minimum, r.maximum
                self.process_values[f"{op.seq}.{r.parameter}.min"] = r.minimum
                self.process_values[f"{op.seq}.{r.parameter}.max"] = r.maximum
        for k, v in self.process_values.items():
            seq, _, rest = k.partition(".")
            if seq == str(op.seq) and (rest.endswith((".start", ".end"))):
                extra[rest] = v
        return report.model_copy(update={"parameters": {**report.parameters, **extra}}), deviations


def _message(err: BaseException) -> str:
    cause = err.cause if isinstance(err, (ActivityError, ChildWorkflowError)) else None
    return str(cause or err)


def _field(err: BaseException) -> str | None:
    """The field a refused activity named (core.errors ... field=), if any."""
    cause = err.cause if isinstance(err, ActivityError) else None
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        field = cause.details[0].get("field")
        return str(field) if field else None
    return None

