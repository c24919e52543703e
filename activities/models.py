"""Pydantic models that cross the workflow/activity boundary: the hub's wire contract.

Workflows import these (and nothing else of ours), the API validates payloads with them before
anything reaches Temporal, and activities hand their fields to the domain services.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from activities.models_connectors import MaterialSpec, ProcessParameter
from domain.gs1 import check_digit_problem

_CODE = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"


def _gtin_check_digit(value: str | None, info: ValidationInfo) -> str | None:
    """A GTIN from the ERP with a wrong check digit is refused where it enters (the API's 422 names the field, the
    ERP poll names the work order), before an item keeps it and its codes fail at issuance.

    Only in python mode, which is how the API and the ERP poll validate. Temporal decodes a running workflow's
    input and signals from JSON (`validate_json`): a work order accepted before this check must still replay."""
    if value is not None and info.mode == "python" and (problem := check_digit_problem(value)):
        raise ValueError(problem)
    return value


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- plans and measurements -----------------------------------------------------------------------


class Characteristic(Model):
    """One inspected characteristic: the system judges pass/fail from the limits."""

    name: str = Field(min_length=1, max_length=80, description="e.g. 'outer diameter', 'hardness'")
    nominal: float | None = Field(default=None, description="target value")
    lower: float | None = Field(default=None, description="lower spec limit (inclusive)")
    upper: float | None = Field(default=None, description="upper spec limit (inclusive)")
    unit: str = Field(default="", max_length=20)
    sample_size: int = Field(default=1, ge=1, le=10000, description="measurements expected")

    @model_validator(mode="after")
    def _limits(self) -> Characteristic:
        if self.lower is None and self.upper is None:
            raise ValueError(f"characteristic {self.name!r}: give a lower or an upper spec limit (or both)")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(
                f"characteristic {self.name!r}: lower limit {self.lower} is above upper limit {self.upper}"
            )
        return self


DEFAULT_IQC_PLAN = [Characteristic(name="hardness", nominal=30.0, lower=28.0, upper=32.0, unit="HRC")]
DEFAULT_FINAL_PLAN = [
    Characteristic(name="outer diameter", nominal=25.0, lower=24.95, upper=25.05, unit="mm", sample_size=3)
]


class MeasurementSource(Model):
    """Where a measured value came from: a gauge read through a connector endpoint."""

    endpoint: str
    point: str
    at: datetime = Field(description="when the gauge was read")
    unit: str | None = None
    index: int = Field(default=0, ge=0, description="the position of the read value in `values`")


class Measurement(Model):
    characteristic: str = Field(min_length=1, max_length=80)
    values: list[float] = Field(min_length=1, max_length=10000)
    source: MeasurementSource | None = Field(
        default=None, description="set by the hub when it read the value from a gauge (read-gauges)")


class InspectionResults(Model):
    """What an inspector or a gauge posts for one inspection."""

    inspector: str = Field(min_length=1, max_length=80, description="who measured (person or gauge id)")
    measurements: list[Measurement] = Field(min_length=1)
    inspected_at: datetime | None = None
    result_id: str | None = Field(
        default=None, max_length=80, description="caller's id for this submission (for safe re-sends)"
    )


class Verdict(StrEnum):
    passed = "passed"
    failed = "failed"


# --- ERP facts -------------------------------------------------------------------------------------


class ReceivedLot(Model):
    lot: str = Field(pattern=_CODE, description="the plant's lot (batch) number for this receipt line")
    supplier: str = Field(min_length=1, max_length=80)
    item: str = Field(pattern=_CODE)
    supplier_lot: str = Field(min_length=1, max_length=80)
    heat_number: str | None = Field(default=None, max_length=80, description="furnace melt, for metals")
    quantity: float = Field(gt=0)
    uom: str = Field(default="EA", max_length=10)
    certificate_ref: str | None = Field(default=None, max_length=200)
    location: str | None = Field(default=None, max_length=80)
    purchase_order: str | None = Field(default=None, max_length=80,
                                       description="our purchase order this line delivers, when the ERP names it")
    gtin: str | None = Field(default=None, pattern=r"^\d{14}$",
                             description="the item's GTIN-14 as the supplier labels it, when the ERP knows it: a "
                                         "supplier's EPCIS events for this lot then join it by trade item")

    _gtin = field_validator("gtin")(_gtin_check_digit)


class PurchaseReceipt(Model):
    receipt: str = Field(pattern=_CODE, description="ERP purchase receipt number, e.g. PR-77")
    lots: list[ReceivedLot] = Field(min_length=1)
    received_at: datetime | None = None
    iqc_plan: list[Characteristic] | None = None
    # who sent the receipt, the audit entry's actor: set by the hub (the API token or login, `webhook:<endpoint>`
    # for a signed webhook, `poll:<endpoint>` for the ERP poll), refused in a body. None in receipts signalled
    # before it was added (recorded as `erp`)
    sent_by: str | None = Field(default=None, max_length=120,
                                description="set by the hub from who sent the event; leave it out")


class RoutingOperation(Model):
    seq: int = Field(ge=1, le=9999)
    name: str = Field(min_length=1, max_length=80)
    equipment: str | None = Field(default=None, max_length=80, description="planned equipment")
    process_data: list[ProcessParameter] = Field(
        default_factory=list, description="process values recorded from the equipment's endpoints")


class ShipmentRequest(Model):
    shipment: str = Field(pattern=_CODE, description="ERP shipment / delivery number")
    sales_order: str = Field(pattern=_CODE)
    customer: str = Field(min_length=1, max_length=120)
    carrier: str | None = Field(default=None, max_length=80)
    tracking_number: str | None = Field(default=None, max_length=80)


class Severity(StrEnum):
    critical = "critical"
    major = "major"
    minor = "minor"


SEVERITY_RANK = {Severity.minor: 0, Severity.major: 1, Severity.critical: 2}


class NcrSeverityTiming(Model):
    reminder_after: timedelta
    escalate_after: timedelta
    due_after: timedelta


class Timing(Model):
    """Durations the tests shorten; production uses the defaults."""

    ncr_reminder_after: timedelta = timedelta(hours=8)
    ncr_escalate_after: timedelta = timedelta(hours=24)
    shipment_gate_recheck: timedelta = Field(
        default=timedelta(minutes=5), description="a held shipment checks its gate again this often (NCRs of "
                                                  "consumed lots are decided in other workflows)")
    ncr_due_after: timedelta = timedelta(days=7)
    ncr_severity: dict[Severity, NcrSeverityTiming] = Field(
        default_factory=dict,
        description="per NCR severity: reminder, escalation to the quality manager, due; the ERP route fills it "
                    "from the settings (HUB_NCR__...) when the event gives no timing; a severity missing here "
                    "uses ncr_reminder_after / ncr_escalate_after / ncr_due_after")
    ncr_reinspection_poll: timedelta = Field(
        default=timedelta(minutes=5), gt=timedelta(0),
        description="how often an NCR reworked looks for the re-inspection that verifies it")

    def for_severity(self, severity: Severity | str) -> NcrSeverityTiming:
        got = self.ncr_severity.get(Severity(severity))
        return got or NcrSeverityTiming(reminder_after=self.ncr_reminder_after,
                                        escalate_after=self.ncr_escalate_after, due_after=self.ncr_due_after)

    def with_defaults(self, table: dict[str, Any]) -> Timing:
        """The settings' per-severity table, unless the sender chose NCR durations itself."""
        chosen = {"ncr_severity", "ncr_reminder_after", "ncr_escalate_after", "ncr_due_after"}
        if chosen & self.model_fields_set:
            return self
        return self.model_copy(update={"ncr_severity": {Severity(k): NcrSeverityTiming.model_validate(v)
                                                        for k, v in table.items()}})


