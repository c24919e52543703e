"""RecallWorkflow: from a suspect lot, heat, or equipment window to holds, ERP blocks, customer notices, report.

Workflow id `recall-<number>`: a second start of the same recall is refused, never doubled. Customers'
acknowledgements and reviewers' release/reject decisions arrive as updates with validators, so a refused
one leaves no history and the caller gets the reason.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.models import ErpNotice, ReviewerRole
    from activities.recall_models import (
        RecallAck,
        RecallAckInput,
        RecallDecisionInput,
        RecallInput,
        RecallLotDecision,
        RecallLotLine,
        RecallLotRef,
        RecallRef,
        RecallResult,
        RecallScope,
        RecallStatus,
    )
    from workflows.policies import DB_RETRY, DB_TIMEOUT, ERP_RETRY, ERP_TIMEOUT

# Who may release or reject recalled stock.
DECIDERS = {ReviewerRole.qa_supervisor, ReviewerRole.quality_manager}


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

    @workflow.run
    async def run(self, inp: RecallInput) -> RecallResult:
        self.inp = inp
        ref = RecallRef(number=inp.number)
        self.scope = await workflow.execute_activity(
            "open_recall", inp, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=RecallScope)
        self.stage = "holding"
        self.held = await workflow.execute_activity(
            "hold_recall_lots", ref, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            result_type=list[RecallLotLine])
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
        self.stage = "notifying"
        await workflow.wait_condition(self._done)
        await workflow.wait_condition(workflow.all_handlers_finished)
        result = await workflow.execute_activity(
            "close_recall", ref, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=RecallResult)
        self.stage = "closed"
        return result

    def _customers(self) -> list[str]:
        return [c.customer for c in self.scope.customers] if self.scope else []

    def _done(self) -> bool:
        return set(self._customers()) <= self.acked and all(h.lot in self.decided for h in self.held)

    @workflow.update
    async def acknowledge(self, ack: RecallAck) -> RecallStatus:
        """A customer acknowledged the recall notification."""
        assert self.inp is not None
        self.acked.add(ack.customer)
        await workflow.execute_activity(
            "acknowledge_recall", RecallAckInput(number=self.inp.number, ack=ack),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY)
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
        if ack.customer in self.acked:
            raise ApplicationError(f"{number}: {ack.customer} has already acknowledged", type="Conflict")

    @workflow.update
    async def decide(self, d: RecallLotDecision) -> RecallStatus:
        """A reviewer releases or rejects a held lot."""
        assert self.inp is not None
        self.decided[d.lot] = d.decision.value
        await workflow.execute_activity(
            "decide_recall_lot", RecallDecisionInput(number=self.inp.number, decision=d),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY)
        return self.status()

    @decide.validator
    def _validate_decide(self, d: RecallLotDecision) -> None:
        number = self.inp.number if self.inp else "this recall"
        if not d.reason.strip():
            raise ApplicationError(f"{number}: reason is required: say why you {d.decision.value} lot {d.lot}",
                                   type="InvalidInput")
        if d.role not in DECIDERS:
            roles = ", ".join(sorted(r.value for r in DECIDERS))
            raise ApplicationError(f"{number}: role {d.role.value} may not {d.decision.value} recalled stock; it "
                                   f"needs one of: {roles}", type="Forbidden")
        if self.stage in ("scoping", "holding"):
            raise ApplicationError(f"{number} is still putting stock on hold: decide once it is held",
                                   type="Conflict")
        if d.lot not in {h.lot for h in self.held}:
            raise ApplicationError(f"{number}: lot {d.lot!r} is not held by this recall", type="NotFound")
        if d.lot in self.decided:
            raise ApplicationError(f"{number}: lot {d.lot} is already decided ({self.decided[d.lot]})",
                                   type="Conflict")

    @workflow.query
    def status(self) -> RecallStatus:
        waiting = []
        if self.activity_wait:
            waiting.append(self.activity_wait)
        if self.stage == "notifying":
            waiting += [f"customer: acknowledgement from {c}" for c in self._customers() if c not in self.acked]
            waiting += [f"reviewer: release or reject held lot {h.lot}" for h in self.held if h.lot not in self.decided]
        return RecallStatus(
            number=self.inp.number if self.inp else "", stage=self.stage, waiting_for=waiting,
            held=[h.lot for h in self.held], decided=dict(self.decided), customers=self._customers(),
            acknowledged=sorted(self.acked),
        )
