"""The recall's wire contract: the RecallWorkflow's input, updates, status and result, and its activity inputs.

Kept apart from activities/recall.py so the workflow imports pydantic models only.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, model_validator

from activities.models import DecisionSignature, Model, ReviewerRole

_NUMBER = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"


class SuspectKind(StrEnum):
    lot = "lot"
    supplier_lot = "supplier_lot"
    heat = "heat"
    equipment = "equipment"
    operator = "operator"


class RecallCreate(Model):
    """What is suspect and why (the API's body). Equipment and operator need a time window."""

    number: str = Field(pattern=_NUMBER, description="the recall's business key, e.g. RC-2026-001")
    suspect_kind: SuspectKind
    suspect: str = Field(min_length=1, max_length=120, description="lot number, heat number, equipment id ...")
    since: datetime | None = Field(default=None, description="equipment/operator: window start (with offset)")
    until: datetime | None = Field(default=None, description="equipment/operator: window end (with offset)")
    reason: str = Field(min_length=1, max_length=2000)
    requested_by: str | None = Field(
        default=None, min_length=1, max_length=80,
        description="on behalf of: who asked for the recall when it is not the person logged in; recorded as data "
                    "(`on_behalf_of` in the recall.opened audit entry). The requester of record is the login")

    @model_validator(mode="after")
    def _window(self) -> RecallCreate:
        if self.suspect_kind in (SuspectKind.equipment, SuspectKind.operator) and (
                self.since is None or self.until is None):
            raise ValueError(f"a recall by {self.suspect_kind.value} needs since and until (the time window)")
        for t in (self.since, self.until):
            if t is not None and t.tzinfo is None:
                raise ValueError("since and until need a UTC offset, e.g. 2026-01-05T08:00:00Z")
        if self.since and self.until and self.until <= self.since:
            raise ValueError("until must be after since")
        if not self.reason.strip():
            raise ValueError("reason is required: say why the material is suspect")
        return self


class RecallInput(RecallCreate):
    """The RecallWorkflow's input: the request and the login that sent it."""

    # the requester of record and the actor of recall.opened and of every hold: set by the API from the login, never
    # from the body; None in recalls started before it was added (their `requested_by` was required then)
    opened_by: str | None = Field(default=None, max_length=80)


class HoldDecision(StrEnum):
    release = "release"
    reject = "reject"


class RecallLotLine(Model):
    lot: str
    item: str
    action: str  # held | shipped | none
    quantity: float
    uom: str
    # hold_recall_lots: the customers this line added to the notices (what shipped between the scope and the hold);
    # empty in results recorded before it was added
    customers: list[str] = Field(default_factory=list)


class RecallContainerLine(Model):
    """A case or pallet a recall holds (recall_held_containers) and the recalled lots with units inside it."""

    code: str
    level: str  # case | pallet
    lots: list[str] = Field(default_factory=list)
    waits_for_decision: bool = False  # no decision on its lots can release it: the box itself needs one
    released: bool = False  # its hold has ended already


class ReviewerDecision(Model):
    """What every reviewer's decision on recalled stock carries."""

    decision: HoldDecision
    reviewer: str = Field(min_length=1, max_length=80)
    role: ReviewerRole
    reason: str = Field(default="", max_length=2000)
    signature: DecisionSignature | None = Field(
        default=None, description="set by the API after the password check; written with the decision")


class RecallContainerDecision(ReviewerDecision):
    """A reviewer's decision on a held case or pallet."""

    code: str = Field(min_length=1, max_length=200)


class RecallContainerDecisionInput(Model):
    number: str
    decision: RecallContainerDecision


class RecallContainerEffect(Model):
    """What a reviewer's decision did to the box (decide_recall_container's result)."""

    code: str
    decision: str  # release | reject
    status: str  # the box's status after the decision
    still_held_by: list[str] = Field(default_factory=list)


class CustomerShipment(Model):
    shipment: str
    sales_order: str | None = None
    quantity: float = 0.0


class CustomerNotice(Model):
    customer: str
    quantity: float
    shipments: list[CustomerShipment] = Field(default_factory=list)


class RecallScope(Model):
    number: str
    lots: list[RecallLotLine]
    customers: list[CustomerNotice]

    @property
    def held(self) -> list[RecallLotLine]:
        return [x for x in self.lots if x.action == "held"]


class RecallAckCreate(Model):
    """A customer's acknowledgement of the recall notification (the API's body)."""

    customer: str = Field(min_length=1, max_length=120)
    acknowledged_by: str = Field(min_length=1, max_length=80,
                                 description="who acknowledged at the customer; recorded as data")
    note: str | None = Field(default=None, max_length=2000)


class RecallAck(RecallAckCreate):
    """The acknowledge update's payload: the acknowledgement and the login that entered it."""

    # the actor of recall.acknowledged: set by the API from the login; None in updates sent before it was added
    recorded_by: str | None = Field(default=None, max_length=80)




class RecallReackInput(Model):
    """reopen_recall_acknowledgements' input: the customers who had acknowledged when the hold added shipments to
    their notices."""

    number: str
    customers: list[str]


class RecallReackResult(Model):
    """The customers asked to acknowledge again (their acknowledgement came before the shipments were added)."""

    customers: list[str] = Field(default_factory=list)


class RecallLotDecision(ReviewerDecision):
    """A reviewer's decision on a held lot."""

    lot: str = Field(min_length=1, max_length=64)


class RecallStatus(Model):
    number: str
    stage: str  # scoping | holding | notifying | closed
    waiting_for: list[str] = Field(default_factory=list)
    held: list[str] = Field(default_factory=list)
    decided: dict[str, str] = Field(default_factory=dict)
    customers: list[str] = Field(default_factory=list)
    acknowledged: list[str] = Field(default_factory=list)
    still_held_by: dict[str, list[str]] = Field(
        default_factory=dict, description="lots this recall released that stay on hold, and what still holds each "
                                          "(`recall RC-2`, `NCR NCR-7`): they leave on_hold when the last holder "
                                          "lets them go")
    containers: list[str] = Field(default_factory=list, description="cases and pallets this recall holds")
    containers_waiting: list[str] = Field(
        default_factory=list, description="held cases and pallets that only a reviewer's decision on the box itself "
                                          "can release (their recalled lots shipped, were used up or rejected)")
    container_decisions: dict[str, str] = Field(default_factory=dict)
    acknowledgements_reopened: dict[str, int] = Field(
        default_factory=dict, description="customers whose notice gained shipments after they acknowledged: how many "
                                          "of their acknowledgements were set aside (kept in the record's "
                                          "`earlier_acknowledgements`); each is asked to acknowledge again")


class RecallResult(Model):
    number: str
    held: list[str]
    decisions: dict[str, str]
    customers: list[str]
    shipped_quantity: float


class RecallRef(Model):
    number: str


class RecallAckInput(Model):
    number: str
    ack: RecallAck


class RecallDecisionInput(Model):
    number: str
    decision: RecallLotDecision


class RecallLotRef(Model):
    number: str
    lot: str


class RecallDecisionEffect(Model):
    """What a reviewer's decision did to the lot (decide_recall_lot's result): the workflow tells the ERP only this."""

    lot: str
    item: str
    uom: str
    decision: str  # release | reject
    status: str  # the lot's status after the decision
    released: bool = False  # the lot is off hold (released or quarantine)
    erp_unblock: bool = False  # no other recall holds it: the ERP's block is lifted (Batch Hold with hold: 0)
    still_held_by: list[str] = Field(default_factory=list)  # what still holds it in the hub
    written_off: float = 0.0  # reject: the quantity written off (0 when nothing was left)