class WorkOrderInput(Model):
    number: str = Field(pattern=_CODE, description="ERP work order number, e.g. WO-1001")
    item: str = Field(pattern=_CODE, description="item code of what is made")
    item_name: str | None = Field(default=None, max_length=200)
    gtin: str | None = Field(default=None, pattern=r"^\d{14}$", description="GTIN-14 of the item")
    quantity: int = Field(gt=0, le=10_000_000)
    uom: str = Field(default="EA", max_length=10)
    line: str | None = Field(default=None, max_length=80)
    due_date: datetime | None = None
    routing: list[RoutingOperation] = Field(min_length=1)
    output_lot: str | None = Field(default=None, pattern=_CODE)
    receipts: list[PurchaseReceipt] = Field(default_factory=list)
    iqc_plan: list[Characteristic] = Field(default_factory=lambda: list(DEFAULT_IQC_PLAN))
    final_plan: list[Characteristic] = Field(default_factory=lambda: list(DEFAULT_FINAL_PLAN))
    shipment: ShipmentRequest | None = Field(
        default=None, description="ship against this sales order when ready; else wait for the ERP's request"
    )
    codes_child_threshold: int = Field(
        default=1_000_000, ge=1,
        description="orders above this many units issue their codes in a child workflow that reports progress")
    timing: Timing = Field(default_factory=Timing)
    material_specs: list[MaterialSpec] = Field(
        default_factory=list, description="materials whose supplier certificate is checked at intake")
    # who released it, the audit entry's actor (work_order.released): set by the hub as PurchaseReceipt.sent_by is
    released_by: str | None = Field(default=None, max_length=120,
                                    description="set by the hub from who sent the event; leave it out")

    _gtin = field_validator("gtin")(_gtin_check_digit)

    @field_validator("routing")
    @classmethod
    def _routing_unique(cls, v: list[RoutingOperation]) -> list[RoutingOperation]:
        seqs = [op.seq for op in v]
        if len(set(seqs)) != len(seqs):
            raise ValueError("routing: operation seq numbers must be unique")
        return sorted(v, key=lambda op: op.seq)

    @property
    def lot_number(self) -> str:
        return self.output_lot or f"{self.number}-L1"


