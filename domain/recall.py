"""Recalls: the scope from a forward trace, holds on what is still in stock, customers to notify, decisions.

Every function is idempotent on the recall number (and the lot or customer), so a retried activity or a
second start of the same recall changes nothing twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain import holds
from domain.audit import PLACEHOLDER_ACTOR, audit, diff
from domain.events import hub_uri, lot_class_uri, record_event
from domain.models import AuditLog, Lot, LotStatus, Shipment, ShipmentLine, WorkOrder, utcnow
from domain.models_codes import Container
from domain.models_identity import Signature
from domain.models_trace import Recall, RecallContainer, RecallLot, RecallNotice
from domain.packing import REJECTED as CONTAINER_REJECTED  # a box a reviewer rejected: it never ships
from domain.packing import epc
from domain.production import set_lot_status
from domain.signatures import is_valid, record_signature
from domain.trace import forward
from domain.trace_containers import containers_of_lots

IN_STOCK = (LotStatus.released, LotStatus.quarantine, LotStatus.on_hold)
CONTAINER_ON_HOLD = "on_hold"  # container.status while a recall holds it (packing and shipping refuse it)


async def get_recall(session: AsyncSession, number: str) -> Recall:
    row = (await session.execute(select(Recall).where(Recall.number == number))).scalar()
    if row is None:
        raise NotFound(f"recall {number!r} does not exist: list recalls at GET /api/recalls", field="number")
    return row


async def open_recall_covering(session: AsyncSession, *, suspect_kind: str, suspect: str, since: datetime | None,
                                until: datetime | None, except_number: str) -> Recall | None:
    """The open recall (other than `except_number`) that already covers this suspect: the same kind and value, and
    for equipment and operator a window that contains this one (the same window, or a wider one). One recall per
    suspect: a second would scope and hold the same stock again."""
    rows = (await session.execute(
        select(Recall).where(Recall.suspect_kind == suspect_kind, Recall.suspect == suspect,
                             Recall.status != "closed", Recall.number != except_number).order_by(Recall.id)
    )).scalars()
    for row in rows:
        if since is None and until is None:
            return row
        if row.window_from is not None and row.window_to is not None and since is not None and until is not None \
                and row.window_from <= since and until <= row.window_to:
            return row
    return None


async def _lock_suspect(session: AsyncSession, suspect_kind: str, suspect: str) -> None:
    """PostgreSQL: recalls of one suspect record their scopes one at a time (a transaction-level advisory lock on
    the suspect). SQLite writers take turns anyway."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                              {"k": f"recall:{suspect_kind}:{suspect}"})


async def open_recall(
    session: AsyncSession, *, number: str, workflow_id: str, suspect_kind: str, suspect: str,
    since: datetime | None, until: datetime | None, reason: str, requested_by: str, resolver: str,
    on_behalf_of: str | None = None,
) -> dict[str, Any]:
    """Record the recall and its scope (once); returns the scope. `requested_by` is the requester of record (the
    login that started it: the actor of recall.opened and of the holds); `on_behalf_of`, a name the request gave
    for whom it was started, is data in the entry."""
    row = (await session.execute(select(Recall).where(Recall.number == number))).scalar()
    if row is None:
        # one recall per suspect, also for two started at the same moment (the API's check saw neither): the
        # first to record its scope wins, the other stops here naming it
        await _lock_suspect(session, suspect_kind, suspect)
        other = await open_recall_covering(session, suspect_kind=suspect_kind, suspect=suspect, since=since,
                                           until=until, except_number=number)
        if other is not None:
            raise Conflict(f"recall {other.number} already covers {suspect_kind} {suspect!r} (both were started at "
                           f"the same moment): {number} records nothing; follow {other.number} at "
                           f"/api/recalls/{other.number}", field="suspect")
        result = await forward(session, resolver=resolver, kind=suspect_kind, value=suspect, since=since,
                               until=until)
        row = Recall(number=number, workflow_id=workflow_id, suspect_kind=suspect_kind, suspect=suspect,
                     window_from=since, window_to=until, reason=reason, requested_by=requested_by, status="open")
        session.add(row)
        await session.flush()
        lots = {n["id"]: n for n in result["nodes"] if n["node"] == "lot"}
        ids = dict((await session.execute(select(Lot.number, Lot.id).where(Lot.number.in_(list(lots))))).all())
        for number_, n in lots.items():
            in_stock = n["status"] in IN_STOCK and n["quantity_remaining"] > 1e-9
            action = "held" if in_stock else ("shipped" if n["shipments"] else "none")
            qty = n["quantity_remaining"] if in_stock else sum(s["quantity"] for s in n["shipments"])
            session.add(RecallLot(recall_id=row.id, lot_id=ids[number_], action=action, status_before=n["status"],
                                  quantity=qty))
        for c in result["by_customer"]:
            session.add(RecallNotice(recall_id=row.id, customer=c["customer"], quantity=c["quantity"],
                                     shipments=c["shipments"]))
        # the cases and pallets holding units of those lots: held where they are, or listed as shipped
        boxes = await containers_of_lots(session, list(lots))
        for b in boxes:
            session.add(RecallContainer(recall_id=row.id, code=b["code"], level=b["level"],
                                        action="shipped" if b["status"] == "shipped" else "held",
                                        status_before=b["status"], lots=b["lots"], units=b["units"]))
        await session.flush()
        await audit(session, actor=requested_by, action="recall.opened", entity="recall", key=number,
                    changes={"suspect": f"{suspect_kind}:{suspect}", "reason": reason,
                             **({"on_behalf_of": on_behalf_of} if on_behalf_of else {}),
                             "lots": len(lots), "customers": result["customers"],
                             "containers": [b["code"] for b in boxes]})
    return await scope(session, number)


