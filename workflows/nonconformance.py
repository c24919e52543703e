"""NonconformanceWorkflow: one NCR, from opening (lot on hold) to its outcome, decided by reviewers.

Review states (NCRs opened since PATCH_REVIEW; older histories keep open -> mrb -> closed | dismissed):

    open --review--> qa_review --confirm--> mrb --rework|scrap|use_as_is|return_to_supplier--> disposition
    open --confirm--> mrb            open|qa_review --dismiss--> dismissed (lot released)
    disposition: the workflow carries the decision out (lot status, ERP write-off or purchase return), then
        use_as_is                   -> closed (the concession is on the lot)
        scrap, return_to_supplier   -> verification: a QA supervisor signs "verified" (destroyed / shipped back)
        rework                      -> verification: the lot's next inspection decides (passed: verified;
                                       failed, or another NCR on the lot: not effective); a QA supervisor may
                                       verify instead
    verification --verify--> closed

The work order is told by a signal once the disposition is carried out, so it moves on (rework, ship short)
while the verification of the physical follow-up goes on here.
"""

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
        NcrStateInput,
        NcrStatus,
        NonconformanceInput,
        NonconformanceResult,
        OpenNcrInput,
        ReinspectionInput,
        ReinspectionResult,
        ReviewerRole,
        Severity,
    )
    from activities.ncr_signals_models import ReleaseShipmentGatesInput
    from workflows.policies import DB_RETRY, DB_TIMEOUT, ERP_RETRY, ERP_TIMEOUT

# the review states, disposition and verification (see the module docstring)
PATCH_REVIEW = "ncr-review-states-v1"
# a reworked NCR is signalled when its lot's re-inspection is recorded (activities/ncr_signals.py), and checks at
# once; the poll every timing.ncr_reinspection_poll stays as the fallback
PATCH_VERIFY_SIGNAL = "ncr-verify-signal-v1"
# once the NCR no longer holds its lot, the work orders whose shipment it may hold are told to check their gate
PATCH_GATE_SIGNAL = "gate-signal-v1"
# a scrap of a lot with nothing left sends the ERP no write-off (ERPNext refuses a row of quantity 0)
PATCH_SCRAP_NOTHING_LEFT = "ncr-scrap-nothing-left-v1"
ESCALATE_TO = "quality_manager"

