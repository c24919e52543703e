"""RecallWorkflow: from a suspect lot, heat, or equipment window to holds, ERP blocks, customer notices, report.

Workflow id `recall-<number>`: a second start of the same recall is refused, never doubled. Customers'
acknowledgements and reviewers' release/reject decisions arrive as updates with validators, so a refused
one leaves no history and the caller gets the reason.

Since PATCH_ERP_RELEASE a decision is carried to the ERP: a release that lifts the last recall hold on the lot sends
the unblock (the `Batch Hold` document again, hold: 0), a reject writes off what was left (the `Material Issue`
Stock Entry an NCR's scrap sends). Both are named after the recall and the lot, so a retry is done once.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.models import ErpNotice, ReviewerRole
    from activities.recall_models import (
        RecallAck,
        RecallAckInput,
        RecallContainerDecision,
        RecallContainerDecisionInput,
        RecallContainerEffect,
        RecallContainerLine,
        RecallDecisionEffect,
        RecallDecisionInput,
        RecallInput,
        RecallLotDecision,
        RecallLotLine,
        RecallLotRef,
        RecallReackInput,
        RecallReackResult,
        RecallRef,
        RecallResult,
        RecallScope,
        RecallStatus,
        ReviewerDecision,
    )
    from workflows.policies import DB_RETRY, DB_TIMEOUT, ERP_RETRY, ERP_TIMEOUT

# Who may release or reject recalled stock.
DECIDERS = {ReviewerRole.qa_supervisor, ReviewerRole.quality_manager}
# decisions tell the ERP: unblock on a release that lifts the last recall hold, write-off on a reject
PATCH_ERP_RELEASE = "recall-erp-release-v1"
# the hold re-reads each lot: the customers of what shipped between the scope and the hold are notified and waited for
PATCH_LATE_SHIP = "recall-late-ship-v1"
# held cases and pallets that no lot decision can release (their lots had shipped, were used up or were rejected)
# take a reviewer's decision of their own, and the recall waits for it
PATCH_CONTAINER_DECISION = "recall-container-decision-v1"
# a customer who acknowledged while the recall was holding, and whose notice the hold then added shipments to, is
# asked again (the earlier acknowledgement is kept in the record), and the recall waits for the new one
PATCH_REACK = "recall-reack-v1"


def workflow_id(number: str) -> str:
    return f"recall-{number}"


@workflow.defn
class RecallWorkflow:
    def __init__(self) -> None:
        self.inp: RecallInput | None = None
        self.stage = "scoping"
        self.scope: RecallScope | None = None
        self.held: list[RecallLotLine] = []
        self.decided: dict[str, str] = {}
        self.acked: set[str] = set()
        self.activity_wait: str | None = None
        self.still_held_by: dict[str, list[str]] = {}
        # ERP notices started by decisions, by lot (what status says it waits for), and their activities
        self.erp_waits: dict[str, str] = {}
        self.erp_notices: list[workflow.ActivityHandle[None]] = []
        # customers added by the hold (shipped between the scope and the hold; PATCH_LATE_SHIP)
        self.late_customers: list[str] = []
        # the cases and pallets held (PATCH_CONTAINER_DECISION; None: a recall started before it, boxes unknown)
        self.boxes: list[RecallContainerLine] | None = None
        self.box_decided: dict[str, str] = {}
        # acknowledgements whose activity is running, customers being asked again, and how often each was (PATCH_REACK)
        self.acking: set[str] = set()
        self.reopening: set[str] = set()
        self.reopened: dict[str, int] = {}

    @workflow.run
    async def run(self, inp: RecallInput) -> RecallResult:
        self.inp = inp
        ref = RecallRef(number=inp.number)
        self.scope = await workflow.execute_activity(
            "open_recall", inp, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=RecallScope)
        self.stage = "holding"
        lines = await workflow.execute_activity(
            "hold_recall_lots", ref, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            result_type=list[RecallLotLine])
        # the held lines (the activity also lists the lots that left between the scope and the hold; before
        # PATCH_LATE_SHIP it listed held lines only, so this filter replays as before)
        self.held = [line for line in lines if line.action == "held"]
        if workflow.patched(PATCH_LATE_SHIP):
            for line in lines:
                self.late_customers += [c for c in line.customers if c not in self.late_customers]
            # customers who acknowledged during the hold and whose notices it added shipments to: asked again
            # (only when there are any, so a recall without them records no marker)
            again = [c for c in dict.fromkeys(c for line in lines for c in line.customers) if c in self.acked]
            if again and workflow.patched(PATCH_REACK):
                await self._ask_again(inp.number, again)
        for line in self.held:
            self.activity_wait = f"ERP: block lot {line.lot} (retried until the ERP answers)"
            await workflow.execute_activity(
                "notify_erp",
                ErpNotice(doctype="Batch Hold", name=f"{inp.number}/{line.lot}",
                          doc={"batch_no": line.lot, "item_code": line.item, "hold": 1, "qty": line.quantity,
                               "recall": inp.number, "reason": inp.reason}),
                start_to_close_timeout=ERP_TIMEOUT, retry_policy=ERP_RETRY)
            await workflow.execute_activity(
                "mark_recall_erp_blocked", RecallLotRef(number=inp.number, lot=line.lot),
                start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY)
        self.activity_wait = None
        if workflow.patched(PATCH_CONTAINER_DECISION):
            self.boxes = await workflow.execute_activity(
                "recall_held_containers", ref, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
                result_type=list[RecallContainerLine])
        self.stage = "notifying"
        await workflow.wait_condition(self._done)
        await workflow.wait_condition(workflow.all_handlers_finished)
        # the ERP notices decisions started (PATCH_ERP_RELEASE) are done before the report: awaiting them adds no
        # command, and a notice that failed for good fails the recall here, as a failed block would
        for notice in self.erp_notices:
            await notice
        result = await workflow.execute_activity(
            "close_recall", ref, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=RecallResult)
        self.stage = "closed"
        return result

    async def _ask_again(self, number: str, customers: list[str]) -> None:
        """Set aside the acknowledgements recorded before the hold added shipments to these customers' notices and
        wait for new ones. An acknowledgement still being recorded finishes first, so the record decides which came
        first; meanwhile a new acknowledgement from them is refused (try again)."""
        self.reopening.update(customers)
        self.activity_wait = f"hub: asking {', '.join(customers)} to acknowledge again (shipments added to the notice)"
        await workflow.wait_condition(lambda: not self.acking.intersection(customers))
        result = await workflow.execute_activity(
            "reopen_recall_acknowledgements", RecallReackInput(number=number, customers=customers),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=RecallReackResult)
        for c in result.customers:
            self.acked.discard(c)
            self.reopened[c] = self.reopened.get(c, 0) + 1
        self.reopening.difference_update(customers)
        self.activity_wait = None

    def _customers(self) -> list[str]:
        scoped = [c.customer for c in self.scope.customers] if self.scope else []
        return scoped + [c for c in self.late_customers if c not in scoped]

    def _done(self) -> bool:
        return set(self._customers()) <= self.acked and all(h.lot in self.decided for h in self.held) \
            and not self._boxes_waiting()

    def _box_waits(self, box: RecallContainerLine) -> bool:
        """A held box waits for a decision on itself: not decided, its hold not ended, and no lot decision can end
        it (a lot inside is not held by this recall, or was rejected)."""
        if box.code in self.box_decided or box.released:
            return False
        held = {h.lot for h in self.held}
        return any(lot not in held or self.decided.get(lot) == "reject" for lot in box.lots)

    def _boxes_waiting(self) -> list[str]:
        return [b.code for b in self.boxes or [] if self._box_waits(b)]

    @workflow.update
    async def acknowledge(self, ack: RecallAck) -> RecallStatus:
        """A customer acknowledged the recall notification."""
        assert self.inp is not None
        self.acked.add(ack.customer)
        self.acking.add(ack.customer)  # (no command: what _ask_again waits for)
        try:
            await workflow.execute_activity(
                "acknowledge_recall", RecallAckInput(number=self.inp.number, ack=ack),
                start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY)
        finally:
            self.acking.discard(ack.customer)
        return self.status()

    @acknowledge.validator
    def _validate_ack(self, ack: RecallAck) -> None:
        number = self.inp.number if self.inp else "this recall"
        if self.scope is None:
            raise ApplicationError(f"{number} is still computing its scope: try again in a moment", type="Conflict")
        if ack.customer not in self._customers():
            names = ", ".join(self._customers()) or "none"
            raise ApplicationError(f"{number}: {ack.customer!r} received nothing in scope (customers: {names})",
                                   type="NotFound")
        if ack.customer in self.reopening:
            raise ApplicationError(f"{number}: {ack.customer}'s notice has gained shipments since its acknowledgement "
                                   "and is being reopened: acknowledge again in a moment", type="Conflict")
        if ack.customer in self.acked:
            raise ApplicationError(f"{number}: {ack.customer} has already acknowledged", type="Conflict")

    @workflow.update
    async def decide(self, d: RecallLotDecision) -> RecallStatus:
        """A reviewer releases or rejects a held lot."""
        assert self.inp is not None
        self.decided[d.lot] = d.decision.value
        arg = RecallDecisionInput(number=self.inp.number, decision=d)
        if not workflow.patched(PATCH_ERP_RELEASE):
            await workflow.execute_activity("decide_recall_lot", arg, start_to_close_timeout=DB_TIMEOUT,
                                            retry_policy=DB_RETRY)
            return self.status()
        effect = await workflow.execute_activity("decide_recall_lot", arg, start_to_close_timeout=DB_TIMEOUT,
                                                 retry_policy=DB_RETRY, result_type=RecallDecisionEffect)
        if effect.still_held_by:
            self.still_held_by[d.lot] = effect.still_held_by
        self._tell_erp(effect, d)
        return self.status()

    def _tell_erp(self, effect: RecallDecisionEffect, d: RecallLotDecision) -> None:
        """Start the ERP notice of a decision, if it has one; the answer does not wait for the ERP (which may be down
        for hours): status shows it until the ERP has it, and the recall closes only after."""
        assert self.inp is not None
        number = self.inp.number
        line = next((h for h in self.held if h.lot == d.lot), None)
        if effect.decision == "release" and effect.erp_unblock:
            what = "unblock"
            notice = ErpNotice(doctype="Batch Hold", name=f"{number}/{d.lot}-RELEASE",
                               doc={"batch_no": d.lot, "item_code": effect.item, "hold": 0,
                                    "qty": line.quantity if line else 0.0, "recall": number, "reason": d.reason})
        elif effect.decision == "reject" and effect.written_off > 0:
            what = "write off"
            notice = ErpNotice(doctype="Stock Entry", name=f"{number}/{d.lot}-SCRAP",
                               doc={"stock_entry_type": "Material Issue", "purpose": "scrap", "remarks": number,
                                    "recall": number, "items": [{"item_code": effect.item, "batch_no": d.lot,
                                                                 "qty": effect.written_off, "uom": effect.uom}]})
        else:
            return
        self.erp_waits[d.lot] = f"ERP: {what} lot {d.lot} (retried until the ERP answers)"
        handle = workflow.start_activity("notify_erp", notice, start_to_close_timeout=ERP_TIMEOUT,
                                         retry_policy=ERP_RETRY)
        handle.add_done_callback(lambda _, lot=d.lot: self.erp_waits.pop(lot, None))
        self.erp_notices.append(handle)

    def _check_reviewer(self, d: ReviewerDecision, what: str) -> str:
        """The checks every reviewer decision passes (a reason, a deciding role, the stock held); the number."""
        number = self.inp.number if self.inp else "this recall"
        if not d.reason.strip():
            raise ApplicationError(f"{number}: reason is required: say why you {d.decision.value} {what}",
                                   type="InvalidInput")
        if d.role not in DECIDERS:
            roles = ", ".join(sorted(r.value for r in DECIDERS))
            raise ApplicationError(f"{number}: role {d.role.value} may not {d.decision.value} recalled stock; it "
                                   f"needs one of: {roles}", type="Forbidden")
        if self.stage in ("scoping", "holding"):
            raise ApplicationError(f"{number} is still putting stock on hold: decide once it is held",
                                   type="Conflict")
        return number

    @decide.validator
    def _validate_decide(self, d: RecallLotDecision) -> None:
        number = self._check_reviewer(d, f"lot {d.lot}")
        if d.lot not in {h.lot for h in self.held}:
            raise ApplicationError(f"{number}: lot {d.lot!r} is not held by this recall", type="NotFound")
        if d.lot in self.decided:
            raise ApplicationError(f"{number}: lot {d.lot} is already decided ({self.decided[d.lot]})",
                                   type="Conflict")

    @workflow.update
    async def decide_container(self, d: RecallContainerDecision) -> RecallStatus:
        """A reviewer releases or rejects a held case or pallet (one that no lot decision can release)."""
        assert self.inp is not None
        self.box_decided[d.code] = d.decision.value  # at once: a second decision sent meanwhile is refused
        try:
            await workflow.execute_activity(
                "decide_recall_container", RecallContainerDecisionInput(number=self.inp.number, decision=d),
                start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=RecallContainerEffect)
        except Exception:
            # refused by the record (a recall started before boxes were listed here is checked only there)
            self.box_decided.pop(d.code, None)
            raise
        return self.status()

    @decide_container.validator
    def _validate_decide_container(self, d: RecallContainerDecision) -> None:
        number = self._check_reviewer(d, d.code)
        if d.code in self.box_decided:
            raise ApplicationError(f"{number}: {d.code} is already decided ({self.box_decided[d.code]})",
                                   type="Conflict")
        if self.boxes is None:
            return  # a recall started before boxes were listed: the activity checks the box against the record
        box = next((b for b in self.boxes if b.code == d.code), None)
        if box is None:
            held = ", ".join(b.code for b in self.boxes) or "none"
            raise ApplicationError(f"{number}: {d.code!r} is not a case or pallet held by this recall (held: {held})",
                                   type="NotFound")
        held = {h.lot for h in self.held}
        if box.released or all(lot in held and self.decided.get(lot) == "release" for lot in box.lots):
            raise ApplicationError(f"{number}: {box.level} {d.code} is no longer held: its lots' release ended the "
                                   "hold", type="Conflict")
        if d.decision.value == "release":
            undecided = sorted(lot for lot in box.lots if lot in held and lot not in self.decided)
            if undecided:
                raise ApplicationError(
                    f"{number}: {box.level} {d.code} holds units of lot {', '.join(undecided)}, still held: decide "
                    "the lot first (its release releases the box)", type="Conflict")
            rejected = sorted(lot for lot in box.lots if self.decided.get(lot) == "reject")
            if rejected:
                raise ApplicationError(
                    f"{number}: {box.level} {d.code} holds units of rejected lot {', '.join(rejected)}: it may not "
                    "be released; reject the box", type="Conflict")

    @workflow.query
    def status(self) -> RecallStatus:
        waiting = []
        if self.activity_wait:
            waiting.append(self.activity_wait)
        waiting += [self.erp_waits[lot] for lot in sorted(self.erp_waits)]
        if self.stage == "notifying":
            waiting += [f"customer: acknowledgement from {c}" for c in self._customers() if c not in self.acked]
            waiting += [f"reviewer: release or reject held lot {h.lot}" for h in self.held if h.lot not in self.decided]
            waiting += [f"reviewer: release or reject held {b.level} {b.code} (no lot decision releases it)"
                        for b in self.boxes or [] if self._box_waits(b)]
        return RecallStatus(
            number=self.inp.number if self.inp else "", stage=self.stage, waiting_for=waiting,
            held=[h.lot for h in self.held], decided=dict(self.decided), customers=self._customers(),
            acknowledged=sorted(self.acked), still_held_by=dict(self.still_held_by),
            containers=[b.code for b in self.boxes or []], containers_waiting=self._boxes_waiting(),
            container_decisions=dict(self.box_decided), acknowledgements_reopened=dict(self.reopened),
        )