async def scope(session: AsyncSession, number: str, *, signatures: bool = False) -> dict[str, Any]:
    """The recall's record. `signatures`: each decided lot and box also carries its decision's electronic signature
    (`signature`: None when unsigned) with whether it is valid now (decision_signatures); the close report, which is
    kept, does not (a signature's validity is about the record as it is when read)."""
    row = await get_recall(session, number)
    lots = (await session.execute(
        select(RecallLot, Lot).join(Lot, Lot.id == RecallLot.lot_id).where(RecallLot.recall_id == row.id)
        .order_by(Lot.number))).all()
    notices = (await session.execute(select(RecallNotice).where(RecallNotice.recall_id == row.id)
                                     .order_by(RecallNotice.customer))).scalars().all()
    boxes = (await session.execute(
        select(RecallContainer, Container.status).outerjoin(Container, Container.code == RecallContainer.code)
        .where(RecallContainer.recall_id == row.id).order_by(RecallContainer.level.desc(), RecallContainer.code)
    )).all()
    lot_lines = {lot.number: (rl.action, rl.decision) for rl, lot in lots}
    box_decisions = await _container_decisions(session, number) if boxes else {}
    earlier = await _earlier_acknowledgements(session, number) if notices else {}
    lot_sigs, box_sigs = await decision_signatures(session, row, list(lots), [rc for rc, _ in boxes],
                                                   box_decisions) if signatures else ({}, {})
    return {
        "number": row.number, "status": row.status, "suspect_kind": row.suspect_kind, "suspect": row.suspect,
        "reason": row.reason,
        "lots": [{"lot": lot.number, "item": lot.item.code, "action": rl.action, "status_before": rl.status_before,
                  "status": lot.status, "quantity": rl.quantity, "uom": lot.uom, "location": lot.location,
                  "erp_blocked": rl.erp_blocked_at is not None, "decision": rl.decision, "decided_by": rl.decided_by,
                  "decision_reason": rl.decision_reason,
                  **({"signature": lot_sigs.get(lot.number)} if signatures else {})} for rl, lot in lots],
        "customers": [{"customer": n.customer, "quantity": n.quantity, "shipments": n.shipments,
                       "acknowledged_at": n.acknowledged_at.isoformat() if n.acknowledged_at else None,
                       "acknowledged_by": n.acknowledged_by, "note": n.note,
                       # acknowledgements set aside because the notice gained shipments after them, oldest first
                       "earlier_acknowledgements": earlier.get(n.customer, [])} for n in notices],
        # pallets first, then cases
        "containers": [{"code": rc.code, "level": rc.level, "action": rc.action, "status_before": rc.status_before,
                        "status": status, "lots": rc.lots, "units": rc.units,
                        "held_at": rc.held_at.isoformat() if rc.held_at else None,
                        "released_at": rc.released_at.isoformat() if rc.released_at else None,
                        # held, and only a reviewer's decision on the box itself can end the hold
                        "waits_for_decision": container_waits_for_decision(rc, lot_lines),
                        **_decision_fields(box_decisions.get(rc.code)),
                        **({"signature": box_sigs.get(rc.code)} if signatures else {})}
                       for rc, status in boxes],
    }


def _decision_fields(d: dict[str, Any] | None) -> dict[str, Any]:
    return {"decision": d["decision"] if d else None, "decided_by": d["decided_by"] if d else None,
            "decision_reason": d["reason"] if d else None}


async def hold_lots(session: AsyncSession, *, number: str, resolver: str) -> list[dict[str, Any]]:
    """Put every in-stock lot of the scope on hold (recorded as an EPCIS holding event, disposition recalled).

    The scope was computed in an earlier transaction (open_recall), so each lot is locked and read again first: a lot
    that shipped or was used up since is not held (it left: no hold, no ERP block), its line says what became of it
    (`shipped` with its shipments' quantities, or `none`), and the customers of what shipped since the scope are
    added to the notices. Returns the held lines and the lines that changed since the scope, each with the customers
    it added (`customers`), read back from the record so that a retry answers as the first run did."""
    row = await get_recall(session, number)
    pairs = (await session.execute(
        select(RecallLot, Lot).join(Lot, Lot.id == RecallLot.lot_id)
        .where(RecallLot.recall_id == row.id, RecallLot.action == "held"))).all()
    for rl, lot in pairs:
        if rl.held_at is None:
            # lock the lot against a shipment or a consumption until this transaction ends (PostgreSQL; SQLite
            # writers are serialised already), and read what other transactions committed since the scope
            lot = (await session.execute(select(Lot).where(Lot.id == rl.lot_id).with_for_update(of=Lot)
                                         .execution_options(populate_existing=True))).scalar_one()
            await _scope_changes(session, row, rl, lot)
            if rl.action != "held":
                continue
            if lot.status == LotStatus.on_hold:
                # holds stack: this recall holds it too, and the lot leaves on_hold only when the last holder lets
                # it go (decide_lot); the entry says who else holds it
                await audit(session, actor=row.requested_by, action="lot.hold_added", entity="lot", key=lot.number,
                            changes={"status": lot.status, "recall": number, "why": f"recall {number}: {row.reason}",
                                     "also_held_by": await holds.holders(session, lot.id, except_recall=number)})
            await set_lot_status(session, lot, LotStatus.on_hold, actor=row.requested_by,
                                 why=f"recall {number}: {row.reason}")
            await record_event(
                session, key=f"recall-hold:{number}:{lot.number}", event_type="ObjectEvent", biz_step="holding",
                disposition="recalled",
                quantity_list=[{"epcClass": lot_class_uri(lot, resolver), "quantity": lot.quantity_remaining}],
                biz_transactions=[("testres", hub_uri("recall", number))],
                biz_location=hub_uri("location", lot.location) if lot.location else None,
                extensions={"recall": {"number": number, "reason": row.reason}}, lot=lot,
                work_order_id=lot.work_order_id,
            )
            rl.held_at = utcnow()
    await _hold_containers(session, row, resolver)
    await session.flush()
    changed = {c["lot"]: c for c in await _scope_changes_recorded(session, number)}
    lines = (await session.execute(
        select(RecallLot, Lot).join(Lot, Lot.id == RecallLot.lot_id).where(RecallLot.recall_id == row.id)
        .order_by(Lot.number))).all()
    return [{"lot": lot.number, "item": lot.item.code, "action": rl.action, "quantity": rl.quantity, "uom": lot.uom,
             "customers": changed[lot.number]["customers"] if lot.number in changed else []}
            for rl, lot in lines if rl.action == "held" or lot.number in changed]