SUPERVISORS = {ReviewerRole.qa_supervisor, ReviewerRole.quality_manager}
# Who may decide what; the API and the validator below check the authenticated role, never a claimed one.
ALLOWED_ROLES: dict[NcrAction, set[ReviewerRole]] = {
    NcrAction.review: set(SUPERVISORS),
    NcrAction.confirm: set(SUPERVISORS),
    NcrAction.dismiss: set(SUPERVISORS),
    **{a: {ReviewerRole.mrb_production, ReviewerRole.mrb_engineering, ReviewerRole.quality_manager}
       for a in DISPOSITIONS},
    # a concession needs the whole board: production AND engineering each sign it
    NcrAction.use_as_is: {ReviewerRole.mrb_production, ReviewerRole.mrb_engineering},
    NcrAction.verify: set(SUPERVISORS),
}
CONCESSION_SIGNERS = {ReviewerRole.mrb_production.value, ReviewerRole.mrb_engineering.value}
ALLOWED_IN_STATE: dict[NcrState, set[NcrAction]] = {
    NcrState.open: {NcrAction.review, NcrAction.confirm, NcrAction.dismiss},
    NcrState.qa_review: {NcrAction.confirm, NcrAction.dismiss},
    NcrState.mrb: set(DISPOSITIONS),
    NcrState.disposition: set(),
    NcrState.verification: {NcrAction.verify},
    NcrState.closed: set(),
    NcrState.dismissed: set(),
}
REVIEW_ONLY = {NcrAction.review, NcrAction.verify}  # not known to NCRs opened before PATCH_REVIEW
ROLES_WAITED: dict[NcrState, list[str]] = {
    NcrState.open: sorted(r.value for r in SUPERVISORS),
    NcrState.qa_review: sorted(r.value for r in SUPERVISORS),
    NcrState.mrb: sorted(r.value for r in ALLOWED_ROLES[NcrAction.scrap]),
    NcrState.disposition: ["system"],
    NcrState.verification: sorted(r.value for r in SUPERVISORS),
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
        # use_as_is signatures accepted but not yet in `concession` (their handler waits for its first await): the
        # validator of a second update in the same activation sees them too
        self.signing: list[tuple[str, str]] = []
        # review states (PATCH_REVIEW)
        self.v2 = False
        self.severity: Severity | None = None
        self.effects_applied = False
        self.verified_by: str | None = None
        self.verification: str | None = None
        self.activity_wait: str | None = None
        self.reinspections = 0  # re-inspection signals received (PATCH_VERIFY_SIGNAL)

    @workflow.run
    async def run(self, inp: NonconformanceInput) -> NonconformanceResult:
        self.inp = inp
        self.v2 = workflow.patched(PATCH_REVIEW)
        if self.v2:
            self.severity = inp.severity
        await workflow.execute_activity(
            "open_ncr",
            OpenNcrInput(ncr=inp.ncr, work_order=inp.work_order, lot=inp.lot, inspection=inp.inspection,
                         description=inp.description,
                         severity=inp.severity if self.v2 else None,
                         timing={s: inp.timing.for_severity(s) for s in Severity} if self.v2 else {}),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
        self.opened = True
        if self.v2:
            return await self._run_review(inp)
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

    # --- review states (PATCH_REVIEW) ------------------------------------------------------------------

    async def _run_review(self, inp: NonconformanceInput) -> NonconformanceResult:
        await self._notices(inp)
        await workflow.wait_condition(lambda: self.outcome is not None)
        outcome = self.outcome
        assert outcome is not None
        # disposition: carry it out (the deciding update waits for this, so its answer shows the effect)
        applied = await self._db("apply_disposition", ApplyDispositionInput(ncr=inp.ncr, lot=inp.lot, outcome=outcome))
        if outcome == NcrAction.use_as_is:
            self.state = NcrState.closed
        elif outcome != NcrAction.dismiss:
            self.state = NcrState.disposition if outcome in (NcrAction.scrap, NcrAction.return_to_supplier) \
                else NcrState.verification
        self.effects_applied = True
        if outcome in (NcrAction.scrap, NcrAction.return_to_supplier) and applied:
            self.activity_wait = "ERP: " + ("scrap write-off" if outcome == NcrAction.scrap else "purchase return") \
                                 + " (retried until the ERP answers)"
            try:
                await self._tell_erp(inp, applied)
            finally:
                self.activity_wait = None
            self.state = NcrState.verification
        if self.state != NcrState.dismissed:
            await self._db("set_ncr_state", NcrStateInput(
                ncr=inp.ncr, state=self.state,
                note="use as is: released under concession" if outcome == NcrAction.use_as_is
                else f"{outcome.value} carried out"))
        if workflow.patched(PATCH_GATE_SIGNAL):
            # dismissed, closed, or carried out and waiting only for its verification: no longer holding the lot
            await self._db("release_shipment_gates", ReleaseShipmentGatesInput(ncr=inp.ncr, lot=inp.lot),
                           result_type=list[str])
        result = NonconformanceResult(ncr=inp.ncr, lot=inp.lot, outcome=outcome,
                                      rework_operation=self.rework_operation)
        parent = workflow.info().parent
        if inp.notify_parent and parent is not None:
            # the work order goes on now; the verification of the physical follow-up continues here
            await workflow.get_external_workflow_handle(parent.workflow_id).signal(inp.notify_parent, result)
        if self.state == NcrState.verification:
            await self._verify(inp)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _notices(self, inp: NonconformanceInput) -> None:
        """Reminder, then escalation to the quality manager, after the NCR's severity's durations; a
        reclassification re-times what is not sent yet (from the same start)."""
        start = workflow.now()
        sent: set[str] = set()
        while self.outcome is None:
            assert self.severity is not None
            t = inp.timing.for_severity(self.severity)
            due = sorted((after, n) for after, n in ((t.reminder_after, "reminder"), (t.escalate_after, "escalation"))
                         if n not in sent)
            if not due:
                return
            after, notice = due[0]
            remaining = (start + after - workflow.now()).total_seconds()
            if remaining > 0:
                severity = self.severity
                try:
                    await workflow.wait_condition(lambda s=severity: self.outcome is not None or self.severity != s,
                                                  timeout=timedelta(seconds=remaining))
                except TimeoutError:
                    pass
                continue
            await self._db("record_ncr_notice", NcrNoticeInput(
                ncr=inp.ncr, notice=notice, to_role=ESCALATE_TO if notice == "escalation" else None))
            sent.add(notice)
            if notice == "reminder":
                self.reminded = True
            else:
                self.escalated = True

    async def _verify(self, inp: NonconformanceInput) -> None:
        """Scrap and returns wait for a QA supervisor's signed verification; a rework for the lot's next
        inspection (looked up when its verdict is signalled, and every `ncr_reinspection_poll`), or a
        supervisor's verification."""
        if self.outcome != NcrAction.rework:
            await workflow.wait_condition(lambda: self.verified_by is not None)
            return
        signalled = workflow.patched(PATCH_VERIFY_SIGNAL)
        while self.verified_by is None:
            seen = self.reinspections  # before the look-up: a signal during it makes the wait below return at once
            res = await self._db("check_reinspection", ReinspectionInput(ncr=inp.ncr, lot=inp.lot),
                                 result_type=ReinspectionResult)
            assert isinstance(res, ReinspectionResult)
            if self.verified_by is not None:
                return
            if res.verdict == "passed":
                self.verification, note = "verified", f"re-inspection {res.inspection} passed"
            elif res.verdict == "failed" or res.later_ncr:
                self.verification = "not_effective"
                note = (f"re-inspection {res.inspection} failed" if res.verdict == "failed"
                        else f"a later NCR {res.later_ncr} on the lot") + ": the rework did not remove the defect"
            else:
                try:
                    await workflow.wait_condition(
                        lambda n=seen: self.verified_by is not None or (signalled and self.reinspections != n),
                        timeout=inp.timing.ncr_reinspection_poll)
                except TimeoutError:
                    pass
                continue
            self.verified_by = res.inspection or res.later_ncr
            self.state = NcrState.closed
            await self._db("set_ncr_state", NcrStateInput(ncr=inp.ncr, state=NcrState.closed, note=note,
                                                          verification=self.verification))
            return

    async def _db(self, activity: str, arg: object, result_type: type | None = None) -> object:
        return await workflow.execute_activity(activity, arg, start_to_close_timeout=DB_TIMEOUT,
                                               retry_policy=DB_RETRY, result_type=result_type)

    # ---------------------------------------------------------------------------------------------------

    async def _tell_erp(self, inp: NonconformanceInput, lot: dict) -> None:
        """Scrap is written off in the ERP; a return to the supplier becomes a purchase return.

        The quantity is what the hub took off the lot (`written_off`: what was left of it), not the lot's quantity
        as made or received. A disposition answered before that key existed (a replayed history) keeps the lot's
        quantity. A scrap of a lot with nothing left sends nothing (ERPNext refuses a row of quantity 0); a return
        of one sends the lot's quantity, as the hub's supplier return records it."""
        qty = lot["quantity"]
        if "written_off" in lot:
            gone = float(lot["written_off"] or 0)
            if self.outcome == NcrAction.scrap and gone <= 0 and workflow.patched(PATCH_SCRAP_NOTHING_LEFT):
                workflow.logger.info("NCR %s: scrap of lot %s with nothing left: no ERP write-off", inp.ncr,
                                     lot["lot"])
                return
            qty = gone or lot["quantity"]
        item = {"item_code": lot["item"], "batch_no": lot["lot"], "qty": qty, "uom": lot["uom"]}
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

    @workflow.signal
    def reinspected(self, inspection: str) -> None:
        """An inspection of the NCR's lot got its verdict (sent by the activity that records it): a rework waiting
        for its re-inspection looks now. Ignored by NCRs in verification since before PATCH_VERIFY_SIGNAL."""
        self.reinspections += 1

    @workflow.signal
    def reclassify(self, severity: Severity) -> None:
        """The NCR's severity changed (PATCH /api/ncrs/{n}): reminders and escalation follow the new one."""
        if self.v2:
            self.severity = severity

    @workflow.update
    async def decide(self, d: NcrDecision) -> NcrStatus:
        """A reviewer's decision; the validator has already refused what is not allowed."""
        signing = (d.role.value, d.reviewer)
        if d.action == NcrAction.use_as_is:
            self.signing.append(signing)  # before the first await: see _validate_decide
        # an update can arrive in the workflow's very first activation, before run() has its input. Only then is
        # there anything to wait for: awaiting a condition already true still yields, and an update arriving in the
        # same activation would be validated against the state before this decision (two dispositions accepted)
        if self.inp is None:
            await workflow.wait_condition(lambda: self.inp is not None)
        if d.action == NcrAction.use_as_is:
            self.signing.remove(signing)
        assert self.inp is not None
        d = d.model_copy(update={"decision_id": f"{self.inp.ncr}-D{len(self.decisions) + 1}"})
        # change state before awaiting, so a concurrent update is validated against the new state
        concession_pending = False
        if d.action == NcrAction.review:
            new_state = NcrState.qa_review
        elif d.action == NcrAction.confirm:
            new_state = NcrState.mrb
        elif d.action == NcrAction.dismiss:
            new_state = NcrState.dismissed
        elif d.action == NcrAction.verify:
            new_state = NcrState.closed
            self.verified_by, self.verification = d.reviewer, "verified"
        elif d.action == NcrAction.use_as_is and workflow.patched("mrb-two-signatures"):
            self.concession[d.role.value] = d.reviewer
            concession_pending = not CONCESSION_SIGNERS <= set(self.concession)
            new_state = NcrState.mrb if concession_pending else NcrState.disposition if self.v2 else NcrState.closed
        else:
            new_state = NcrState.disposition if self.v2 else NcrState.closed
        if d.action != NcrAction.use_as_is:
            self.concession.clear()  # another disposition replaces a concession still waiting for its second signer
        self.state = new_state
        self.decisions.append(d)
        await workflow.wait_condition(lambda: self.opened)
        await workflow.execute_activity(
            "record_ncr_decision", NcrDecisionInput(ncr=self.inp.ncr, decision=d, new_state=new_state),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
        if d.action not in (NcrAction.confirm, NcrAction.review, NcrAction.verify) and not concession_pending:
            self.rework_operation = d.rework_operation
            self.outcome = d.action
            if self.v2:  # answer once the decision is carried out in the database (not the ERP: it may be down)
                await workflow.wait_condition(lambda: self.effects_applied)
        return self.status()

    @decide.validator
    def _validate_decide(self, d: NcrDecision) -> None:
        ncr = self.inp.ncr if self.inp else "this NCR"
        if not d.reason.strip():
            raise ApplicationError(f"{ncr}: reason is required: say why you decide {d.action.value}",
                                   type="InvalidInput")
        if d.action in REVIEW_ONLY and not self.v2:
            raise ApplicationError(f"{ncr} was opened before the review states: {d.action.value} is not "
                                   "available; confirm, dismiss or decide a disposition", type="Conflict")
        allowed = ALLOWED_IN_STATE[self.state]
        if not self.v2:
            allowed = allowed - REVIEW_ONLY
        if d.action not in allowed:
            hint = f"allowed now: {', '.join(sorted(a.value for a in allowed))}" if allowed else (
                "it is being carried out; wait for verification" if self.state == NcrState.disposition
                else "it is decided")
            raise ApplicationError(f"{ncr} is {self.state.value}: {d.action.value} is not allowed ({hint})",
                                   type="Conflict")
        if d.role not in ALLOWED_ROLES[d.action]:
            roles = ", ".join(sorted(r.value for r in ALLOWED_ROLES[d.action]))
            raise ApplicationError(
                f"{ncr}: role {d.role.value} may not {d.action.value}; it needs one of: {roles}", type="Forbidden"
            )
        confirmer = self._confirmer()
        if d.action in DISPOSITIONS and confirmer is not None and d.reviewer == confirmer:
            # four eyes: the person who confirmed the NCR into review does not also decide what happens to the
            # material, even when one login holds a review and a board role (a quality manager holds both)
            roles = ", ".join(sorted(r.value for r in ALLOWED_ROLES[d.action]))
            raise ApplicationError(
                f"{ncr}: {d.reviewer} confirmed this NCR, so its disposition ({d.action.value}) must come from "
                f"another member of the review board ({roles}): one person may not both confirm and dispose",
                type="Conflict")
        if d.action == NcrAction.use_as_is:
            signed = {**self.concession, **dict(self.signing)}  # role -> reviewer
            missing = sorted(CONCESSION_SIGNERS - set(signed))
            # the two-person rule: the board's two signatures come from two people, even when one login holds
            # both MRB roles
            first = next((role for role, who in signed.items() if who == d.reviewer), None)
            if first is not None:
                raise ApplicationError(
                    f"{ncr}: {d.reviewer} already signed use_as_is as {first}; the concession still needs the "
                    f"signature of {', '.join(missing)}, and a second person must give it (one person may not "
                    "sign for both production and engineering)", type="Conflict")
            if d.role.value in signed:
                raise ApplicationError(
                    f"{ncr}: use_as_is is already signed for {d.role.value} by {signed[d.role.value]}; "
                    f"it needs the signature of {', '.join(missing)}", type="Conflict")
        if d.action == NcrAction.return_to_supplier and self.inp and self.inp.stage != "iqc":
            raise ApplicationError(f"{ncr}: return_to_supplier is only for received material (IQC NCRs)",
                                   type="Conflict")
        if d.action == NcrAction.rework and self.inp and self.inp.stage == "iqc":
            raise ApplicationError(f"{ncr}: received material cannot be reworked here; choose "
                                   "use_as_is, scrap or return_to_supplier", type="Conflict")

    def _confirmer(self) -> str | None:
        """Who confirmed the NCR into the review board (the latest confirm), if anyone has."""
        return next((x.reviewer for x in reversed(self.decisions) if x.action == NcrAction.confirm), None)

    @workflow.query
    def status(self) -> NcrStatus:
        waiting = None
        roles = ROLES_WAITED.get(self.state, [])
        if self.state == NcrState.open:
            waiting = "QA supervisor: " + ("review, confirm or dismiss" if self.v2 else "confirm or dismiss")
        elif self.state == NcrState.qa_review:
            waiting = "QA supervisor: confirm into MRB or dismiss"
        elif self.state == NcrState.mrb and self.concession:
            missing = sorted(CONCESSION_SIGNERS - set(self.concession))
            waiting = (f"material review board: use_as_is needs the signature of {', '.join(missing)} too, "
                       f"from another person than {', '.join(sorted(set(self.concession.values())))}")
            roles = missing
        elif self.state == NcrState.mrb:
            waiting = "material review board: disposition (rework, scrap, use_as_is" + (
                ", return_to_supplier)" if self.inp and self.inp.stage == "iqc" else ")")
            confirmer = self._confirmer()
            if confirmer is not None:
                waiting += f", by another person than {confirmer}, who confirmed it"
        elif self.state == NcrState.disposition:
            waiting = self.activity_wait or f"system: carrying out {self.outcome.value if self.outcome else ''}"
        elif self.state == NcrState.verification and self.outcome == NcrAction.rework:
            waiting = "inspector: re-inspection of the reworked lot (or a QA supervisor verifies)"
            roles = ["inspector", *roles]
        elif self.state == NcrState.verification:
            what = "scrapped material destroyed" if self.outcome == NcrAction.scrap else "material shipped back"
            waiting = f"QA supervisor: verify {what} (signed)"
        return NcrStatus(
            ncr=self.inp.ncr if self.inp else "", lot=self.inp.lot if self.inp else "", state=self.state,
            waiting_for=waiting, disposition=self.outcome, decisions=self.decisions, reminded=self.reminded,
            escalated=self.escalated, severity=self.severity, waiting_on=roles if waiting else [],
            escalated_to=ESCALATE_TO if self.escalated and self.v2 else None, verification=self.verification,
        )
