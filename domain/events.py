"""The append-only event log (EPCIS 2.0 shaped, CBV 2.0 vocabulary) and the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.epcis_hash import event_hash
from domain.epcis_ids import canonical
from domain.epcis_index import index_events, link_received_lot, lot_node_uri
from domain.models import EpcisEvent, Lot, utcnow
from domain.models_trace import EpcisEventKey, TraceNode

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
HUB_NS = "https://ns.tracehub.example/epcis/"
_EVENT_NS = uuid.UUID("6f1c5a52-8d7e-4c55-9a8e-3b1f2f1e7a10")


def lot_class_uri(lot: Lot, resolver: str) -> str:
    """The lot as an EPC class: a GS1 Digital Link LGTIN when the item has a GTIN, else a hub URN."""
    if lot.item.gtin:
        return f"{resolver}/01/{lot.item.gtin}/10/{lot.number}"
    return f"urn:tracehub:lot:{lot.number}"


def event_id_for(key: str) -> str:
    """The id the hub gave events before they carried their CBV hash (kept for old references)."""
    return f"urn:uuid:{uuid.uuid5(_EVENT_NS, key)}"


HUB_CONTEXT = {"hub": HUB_NS}


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
    parent_id: str | None = None,
    child_epcs: list[str] | None = None,
    child_quantity_list: list[dict[str, Any]] | None = None,
    input_epc_list: list[str] | None = None,
    certification_info: str | list[str] | None = None,
) -> EpcisEvent:
    """Record one hub event, idempotent on `key`. Its eventID is the CBV 2.0 event hash of its content, and
    its query and lineage indexes are written in the same transaction."""
    existing = (await session.execute(
        select(EpcisEvent).join(EpcisEventKey, EpcisEventKey.event_pk == EpcisEvent.id)
        .where(EpcisEventKey.key == key))).scalar()
    if existing:
        return existing
    when = event_time or utcnow()
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    doc: dict[str, Any] = {
        "type": event_type,
        "eventTime": when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventTimeZoneOffset": "+00:00",
    }
    if certification_info:
        doc["certificationInfo"] = certification_info
    if action and event_type != "TransformationEvent":
        doc["action"] = action
    if event_type in ("AggregationEvent", "AssociationEvent", "TransactionEvent") and parent_id:
        doc["parentID"] = parent_id
    if event_type in ("ObjectEvent", "TransactionEvent"):
        doc["epcList"] = epc_list or []
        if quantity_list:
            doc["quantityList"] = quantity_list
    if event_type in ("AggregationEvent", "AssociationEvent"):
        doc["childEPCs"] = child_epcs or epc_list or []
        if child_quantity_list or quantity_list:
            doc["childQuantityList"] = child_quantity_list or quantity_list
    if event_type == "TransformationEvent":
        if input_epc_list:
            doc["inputEPCList"] = input_epc_list
        if input_quantity_list:
            doc["inputQuantityList"] = input_quantity_list
        if epc_list:
            doc["outputEPCList"] = epc_list
        if output_quantity_list:
            doc["outputQuantityList"] = output_quantity_list
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
        if v is not None:
            doc[f"hub:{k}"] = v
    event_id = event_hash(doc, HUB_CONTEXT)
    doc = {"type": doc.pop("type"), "eventID": event_id, **doc}
    # the same content recorded under another key is the same event: one row, two keys
    row = (await session.execute(select(EpcisEvent).where(EpcisEvent.event_id == event_id))).scalar()
    if row is None:
        row = EpcisEvent(
            event_id=event_id,
            event_type=event_type,
            event_time=when,
            record_time=utcnow(),
            action=doc.get("action"),
            biz_step=biz_step,
            disposition=disposition,
            read_point=canonical(read_point) if read_point else None,
            biz_location=canonical(biz_location) if biz_location else None,
            lot_id=lot.id if lot else None,
            work_order_id=work_order_id,
            document=doc,
        )
        session.add(row)
        await session.flush()
        lots = {lot_node_uri(lot): lot.id} if lot is not None else None
        await index_events(session, [(row.id, doc, HUB_CONTEXT)], lots=lots)
        if lot is not None and biz_step == "receiving":
            node = (await session.execute(select(TraceNode.id).where(TraceNode.lot_id == lot.id))).scalar()
            if node is not None:
                await link_received_lot(session, lot, node)
    session.add(EpcisEventKey(key=key, event_pk=row.id))
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