async def _scope_changes(session: AsyncSession, row: Recall, rl: RecallLot, lot: Lot) -> None:
    """Bring a held line of the scope up to date before its hold: what shipped since the scope goes into the
    customers' notices, and a lot no longer in stock is listed as shipped (or `none`: used up) instead of held.
    Writes one `recall.scope_changed` entry when anything changed (the record a retry answers from)."""
    noticed = set()
    notices = {n.customer: n for n in (await session.execute(
        select(RecallNotice).where(RecallNotice.recall_id == row.id))).scalars()}
    for n in notices.values():
        for sh in n.shipments:
            noticed |= {(sh["shipment"], x["lot"]) for x in sh.get("lots", [])}
    ships = (await session.execute(
        select(ShipmentLine.quantity, Shipment.number, Shipment.sales_order, Shipment.customer, Shipment.shipped_at)
        .join(Shipment, Shipment.id == ShipmentLine.shipment_id).where(ShipmentLine.lot_id == lot.id)
        .order_by(Shipment.shipped_at, ShipmentLine.id))).all()
    added: dict[str, float] = {}
    shipped_total = 0.0
    for qty, shipment, sales_order, customer, shipped_at in ships:
        shipped_total += qty
        if (shipment, lot.number) in noticed:
            continue
        n = notices.get(customer)
        if n is None:
            n = notices[customer] = RecallNotice(recall_id=row.id, customer=customer, quantity=0.0, shipments=[])
            session.add(n)
        # a new list (and new dicts): the JSON column sees the change
        shipments = [dict(sh, lots=list(sh.get("lots", []))) for sh in n.shipments]
        sh = next((x for x in shipments if x["shipment"] == shipment), None)
        if sh is None:
            sh = {"shipment": shipment, "sales_order": sales_order,
                  "shipped_at": shipped_at.isoformat() if shipped_at else None, "lots": []}
            shipments.append(sh)
        sh["lots"].append({"lot": lot.number, "item": lot.item.code, "quantity": qty, "uom": lot.uom})
        n.shipments = shipments
        n.quantity = (n.quantity or 0.0) + qty
        added[customer] = added.get(customer, 0.0) + qty
    in_stock = lot.status in IN_STOCK and lot.quantity_remaining > 1e-9
    if in_stock and not added and abs(lot.quantity_remaining - rl.quantity) <= 1e-9:
        return
    before = {"action": rl.action, "quantity": rl.quantity}
    if in_stock:
        rl.quantity = lot.quantity_remaining  # what is left to hold (and for the ERP to block)
    else:
        rl.action = "shipped" if ships else "none"
        rl.quantity = shipped_total if ships else 0.0
    await session.flush()
    await audit(session, actor=row.requested_by, action="recall.scope_changed", entity="recall", key=row.number,
                changes={"lot": lot.number, "lot_status": lot.status, "customers": sorted(added),
                         "shipped_since_scope": {c: added[c] for c in sorted(added)},
                         "why": "changed between the scope and the hold: "
                                + ("still in stock, held" if in_stock else f"no longer in stock ({lot.status}), "
                                                                           "not held"),
                         **diff(before, {"action": rl.action, "quantity": rl.quantity})})


async def _scope_changes_recorded(session: AsyncSession, number: str) -> list[dict[str, Any]]:
    """The recall.scope_changed entries of a recall, oldest first: {lot, customers}."""
    entries = (await session.execute(
        select(AuditLog.changes).where(AuditLog.entity == "recall", AuditLog.entity_key == number,
                                       AuditLog.action == "recall.scope_changed").order_by(AuditLog.seq))).scalars()
    return [{"lot": c["lot"], "customers": list(c.get("customers") or [])} for c in entries]


async def _hold_containers(session: AsyncSession, row: Recall, resolver: str) -> None:
    """Put the scope's cases and pallets still in stock on hold, each with an EPCIS holding event."""
    pairs = (await session.execute(
        select(RecallContainer, Container).join(Container, Container.code == RecallContainer.code)
        .where(RecallContainer.recall_id == row.id, RecallContainer.action == "held",
               RecallContainer.held_at.is_(None)))).all()
    for rc, box in pairs:
        if box.status == "shipped":  # shipped between the scope and the hold: listed as shipped instead
            rc.action = "shipped"
            continue
        before = box.status
        box.status = CONTAINER_ON_HOLD
        rc.held_at = utcnow()
        await record_event(
            session, key=f"recall-hold:{row.number}:{rc.code}", event_type="ObjectEvent", biz_step="holding",
            disposition="recalled", epc_list=[epc(rc.code, resolver)],
            biz_transactions=[("testres", hub_uri("recall", row.number))],
            extensions={"recall": {"number": row.number, "reason": row.reason, "lots": rc.lots}})
        await audit(session, actor=row.requested_by, action="container.held", entity="container", key=rc.code,
                    changes=diff({"status": before}, {"status": box.status}, recall=row.number, lots=rc.lots))


async def _container_holders(session: AsyncSession, row: Recall, code: str) -> list[str]:
    """The other open recalls still holding a case or pallet (held, not released)."""
    return list((await session.execute(
        select(Recall.number).join(RecallContainer, RecallContainer.recall_id == Recall.id)
        .where(RecallContainer.code == code, RecallContainer.action == "held", RecallContainer.released_at.is_(None),
               Recall.id != row.id, Recall.status != "closed").order_by(Recall.id))).scalars())


