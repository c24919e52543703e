"""Item master data: read and correct (GET/PATCH /api/items). Plain async functions; they flush, never commit.

Items arrive with ERP events and receipts (domain/production.upsert_item), which set a GTIN once and never change
it. A wrong GTIN is corrected here, and the correction loses nothing:
- the old GTIN goes to `item_gtin` (its history), so codes printed under it keep naming the item and its lots:
  the code rules that issued them keep their namespace `sgtin:<old GTIN>` and render with it
  (codes.compiled), `codes._legacy_resolve`, the lot resolver (`/01/{gtin}/10/{lot}`) and the trace fall back to
  the history when no item holds the scanned GTIN now;
- the item's unit code rule, if it issues under the old GTIN, gets a new version under the new one, so codes
  issued from now on carry the new GTIN;
- one audit entry (`item.corrected`) with who, when, before and after; the new rule version has its own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain import codes, gs1
from domain.audit import audit, diff
from domain.epcis_ids import GS1_DL, canonical
from domain.models import Code, Item, ItemGtin, Lot, utcnow
from domain.models_codes import CodeRule, SerialBlock
from domain.models_trace import TraceNode

NAME_MAX = 200  # Item.name
_GTIN_LOCK = 7_245_002  # pg_advisory_xact_lock class of GTIN corrections (the audit chain has 7_245_001)


def gtin_problem(value: str) -> str | None:
    """None if `value` is a GTIN-8/12/13/14 with a correct check digit, else what is wrong and what to do."""
    if not value.isdigit():
        return f"gtin {value!r} must be digits only (a GTIN-14, or a GTIN-8/12/13 the hub left-pads with zeros)"
    if len(value) not in (8, 12, 13, 14):
        return f"gtin {value} has {len(value)} digits: give a GTIN-14 (or a GTIN-8, -12 or -13)"
    problem = gs1.check_digit_problem(value)
    return f"gtin {problem.removeprefix('GTIN ')}" if problem else None


async def get_item(session: AsyncSession, code: str, *, lock: bool = False) -> Item:
    q = select(Item).where(Item.code == code)
    item = (await session.execute(q.with_for_update() if lock else q)).scalar()
    if item is None:
        raise NotFound(f"item {code!r} does not exist: check the item code (GET /api/items lists them)", field="code")
    return item


async def gtin_owner(session: AsyncSession, gtin: str, *, besides: int | None = None) -> str | None:
    """The item (other than `besides`) that holds this GTIN now, held it before, or issues a case or pallet under
    it (a code rule's namespace): its code, or None. A GTIN names one trade item: codes under it must too."""
    other = (await session.execute(select(Item.code).where(Item.gtin == gtin, Item.id != besides))).scalar()
    if other is None:
        other = (await session.execute(select(Item.code).join(ItemGtin, ItemGtin.item_id == Item.id).where(
            ItemGtin.gtin == gtin, Item.id != besides))).scalar()
    if other is None:
        other = (await session.execute(select(Item.code).join(CodeRule, CodeRule.item_id == Item.id).where(
            CodeRule.namespace == f"sgtin:{gtin}", Item.id != besides).limit(1))).scalar()
    return other


async def item_for_gtin(session: AsyncSession, gtin: str) -> Item | None:
    """The item holding the GTIN now; else the item that held it before a correction (codes printed then)."""
    item = (await session.execute(select(Item).where(Item.gtin == gtin))).scalar()
    if item is None:
        item = (await session.execute(select(Item).join(ItemGtin, ItemGtin.item_id == Item.id)
                                      .where(ItemGtin.gtin == gtin))).scalar()
    return item


async def lot_under_gtin(session: AsyncSession, gtin: str, number: str) -> Lot | None:
    """The lot `number` made under this GTIN (a batch code `/01/{gtin}/10/{lot}`): of the item holding the GTIN now;
    else of the item that held it before a correction, if the lot was made while it did."""
    lot = (await session.execute(select(Lot).join(Item, Item.id == Lot.item_id).where(
        Lot.number == number, Item.gtin == gtin))).scalar()
    if lot is None:
        lot = (await session.execute(select(Lot).join(ItemGtin, ItemGtin.item_id == Lot.item_id).where(
            Lot.number == number, ItemGtin.gtin == gtin, Lot.created_at <= ItemGtin.retired_at))).scalar()
    return lot


# --- reading --------------------------------------------------------------------------------------------------

async def _issued(session: AsyncSession, item_ids: list[int]) -> dict[tuple[int, str], tuple[int, int]]:
    """{(item id, GTIN): (code blocks, codes)} issued under each GTIN by the items' rules (sgtin namespaces)."""
    if not item_ids:
        return {}
    rows = (await session.execute(
        select(CodeRule.item_id, CodeRule.namespace, func.count(SerialBlock.id), func.coalesce(func.sum(
            SerialBlock.count), 0))
        .join(SerialBlock, SerialBlock.rule_id == CodeRule.id)
        .where(CodeRule.item_id.in_(item_ids), CodeRule.namespace.like("sgtin:%"))
        .group_by(CodeRule.item_id, CodeRule.namespace))).all()
    return {(i, ns.removeprefix("sgtin:")): (int(n), int(total)) for i, ns, n, total in rows}


async def _batch_codes(session: AsyncSession, item_ids: list[int]) -> dict[tuple[int, str], int]:
    """{(item id, GTIN): batch codes} of the items' lots (`.../01/{gtin}/10/{lot}`, domain/events.lot_class_uri)."""
    if not item_ids:
        return {}
    out: dict[tuple[int, str], int] = {}
    rows = (await session.execute(select(Lot.item_id, Code.value).join(Lot, Lot.id == Code.lot_id).where(
        Lot.item_id.in_(item_ids), Code.kind == "batch"))).all()
    for item_id, value in rows:
        g = gs1.parse_digital_link(value).get("01") if "/01/" in value else None
        if g:
            out[(item_id, g)] = out.get((item_id, g), 0) + 1
    return out


async def _views(session: AsyncSession, items: list[Item]) -> list[dict[str, Any]]:
    ids = [i.id for i in items]
    history: dict[int, list[ItemGtin]] = {}
    if ids:
        for h in (await session.execute(select(ItemGtin).where(ItemGtin.item_id.in_(ids))
                                        .order_by(ItemGtin.retired_at, ItemGtin.id))).scalars():
            history.setdefault(h.item_id, []).append(h)
    issued, batches = await _issued(session, ids), await _batch_codes(session, ids)

    def counts(item_id: int, g: str) -> dict[str, int]:
        blocks, n = issued.get((item_id, g), (0, 0))
        return {"code_blocks": blocks, "codes": n, "batch_codes": batches.get((item_id, g), 0)}

    out = []
    for it in items:
        gtins = [{"gtin": h.gtin, "current": False, "retired_at": h.retired_at.isoformat(),
                  "replaced_by": h.replaced_by, "retired_by": h.retired_by, **counts(it.id, h.gtin)}
                 for h in history.get(it.id, [])]
        if it.gtin:
            gtins.append({"gtin": it.gtin, "current": True, "retired_at": None, "replaced_by": None,
                          "retired_by": None, **counts(it.id, it.gtin)})
        out.append({"code": it.code, "name": it.name, "gtin": it.gtin, "uom": it.uom, "gtins": gtins})
    return out


async def item_view(session: AsyncSession, code: str) -> dict[str, Any]:
    """The item's master data and, for each GTIN it has had (former ones first), the code blocks, codes and batch
    codes issued under it."""
    return (await _views(session, [await get_item(session, code)]))[0]


async def list_items(session: AsyncSession, *, code: str | None = None, gtin: str | None = None,
                     limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Items by code, paged. `code`: the codes starting with it; `gtin`: the item holding it now or before."""
    where: list[Any] = []
    if code:
        where.append(Item.code.startswith(code, autoescape=True))
    if gtin:
        g = gtin.zfill(14) if gtin.isdigit() and len(gtin) in (8, 12, 13) else gtin
        where.append(or_(Item.gtin == g, Item.id.in_(select(ItemGtin.item_id).where(ItemGtin.gtin == g))))
    total = (await session.execute(select(func.count()).select_from(Item).where(*where))).scalar_one()
    rows = list((await session.execute(select(Item).where(*where).order_by(Item.code)
                                       .limit(limit).offset(offset))).scalars().all())
    return {"total": total, "limit": limit, "offset": offset, "items": await _views(session, rows)}


# --- correcting -----------------------------------------------------------------------------------------------

async def correct_item(session: AsyncSession, code: str, changes: dict[str, Any], *, actor: str) -> dict[str, Any]:
    """Correct the item's master data (`gtin`, `name`: only the keys given). Returns the item's view."""
    item = await get_item(session, code, lock=True)
    if "name" in changes:
        name = changes["name"]
        if name is not None and not name.strip():
            raise InvalidInput("name is blank: give the item's name (up to 200 characters), or null to clear it",
                               field="name")
    new_gtin = item.gtin
    if "gtin" in changes:
        g = changes["gtin"]
        if g is None:
            raise InvalidInput("gtin: an item's GTIN can be corrected but not removed (codes are issued under it): "
                               "give the correct GTIN-14", field="gtin")
        g = g.strip()
        if problem := gtin_problem(g):
            raise InvalidInput(problem, field="gtin")
        new_gtin = gs1.gtin14(g)
    before = {"name": item.name, "gtin": item.gtin}
    after = {"name": changes.get("name", item.name), "gtin": new_gtin}
    if before == after:
        return await item_view(session, code)  # nothing to correct: no entry, no new rule version
    old_gtin = item.gtin
    if new_gtin != old_gtin:
        assert new_gtin is not None
        if session.bind.dialect.name == "postgresql":  # two corrections to one GTIN at once: one waits, then sees it
            await session.execute(text("SELECT pg_advisory_xact_lock(CAST(:k AS integer), hashtext(:g))"),
                                  {"k": _GTIN_LOCK, "g": new_gtin})
        other = await gtin_owner(session, new_gtin, besides=item.id)
        if other is not None:
            raise Conflict(f"gtin {new_gtin} already belongs to item {other!r} (its GTIN now, before a correction, "
                           f"or its case or pallet GTIN): a GTIN names one trade item; check item {other!r} "
                           "or give another GTIN", field="gtin")
        own_package = (await session.execute(select(CodeRule.level).where(
            CodeRule.item_id == item.id, CodeRule.level != "unit", CodeRule.namespace == f"sgtin:{new_gtin}")
            .limit(1))).scalar()
        if own_package is not None:
            raise Conflict(f"gtin {new_gtin} is the {own_package} GTIN of item {code!r}: a unit needs a GTIN of its "
                           "own", field="gtin")
        # the new GTIN may be one the item held before (a correction undone): then it is current again
        restored = (await session.execute(select(ItemGtin).where(ItemGtin.item_id == item.id,
                                                                 ItemGtin.gtin == new_gtin))).scalar()
        if restored is not None:
            await session.delete(restored)
            await session.flush()
        if old_gtin:
            session.add(ItemGtin(item_id=item.id, gtin=old_gtin, retired_at=utcnow(), replaced_by=new_gtin,
                                 retired_by=actor))
        item.gtin = new_gtin
    if "name" in changes:
        item.name = changes["name"]
    await session.flush()
    rule_version = None
    if new_gtin != old_gtin and old_gtin:
        rule_version = await _move_unit_rule(session, item, old_gtin, new_gtin, actor=actor)
    context: dict[str, Any] = {"unit_rule_version": rule_version} if rule_version else {}
    if new_gtin != old_gtin:
        context["lineage_nodes_rekeyed"] = await _rekey_lot_nodes(session, item, old_gtin, new_gtin)
    await audit(session, actor=actor, action="item.corrected", entity="item", key=item.code,
                changes=diff(before, after, **context))
    return await item_view(session, code)


async def _move_unit_rule(session: AsyncSession, item: Item, old: str, new: str, *,
                          actor: str) -> int | None:
    """A new version of the item's unit rule issuing under the new GTIN, if the current one issues under the old
    (the versions before keep the old GTIN: the codes they issued stay as printed). Its version number, or None."""
    rule = (await session.execute(select(CodeRule).where(CodeRule.item_id == item.id, CodeRule.level == "unit")
                                  .order_by(CodeRule.version.desc()).limit(1))).scalar()
    if rule is None or rule.namespace != f"sgtin:{old}":
        return None
    spec = dict(rule.spec)
    spec["elements"] = [({**e, "value": new} if e.get("ai") == "01" and e.get("value") == old else e)
                        for e in spec.get("elements") or []]
    saved = await codes.save_rule(session, item=item.code, level="unit", spec=spec, actor=actor)
    return int(saved.version)


def _lot_node_uri(gtin: str | None, number: str) -> str:
    # epcis_index.lot_node_uri for a lot of an item with this GTIN
    return canonical(f"{GS1_DL}/01/{gtin}/10/{number}") if gtin else f"urn:tracehub:lot:{number}"


async def _rekey_lot_nodes(session: AsyncSession, item: Item, old: str | None, new: str | None) -> int:
    """The lineage nodes of the item's lots take the class identifier under the new GTIN, the one the hub's events
    name them by from now on (domain/events.lot_class_uri): a lot has one node (its id is the lot id), so an event
    after the correction meets the lineage recorded before it. Only the identifiers the hub gave (under the old
    GTIN) change; a node a partner's event already holds for the new identifier keeps it. How many changed."""
    rows = (await session.execute(select(TraceNode.id, TraceNode.uri, Lot.number).join(
        Lot, Lot.id == TraceNode.lot_id).where(Lot.item_id == item.id))).all()
    renames = {nid: _lot_node_uri(new, number) for nid, uri, number in rows if uri == _lot_node_uri(old, number)}
    if not renames:
        return 0
    wanted = sorted(set(renames.values()))
    held: set[str] = set()
    for i in range(0, len(wanted), 1000):  # a bound parameter each: SQLite allows some thousands in one statement
        held |= set((await session.execute(select(TraceNode.uri).where(TraceNode.uri.in_(wanted[i:i + 1000]))))
                    .scalars())
    params = [{"b_id": nid, "b_uri": uri} for nid, uri in renames.items() if uri not in held]
    if params:
        t = TraceNode.__table__
        await session.execute(update(t).where(t.c.id == bindparam("b_id")).values(uri=bindparam("b_uri")), params)
    return len(params)
