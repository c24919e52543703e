"""What the hub's ERP poll (activities/connectors.py `poll_erp`) asks of an ERP connector, so that one poll serves
every ERP without webhooks: ERPNext, or another ERP through the generic REST connector's configuration.

A connector that can be polled implements `PollableErp`:

    for version in await erp.changed(WORK_ORDER, since):         # oldest first, at or after `since`
        doc = await erp.polled_document(WORK_ORDER, version)     # in full; a work order with its receipts
        data = erp.hub_data(doc)                                 # the hub's WorkOrderInput / PurchaseReceipt data
        ... erp.erp_field(doc, error_loc)                        # the ERP's own name of a field at fault

The hub keys each document version (`name`, `modified`) in its ERP inbox, so a version is taken once however
often it is listed; the watermark is the last `modified` seen, compared as text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

WORK_ORDER = "Work Order"
PURCHASE_RECEIPT = "Purchase Receipt"


def poll_every_field() -> Any:
    """The `poll_every_s` field of a pollable ERP endpoint's config: the API and the worker keep the endpoint's
    Temporal Schedule (`erp-poll-<endpoint>`, workflows/erp_poll.py) in step with it."""
    from pydantic import Field

    return Field(default=None, ge=5, le=86_400, title="Poll every (s)",
                 description="poll the ERP for released work orders and posted purchase receipts every this many "
                             "seconds (a Temporal Schedule, erp-poll-<endpoint>, made, changed and removed with this "
                             "setting); leave it empty when the ERP sends its events by webhook")
PolledDoctype = Literal["Work Order", "Purchase Receipt"]


@dataclass(frozen=True)
class Version:
    """One listed version of a document: the ERP's name (id) of it and its modified time."""

    name: str
    modified: str
    doc: dict[str, Any] | None = None  # the listed document, when the list carries it (REST)


@dataclass
class PolledDocument:
    """A document read for the poll, as the ERP has it (`doc`), with what the hub keys it by."""

    doctype: str
    name: str
    modified: str
    doc: dict[str, Any]
    receipts: list[PolledDocument] = field(default_factory=list)  # a work order's purchase receipts, in full
    # the work order number: a receipt's work order (None: not for a work order), or a work order's own number
    # when the ERP names the document otherwise (None: its name is the number)
    work_order: str | None = None


@runtime_checkable
class PollableErp(Protocol):
    """An ERP connector the hub's ERP poll can use (ErpnextConnector; RestConnector with `poll` configured)."""

    async def changed(self, doctype: str, since: str) -> list[Version]:
        """The versions of released work orders (or posted purchase receipts) modified at or after `since`
        (empty: all), oldest first. A connector not configured for it raises ConnectorConfigError."""
        ...

    async def polled_document(self, doctype: str, version: Version) -> PolledDocument | None:
        """The listed document in full (a work order with its purchase receipts); None when it is gone."""
        ...

    def hub_data(self, doc: PolledDocument) -> dict[str, Any]:
        """The document in the hub's shape: WorkOrderInput data (receipts included) or PurchaseReceipt data.
        It may raise KeyError, TypeError, ValueError or AttributeError on a document it cannot read."""
        ...

    def erp_field(self, doc: PolledDocument, loc: tuple[Any, ...]) -> str:
        """Where in the ERP a validation error at `loc` (of the hub data) is: the document and field to fix."""
        ...