def released_work_order(order: WorkOrderInput, ncr_table: dict[str, Any], *, sent_by: str | None = None
                        ) -> WorkOrderInput:
    """The work order's workflow input from a release, as every release path builds it (the webhook, POST
    /api/erp/events, and the ERP poll): the NCR durations per severity come from the settings' table
    (HUB_NCR__..., Settings.ncr.table()) unless the release chose its own (`Timing.with_defaults`). `sent_by`: who
    sent it (the audit trail's actor of the release and of its receipts' lots)."""
    update: dict[str, Any] = {"timing": order.timing.with_defaults(ncr_table)}
    if sent_by is not None:
        update["released_by"] = sent_by
        update["receipts"] = [r.model_copy(update={"sent_by": sent_by}) for r in order.receipts]
    return order.model_copy(update=update)


class ConsumedLot(Model):
    lot: str = Field(pattern=_CODE)
    quantity: float = Field(gt=0)


class OperationReport(Model):
    """An operation as it happened, from the MES or an operator."""

    report_id: str = Field(pattern=_CODE, description="the reporter's unique id for this report")
    seq: int = Field(ge=1, description="routing operation number")
    equipment: str = Field(min_length=1, max_length=80)
    operator: str = Field(min_length=1, max_length=80)
    shift: str | None = Field(default=None, max_length=40)
    started_at: datetime
    ended_at: datetime
    consumed: list[ConsumedLot] = Field(default_factory=list)
    parameters: dict[str, float | int | str | bool] = Field(default_factory=dict)
    good_quantity: int = Field(ge=0)
    scrap_quantity: int = Field(default=0, ge=0)
    # who sent the report, the audit entry's actor: set by the hub (the API's login or system token, "mes" for
    # the MES bridge), refused in a body; `operator`, who ran the operation, is data. None in reports signalled
    # before it was added (recorded as the placeholder actor)
    reported_by: str | None = Field(default=None, max_length=80,
                                    description="set by the hub from the login that sent the report; leave it out")

    @model_validator(mode="after")
    def _times(self) -> OperationReport:
        if self.started_at.tzinfo is None or self.ended_at.tzinfo is None:
            raise ValueError("started_at and ended_at need a UTC offset, e.g. 2026-01-05T08:00:00Z")
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at: swap or correct the times")
        return self