async def _container_status_before_first_hold(session: AsyncSession, row: Recall, rc: RecallContainer) -> str:
    """What the box was before the first recall of the chain of holds it is in put it on hold."""
    if rc.status_before != CONTAINER_ON_HOLD:
        return rc.status_before
    # on hold already when this recall scoped it: the newest earlier recall on the box whose hold was still on
    # then, and that saw it off hold (only recalls put boxes on hold)
    earlier = (await session.execute(
        select(RecallContainer.status_before).join(Recall, Recall.id == RecallContainer.recall_id)
        .where(RecallContainer.code == rc.code, RecallContainer.recall_id != row.id, Recall.id < row.id,
               RecallContainer.held_at.is_not(None), RecallContainer.status_before != CONTAINER_ON_HOLD,
               (RecallContainer.released_at.is_(None)) | (RecallContainer.released_at > row.created_at))
        .order_by(Recall.id.desc()).limit(1))).scalar()
    return earlier or "open"


async def _release_containers(session: AsyncSession, row: Recall, resolver: str, reviewer: str) -> None:
    """This recall's hold on a case or pallet ends once every recalled lot inside it is released; the box goes back
    to what it was before the first hold only when no other open recall still holds it."""
    decisions = dict((await session.execute(
        select(Lot.number, RecallLot.decision).join(Lot, Lot.id == RecallLot.lot_id)
        .where(RecallLot.recall_id == row.id))).all())
    pairs = (await session.execute(
        select(RecallContainer, Container).join(Container, Container.code == RecallContainer.code)
        .where(RecallContainer.recall_id == row.id, RecallContainer.held_at.is_not(None),
               RecallContainer.released_at.is_(None)))).all()
    for rc, box in pairs:
        if not all(decisions.get(lot) == "release" for lot in rc.lots):
            continue
        rc.released_at = utcnow()
        others = await _container_holders(session, row, rc.code)
        if others:
            await audit(session, actor=reviewer, action="container.hold_kept", entity="container", key=rc.code,
                        changes={"status": box.status, "released_by": f"recall {row.number}",
                                 "still_held_by": [f"recall {n}" for n in others]})
            continue
        if box.status == CONTAINER_ON_HOLD:
            box.status = await _container_status_before_first_hold(session, row, rc)
        await record_event(
            session, key=f"recall-release:{row.number}:{rc.code}", event_type="ObjectEvent",
            biz_step="inspecting", disposition="available", epc_list=[epc(rc.code, resolver)],
            biz_transactions=[("testres", hub_uri("recall", row.number))],
            extensions={"recallDecision": {"number": row.number, "decision": "release", "reviewer": reviewer,
                                           "lots": rc.lots}})
        await audit(session, actor=reviewer, action="container.released", entity="container", key=rc.code,
                    changes=diff({"status": CONTAINER_ON_HOLD}, {"status": box.status}, recall=row.number))




def container_waits_for_decision(rc: RecallContainer, lots: dict[str, tuple[str, str | None]]) -> bool:
    """Whether a held case or pallet needs a reviewer's decision of its own: its hold is on, and the lots' decisions
    can never end it (the hold ends by itself only when every recalled lot inside is held by this recall and
    released; a lot that had shipped or was used up, or a rejected one, takes no release). `lots`: lot number ->
    (action, decision) of this recall's lines."""
    if rc.action != "held" or rc.held_at is None or rc.released_at is not None:
        return False
    return not all(lots.get(n, ("none", None))[0] == "held" and lots[n][1] in (None, "release") for n in rc.lots)


