"""The append-only event log (EPCIS 2.0 shaped, CBV 2.0 vocabulary) and the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import EpcisEvent, Lot, utcnow

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
HUB_NS = "https://ns.tracehub.example/epcis/"
_EVENT_NS = uuid.UUID("6f1c5a52-8d7e-4c55-9a8e-3b1f2f1e7a10")


def lot_class_uri(lot: Lot, resolver: str) -> str:
    """The lot as an EPC class: a GS1 Digital Link LGTIN when the item has a GTIN, else a hub URN."""
    if lot.item.gtin:
        return f"{resolver}/01/{lot.item.gtin}/10/{lot.number}"
    return f"urn:tracehub:lot:{lot.number}"


def event_id_for(key: str) -> str:
    # Deterministic from the business key, so a retried activity never writes a second event.
    return f"urn:uuid:{uuid.uuid5(_EVENT_NS, key)}"


async def record_event(
    session: AsyncSession,
    *,
    key: str,
    event_type: str,
    biz_step: str,
    event_time: datetime | None = None,
    action: str | None = "OBSERVE",
    disposition: str | None = None,
    epc_list: list[str] | None = None,
    quantity_list: list[dict[str, Any]] | None = None,
    input_quantity_list: list[dict[str, Any]] | None = None,
    output_quantity_list: list[dict[str, Any]] | None = None,
    biz_transactions: list[tuple[str, str]] | None = None,
    read_point: str | None = None,
    biz_location: str | None = None,
    source_list: list[dict[str, str]] | None = None,
    destination_list: list[dict[str, str]] | None = None,
    persistent_disposition: dict[str, list[str]] | None = None,
    ilmd: dict[str, Any] | None = None,
    transformation_id: str | None = None,
    extensions: dict[str, Any] | None = None,
    lot: Lot | None = None,
    work_order_id: int | None = None,
) -> EpcisEvent:
    event_id = event_id_for(key)
    existing = (await session.execute(select(EpcisEvent).where(EpcisEvent.event_id == event_id))).scalar()
    if existing:
        return existing
    when = event_time or utcnow()
    doc: dict[str, Any] = {
        "type": event_type,
        "eventID": event_id,
        "eventTime": when.isoformat().replace("+00:00", "Z"),
        "eventTimeZoneOffset": "+00:00",
    }
    if action and event_type != "TransformationEvent":
        doc["action"] = action
    if event_type == "ObjectEvent":
        doc["epcList"] = epc_list or []
        if quantity_list:
            doc["quantityList"] = quantity_list
    if event_type == "TransformationEvent":
        if input_quantity_list:
            doc["inputQuantityList"] = input_quantity_list
        if output_quantity_list:
            doc["outputQuantityList"] = output_quantity_list
        if epc_list:
            doc["outputEPCList"] = epc_list
        if transformation_id:
            doc["transformationID"] = transformation_id
    doc["bizStep"] = biz_step
    if disposition:
        doc["disposition"] = disposition
    if persistent_disposition:
        doc["persistentDisposition"] = persistent_disposition
    if read_point:
        doc["readPoint"] = {"id": read_point}
    if biz_location:
        doc["bizLocation"] = {"id": biz_location}
    if biz_transactions:
        doc["bizTransactionList"] = [{"type": t, "bizTransaction": v} for t, v in biz_transactions]
    if source_list:
        doc["sourceList"] = source_list
    if destination_list:
        doc["destinationList"] = destination_list
    if ilmd:
        doc["ilmd"] = ilmd
    for k, v in (extensions or {}).items():
        doc[f"hub:{k}"] = v
    row = EpcisEvent(
        event_id=event_id,
        event_type=event_type,
        event_time=when,
        action=doc.get("action"),
        biz_step=biz_step,
        disposition=disposition,
        read_point=read_point,
        biz_location=biz_location,
        lot_id=lot.id if lot else None,
        work_order_id=work_order_id,
        document=doc,
    )
    session.add(row)
    await session.flush()
    return row


def hub_uri(kind: str, key: str) -> str:
    return f"urn:tracehub:{kind}:{key}"


def epcis_document(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@context": [EPCIS_CONTEXT, {"hub": HUB_NS}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": utcnow().isoformat().replace("+00:00", "Z"),
        "epcisBody": {"eventList": events},
    }