# --- nonconformance --------------------------------------------------------------------------------


class NcrAction(StrEnum):
    confirm = "confirm"
    dismiss = "dismiss"
    rework = "rework"
    scrap = "scrap"
    use_as_is = "use_as_is"
    return_to_supplier = "return_to_supplier"
    review = "review"  # a QA supervisor takes an open NCR into review (containment, analysis)
    verify = "verify"  # a QA supervisor verifies a disposition's physical follow-up (scrapped, shipped back)


DISPOSITIONS = {NcrAction.rework, NcrAction.scrap, NcrAction.use_as_is, NcrAction.return_to_supplier}


class ReviewerRole(StrEnum):
    qa_supervisor = "qa_supervisor"
    mrb_production = "mrb_production"
    mrb_engineering = "mrb_engineering"
    quality_manager = "quality_manager"


class DecisionSignature(Model):
    """The electronic signature the API took (the signer re-entered their password)."""

    signer: str
    signer_name: str | None = None
    meaning: str  # reviewed | approved | rejected | released


class NcrDecision(Model):
    """A reviewer's decision as the workflow receives it: reviewer and role come from the API's
    authenticated principal, never from what a caller claims."""

    decision_id: str | None = Field(default=None, max_length=80, description="set by the workflow")
    action: NcrAction
    reviewer: str = Field(min_length=1, max_length=80)
    role: ReviewerRole
    reason: str = Field(default="", max_length=2000, description="why: required")
    rework_operation: int | None = Field(default=None, ge=1, description="rework: routing seq to repeat")
    signature: DecisionSignature | None = None


class NcrState(StrEnum):
    open = "open"
    qa_review = "qa_review"
    mrb = "mrb"
    disposition = "disposition"  # the decided disposition is being carried out
    verification = "verification"  # waiting for proof it was carried out (signed, or the re-inspection)
    closed = "closed"
    dismissed = "dismissed"


class NonconformanceInput(Model):
    ncr: str
    work_order: str
    lot: str
    inspection: str
    stage: str = Field(description="iqc or final")
    description: str
    timing: Timing = Field(default_factory=Timing)
    severity: Severity = Severity.major
    notify_parent: str | None = Field(
        default=None, description="signal the parent work order by this name once the disposition is carried out")


class NcrStatus(Model):
    ncr: str
    lot: str
    state: NcrState
    waiting_for: str | None
    disposition: NcrAction | None = None
    decisions: list[NcrDecision] = Field(default_factory=list)
    reminded: bool = False
    escalated: bool = False
    severity: Severity | None = None
    waiting_on: list[str] = Field(default_factory=list, description="roles (or system) the NCR waits for")
    escalated_to: str | None = None
    verification: str | None = None


class NonconformanceResult(Model):
    ncr: str
    lot: str
    outcome: NcrAction  # dismiss or a disposition
    rework_operation: int | None = None


# --- activity inputs and results -------------------------------------------------------------------


class StartWorkOrderInput(Model):
    order: WorkOrderInput
    workflow_id: str


class RecordReceiptInput(Model):
    work_order: str
    receipt: PurchaseReceipt
    plan: list[Characteristic]


class OpenInspectionInput(Model):
    number: str
    kind: str  # iqc | final
    work_order: str
    lot: str
    plan: list[Characteristic]


class InspectionResultInput(Model):
    inspection: str
    results: InspectionResults
    # the login (or system token) that posted the results: the audit entry's actor. `results.inspector`, who
    # measured, is data (a gauge posts for an inspector). Set by the API, never by the body; None in signals
    # sent before it was added (recorded as the placeholder actor, see domain/quality.py record_results)
    submitted_by: str | None = Field(default=None, max_length=80)