def container_decision_content(number: str, *, code: str, decision: str, reviewer: str, role: str,
                               reason: str, signed_recall: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a reviewer signs when deciding a held case or pallet (`signed_recall`: as for decision_content)."""
    return _with_recall({"recall": number, "container": code, "decision": decision, "reviewer": reviewer,
                         "role": role, "reason": reason}, signed_recall)


async def _container_decisions(session: AsyncSession, number: str) -> dict[str, dict[str, Any]]:
    """The reviewers' decisions on this recall's cases and pallets (recall.container_decided entries), by code."""
    out: dict[str, dict[str, Any]] = {}
    for actor, at, c in (await session.execute(
            select(AuditLog.actor, AuditLog.at, AuditLog.changes)
            .where(AuditLog.entity == "recall", AuditLog.entity_key == number,
                   AuditLog.action == "recall.container_decided").order_by(AuditLog.seq))).all():
        out.setdefault(c["container"], {"decision": c["decision"], "decided_by": actor, "role": c.get("role"),
                                        "reason": c.get("reason"), "decided_at": at.isoformat()})
    return out


async def decide_container(session: AsyncSession, *, number: str, code: str, decision: str, reviewer: str,
                           role: str, reason: str, resolver: str, signature: Any = None) -> dict[str, Any]:
    """A reviewer's decision on a case or pallet this recall holds: release or reject.

    A box whose recalled lots shipped (lot first, box after: the order packing expects) or were used up is held
    with no lot decision that could release it: this decision ends the hold. A release ends this recall's hold;
    the box goes back to what it was before the first hold only when no other open recall holds it. It is refused
    while a lot inside is still held by this recall undecided (decide the lot) or was rejected (reject the box). A
    reject ends the hold too and marks the box `rejected`: it never ships, is packed onto nor packed again.
    The signature, if given, is written in the same transaction. A repeated call changes nothing."""
    if decision not in ("release", "reject"):
        raise InvalidInput(f"decision {decision!r}: use release or reject", field="decision")
    if not reason.strip():
        raise InvalidInput(f"reason is required: say why you {decision} {code}", field="reason")
    row = await get_recall(session, number)
    pair = (await session.execute(
        select(RecallContainer, Container).join(Container, Container.code == RecallContainer.code)
        .where(RecallContainer.recall_id == row.id, RecallContainer.code == code))).first()
    if pair is None or pair[0].action != "held" or pair[0].held_at is None:
        raise Conflict(f"{code!r} is not a case or pallet held by recall {number}: see the recall's containers at "
                       f"GET /api/recalls/{number}", field="code")
    rc, box = pair
    done = (await _container_decisions(session, number)).get(code)
    if done is not None:
        if done["decision"] == decision:
            return {"code": code, "decision": decision, "status": box.status, "still_held_by": []}
        raise Conflict(f"{rc.level} {code} was already decided ({done['decision']} by {done['decided_by']})",
                       field="code")
    if rc.released_at is not None:
        raise Conflict(f"{rc.level} {code} is no longer held by recall {number}: its lots' release ended the hold",
                       field="code")
    lots = {n: (a, d) for n, a, d in (await session.execute(
        select(Lot.number, RecallLot.action, RecallLot.decision).join(Lot, Lot.id == RecallLot.lot_id)
        .where(RecallLot.recall_id == row.id))).all()}
    if decision == "release":
        undecided = sorted(n for n in rc.lots if lots.get(n, ("", None)) == ("held", None))
        if undecided:
            raise Conflict(f"{rc.level} {code} holds units of lot {', '.join(undecided)}, still held by recall "
                           f"{number}: decide the lot first (its release releases the box)", field="code")
        rejected = sorted(n for n in rc.lots if lots.get(n, ("", None))[1] == "reject")
        if rejected:
            raise Conflict(f"{rc.level} {code} holds units of rejected lot {', '.join(rejected)}: it may not be "
                           "released; reject the box", field="code")
    rc.released_at = utcnow()
    before = box.status
    still: list[str] = []
    if decision == "reject":
        box.status = CONTAINER_REJECTED
        disp, pd = "non_conformant", {"set": ["non_conformant"]}
        event = True
    else:
        still = await _container_holders(session, row, code)
        event = not still
        if not still and box.status == CONTAINER_ON_HOLD:
            box.status = await _container_status_before_first_hold(session, row, rc)
        disp, pd = "available", {"unset": ["non_conformant"]}
    if event:
        await record_event(
            session, key=f"recall-{decision}:{number}:{code}", event_type="ObjectEvent", biz_step="inspecting",
            disposition=disp, persistent_disposition=pd, epc_list=[epc(code, resolver)],
            biz_transactions=[("testres", hub_uri("recall", number))],
            extensions={"recallDecision": {"number": number, "decision": decision, "reviewer": reviewer,
                                           "role": role, "reason": reason, "lots": rc.lots}})
    await session.flush()
    if still:
        await audit(session, actor=reviewer, action="container.hold_kept", entity="container", key=code,
                    changes={"status": box.status, "released_by": f"recall {number}",
                             "still_held_by": [f"recall {n}" for n in still]})
    else:
        await audit(session, actor=reviewer, action="container.released" if decision == "release"
                    else "container.rejected", entity="container", key=code,
                    changes=diff({"status": before}, {"status": box.status}, recall=number, reason=reason))
    await audit(session, actor=reviewer, action="recall.container_decided", entity="recall", key=number,
                changes={"container": code, "level": rc.level, "decision": decision, "role": role, "reason": reason,
                         "lots": rc.lots, "still_held_by": [f"recall {n}" for n in still],
                         **diff({"container_status": before}, {"container_status": box.status})})
    if signature is not None:
        await record_signature(session, signer=signature.signer, signer_name=signature.signer_name, role=role,
                               meaning=signature.meaning, entity="recall_container_decision", key=f"{number}/{code}",
                               content=container_decision_content(
                                   number, code=code, decision=decision, reviewer=reviewer, role=role, reason=reason,
                                   signed_recall=recall_signed_fields(row, container_scope_line(rc))))
    await session.flush()
    return {"code": code, "decision": decision, "status": box.status, "still_held_by": [f"recall {n}" for n in still]}


async def mark_erp_blocked(session: AsyncSession, *, number: str, lot: str) -> None:
    row = await get_recall(session, number)
    rl = (await session.execute(select(RecallLot).join(Lot, Lot.id == RecallLot.lot_id)
                                .where(RecallLot.recall_id == row.id, Lot.number == lot))).scalar_one()
    if rl.erp_blocked_at is None:
        rl.erp_blocked_at = utcnow()
        await session.flush()


async def acknowledge(session: AsyncSession, *, number: str, customer: str, by: str, note: str | None,
                      actor: str = PLACEHOLDER_ACTOR) -> None:
    """`by`, who acknowledged at the customer, is data; `actor`, the login that entered it, the entry's actor."""
    row = await get_recall(session, number)
    n = (await session.execute(select(RecallNotice).where(RecallNotice.recall_id == row.id,
                                                          RecallNotice.customer == customer))).scalar()
    if n is None:
        raise NotFound(f"recall {number} has no customer {customer!r} to notify", field="customer")
    if n.acknowledged_at is None:
        n.acknowledged_at = utcnow()
        n.acknowledged_by = by
        n.note = note
        await session.flush()
        await audit(session, actor=actor, action="recall.acknowledged", entity="recall", key=number,
                    changes={"customer": customer, "acknowledged_by": by, "note": note})


ACK_REOPENED = "recall.acknowledgement_reopened"


async def _recall_entries(session: AsyncSession, number: str, *actions: str) -> list[Any]:
    """The recall's audit entries of these actions, oldest first: rows of (seq, at, action, changes)."""
    return list((await session.execute(
        select(AuditLog.seq, AuditLog.at, AuditLog.action, AuditLog.changes)
        .where(AuditLog.entity == "recall", AuditLog.entity_key == number, AuditLog.action.in_(actions))
        .order_by(AuditLog.seq))).all())


async def _earlier_acknowledgements(session: AsyncSession, number: str) -> dict[str, list[dict[str, Any]]]:
    """By customer, the acknowledgements a later shipment in the notice set aside (recall.acknowledgement_reopened)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, at, _, c in await _recall_entries(session, number, ACK_REOPENED):
        out.setdefault(c["customer"], []).append(
            {**c["earlier_acknowledgement"], "reopened_at": at.isoformat(), "shipments_added": c["shipments_added"]})
    return out


async def reopen_acknowledgements(session: AsyncSession, *, number: str, customers: list[str],
                                  actor: str = "workflow") -> list[str]:
    """Ask again the customers whose notice gained shipments after they acknowledged (the hold found lots that
    shipped to them between the scope and the hold, and their acknowledgement had been recorded before that).

    The earlier acknowledgement is kept: the `recall.acknowledgement_reopened` entry holds it (who, when, the note)
    with the shipments added since, and the notice lists it under `earlier_acknowledgements`; the notice's own
    acknowledgement is cleared until the customer acknowledges again. Which came first is the audit chain's order
    (`recall.acknowledged` against `recall.scope_changed`): an acknowledgement recorded after the shipment was
    added covers it and stays. Returns the customers asked again; a repeated call (a retry) asks nobody twice."""
    row = await get_recall(session, number)
    entries = await _recall_entries(session, number, "recall.acknowledged", "recall.scope_changed")
    reopened: list[str] = []
    for customer in dict.fromkeys(customers):
        n = (await session.execute(select(RecallNotice).where(RecallNotice.recall_id == row.id,
                                                              RecallNotice.customer == customer))).scalar()
        if n is None:
            raise NotFound(f"recall {number} has no customer {customer!r} to notify", field="customer")
        if n.acknowledged_at is None:
            continue  # not acknowledged, or asked again already (a retry)
        acked = max((seq for seq, _, action, c in entries
                     if action == "recall.acknowledged" and c.get("customer") == customer), default=None)
        added = [(seq, c) for seq, _, action, c in entries if action == "recall.scope_changed"
                 and customer in (c.get("customers") or []) and (acked is None or seq > acked)]
        if not added:
            continue  # acknowledged after the shipments were added: it covers them
        earlier = {"acknowledged_at": n.acknowledged_at.isoformat(), "acknowledged_by": n.acknowledged_by,
                   "note": n.note}
        shipments_added = [{"lot": c["lot"], "quantity": (c.get("shipped_since_scope") or {}).get(customer)}
                           for _, c in added]
        n.acknowledged_at, n.acknowledged_by, n.note = None, None, None
        await session.flush()
        lots = ", ".join(x["lot"] for x in shipments_added)
        await audit(session, actor=actor, action=ACK_REOPENED, entity="recall", key=number,
                    changes=diff(earlier, {"acknowledged_at": None, "acknowledged_by": None, "note": None},
                                 customer=customer, earlier_acknowledgement=earlier, shipments_added=shipments_added,
                                 why=f"the notice gained shipments of lot {lots} after {customer} acknowledged: "
                                     "a new acknowledgement is needed"))
        reopened.append(customer)
    return reopened


# signatures of recall decisions (a lot's and a case's or pallet's): version 1 (no `content_version` key; signed
# before the recall itself was covered) holds the decision only; version 2 also what was signed about the recall
# (`signed_recall`: recall_signed_fields). Each signature is checked in the version it was made in.
DECISION_CONTENT_VERSION = 2


def decision_content(number: str, *, lot: str, decision: str, reviewer: str, role: str, reason: str,
                     signed_recall: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a reviewer signs when deciding a recalled lot: changing any of it afterwards invalidates the signature.

    Without `signed_recall`: version 1, the decision only (how signatures were made before version 2; kept so that
    they are still checked against what they covered). With it: version 2, also the recall's suspect, window and
    reason and the lot's line in the recall's scope."""
    return _with_recall({"recall": number, "lot": lot, "decision": decision, "reviewer": reviewer, "role": role,
                         "reason": reason}, signed_recall)


def _with_recall(content: dict[str, Any], signed_recall: dict[str, Any] | None) -> dict[str, Any]:
    if signed_recall is None:
        return content
    return {**content, "content_version": DECISION_CONTENT_VERSION, "signed_recall": signed_recall}


def _utc_iso(t: datetime | None) -> str | None:
    # one text for one instant, whichever backend read it (a signature's content is compared as JSON text)
    if t is None:
        return None
    return (t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)).isoformat()


