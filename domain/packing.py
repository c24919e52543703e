"""Aggregation: units into cases, cases onto pallets (SSCC), as EPCIS AggregationEvents, with the
history of what was where when. Used codes get their facts (used_code rows); unused ones stay virtual."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain.audit import audit, diff
from domain.codes import CodeInfo, code_key, lookup
from domain.events import hub_uri, record_event
from domain.models import EpcisEvent, Lot, LotStatus, Shipment, utcnow
from domain.models_codes import Container, Containment, UsedCode
from domain.models_trace import Recall, RecallContainer

RANK = {"unit": 0, "case": 1, "pallet": 2}
MAX_DEPTH = 10


async def mark_used(session: AsyncSession, info: CodeInfo, state: str, *, lot: Lot | None = None,
                    pool_id: int | None = None, line: str | None = None, at: datetime | None = None) -> UsedCode:
    """Record (or advance) the facts of a used code."""
    used = info.used
    if used is None:
        used = (await session.execute(select(UsedCode).where(UsedCode.value == info.value))).scalar()
    if used is None:
        assert info.view is not None and info.seq is not None
        lot = lot or info.lot
        used = UsedCode(value=info.value, block_id=info.view.block.id, seq=info.seq, level=info.view.rule.level,
                        state=state, lot_id=lot.id if lot else None, pool_id=pool_id, line=line,
                        used_at=at or utcnow())
        session.add(used)
    else:
        used.state = state
    await session.flush()
    info.used = used
    return used


async def _issued(session: AsyncSession, code: str, role: str) -> CodeInfo:
    info = await lookup(session, code)
    if info.status == "unknown":
        raise NotFound(f"{role} {code!r} was never issued by the hub ({info.reason}): check the code", field=role)
    if info.status != "issued":
        raise Conflict(f"{role} {code!r} is {info.status}" + (f" ({info.reason})" if info.reason else "")
                       + ": it may not be packed", field=role)
    return info


def epc(value: str, resolver: str) -> str:
    """The EPC of a code in EPCIS events: the constrained Digital Link (no query string)."""
    return f"{resolver.rstrip('/')}{value}" if value.startswith("/") else f"urn:tracehub:code:{value}"


async def _container(session: AsyncSession, info: CodeInfo) -> Container:
    c = (await session.execute(select(Container).where(Container.code == info.value))).scalar()
    if c is None:
        assert info.view is not None
        c = Container(code=info.value, level=info.view.rule.level, status="open")
        session.add(c)
        await session.flush()
    return c


ON_HOLD = "on_hold"  # container.status while a recall holds it (domain/recall.py)
REJECTED = "rejected"  # container.status once a recall's reviewer rejected it (domain/recall.py): it never ships


async def _refuse_held(session: AsyncSession, box: Container, what: str, field: str) -> None:
    """A case or pallet a recall holds, or one a recall's reviewer rejected, may not be packed onto, packed, or
    shipped: the refusal names the recall."""
    if box.status == REJECTED:
        raise Conflict(f"{box.level} {box.code} was rejected by a recall's reviewer: it may not be {what}; its "
                       "units are to be scrapped", field=field)
    if box.status != ON_HOLD:
        return
    recall = (await session.execute(
        select(Recall.number).join(RecallContainer, RecallContainer.recall_id == Recall.id)
        .where(RecallContainer.code == box.code, RecallContainer.held_at.is_not(None),
               RecallContainer.released_at.is_(None)).order_by(Recall.id.desc()))).scalars().first()
    raise Conflict(f"{box.level} {box.code} is on hold by recall {recall or '(unknown)'}: it may not be {what} "
                   "until a reviewer has released the recalled lots inside it, or the box itself (a decision on "
                   "the recall's container)", field=field)


def _event_key(action: str, parent: str, children: list[str], at: datetime) -> str:
    h = hashlib.sha256("\n".join(sorted(children)).encode()).hexdigest()[:24]
    return f"{action}:{parent}:{h}:{at.isoformat()}"


async def _aggregation_event(session: AsyncSession, *, key: str, action: str, parent: str, children: list[str],
                             at: datetime, resolver: str, read_point: str | None) -> EpcisEvent:
    row = await record_event(
        session, key=key, event_type="AggregationEvent", action=action,
        biz_step="packing" if action == "ADD" else "unpacking",
        disposition="in_progress" if action == "ADD" else None, event_time=at,
        read_point=read_point, parent_id=parent, child_epcs=children, extensions=None)
    # parentID and childEPCs are part of the event: its hash id and its query and lineage indexes include them
    return row


def _named(operator: str | None) -> dict[str, str]:
    """The station operator a request names, as audit data (never the entry's actor)."""
    return {"operator": operator} if operator else {}


async def _lock_codes(session: AsyncSession, codes: list[str]) -> None:
    """Serialise packers of the same codes until their transactions end: a second packer of a unit waits for the
    first, then sees its containment and is refused ("unpack it first") instead of failing on the unique index.
    PostgreSQL: transaction-scoped advisory locks, taken in one order so two packers never wait for each other.
    SQLite needs none: every writing transaction begins IMMEDIATE, so writers run one at a time."""
    if session.bind.dialect.name != "postgresql":
        return
    keys = sorted({int.from_bytes(hashlib.sha256(f"code:{code_key(c)}".encode()).digest()[:8], "big", signed=True)
                   for c in codes})
    for k in keys:
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": k})


# lots whose units may not be packed, and why (in words for the refusal)
_NOT_PACKABLE = {LotStatus.on_hold: "on hold (an NCR is open)", LotStatus.rejected: "rejected",
                 LotStatus.quarantine: "in quarantine (not released)"}


async def pack(session: AsyncSession, *, parent: str, children: list[str], actor: str, resolver: str,
               at: datetime | None = None, read_point: str | None = None,
               operator: str | None = None) -> dict[str, Any]:
    """Pack `children` (units into a case, or cases onto a pallet) and record an AggregationEvent ADD.
    Refuses a unit already in another container, a unit of a lot on hold, and a shipped parent. `actor` is who
    is logged in (the audit entry's actor); `operator`, who packed at the station, is kept as data."""
    if not children:
        raise InvalidInput("give at least one child code to pack", field="children")
    at = at or utcnow()
    await _lock_codes(session, [parent, *children])
    p = await _issued(session, parent, "parent")
    assert p.view is not None
    if p.view.rule.level == "unit":
        raise InvalidInput(f"parent {parent!r} is a unit code: pack into a case or pallet code (SSCC)",
                           field="parent")
    container = await _container(session, p)
    if container.status == "shipped":
        raise Conflict(f"{p.view.rule.level} {p.value} was shipped ({container.shipment}) on "
                       f"{container.shipped_at:%Y-%m-%d}: nothing more may be packed onto it", field="parent")
    await _refuse_held(session, container, "packed onto", "parent")
    # a parent that is itself packed in a shipped container is shipped too
    new: list[CodeInfo] = []
    seen: set[str] = set()
    for code in children:
        c = await _issued(session, code, "child")
        assert c.view is not None
        if c.value in seen:
            continue
        seen.add(c.value)
        if c.value == p.value:
            raise InvalidInput(f"{c.value} cannot be packed into itself", field="children")
        if RANK[c.view.rule.level] >= RANK[p.view.rule.level]:
            raise InvalidInput(f"a {c.view.rule.level} ({c.value}) cannot go into a {p.view.rule.level}: "
                               "units go into cases, cases onto pallets", field="children")
        if c.view.rule.level == "unit":
            lot = c.lot
            if lot is not None and lot.status in _NOT_PACKABLE:
                raise Conflict(f"unit {c.value} is of lot {lot.number}, which is {_NOT_PACKABLE[lot.status]}: it "
                               "may not be packed until the lot is released", field="children")
        else:
            child_container = await _container(session, c)
            if child_container.status == "shipped":
                raise Conflict(f"{c.view.rule.level} {c.value} has shipped: it cannot be packed again",
                               field="children")
            await _refuse_held(session, child_container, "packed", "children")
            # a case whose units' lot went on hold (or was rejected) after it was packed stays where it is
            held = (await session.execute(
                select(Lot.number, Lot.status, UsedCode.value)
                .join(UsedCode, (UsedCode.lot_id == Lot.id) & (UsedCode.level == "unit"))
                .join(Containment, (Containment.child == UsedCode.value) & Containment.unpacked_at.is_(None))
                .where(Containment.parent == c.value, Lot.status.in_(list(_NOT_PACKABLE))).limit(1))).first()
            if held is not None:
                raise Conflict(f"{c.view.rule.level} {c.value} holds unit {held[2]} of lot {held[0]}, which is "
                               f"{_NOT_PACKABLE[held[1]]}: it may not be packed onto a pallet until the lot is "
                               "released (or the unit is unpacked)", field="children")
        open_row = (await session.execute(select(Containment).where(
            Containment.child == c.value, Containment.unpacked_at.is_(None)))).scalar()
        if open_row is not None:
            if open_row.parent == p.value:
                continue  # already there: packing again is harmless
            raise Conflict(f"{c.view.rule.level} {c.value} is already packed in {open_row.parent} since "
                           f"{open_row.packed_at:%Y-%m-%d %H:%M}: unpack it first", field="children")
        new.append(c)
    if not new:
        return {"parent": p.value, "packed": [], "event_id": None}
    key = _event_key("pack", p.value, [c.value for c in new], at)
    ev = await _aggregation_event(session, key=key, action="ADD", parent=epc(p.value, resolver),
                                  children=[epc(c.value, resolver) for c in new], at=at, resolver=resolver,
                                  read_point=read_point)
    # the used-code state of each child (and the parent) before: the audit entry carries before and after
    states_before = {c.value: (c.used.state if c.used is not None else "issued") for c in [*new, p]}
    for c in new:
        session.add(Containment(parent=p.value, child=c.value, child_level=c.view.rule.level,  # type: ignore
                                packed_at=at, pack_event=ev.event_id, actor=operator or actor))
        await mark_used(session, c, "packed", at=at)
    await mark_used(session, p, "packed" if p.used is None else p.used.state, at=at)
    await session.flush()
    await audit(session, actor=actor, action="codes.packed", entity="container", key=p.value,
                changes=diff({"contains": [], "states": states_before},
                             {"contains": [c.value for c in new],
                              "states": {c.value: c.used.state for c in [*new, p] if c.used is not None}},
                             children=[c.value for c in new], event=ev.event_id, **_named(operator)))
    return {"parent": p.value, "packed": [c.value for c in new], "event_id": ev.event_id}


async def unpack(session: AsyncSession, *, parent: str, children: list[str] | None, actor: str, resolver: str,
                 at: datetime | None = None, read_point: str | None = None,
                 operator: str | None = None) -> dict[str, Any]:
    """Take children out (all of them if `children` is None) and record an AggregationEvent DELETE."""
    at = at or utcnow()
    p = await lookup(session, parent)
    c = (await session.execute(select(Container).where(Container.code == p.value))).scalar()
    if c is None:
        raise NotFound(f"{parent!r} has never been packed: nothing to unpack", field="parent")
    if c.status == "shipped":
        raise Conflict(f"{p.value} has shipped: it cannot be unpacked here", field="parent")
    q = select(Containment).where(Containment.parent == p.value, Containment.unpacked_at.is_(None))
    rows = (await session.execute(q)).scalars().all()
    wanted = None
    if children is not None:
        wanted = {(await lookup(session, ch)).value for ch in children}
        missing = wanted - {r.child for r in rows}
        if missing:
            raise Conflict(f"{', '.join(sorted(missing))} is not in {p.value} now: nothing to unpack",
                           field="children")
        rows = [r for r in rows if r.child in wanted]
    if not rows:
        return {"parent": p.value, "unpacked": [], "event_id": None}
    key = _event_key("unpack", p.value, [r.child for r in rows], at)
    ev = await _aggregation_event(session, key=key, action="DELETE", parent=epc(p.value, resolver),
                                  children=[epc(r.child, resolver) for r in rows], at=at, resolver=resolver,
                                  read_point=read_point)
    for r in rows:
        r.unpacked_at = at
        r.unpack_event = ev.event_id
    await session.flush()
    await audit(session, actor=actor, action="codes.unpacked", entity="container", key=p.value,
                changes=diff({"contains": [r.child for r in rows]}, {"contains": []},
                             children=[r.child for r in rows], event=ev.event_id, **_named(operator)))
    return {"parent": p.value, "unpacked": [r.child for r in rows], "event_id": ev.event_id}


def _open_at(at: datetime | None) -> Any:
    if at is None:
        return Containment.unpacked_at.is_(None)
    return (Containment.packed_at <= at) & or_(Containment.unpacked_at.is_(None), Containment.unpacked_at > at)


async def contents(session: AsyncSession, code: str, *, at: datetime | None = None) -> dict[str, Any]:
    """Everything in a case or pallet (now, or at time `at`), down to units: a tree and the flat units."""
    info = await lookup(session, code)
    root = info.value
    level = info.view.rule.level if info.view else None
    tree: dict[str, Any] = {"code": root, "level": level, "children": []}
    frontier = {root: tree}
    units: list[str] = []
    for _ in range(MAX_DEPTH):  # one query per level, not per node
        if not frontier:
            break
        rows = (await session.execute(select(Containment).where(
            Containment.parent.in_(frontier), _open_at(at)).order_by(Containment.child))).scalars().all()
        nxt: dict[str, dict[str, Any]] = {}
        for r in rows:
            node = {"code": r.child, "level": r.child_level, "packed_at": r.packed_at.isoformat(), "children": []}
            frontier[r.parent]["children"].append(node)
            if r.child_level == "unit":
                units.append(r.child)
            else:
                nxt[r.child] = node
        frontier = nxt
    return {"code": root, "level": level, "at": at.isoformat() if at else None, "tree": tree,
            "units": sorted(units), "unit_count": len(units)}


async def history(session: AsyncSession, code: str) -> list[dict[str, Any]]:
    """Every packing of this code, as parent or child, in time order."""
    return await history_of(session, (await lookup(session, code)).value)


async def history_of(session: AsyncSession, value: str, *, as_child: bool = False) -> list[dict[str, Any]]:
    """Every packing of a code given in the packing tables' form (`/00/{sscc}`, `/01/{gtin}/21/{serial}`), as
    parent or child (`as_child`: only those that packed it into something), in time order (history() without the
    code's lookup)."""
    which = Containment.child == value if as_child else or_(Containment.child == value, Containment.parent == value)
    rows = (await session.execute(select(Containment).where(which).order_by(
        Containment.packed_at, Containment.id))).scalars().all()
    return [{"parent": r.parent, "child": r.child, "packed_at": r.packed_at.isoformat(),
             "unpacked_at": r.unpacked_at.isoformat() if r.unpacked_at else None,
             "pack_event": r.pack_event, "unpack_event": r.unpack_event} for r in rows]


async def parent_of(session: AsyncSession, value: str) -> str | None:
    return (await session.execute(select(Containment.parent).where(
        Containment.child == value, Containment.unpacked_at.is_(None)))).scalar()


async def ship_container(session: AsyncSession, *, code: str, shipment: str, actor: str, resolver: str,
                         at: datetime | None = None, operator: str | None = None) -> dict[str, Any]:
    """Put a pallet (or case) on a shipment: it takes nothing more, and an ObjectEvent shipping records it.

    The shipment must exist (the work order ships its lot, or the ERP's delivery) and every unit inside must
    come from a lot on it; the cases on a pallet go with it. Idempotent on (container, shipment)."""
    at = at or utcnow()
    info = await _issued(session, code, "container")
    c = await _container(session, info)
    if c.status == "shipped":
        if c.shipment != shipment:
            raise Conflict(f"container {c.code} was already shipped on {c.shipment}: it cannot also leave on "
                           f"{shipment}", field="code")
        return {"code": c.code, "shipment": c.shipment, "shipped_at": c.shipped_at.isoformat(),  # type: ignore
                "cases": []}
    await _refuse_held(session, c, "shipped", "code")
    sh = (await session.execute(select(Shipment).where(Shipment.number == shipment))).scalar()
    if sh is None:
        raise NotFound(f"shipment {shipment!r} is not known: ship the lot first (the work order's shipment), then "
                       "put its containers on it", field="shipment")
    inside = await contents(session, code)
    on_shipment = {line.lot_id for line in sh.lines}
    lots = dict((await session.execute(select(UsedCode.value, UsedCode.lot_id).where(
        UsedCode.value.in_(inside["units"])))).all()) if inside["units"] else {}
    stray = sorted({v for v in inside["units"] if lots.get(v) not in on_shipment})
    if stray:
        numbers = sorted({n for n in (await session.execute(select(Lot.number).where(Lot.id.in_(
            {lots[v] for v in stray if lots.get(v)})))).scalars()})
        raise Conflict(f"container {c.code} holds {len(stray)} unit(s) from lots not on shipment {shipment} "
                       f"({', '.join(numbers) or 'no lot'}; e.g. {stray[0]}): unpack them or ship their lot first",
                       field="code")
    cases = []
    before = {"status": c.status, "shipment": c.shipment,
              "code_state": info.used.state if info.used is not None else "issued"}
    nested = [n for n in _walk(inside["tree"]) if n["level"] != "unit" and n["code"] != c.code]
    for node in [{"code": c.code}, *nested]:
        box = c if node["code"] == c.code else await _container(session, await _issued(session, node["code"],
                                                                                       "container"))
        if box.status == "shipped":
            continue
        await _refuse_held(session, box, "shipped", "code")
        box.status, box.shipment, box.shipped_at = "shipped", shipment, at
        if box is not c:
            cases.append(box.code)
    await mark_used(session, info, "shipped", at=at)
    await record_event(session, key=f"ship-container:{c.code}:{shipment}", event_type="ObjectEvent",
                       biz_step="shipping", disposition="in_transit", event_time=at,
                       epc_list=[epc(c.code, resolver)],
                       # as the lot's shipping event: the customer's order (our sales order) and the despatch advice
                       biz_transactions=[*([("po", hub_uri("salesorder", sh.sales_order))] if sh.sales_order else []),
                                         ("desadv", hub_uri("shipment", shipment))],
                       destination_list=[{"type": "owning_party", "destination": hub_uri("customer", sh.customer)}])
    await audit(session, actor=actor, action="container.shipped", entity="container", key=c.code,
                changes=diff(before, {"status": c.status, "shipment": shipment, "code_state": "shipped"},
                             shipment=shipment, customer=sh.customer, units=inside["unit_count"], cases=cases,
                             **_named(operator)))
    return {"code": c.code, "shipment": shipment, "shipped_at": at.isoformat(), "cases": cases}


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("children", []):
        out += _walk(child)
    return out
