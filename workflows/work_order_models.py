"""The work order's status (its query) and result.

Kept out of workflows/work_order.py and imported there passed through the sandbox: the sandbox runs a workflow's
module anew for every workflow it starts or replays, and building these pydantic classes each time cost about
10 ms of the worker's CPU and 0.1 MB of memory per cached work order."""

from __future__ import annotations

from pydantic import BaseModel, Field

from activities.models import InspectionTriggers, IssueCodesResult


class PendingInspection(BaseModel):
    number: str
    kind: str
    lot: str


class WorkOrderStatus(BaseModel):
    number: str
    stage: str
    waiting_for: list[str] = Field(default_factory=list)
    pending_inspections: list[PendingInspection] = Field(default_factory=list)
    expected_operation: int | None = None
    open_ncrs: list[str] = Field(default_factory=list)
    ncrs: list[str] = Field(default_factory=list)
    material_lots: dict[str, str] = Field(default_factory=dict)
    output_lot: str
    good_quantity: int = 0
    scrap_quantity: int = 0
    codes: IssueCodesResult | None = None
    shipment: str | None = None
    last_error: str | None = None
    result: str | None = None
    certificates: dict[str, str] = Field(default_factory=dict, description="lot -> certificate verdict")
    process_values: dict[str, float | int | str | bool] = Field(default_factory=dict)
    deviations: list[str] = Field(default_factory=list)
    equipment_states: dict[str, str] = Field(default_factory=dict)
    inspection_triggers: InspectionTriggers | None = None
    shipment_gate: list[str] = Field(default_factory=list, description="why the shipment is held, if it is")
    needs_retry: list[str] = Field(
        default_factory=list, description="refusals the work order waits on: fix what each names, then an admin "
                                          "retries (POST /api/work-orders/{number}/retry)")
    release_refused: str | None = Field(
        default=None, description="why the release was refused inside the workflow: a corrected work_order.released "
                                  "for the same number is taken by this run")
    erp_documents: dict[str, str] = Field(
        default_factory=dict, description="document -> sent, refused (why), or not sent (why)")


class RetryRequest(BaseModel):
    """An admin's retry of what a work order waits on after a refusal (the ERP refused a document, the shipment
    was refused), once its cause is fixed."""

    requested_by: str = Field(min_length=1, max_length=120)
    reason: str | None = Field(default=None, max_length=500)


class WorkOrderResult(BaseModel):
    number: str
    status: str  # completed | completed_short
    output_lot: str
    good_quantity: int
    scrap_quantity: int
    shipment: str | None
    ncrs: list[str]