def recall_signed_fields(row: Recall, line: dict[str, Any]) -> dict[str, Any]:
    """What a decision's signature says about its recall, as the record holds it now: the suspect (kind and value),
    its window (None without one), the recall's reason, and `line`, the place in the recall's scope of what was
    decided (lot_scope_line, container_scope_line)."""
    window = None if row.window_from is None and row.window_to is None else \
        {"from": _utc_iso(row.window_from), "to": _utc_iso(row.window_to)}
    return {"suspect_kind": row.suspect_kind, "suspect": row.suspect, "window": window, "reason": row.reason,
            "scope": line}


def lot_scope_line(rl: RecallLot) -> dict[str, Any]:
    """A lot's place in the scope a reviewer decides on: held, from what status, how much."""
    return {"action": rl.action, "status_before": rl.status_before, "quantity": rl.quantity}


def container_scope_line(rc: RecallContainer) -> dict[str, Any]:
    """A case's or pallet's place in the scope a reviewer decides on: its level, held, from what status, the recalled
    lots inside and how many units."""
    return {"level": rc.level, "action": rc.action, "status_before": rc.status_before, "lots": list(rc.lots or []),
            "units": rc.units}


def content_version(signed: Any) -> int:
    """The version of a stored signature's content (1: before the recall's content was covered)."""
    return int(signed.get("content_version", 1)) if isinstance(signed, dict) else 1


def _signature_read(sig: Signature, now: dict[str, Any] | None) -> dict[str, Any]:
    """A signature as the API shows it; `now`: the content it is checked against (None: the decision it signed is no
    longer in the record, so nothing can make it valid)."""
    return {"signer": sig.signer, "signer_name": sig.signer_name, "role": sig.role, "meaning": sig.meaning,
            "signed_at": sig.signed_at.isoformat(), "content_hash": sig.content_hash,
            "content_version": content_version(sig.content),
            "valid": now is not None and is_valid(sig, now)}