class InspectionOutcome(Model):
    inspection: str
    lot: str
    verdict: Verdict
    failed_characteristics: list[str] = Field(default_factory=list)
    severity: Severity | None = Field(
        default=None, description="of a failed inspection: its most severe failed characteristic in the plan "
                                  "version it was taken under; None without a plan (the NCR opens as major)")


class RecordOperationInput(Model):
    work_order: str
    output_lot: str
    operation_name: str
    rework: bool = False
    report: OperationReport


class OpenNcrInput(Model):
    ncr: str
    work_order: str
    lot: str
    inspection: str
    description: str
    severity: Severity | None = None
    timing: dict[Severity, NcrSeverityTiming] = Field(default_factory=dict, description="this NCR's durations")


class NcrDecisionInput(Model):
    ncr: str
    decision: NcrDecision
    new_state: NcrState


class NcrNoticeInput(Model):
    ncr: str
    notice: str  # reminder | escalation
    to_role: str | None = None  # escalation: the role it goes to


class NcrStateInput(Model):
    """A state change the workflow makes on its own (disposition carried out, verified)."""

    ncr: str
    state: NcrState
    note: str = ""
    verification: str | None = None  # verified | not_effective


class ReinspectionInput(Model):
    ncr: str
    lot: str


class ReinspectionResult(Model):
    """The first inspection of the lot after a rework, or a later NCR on it; None fields: not yet."""

    inspection: str | None = None
    verdict: str | None = None  # passed | failed
    later_ncr: str | None = None


class ApplyDispositionInput(Model):
    ncr: str
    lot: str
    outcome: NcrAction


class IssueCodesInput(Model):
    work_order: str
    lot: str
    quantity: int


class IssueCodesResult(Model):
    batch_code: str
    first_serial: str | None
    last_serial: str | None
    count: int


class ShipInput(Model):
    work_order: str
    lot: str
    request: ShipmentRequest


class ErpNotice(Model):
    """Something the ERP must be told. `name` is the hub's key of the document, not the ERP's name for it: ERPNext
    names documents itself, so the connector keeps the key in the document's hub key field (`custom_hub_key`,
    a Unique custom field) and looks it up before creating; that key is what makes the push idempotent. A
    connector without such a field (generic REST) sends the key as the document's `name`."""

    doctype: str
    name: str
    doc: dict[str, Any]


class CompleteWorkOrderInput(Model):
    work_order: str
    status: str
    good_quantity: int
    scrap_quantity: int
    # what the ERP was told, or why not, by document (the completion's audit entry keeps it); empty before
    # wo-erp-reject-wait-v1
    erp: dict[str, str] = Field(default_factory=dict)


class StageInput(Model):
    work_order: str
    stage: str


# --- inspection triggers (domain/inspection_triggers.py) -------------------------------------------------


class OperationTriggers(Model):
    """The inspections a routing operation's plan triggers while it runs."""

    seq: int
    operation: str
    plan_version: int
    first_article: bool = False
    patrol_every_units: int | None = None
    patrol_every_minutes: float | None = None


class InspectionTriggers(Model):
    operations: list[OperationTriggers] = Field(default_factory=list)
    outgoing: bool = False
    outgoing_plan_version: int | None = None

    def for_op(self, seq: int) -> OperationTriggers | None:
        return next((o for o in self.operations if o.seq == seq), None)


class InspectionTriggersInput(Model):
    work_order: str
    item: str
    routing: list[RoutingOperation]


class OpenPlannedInspectionInput(Model):
    number: str
    trigger: str  # first_article | patrol | final | outgoing
    work_order: str
    lot: str
    item: str
    operation: str
    lot_size: int


class ShipmentGateInput(Model):
    work_order: str
    lot: str


class OperationProgress(Model):
    """Units made so far in a running operation, from the MES (patrol inspections every N units)."""

    seq: int = Field(ge=1, description="routing operation number")
    units: int = Field(ge=0, le=10_000_000, description="units made so far in this operation (cumulative)")
