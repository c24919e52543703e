"""NonconformanceWorkflow: one NCR, from opening (lot on hold) to its outcome, decided by reviewers."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.models import (
        DISPOSITIONS,
        ApplyDispositionInput,
        ErpNotice,
        NcrAction,
        NcrDecision,
        NcrDecisionInput,
        NcrNoticeInput,
        NcrState,
        NcrStatus,
        NonconformanceInput,
        NonconformanceResult,
        OpenNcrInput,
        ReviewerRole,
    )
    from workflows.policies import DB_RETRY, DB_TIMEOUT, ERP_RETRY, ERP_TIMEOUT

# Who may decide what (the spine's rules; signatures and two-person MRB come with the quality issue).
ALLOWED_ROLES: dict[NcrAction, set[ReviewerRole]] = {
    NcrAction.confirm: {ReviewerRole.qa_supervisor, ReviewerRole.quality_manager},
    NcrAction.dismiss: {ReviewerRole.qa_supervisor, ReviewerRole.quality_manager},
    **{a: {ReviewerRole.mrb_production, ReviewerRole.mrb_engineering, ReviewerRole.quality_manager}
       for a in DISPOSITIONS},
    # a concession needs the whole board: production AND engineering each sign it
    NcrAction.use_as_is: {ReviewerRole.mrb_production, ReviewerRole.mrb_engineering},
}
CONCESSION_SIGNERS = {ReviewerRole.mrb_production.value, ReviewerRole.mrb_engineering.value}
ALLOWED_IN_STATE: dict[NcrState, set[NcrAction]] = {
    NcrState.open: {NcrAction.confirm, NcrAction.dismiss},
    NcrState.mrb: set(DISPOSITIONS),
    NcrState.closed: set(),
    NcrState.dismissed: set(),
}


@workflow.defn
class NonconformanceWorkflow:
    def __init__(self) -> None:
        self.inp: NonconformanceInput | None = None
        self.state = NcrState.open
        self.decisions: list[NcrDecision] = []
        self.outcome: NcrAction | None = None
        self.rework_operation: int | None = None
        self.reminded = False
        self.escalated = False
        self.opened = False
        self.concession: dict[str, str] = {}  # role -> reviewer who signed use_as_is so far

    @workflow.run
    async def run(self, inp: NonconformanceInput) -> NonconformanceResult:
        self.inp = inp
        await workflow.execute_activity(
            "open_ncr",
            OpenNcrInput(ncr=inp.ncr, work_order=inp.work_order, lot=inp.lot, inspection=inp.inspection,
                         description=inp.description),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
        self.opened = True
        start = workflow.now()
        notices = sorted(
            [(inp.timing.ncr_reminder_after, "reminder"), (inp.timing.ncr_escalate_after, "escalation")]
        )
        for after, notice in notices:
            remaining = (start + after - workflow.now()).total_seconds()
            if remaining > 0 and await self._wait_decided(timedelta(seconds=remaining)):
                break
            if self.outcome is not None:
                break
            await workflow.execute_activity(
                "record_ncr_notice", NcrNoticeInput(ncr=inp.ncr, notice=notice),
                start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            )
            if notice == "reminder":
                self.reminded = True
            else:
                self.escalated = True
        await workflow.wait_condition(lambda: self.outcome is not None)
        await workflow.wait_condition(workflow.all_handlers_finished)
        assert self.outcome is not None
        applied = await workflow.execute_activity(
            "apply_disposition", ApplyDispositionInput(ncr=inp.ncr, lot=inp.lot, outcome=self.outcome),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
        if self.outcome in (NcrAction.scrap, NcrAction.return_to_supplier) and applied \
                and workflow.patched("ncr-erp-notices"):
            await self._tell_erp(inp, applied)
        return NonconformanceResult(ncr=inp.ncr, lot=inp.lot, outcome=self.outcome,
                                    rework_operation=self.rework_operation)

    async def _tell_erp(self, inp: NonconformanceInput, lot: dict) -> None:
        """Scrap is written off in the ERP; a return to the supplier becomes a purchase return."""
        item = {"item_code": lot["item"], "batch_no": lot["lot"], "qty": lot["quantity"], "uom": lot["uom"]}
        if self.outcome == NcrAction.scrap:
            notice = ErpNotice(doctype="Stock Entry", name=f"{inp.ncr}-SCRAP",
                               doc={"stock_entry_type": "Material Issue", "purpose": "scrap", "remarks": inp.ncr,
                                    "items": [item]})
        else:
            notice = ErpNotice(doctype="Purchase Receipt", name=f"{inp.ncr}-RETURN",
                               doc={"is_return": 1, "return_against": lot.get("receipt"),
                                    "supplier": lot.get("supplier"), "remarks": inp.ncr,
                                    "items": [{**item, "qty": -abs(item["qty"])}]})
        await workflow.execute_activity("notify_erp", notice, start_to_close_timeout=ERP_TIMEOUT,
                                        retry_policy=ERP_RETRY)

    async def _wait_decided(self, timeout: timedelta) -> bool:
        try:
            await workflow.wait_condition(lambda: self.outcome is not None, timeout=timeout)
            return True
        except TimeoutError:
            return False

    @workflow.update
    async def decide(self, d: NcrDecision) -> NcrStatus:
        """A reviewer's decision; the validator has already refused what is not allowed."""
        # an update can arrive in the workflow's very first activation, before run() has its input
        await workflow.wait_condition(lambda: self.inp is not None)
        assert self.inp is not None
        d = d.model_copy(update={"decision_id": f"{self.inp.ncr}-D{len(self.decisions) + 1}"})
        # change state before awaiting, so a concurrent update is validated against the new state
        concession_pending = False
        if d.action == NcrAction.confirm:
            new_state = NcrState.mrb
        elif d.action == NcrAction.dismiss:
            new_state = NcrState.dismissed
        elif d.action == NcrAction.use_as_is and workflow.patched("mrb-two-signatures"):
            self.concession[d.role.value] = d.reviewer
            concession_pending = not CONCESSION_SIGNERS <= set(self.concession)
            new_state = NcrState.mrb if concession_pending else NcrState.closed
        else:
            new_state = NcrState.closed
        if d.action != NcrAction.use_as_is:
            self.concession.clear()  # another disposition replaces a concession still waiting for its second signer
        self.state = new_state
        self.decisions.append(d)
        await workflow.wait_condition(lambda: self.opened)
        await workflow.execute_activity(
            "record_ncr_decision", NcrDecisionInput(ncr=self.inp.ncr, decision=d, new_state=new_state),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
        if d.action != NcrAction.confirm and not concession_pending:
            self.rework_operation = d.rework_operation
            self.outcome = d.action
        return self.status()

    @decide.validator
    def _validate_decide(self, d: NcrDecision) -> None:
        ncr = self.inp.ncr if self.inp else "this NCR"
        if not d.reason.strip():
            raise ApplicationError(f"{ncr}: reason is required: say why you decide {d.action.value}",
                                   type="InvalidInput")
        allowed = ALLOWED_IN_STATE[self.state]
        if d.action not in allowed:
            hint = f"allowed now: {', '.join(sorted(a.value for a in allowed))}" if allowed else "it is decided"
            raise ApplicationError(f"{ncr} is {self.state.value}: {d.action.value} is not allowed ({hint})",
                                   type="Conflict")
        if d.role not in ALLOWED_ROLES[d.action]:
            roles = ", ".join(sorted(r.value for r in ALLOWED_ROLES[d.action]))
            raise ApplicationError(
                f"{ncr}: role {d.role.value} may not {d.action.value}; it needs one of: {roles}", type="Forbidden"
            )
        if d.action == NcrAction.use_as_is and d.role.value in self.concession:
            missing = sorted(CONCESSION_SIGNERS - set(self.concession))
            raise ApplicationError(
                f"{ncr}: use_as_is is already signed for {d.role.value} by {self.concession[d.role.value]}; "
                f"it needs the signature of {', '.join(missing)}", type="Conflict")
        if d.action == NcrAction.return_to_supplier and self.inp and self.inp.stage != "iqc":
            raise ApplicationError(f"{ncr}: return_to_supplier is only for received material (IQC NCRs)",
                                   type="Conflict")
        if d.action == NcrAction.rework and self.inp and self.inp.stage == "iqc":
            raise ApplicationError(f"{ncr}: received material cannot be reworked here; choose "
                                   "use_as_is, scrap or return_to_supplier", type="Conflict")

    @workflow.query
    def status(self) -> NcrStatus:
        waiting = None
        if self.state == NcrState.open:
            waiting = "QA supervisor: confirm or dismiss"
        elif self.state == NcrState.mrb and self.concession:
            missing = sorted(CONCESSION_SIGNERS - set(self.concession))
            waiting = f"material review board: use_as_is needs the signature of {', '.join(missing)} too"
        elif self.state == NcrState.mrb:
            waiting = "material review board: disposition (rework, scrap, use_as_is" + (
                ", return_to_supplier)" if self.inp and self.inp.stage == "iqc" else ")")
        return NcrStatus(
            ncr=self.inp.ncr if self.inp else "", lot=self.inp.lot if self.inp else "", state=self.state,
            waiting_for=waiting, disposition=self.outcome, decisions=self.decisions, reminded=self.reminded,
            escalated=self.escalated,
        )