async def decision_signatures(session: AsyncSession, row: Recall, lots: list[tuple[RecallLot, Lot]],
                              boxes: list[RecallContainer], box_decisions: dict[str, dict[str, Any]]
                              ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The signature of each decision on the recall's lots (by lot number) and cases and pallets (by code), with
    whether it is still valid: checked against the decision and the recall (suspect, window, reason, the line in
    its scope) as the record holds them now, in the content version the signature was made in. A lot's decision
    is its recall_lot line; a box's, its recall.container_decided entry (`box_decisions`, _container_decisions)."""
    number = row.number
    lot_keys = {f"{number}/{lot.number}": (rl, lot) for rl, lot in lots}
    box_keys = {f"{number}/{rc.code}": rc for rc in boxes}
    sigs = (await session.execute(
        select(Signature).where(((Signature.entity == "recall_decision") & Signature.entity_key.in_(list(lot_keys)))
                                | ((Signature.entity == "recall_container_decision")
                                   & Signature.entity_key.in_(list(box_keys))))
        .order_by(Signature.id))).scalars().all() if lot_keys or box_keys else []
    by_lot: dict[str, dict[str, Any]] = {}
    by_box: dict[str, dict[str, Any]] = {}
    for sig in sigs:
        v2 = content_version(sig.content) >= 2
        now: dict[str, Any] | None = None
        if sig.entity == "recall_decision":
            rl, lot = lot_keys[sig.entity_key]
            if rl.decision is not None and rl.decided_by is not None and rl.decided_role is not None \
                    and rl.decision_reason is not None:
                now = decision_content(number, lot=lot.number, decision=rl.decision, reviewer=rl.decided_by,
                                       role=rl.decided_role, reason=rl.decision_reason,
                                       signed_recall=recall_signed_fields(row, lot_scope_line(rl)) if v2 else None)
            by_lot[lot.number] = _signature_read(sig, now)  # the newest, if there were more than one
        else:
            rc = box_keys[sig.entity_key]
            d = box_decisions.get(rc.code)
            if d is not None and d["role"] is not None and d["reason"] is not None:
                now = container_decision_content(
                    number, code=rc.code, decision=d["decision"], reviewer=d["decided_by"], role=d["role"],
                    reason=d["reason"],
                    signed_recall=recall_signed_fields(row, container_scope_line(rc)) if v2 else None)
            by_box[rc.code] = _signature_read(sig, now)
    return by_lot, by_box


async def _status_before_first_hold(session: AsyncSession, row: Recall, rl: RecallLot) -> str:
    """The status a lot goes back to when the last hold on it ends: what it was before the first hold of the chain
    of holds it is in (holds stack: a recall that scoped it while it was on hold recorded `on_hold`)."""
    if rl.status_before != LotStatus.on_hold:
        return rl.status_before
    # the newest earlier recall whose hold on the lot was still on when this one scoped it and that saw it off hold
    earlier = (await session.execute(
        select(RecallLot.status_before).join(Recall, Recall.id == RecallLot.recall_id)
        .where(RecallLot.lot_id == rl.lot_id, RecallLot.action == "held", Recall.id < row.id,
               RecallLot.status_before != LotStatus.on_hold,
               (RecallLot.decided_at.is_(None)) | (RecallLot.decided_at > row.created_at))
        .order_by(Recall.id.desc()).limit(1))).scalar()
    # otherwise an NCR had it on hold first: it has been dismissed or used as is since (it would still hold the lot,
    # or have set its status itself, otherwise), and both of those release the lot
    return earlier or LotStatus.released


async def decision_effect(session: AsyncSession, row: Recall, rl: RecallLot, lot: Lot, *,
                          holding: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
    """What a decision did, read back from the record (so a retried activity answers as the first did): whether the
    lot left on_hold, whether the ERP's block is lifted, what still holds it, the quantity written off. `holding`:
    the other recalls and the NCRs holding the lot, when the decision has just read them."""
    written_off = 0.0
    if rl.decision == "reject":
        entries = (await session.execute(
            select(AuditLog.changes).where(AuditLog.entity == "lot", AuditLog.entity_key == lot.number,
                                           AuditLog.action == "lot.quantity"))).scalars()
        written_off = sum(float((c.get("before") or {}).get("quantity_remaining") or 0) for c in entries
                          if c.get("why") == _written_off_why(row.number))
    # the ERP's block is the recalls' (an NCR's hold is not sent to the ERP): lifted when no other recall holds the
    # lot, even while an NCR still holds it in the hub
    if holding is not None:
        other_recalls, ncrs = holding
    else:
        other_recalls = await holds.recall_holds(session, lot.id, except_recall=row.number)
        ncrs = await holds.ncr_holds(session, lot.id) if lot.status == LotStatus.on_hold else []
    still = holds.named(other_recalls, ncrs) if lot.status == LotStatus.on_hold else []
    return {"lot": lot.number, "item": lot.item.code, "uom": lot.uom, "decision": rl.decision, "status": lot.status,
            "released": rl.decision == "release" and lot.status in (LotStatus.released, LotStatus.quarantine),
            "erp_unblock": rl.decision == "release" and not other_recalls
            and lot.status in (LotStatus.released, LotStatus.quarantine, LotStatus.on_hold),
            "still_held_by": still, "written_off": written_off}


def _written_off_why(number: str) -> str:
    return f"recall {number}: rejected, written off"


async def decide_lot(session: AsyncSession, *, number: str, lot: str, decision: str, reviewer: str, role: str,
                     reason: str, resolver: str, signature: Any = None) -> dict[str, Any]:
    """A reviewer's decision on a held lot: release or reject. Returns its effect (`decision_effect`).

    Holds stack: a release lifts this recall's hold, and the lot goes back to what it was before the first hold
    only when nothing else holds it (another recall that has not decided it, an NCR waiting for its decision);
    otherwise it stays on hold and the answer and the audit entry name what still holds it. A reject rejects the
    lot and writes off what is left of it (the ERP is told, as for an NCR's scrap).

    The electronic signature (signer, signer_name, meaning), if given, is written in the same transaction as the
    decision, so there is never a decision without its signature; a repeated call changes (and signs) nothing."""
    if decision not in ("release", "reject"):
        raise InvalidInput(f"decision {decision!r}: use release or reject", field="decision")
    row = await get_recall(session, number)
    pair = (await session.execute(select(RecallLot, Lot).join(Lot, Lot.id == RecallLot.lot_id)
                                  .where(RecallLot.recall_id == row.id, Lot.number == lot))).first()
    if pair is None or pair[0].action != "held":
        raise Conflict(f"lot {lot!r} is not held by recall {number}: only held lots take a decision", field="lot")
    rl, lot_row = pair
    if rl.decision is not None:
        if rl.decision == decision:
            return await decision_effect(session, row, rl, lot_row)
        raise Conflict(f"lot {lot} was already decided ({rl.decision} by {rl.decided_by})", field="lot")
    rl.decision, rl.decided_by, rl.decided_role, rl.decision_reason, rl.decided_at = \
        decision, reviewer, role, reason, utcnow()
    before = lot_row.status
    still: list[str] = []
    holding: tuple[list[str], list[str]] | None = None  # what else holds the lot, once read (decision_effect too)
    event = True
    if decision == "release":
        if lot_row.status == LotStatus.on_hold:
            holding = (await holds.recall_holds(session, lot_row.id, except_recall=number),
                       await holds.ncr_holds(session, lot_row.id))
            still = holds.named(*holding)
        if lot_row.status != LotStatus.on_hold:
            # rejected (another recall), scrapped or sent to rework (an NCR) since: that stands, nothing to lift
            event = False
        elif still:
            # no `available` event either: the lot is not available, and keeps its `recalled` disposition
            event = False
        else:
            # what a change deferred during the hold asks for (a rework: quarantine; a passing inspection: released)
            back = await holds.deferred_status(session, lot_row) or await _status_before_first_hold(session, row, rl)
            await set_lot_status(session, lot_row, back, actor=reviewer,
                                 why=f"recall {number}: released by {reviewer} ({role}): {reason}")
        disp, pd = "available", {"unset": ["non_conformant"]}
    else:
        await set_lot_status(session, lot_row, LotStatus.rejected, actor=reviewer,
                             why=f"recall {number}: rejected by {reviewer} ({role}): {reason}")
        disp, pd = "non_conformant", {"set": ["non_conformant"]}
    if event:
        await record_event(
            session, key=f"recall-{decision}:{number}:{lot}", event_type="ObjectEvent", biz_step="inspecting",
            disposition=disp, persistent_disposition=pd,
            quantity_list=[{"epcClass": lot_class_uri(lot_row, resolver), "quantity": lot_row.quantity_remaining}],
            biz_transactions=[("testres", hub_uri("recall", number))],
            extensions={"recallDecision": {"number": number, "decision": decision, "reviewer": reviewer,
                                           "role": role, "reason": reason}},
            lot=lot_row, work_order_id=lot_row.work_order_id,
        )
    if decision == "reject" and lot_row.quantity_remaining > 1e-9:
        # written off, as an NCR's scrap is: the workflow tells the ERP (a Material Issue of this quantity)
        await audit(session, actor=reviewer, action="lot.quantity", entity="lot", key=lot_row.number,
                    changes=diff({"quantity_remaining": lot_row.quantity_remaining}, {"quantity_remaining": 0.0},
                                 why=_written_off_why(number)))
        lot_row.quantity_remaining = 0.0
    if still:
        await holds.keep_hold(session, lot_row, released_by=f"recall {number}", still_held_by=still, actor=reviewer,
                              recall=number, reason=reason)
    await session.flush()
    await audit(session, actor=reviewer, action="recall.decided", entity="recall", key=number,
                changes={"lot": lot, "decision": decision, "role": role, "reason": reason,
                         "still_held_by": still, **diff({"lot_status": before}, {"lot_status": lot_row.status})})
    if decision == "release":
        await _release_containers(session, row, resolver, reviewer)
    if signature is not None:
        await record_signature(session, signer=signature.signer, signer_name=signature.signer_name, role=role,
                               meaning=signature.meaning, entity="recall_decision", key=f"{number}/{lot}",
                               content=decision_content(number, lot=lot, decision=decision, reviewer=reviewer,
                                                        role=role, reason=reason,
                                                        signed_recall=recall_signed_fields(row, lot_scope_line(rl))))
    await session.flush()
    return await decision_effect(session, row, rl, lot_row, holding=holding)


async def close(session: AsyncSession, *, number: str) -> dict[str, Any]:
    """Close the recall and keep its report. The recall is closed first, so the report (read from the record) says
    `closed`, with the closing time the record keeps."""
    row = await get_recall(session, number)
    if row.status != "closed":
        row.status = "closed"
        row.closed_at = utcnow()
        await session.flush()
        report = await scope(session, number)
        report["closed_at"] = row.closed_at.isoformat()
        report["held"] = [x["lot"] for x in report["lots"] if x["action"] == "held"]
        report["held_containers"] = [x["code"] for x in report["containers"] if x["action"] == "held"]
        report["shipped_quantity"] = sum(c["quantity"] for c in report["customers"])
        row.report = report
        await session.flush()
        await audit(session, actor="workflow", action="recall.closed", entity="recall", key=number,
                    changes={"held": report["held"], "customers": [c["customer"] for c in report["customers"]]})
    report = closed_report(row)
    assert report is not None
    return report


def closed_report(row: Recall) -> dict[str, Any] | None:
    """The recall's close report, None while it is open. A report stored before close() closed the recall first says
    `"status": "open"`: the answer takes the status and closing time from the record."""
    if row.report is None:
        return None
    if row.closed_at is None or row.report.get("status") == row.status:
        return row.report
    return {**row.report, "status": row.status, "closed_at": row.closed_at.isoformat()}


async def work_orders_shipping(session: AsyncSession, lots: list[str]) -> list[str]:
    """The workflow ids of the open work orders at their shipment stage whose output lot is one of these lots: the
    ones a recall's hold on the lot holds at their shipment gate (or whose shipment it refused)."""
    if not lots:
        return []
    return list((await session.execute(
        select(WorkOrder.workflow_id).join(Lot, Lot.work_order_id == WorkOrder.id)
        .where(Lot.number.in_(lots), Lot.kind == "output", WorkOrder.stage == "shipment",
               WorkOrder.completed_at.is_(None))
        .distinct().order_by(WorkOrder.workflow_id))).scalars())
