"""Code issuance: rules per item and level (versioned), blocks of sequence numbers (one row per block,
never per code), and resolving any code back to its block, rule version, lot and state.

Concurrency: a block is carved from its namespace's counter by one `UPDATE ... SET next_seq = next_seq + n
... RETURNING`, which the database serialises (a row lock on PostgreSQL, the write lock on SQLite), inside
the same transaction that inserts the block. Two issuers can therefore never get overlapping ranges, and a
retried issue finds its block by its business key instead of carving a second one.
"""

from __future__ import annotations

import bisect
import json
import secrets
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Integer, and_, bindparam, func, inspect, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached

from core.db import conflict_insert
from core.errors import Conflict, InvalidInput, NotFound
from domain import gs1
from domain.audit import PLACEHOLDER_ACTOR, audit, diff
from domain.code_rules import (
    LEGACY_HOUSE_DEFAULT,
    LEVELS,
    BoundRule,
    CompiledRule,
    IssueContext,
    Rendered,
    RuleSpec,
    Var,
    default_spec,
    house_codes_could_meet,
    namespace_of,
    parse_spec,
    validate_spec,
)
from domain.events import lot_class_uri, record_event
from domain.models import Code, CodeBlock, Inspection, Item, ItemGtin, Lot, WorkOrder
from domain.models_codes import CodeCounter, CodeRange, CodeRule, SerialBlock, UsedCode

SERIAL_WIDTH = 12  # the default rule: GTIN + a 12-digit serial


def serial_text(seq: int) -> str:
    """Serial of the legacy blocks (before rules): the sequence number, 12 digits."""
    return str(seq).zfill(SERIAL_WIDTH)


# --- rules ----------------------------------------------------------------------------------------

_compiled: dict[int, CompiledRule] = {}  # rule versions are immutable once saved


def compiled(rule: CodeRule, gtin: str | None) -> CompiledRule:
    c = _compiled.get(rule.id)
    if c is None:
        # a GS1 rule version issues under the GTIN it was saved with (its namespace), not the item's GTIN of today:
        # after a GTIN correction (domain/items.py) the codes it issued keep rendering, and resolving, as printed
        if rule.namespace.startswith("sgtin:"):
            gtin = rule.namespace.removeprefix("sgtin:")
        c = CompiledRule(RuleSpec.model_validate(rule.spec), level=rule.level, secret=rule.secret, gtin=gtin)
        _compiled[rule.id] = c
    return c


# --- caches of what never changes once committed: rule versions and blocks ------------------------------
# Filled only from sessions that read committed data only (`session.info["read_only"]`, the read session
# factory): a row read inside a writing transaction may still be rolled back, and its id used again. Any
# session may read them. Each holds detached copies, which a session takes in with `merge(load=False)`.
# Lots, used codes, code ranges and inspections change: they are always read from the database.

_MAX_CACHED_BLOCKS = 50_000
_rule_by_id: dict[int, CodeRule] = {}
_rules_of: dict[str, tuple[CodeRule, ...]] = {}  # candidate query -> versions, newest first (may be stale)
_block_by_id: dict[int, SerialBlock] = {}
# namespace -> (first_seqs, blocks), sorted; replaced whole, never changed in place (event loops in other
# threads may be reading it: a test server, say)
_blocks_of: dict[str, tuple[tuple[int, ...], tuple[SerialBlock, ...]]] = {}
_bound: dict[int, tuple[str | None, str | None, BoundRule]] = {}  # block id -> (lot number, gtin, bound)


def _fills_cache(session: AsyncSession) -> bool:
    return bool(session.info.get("read_only"))


def _detached_copy(obj: Any) -> Any:
    cls = type(obj)
    copy = cls(**{a.key: getattr(obj, a.key) for a in inspect(cls).column_attrs})
    make_transient_to_detached(copy)
    return copy


def _take(session: AsyncSession, cached: Any) -> Any:
    """The session's own instance of a cached row, without SQL."""
    return session.sync_session.merge(cached, load=False)


def clear_caches() -> None:
    for c in (_rule_by_id, _rules_of, _block_by_id, _blocks_of, _bound):
        c.clear()


def _remember_rule(session: AsyncSession, rule: CodeRule) -> CodeRule | None:
    """The cached copy of the rule version; None unless this session may fill the cache."""
    if not _fills_cache(session):
        return None
    cached = _rule_by_id.get(rule.id)
    if cached is None:
        cached = _rule_by_id[rule.id] = _detached_copy(rule)
    return cached


async def _get_rule(session: AsyncSession, rule_id: int) -> CodeRule | None:
    cached = _rule_by_id.get(rule_id)
    if cached is not None:
        return _take(session, cached)
    rule = await session.get(CodeRule, rule_id)
    if rule is not None:
        _remember_rule(session, rule)
    return rule


def _remember_block(session: AsyncSession, block: SerialBlock) -> None:
    if not _fills_cache(session) or block.id in _block_by_id:
        return
    if len(_block_by_id) >= _MAX_CACHED_BLOCKS:
        _block_by_id.clear()
        _blocks_of.clear()
        _bound.clear()
    copy = _detached_copy(block)
    _block_by_id[block.id] = copy
    firsts, blocks = _blocks_of.get(block.namespace, ((), ()))
    i = bisect.bisect_left(firsts, block.first_seq)
    _blocks_of[block.namespace] = (firsts[:i] + (block.first_seq,) + firsts[i:], blocks[:i] + (copy,) + blocks[i:])


def _cached_block_of(namespace: str, seq: int) -> SerialBlock | None:
    """The cached block holding `seq`. Blocks of a namespace never overlap, so it is the only one."""
    firsts, blocks = _blocks_of.get(namespace, ((), ()))
    i = bisect.bisect_right(firsts, seq) - 1
    if i >= 0 and blocks[i].first_seq <= seq < blocks[i].first_seq + blocks[i].count:
        return blocks[i]
    return None


async def get_item(session: AsyncSession, code: str) -> Item:
    item = (await session.execute(select(Item).where(Item.code == code))).scalar()
    if item is None:
        raise NotFound(f"item {code!r} does not exist: check the item code (items arrive with work orders)",
                       field="item")
    return item


def _serial_layout(c: CompiledRule) -> tuple[Any, int | None]:
    """What a version's sequence-carrying value looks like: its structure and its length (None if variable)."""
    if c.seq_field is None:
        return None, None
    toks = c.fields[c.seq_field]
    sig = tuple(repr(t) for t in toks)
    fixed = all(not (hasattr(t, "name") and getattr(t, "width", 0) is None) for t in toks)
    width = sum(1 if t.__class__.__name__ == "Check" else getattr(t, "width", None) or len(t)  # type: ignore
                for t in toks) if fixed else None
    return sig, width


async def save_rule(session: AsyncSession, *, item: str, level: str, spec: dict[str, Any],
                    actor: str = "system") -> CodeRule:
    """Validate and save a new version of the item's rule at this level. Issued codes keep their version."""
    it = await get_item(session, item)
    parsed = parse_spec(spec)
    validate_spec(parsed, level=level, gtin=it.gtin)
    ns = namespace_of(parsed, item_code=it.code, level=level, gtin=it.gtin)
    if ns.startswith("sgtin:") and level == "unit" and it.gtin and parsed.elements:
        g = next(e.value or it.gtin for e in parsed.elements if e.ai == "01")
        if g != it.gtin:
            raise InvalidInput(f"part 1 (AI 01 GTIN): {g} is not the item's GTIN {it.gtin}; unit codes carry "
                               "the item's own GTIN (use a case GTIN at case level)", field="spec")
    if ns.startswith("sgtin:") and level != "unit":
        await _check_package_gtin(session, it, level, ns.removeprefix("sgtin:"))
    new = CompiledRule(parsed, level=level, secret="00" * 16, gtin=it.gtin)
    # every earlier version sharing the namespace shares the counter and the permutation key; refuse a
    # change of structure that could make a new code equal an old one
    previous = (await session.execute(select(CodeRule).where(CodeRule.namespace == ns)
                                      .order_by(CodeRule.id))).scalars().all()
    secret = previous[0].secret if previous else secrets.token_hex(16)
    sig, width = _serial_layout(new)
    for p in previous:
        pc = CompiledRule(RuleSpec.model_validate(p.spec), level=p.level, secret=p.secret, gtin=it.gtin)
        psig, pwidth = _serial_layout(pc)
        if psig == sig:
            continue
        if width is not None and pwidth is not None and width != pwidth:
            continue
        raise InvalidInput(
            f"version {p.version} ({p.level}) of this code space has a {pwidth or 'variable'}-character serial "
            f"with another structure, so a new code could repeat an issued one: keep the structure of the "
            f"sequence part or change its total length", field="spec")
    if ns.startswith("house:") and (clash := await house_clash(session, parsed, ns)) is not None:
        raise Conflict(f"the codes of this rule could read the same as those of {clash}, and a code must name "
                       f"one thing: give the rule a literal of its own (for instance the item code {it.code!r}) or "
                       "another length", field="spec")
    prior = (await session.execute(select(CodeRule).where(CodeRule.item_id == it.id, CodeRule.level == level)
                                   .order_by(CodeRule.version.desc()).limit(1))).scalar()
    last = prior.version if prior is not None else None
    rule = CodeRule(item_id=it.id, level=level, version=(last or 0) + 1, spec=parsed.model_dump(exclude_none=True),
                    namespace=ns, secret=secret, created_by=actor)
    session.add(rule)
    await session.flush()
    _rules_of.clear()  # lookups in this process see the new version at once (others find it on a miss)
    await audit(session, actor=actor, action="code_rule.saved", entity="code_rule", key=f"{it.code}:{level}",
                changes=diff(None if prior is None else {"version": prior.version, "spec": prior.spec},
                             {"version": rule.version, "spec": rule.spec}, version=rule.version, spec=rule.spec))
    return rule


# a saved house rule version's clash (or None), by (id, code space, spec): versions never change, and save_rule
# refuses a new version that would clash with one, so the answer stays (the key guards against a reused id)
_clash_of: dict[tuple[int, str, str], str | None] = {}


async def rule_clash(session: AsyncSession, rule: CodeRule, spec: RuleSpec) -> str | None:
    """house_clash for a saved rule version, worked out once per version (issuance asks before every block)."""
    key = (rule.id, rule.namespace, json.dumps(rule.spec, sort_keys=True))
    if key not in _clash_of:
        _clash_of[key] = await house_clash(session, spec, rule.namespace)
    return _clash_of[key]


async def house_clash(session: AsyncSession, spec: RuleSpec, namespace: str) -> str | None:
    """The first house rule version of another code space (another item, or another level) whose codes could read
    the same as codes of `spec`, as "item 'X' (unit rule version 2)"; None if there is none. Every version counts:
    the codes issued under old versions keep their meaning."""
    rows = (await session.execute(
        select(CodeRule, Item.code).join(Item, Item.id == CodeRule.item_id)
        .where(CodeRule.namespace.like("house:%"), CodeRule.namespace != namespace)
        .order_by(CodeRule.id))).all()
    for rule, item_code in rows:
        if house_codes_could_meet(spec, RuleSpec.model_validate(rule.spec)):
            return f"item {item_code!r} ({rule.level} rule version {rule.version})"
    return None


def _legacy_house_default(rule: CodeRule) -> bool:
    return (rule.level == "unit" and rule.namespace.startswith("house:") and rule.created_by == "system"
            and RuleSpec.model_validate(rule.spec) == RuleSpec.model_validate(LEGACY_HOUSE_DEFAULT))


async def _check_package_gtin(session: AsyncSession, it: Item, level: str, gtin: str) -> None:
    """A case or pallet identified by GTIN + serial is its own trade item (GS1: each packaging level has its own
    GTIN, often the unit's with indicator digit 1-8): not the unit's GTIN, and no other item's GTIN."""
    if gtin == it.gtin:
        raise InvalidInput(f"part 1 (AI 01 GTIN): {gtin} is the unit GTIN of item {it.code!r}; a {level} is its "
                           "own trade item: give the GTIN of the {level} (e.g. the unit's with an indicator "
                           "digit 1-8) or use AI 00 (SSCC)".replace("{level}", level), field="spec")
    other = (await session.execute(select(Item.code).where(Item.gtin == gtin, Item.id != it.id))).scalar()
    if other is None:
        other = (await session.execute(select(Item.code).join(CodeRule, CodeRule.item_id == Item.id).where(
            CodeRule.namespace == f"sgtin:{gtin}", Item.id != it.id).limit(1))).scalar()
    if other is None:  # a GTIN another item held before a correction: codes printed under it name that item
        other = (await session.execute(select(Item.code).join(ItemGtin, ItemGtin.item_id == Item.id).where(
            ItemGtin.gtin == gtin, Item.id != it.id))).scalar()
    if other is not None:
        raise Conflict(f"part 1 (AI 01 GTIN): {gtin} already identifies item {other!r}: give the {level} of "
                       f"item {it.code!r} a GTIN of its own", field="spec")


async def current_rule(session: AsyncSession, item: Item, level: str, *, create_default: bool = True) -> CodeRule:
    rule = (await session.execute(select(CodeRule).where(CodeRule.item_id == item.id, CodeRule.level == level)
                                  .order_by(CodeRule.version.desc()).limit(1))).scalar()
    legacy = rule is not None and create_default and _legacy_house_default(rule)
    if rule is None or legacy:
        if not create_default or level != "unit":
            raise NotFound(f"item {item.code!r} has no {level} code rule: save one first "
                           f"(POST /api/codes/rules)", field="level")
        # no rule yet, or the hub's own house default from before house codes were unique across items: then the
        # item's own house default (a new version in the same code space: blocks issued under the old version
        # keep it, and the counter goes on), still a house code even if the item has a GTIN since
        spec = default_spec(level, None if legacy else item.gtin, item.code)
        rule = await save_rule(session, item=item.code, level=level, spec=spec.model_dump(exclude_none=True))
    return rule


async def rules_of(session: AsyncSession, item: str, level: str) -> list[CodeRule]:
    it = await get_item(session, item)
    return list((await session.execute(select(CodeRule).where(CodeRule.item_id == it.id, CodeRule.level == level)
                                       .order_by(CodeRule.version))).scalars().all())


def rule_view(rule: CodeRule, item: Item) -> dict[str, Any]:
    c = compiled(rule, item.gtin)
    return {"item": item.code, "level": rule.level, "version": rule.version, "spec": rule.spec,
            "namespace": rule.namespace, "capacity": c.capacity, "created_at": rule.created_at.isoformat(),
            "created_by": rule.created_by}


# --- blocks ---------------------------------------------------------------------------------------

async def _counter_row(session: AsyncSession, namespace: str) -> None:
    ins = conflict_insert(session)(CodeCounter)
    await session.execute(ins.values(namespace=namespace, next_seq=0).on_conflict_do_nothing())


async def allocate(session: AsyncSession, *, namespace: str, count: int, capacity: int) -> int:
    """Carve `count` sequence numbers from the namespace; returns the first. Atomic under concurrency."""
    await _counter_row(session, namespace)
    res = await session.execute(
        update(CodeCounter)
        .where(CodeCounter.namespace == namespace, CodeCounter.next_seq + count <= capacity)
        .values(next_seq=CodeCounter.next_seq + count)
        .returning(CodeCounter.next_seq)
        .execution_options(synchronize_session=False)
    )
    new_next = res.scalar()
    if new_next is None:
        used = (await session.execute(select(CodeCounter.next_seq).where(CodeCounter.namespace == namespace))
                ).scalar_one()
        raise Conflict(f"the sequence of {namespace} has {capacity - used:,} codes left and the block needs "
                       f"{count:,}: save a new rule version with a wider sequence", field="count")
    return int(new_next) - count


def end_codes(c: CompiledRule, bound: BoundRule, first_seq: int, count: int) -> tuple[str, str]:
    """A block's first and last code, canonical (Rendered.value): kept on the block for the traces."""
    a, b = bound.render(c.numbers(np.array([first_seq, first_seq + count - 1], dtype=np.uint64)), "")
    return a.value, b.value


def block_end_codes(rule: CodeRule, gtin: str | None, *, first_seq: int, count: int, lot: str | None,
                    line: str | None, production_date: str | None, expiry_date: str | None) -> tuple[str, str]:
    """end_codes() of a block from its stored facts (migration 0025 fills blocks issued before it with this)."""
    c = compiled(rule, gtin)
    bound = c.bind(IssueContext(
        lot=lot, line=line, gtin=gtin,
        production_date=date.fromisoformat(production_date) if production_date else None,
        expiry_date=date.fromisoformat(expiry_date) if expiry_date else None))
    return end_codes(c, bound, first_seq, count)


async def issue_block(
    session: AsyncSession, *, rule: CodeRule, count: int, key: str, purpose: str, lot: Lot | None = None,
    work_order: str | None = None, line: str | None = None, production_date: date | None = None,
    expiry_date: date | None = None, gtin: str | None = None, actor: str | None = PLACEHOLDER_ACTOR,
) -> SerialBlock:
    """A block of `count` codes of this rule version. Idempotent on `key`: a retry gets the same block.

    Audited as `code_block.issued` unless `actor` is None (the caller audits the block in its own entry)."""
    existing = (await session.execute(select(SerialBlock).where(SerialBlock.key == key))).scalar()
    if existing is not None:
        if existing.count != count or existing.namespace != rule.namespace:
            raise Conflict(f"block {key!r} was already issued with {existing.count} codes in "
                           f"{existing.namespace}: use another key for another block", field="key")
        return existing
    if count < 1:
        raise InvalidInput(f"count must be at least 1, got {count}", field="count")
    if lot is not None and lot.item_id != rule.item_id:
        owner = await session.get(Item, rule.item_id)
        raise InvalidInput(f"lot {lot.number!r} is a lot of item {lot.item.code!r}, not of item "
                           f"{owner.code if owner else rule.item_id!r}: give a lot of the item the codes are for",
                           field="lot")
    c = compiled(rule, gtin)
    if line is not None:
        for ai in ("21", "10"):
            if any(getattr(t, "name", None) == "line" for t in c.fields.get(ai, ())) and \
                    (p := gs1.cset82_problem(line)):
                raise InvalidInput(f"line {line!r} cannot go into GS1 AI {ai} ({gs1.AIS[ai][0]}): {p}; give a line "
                                   "code of letters, digits and - . / _", field="line")
    if c.scheme == "house" and (clash := await rule_clash(session, rule, c.spec)) is not None:
        # a rule saved before house codes were checked across items: issuing would print another item's texts
        raise Conflict(f"the codes of this rule (version {rule.version}) could read the same as those of {clash}: "
                       "save a new version of the rule with a literal of its own before issuing", field="item")
    # bind once now: a block whose lot, line or dates the rule cannot carry is refused before it exists
    ctx = IssueContext(lot=lot.number if lot else None, line=line, production_date=production_date,
                       expiry_date=expiry_date, gtin=gtin)
    bound = c.bind(ctx)
    f10 = bound.fields.get("10")
    if f10 is not None and f10.static is not None and (p := gs1.element_problem("10", f10.static)):
        raise InvalidInput(f"lot {f10.static!r} cannot be GS1 AI 10: {p}; give the lot a GS1-valid number",
                           field="lot")
    first = await allocate(session, namespace=rule.namespace, count=count, capacity=c.capacity)
    first_code, last_code = end_codes(c, bound, first, count)
    block = SerialBlock(key=key, namespace=rule.namespace, rule_id=rule.id, first_seq=first, count=count,
                        purpose=purpose, lot_id=lot.id if lot else None, work_order=work_order, line=line,
                        production_date=production_date.isoformat() if production_date else None,
                        expiry_date=expiry_date.isoformat() if expiry_date else None,
                        first_code=first_code, last_code=last_code)
    session.add(block)
    await session.flush()
    if actor is not None:
        await audit(session, actor=actor, action="code_block.issued", entity="code_block", key=key,
                    changes=diff(None, {"block": block.id, "namespace": block.namespace, "rule_version": rule.version,
                                        "first_seq": first, "count": count, "purpose": purpose,
                                        "lot": lot.number if lot else None, "work_order": work_order, "line": line}))
    return block


@dataclass
class BlockView:
    block: SerialBlock
    rule: CodeRule
    item: Item
    lot: Lot | None
    bound: BoundRule

    def numbers(self, first: int, count: int) -> np.ndarray:
        seqs = np.arange(self.block.first_seq + first, self.block.first_seq + first + count, dtype=np.uint64)
        return compiled(self.rule, self.item.gtin).numbers(seqs)

    def render(self, first: int, count: int, domain: str) -> list[Rendered]:
        return self.bound.render(self.numbers(first, count), domain)

    def code(self, index: int, domain: str) -> Rendered:
        if not 0 <= index < self.block.count:
            raise InvalidInput(f"index {index} is outside the block (0 to {self.block.count - 1})", field="index")
        return self.render(index, 1, domain)[0]


async def block_view(session: AsyncSession, block: SerialBlock | int) -> BlockView:
    if isinstance(block, int):
        cached = _block_by_id.get(block)
        b = _take(session, cached) if cached is not None else await session.get(SerialBlock, block)
        if b is None:
            raise NotFound(f"code block {block} does not exist: check the block id", field="block_id")
        if cached is None:
            _remember_block(session, b)
        block = b
    rule = await _get_rule(session, block.rule_id)
    assert rule is not None
    # the lot first: it brings its item along (joined), which is nearly always the block's item
    lot = await session.get(Lot, block.lot_id) if block.lot_id else None
    item = await session.get(Item, rule.item_id)
    assert item is not None
    lot_number = lot.number if lot else None
    hit = _bound.get(block.id)
    if hit is not None and hit[0] == lot_number and hit[1] == item.gtin:
        return BlockView(block, rule, item, lot, hit[2])
    ctx = IssueContext(
        lot=lot_number, line=block.line, gtin=item.gtin,
        production_date=date.fromisoformat(block.production_date) if block.production_date else None,
        expiry_date=date.fromisoformat(block.expiry_date) if block.expiry_date else None)
    bound = compiled(rule, item.gtin).bind(ctx)
    if _fills_cache(session) and block.id in _block_by_id:
        _bound[block.id] = (lot_number, item.gtin, bound)
    return BlockView(block, rule, item, lot, bound)


def block_summary(v: BlockView, domain: str) -> dict[str, Any]:
    b = v.block
    first, last = v.render(0, 1, domain)[0], v.render(b.count - 1, 1, domain)[0]
    return {"id": b.id, "key": b.key, "item": v.item.code, "level": v.rule.level, "rule_version": v.rule.version,
            "first_seq": b.first_seq, "count": b.count, "purpose": b.purpose,
            "lot": v.lot.number if v.lot else None, "work_order": b.work_order,
            "first": first.value, "last": last.value, "first_digital_link": first.digital_link or None}


# --- issuing for a lot (the work order's code issuance) --------------------------------------------

@dataclass
class IssuedCodes:
    batch_code: str
    block: SerialBlock | None
    first_serial: str | None = None
    last_serial: str | None = None


def _serial_of(r: Rendered) -> str:
    return dict(r.elements).get("21", r.value)


async def issue_for_lot(
    session: AsyncSession, *, work_order: str, lot: Lot, quantity: int, resolver: str, chunk: int | None = None,
) -> IssuedCodes:
    """Issue the lot's batch code and `quantity` unit codes under the item's current unit rule.
    Idempotent on (work order, lot[, chunk]). `chunk` numbers the blocks of a very large order."""
    key = f"{work_order}:{lot.number}:unit" + (f":{chunk}" if chunk else "")
    batch_value = lot_class_uri(lot, resolver)
    batch = (await session.execute(select(Code).where(Code.value == batch_value))).scalar()
    if batch is None:
        session.add(Code(value=batch_value, kind="batch", lot_id=lot.id))
        await session.flush()
    if quantity <= 0:
        return IssuedCodes(batch_code=batch_value, block=None)
    existing = (await session.execute(select(SerialBlock).where(SerialBlock.key == key))).scalar()
    if existing is not None:
        block = existing
    else:
        rule = await current_rule(session, lot.item, "unit")
        block = await issue_block(session, rule=rule, count=quantity, key=key, purpose="order", lot=lot,
                                  work_order=work_order, line=None, production_date=date.today(),
                                  gtin=lot.item.gtin, actor=None)
    view = await block_view(session, block)
    first, last = view.render(0, 1, resolver)[0], view.render(block.count - 1, 1, resolver)[0]
    if existing is None:
        units = [r.digital_link or r.value for r in view.render(0, min(quantity, 1000), resolver)]
        await record_event(
            session, key=f"commission:{key}", event_type="ObjectEvent", action="ADD", biz_step="commissioning",
            disposition="active", epc_list=units if quantity <= 1000 else [],
            quantity_list=None if quantity <= 1000 else [{"epcClass": batch_value, "quantity": quantity}],
            ilmd={"cbvmda:lotNumber": lot.number},
            extensions={"serialBlock": {"block": block.id, "ruleVersion": view.rule.version,
                                        "first": _serial_of(first), "last": _serial_of(last), "count": quantity}},
            lot=lot, work_order_id=lot.work_order_id,
        )
        await audit(session, actor="system", action="codes.issued", entity="lot", key=lot.number,
                    changes=diff(None, {"batch_code": batch_value, "block": block.id,
                                        "rule_version": view.rule.version, "first": first.value,
                                        "last": last.value, "count": quantity},
                                 batch_code=batch_value, block=block.id, rule_version=view.rule.version,
                                 first=first.value, last=last.value, count=quantity))
    return IssuedCodes(batch_code=batch_value, block=block, first_serial=_serial_of(first),
                       last_serial=_serial_of(last))


# --- resolving a code -------------------------------------------------------------------------------

@dataclass
class CodeInfo:
    """What the hub knows of a code: `status` is issued, voided, returned, unknown or ambiguous (house codes that
    blocks of more than one item hold, printed before house codes were unique across items: `candidates`)."""

    value: str
    status: str
    view: BlockView | None = None
    seq: int | None = None
    used: UsedCode | None = None
    lot: Lot | None = None
    reason: str | None = None
    # read with the code's state when asked (`lookup(..., with_lot_facts=True)`), for `lot` if it is this lot:
    # (lot id, number of inspections, status of the last one, line of the lot's work order)
    lot_facts: tuple[int, int, str | None, str | None] | None = None
    candidates: list[CodeInfo] | None = None

    @property
    def index(self) -> int | None:
        return None if self.view is None or self.seq is None else self.seq - self.view.block.first_seq


def canonical(elements: dict[str, str]) -> str | None:
    if "00" in elements:
        return f"/00/{elements['00']}"
    if "01" in elements and "21" in elements:
        return f"/01/{elements['01']}/21/{elements['21']}"
    return None


def _key_elements(code: str) -> dict[str, str]:
    elements = gs1.parse_digital_link(code) if "/" in code else {}
    if elements and "00" not in elements and "01" not in elements:
        return {}  # no GS1 key: a house code (an item code in it may hold "/10/" and the like)
    return elements


def code_key(code: str) -> str:
    """The text `lookup` and the used-code rows know a code by (a Digital Link URI as its canonical path)."""
    elements = _key_elements(code)
    return (canonical(elements) or code) if elements else code


async def _block_of(session: AsyncSession, namespace: str, seq: int) -> SerialBlock | None:
    """The block of the namespace holding `seq`, if any."""
    cached = _cached_block_of(namespace, seq)
    if cached is not None:
        return _take(session, cached)
    block = (await session.execute(
        select(SerialBlock).where(SerialBlock.namespace == namespace, SerialBlock.first_seq <= seq)
        .order_by(SerialBlock.first_seq.desc()).limit(1))).scalar()
    if block is None or block.first_seq + block.count <= seq:
        return None
    _remember_block(session, block)
    return block


async def _candidate_rules(session: AsyncSession, key: str, *, fresh: bool = False) -> tuple[CodeRule, ...]:
    """Rule versions that may have issued a code, newest first. `key` is `sgtin:<GTIN>`, `sscc:%` or
    `house:%`. From the cache unless `fresh`; a cached list may lack a version saved since (by another
    process): `lookup` asks again, fresh, before it says a code is unknown."""
    if not fresh and (cached := _rules_of.get(key)) is not None:
        return cached
    cond = CodeRule.namespace.like(key) if key.endswith("%") else CodeRule.namespace == key
    rules = tuple((await session.execute(select(CodeRule).where(cond)
                                         .order_by(CodeRule.version.desc()))).scalars().all())
    if _fills_cache(session):
        _rules_of[key] = tuple(_remember_rule(session, r) for r in rules)  # type: ignore[misc]
    return rules


# rule version id -> its binding without a block's context, for the versions whose codes need none (no lot, line or
# date in any element): such a code is its sequence number alone, whatever block holds it
_free_bound: dict[int, BoundRule | None] = {}


def _context_free(rule: CodeRule, c: CompiledRule) -> BoundRule | None:
    hit = _free_bound.get(rule.id, False)
    if hit is False:
        free = not any(isinstance(t, Var) for tokens in c.fields.values() for t in tokens)
        hit = _free_bound[rule.id] = c.bind(IssueContext()) if free else None
    return hit  # type: ignore[return-value]


async def unit_sequence(session: AsyncSession, gtin: str, serial: str) -> tuple[str, int, int] | None:
    """(namespace, sequence number, rule version id) of the GS1 unit code /01/{gtin}/21/{serial}, worked out from the
    cached rule versions alone when a version whose codes carry no lot, line or date renders exactly this code (the
    hub's default rule does); the block holding it is then one index probe of (namespace, first_seq), which the trace
    makes inside its own statement (domain.trace, anchor "unit_block"). None when that cannot be said: the caller
    resolves the code the full way (lookup), which also knows voided and returned codes and newer rule versions."""
    for rule in await _candidate_rules(session, f"sgtin:{gtin}"):  # rule versions of namespace sgtin:{gtin}
        c = compiled(rule, gtin)
        bound = _context_free(rule, c)
        if bound is None or "21" not in c.fields or c.key_ai != "01":
            continue
        seq = c.parse_seq(serial)
        # the serial exactly as this version renders that sequence number (check characters, width): the GTIN is
        # the namespace's, so the serial decides
        if seq is None or bound.texts("21", c.numbers(np.array([seq], dtype=np.uint64)))[0] != serial:
            continue
        return rule.namespace, seq, rule.id
    return None


async def lookup(session: AsyncSession, code: str, *, with_lot_facts: bool = False) -> CodeInfo:
    """Find the block, rule version, lot and state of a unit, case or pallet code (DL URI, canonical path
    or house code). Never raises for an unknown code: it says `unknown` and why.

    Rule versions and blocks come from the caches once read; what changes (used code, voided or returned
    ranges, the lot and its item) is read in one statement. `with_lot_facts` adds the lot's inspections and
    its work order's line to that statement (`CodeInfo.lot_facts`)."""
    elements = _key_elements(code)
    value = canonical(elements) if elements else code
    if value is None:
        return CodeInfo(code, "unknown", reason="not a unit, case or pallet code (needs 01+21 or 00)")
    # candidate rules: by GTIN / SSCC prefix, else house codes of any item
    if "01" in elements:
        gtin = elements["01"]
        if gs1.check_digit_problem(gtin):
            return CodeInfo(value, "unknown", used=await _used(session, value),
                            reason="the GTIN's check digit is wrong")
        key, target = f"sgtin:{gtin}", elements["21"]
    elif "00" in elements:
        s = elements["00"]
        if len(s) != 18 or gs1.check_digit_problem(s, "SSCC"):
            return CodeInfo(value, "unknown", used=await _used(session, value),
                            reason="not a valid SSCC (18 digits with a correct check digit)")
        key, target = "sscc:%", s
    else:
        return await _lookup_house(session, code, with_lot_facts)
    tried: set[int] = set()
    # a cached list may be stale: before saying "unknown", ask the database once more
    for fresh in (False, True) if key in _rules_of else (True,):
        for rule in await _candidate_rules(session, key, fresh=fresh):
            if rule.id in tried or (key == "sscc:%" and not target.startswith(rule.namespace.removeprefix("sscc:"))):
                continue
            tried.add(rule.id)
            info = await _lookup_in(session, rule, target, value, with_lot_facts)
            if info is not None:
                return info
    return CodeInfo(value, "unknown", used=await _used(session, value),
                    reason="no block of any rule version holds this code")


async def _lookup_house(session: AsyncSession, code: str, with_lot_facts: bool) -> CodeInfo:
    """A house code: every house rule version is asked (fresh: a version another process saved counts), since
    the text alone says nothing of its item. Codes printed before house codes were unique across items may be
    held by blocks of two items: then the answer is `ambiguous` with both, never a guess."""
    found: list[CodeInfo] = []
    # the cached versions first, then (holding none of them) the database's: a version saved since by another
    # process may hold it. A version saved since cannot make a held code ambiguous: save_rule refuses a house
    # rule whose codes could read as another's
    for fresh in (False, True) if "house:%" in _rules_of else (True,):
        for rule in await _candidate_rules(session, "house:%", fresh=fresh):
            info = await _lookup_in(session, rule, code, code, with_lot_facts)
            if info is not None and all(f.view.block.id != info.view.block.id  # type: ignore[union-attr]
                                        for f in found):
                found.append(info)
        if found:
            break
    if len(found) == 1:
        return found[0]
    if not found:
        return CodeInfo(code, "unknown", used=await _used(session, code),
                        reason="no block of any rule version holds this code")
    names = ", ".join(f"item {f.view.item.code!r} (block {f.view.block.id})" for f in found)  # type: ignore[union-attr]
    return CodeInfo(code, "ambiguous", used=found[0].used, candidates=found,
                    reason=f"this house code was issued for more than one item: {names}; it cannot say which "
                           "thing it is on, so relabel those things")


async def _used(session: AsyncSession, value: str) -> UsedCode | None:
    return (await session.execute(select(UsedCode).where(UsedCode.value == value))).scalar()


def _state_statement(with_lot_facts: bool) -> Any:
    """One row: the used code, the latest voided/returned range holding the sequence number, the block's lot
    (with its item) and the rule's item; optionally the lot's inspections and its work order's line."""
    block_id, seq = bindparam("cs_block", type_=Integer), bindparam("cs_seq", type_=BigInteger)
    rng_id = (select(func.max(CodeRange.id)).where(CodeRange.block_id == block_id, CodeRange.first_seq <= seq,
                                                   CodeRange.first_seq + CodeRange.count > seq)
              .scalar_subquery())
    cols: list[Any] = [UsedCode, CodeRange, Lot, Item]
    if with_lot_facts:
        cols += [
            select(func.count()).select_from(Inspection).where(Inspection.lot_id == Lot.id).scalar_subquery(),
            select(Inspection.status).where(Inspection.lot_id == Lot.id).order_by(Inspection.id.desc())
            .limit(1).scalar_subquery(),
            select(WorkOrder.line).where(WorkOrder.id == Lot.work_order_id).scalar_subquery(),
        ]
    anchor = select(literal_column("1").label("one")).subquery("anchor")
    return (select(*cols).select_from(anchor)
            .outerjoin(UsedCode, UsedCode.value == bindparam("cs_value", type_=UsedCode.value.type))
            .outerjoin(CodeRange, CodeRange.id == rng_id)
            .outerjoin(Lot, Lot.id == bindparam("cs_lot", type_=Integer))
            .outerjoin(Item, Item.id == bindparam("cs_item", type_=Integer)))


_STATE = {flag: _state_statement(flag) for flag in (False, True)}


async def _state(session: AsyncSession, *, value: str, block: SerialBlock, seq: int, item_id: int,
                 with_lot_facts: bool) -> Any:
    return (await session.execute(_STATE[with_lot_facts], {
        "cs_value": value, "cs_block": block.id, "cs_seq": seq, "cs_lot": block.lot_id, "cs_item": item_id,
    })).one()


async def _lookup_in(session: AsyncSession, rule: CodeRule, target: str, value: str,
                     with_lot_facts: bool) -> CodeInfo | None:
    """The code as issued under this rule version, or None if this version did not issue it."""
    c = _compiled.get(rule.id)
    if c is None:
        item = await session.get(Item, rule.item_id)
        c = compiled(rule, item.gtin if item else None)
    seq = c.parse_seq(target)
    if seq is None:
        return None
    block = await _block_of(session, rule.namespace, seq)
    if block is None or block.rule_id != rule.id:
        return None
    rule = await _get_rule(session, rule.id) or rule  # this session's instance
    # render with the block's bound rule as cached (keyed by the lot number and GTIN it was bound with; both
    # are checked against the row read below), else bind it now
    hit = _bound.get(block.id)
    view: BlockView | None = None
    if hit is None:
        view = await block_view(session, block)
        bound, lot_number, gtin = view.bound, (view.lot.number if view.lot else None), view.item.gtin
    else:
        lot_number, gtin, bound = hit
    if bound.render(c.numbers(np.array([seq], dtype=np.uint64)), "")[0].value != value:
        if view is not None:
            return None  # same sequence, other lot/line/date: not this code
        view = await block_view(session, block)  # the cached binding may be stale: bind afresh and compare
        if view.render(seq - block.first_seq, 1, "")[0].value != value:
            return None
        bound, lot_number, gtin = view.bound, (view.lot.number if view.lot else None), view.item.gtin
    row = await _state(session, value=value, block=block, seq=seq, item_id=rule.item_id,
                       with_lot_facts=with_lot_facts)
    used, rng, lot, item = row[0], row[1], row[2], row[3]
    if item is None or (lot.number if lot else None) != lot_number or item.gtin != gtin:
        # the lot or item changed since the binding was cached (an item's GTIN may be set once): bind afresh
        view = await block_view(session, block)
        if view.render(seq - block.first_seq, 1, "")[0].value != value:
            return None
        lot, item = view.lot, view.item
    view = BlockView(block, rule, item, lot, view.bound if view is not None else bound)
    facts = (lot.id, row[4], row[5], row[6]) if with_lot_facts and lot is not None else None
    if used is not None and used.lot_id and (lot is None or lot.id != used.lot_id):
        lot, facts = await session.get(Lot, used.lot_id), None
    if rng is not None and rng.state == "voided":
        return CodeInfo(value, "voided", view, seq, used, lot, reason=rng.reason)
    if rng is not None and rng.state == "returned" and used is None:
        return CodeInfo(value, "returned", view, seq, used, lot, reason=rng.reason)
    return CodeInfo(value, "issued", view, seq, used, lot, lot_facts=facts)


# --- the resolver's fast path ------------------------------------------------------------------------
# A phone scan of a unit code is the hub's hottest read. When the rule version, block and binding of the code
# are already in this process's caches, `lookup_cached` finds them without SQL and `CODE_STATE` reads what can
# change (used code, voided/returned range, lot, item, inspections, line) as plain columns in one statement.
# Anything unusual (a cache miss, a stale binding, a voided or returned range, a used code on another lot) makes
# the caller take the full `lookup` path, so both paths give the same answer by construction.

@dataclass(frozen=True)
class CachedCode:
    value: str
    rule: CodeRule
    block: SerialBlock
    seq: int
    lot_number: str | None
    gtin: str | None


def lookup_cached(elements: dict[str, str]) -> CachedCode | None:
    """A unit code (AI 01 + 21) found in the caches alone, or None (then use `lookup`)."""
    gtin, serial = elements.get("01"), elements.get("21")
    if gtin is None or serial is None or "00" in elements:
        return None
    rules = _rules_of.get(f"sgtin:{gtin}")
    if not rules:
        return None
    value = f"/01/{gtin}/21/{serial}"
    for rule in rules:
        c = _compiled.get(rule.id)
        if c is None:
            return None
        seq = c.parse_seq(serial)
        if seq is None:
            continue
        block = _cached_block_of(rule.namespace, seq)
        if block is None:
            return None  # maybe a block this process has not read yet
        if block.rule_id != rule.id:
            continue
        hit = _bound.get(block.id)
        if hit is None:
            return None
        lot_number, bound_gtin, bound = hit
        if bound.render(c.numbers(np.array([seq], dtype=np.uint64)), "")[0].value != value:
            return None  # the full path re-binds and compares afresh
        return CachedCode(value, rule, block, seq, lot_number, bound_gtin)
    return None


def _code_state_statement() -> Any:
    block_id, seq = bindparam("cs_block", type_=Integer), bindparam("cs_seq", type_=BigInteger)
    rng = (select(CodeRange.state).where(CodeRange.block_id == block_id, CodeRange.first_seq <= seq,
                                         CodeRange.first_seq + CodeRange.count > seq)
           .order_by(CodeRange.id.desc()).limit(1).scalar_subquery())
    anchor = select(literal_column("1").label("one")).subquery("anchor")
    return (select(
        UsedCode.value, UsedCode.lot_id, rng, Lot.id, Lot.number, Lot.status, Lot.location, Lot.created_at,
        Item.code, Item.name, Item.gtin,
        select(func.count()).select_from(Inspection).where(Inspection.lot_id == Lot.id).scalar_subquery(),
        select(Inspection.status).where(Inspection.lot_id == Lot.id).order_by(Inspection.id.desc())
        .limit(1).scalar_subquery(),
        select(WorkOrder.line).where(WorkOrder.id == Lot.work_order_id).scalar_subquery(),
    ).select_from(anchor)
        .outerjoin(UsedCode, UsedCode.value == bindparam("cs_value", type_=UsedCode.value.type))
        .outerjoin(Lot, Lot.id == bindparam("cs_lot", type_=Integer))
        .outerjoin(Item, Item.id == bindparam("cs_item", type_=Integer)))


# one row: used value, used lot id, latest range state, lot id, number, status, location, created_at,
# item code, name, gtin, inspection count, last inspection status, work order line
CODE_STATE = _code_state_statement()


def code_state_params(c: CachedCode) -> dict[str, Any]:
    return {"cs_value": c.value, "cs_block": c.block.id, "cs_seq": c.seq, "cs_lot": c.block.lot_id,
            "cs_item": c.rule.item_id}


async def resolve(session: AsyncSession, code: str) -> tuple[Lot, str | None]:
    """Find the lot behind a lot number, a batch code or a unit serial. Returns (lot, unit code or None)."""
    lot = (await session.execute(select(Lot).where(Lot.number == code))).scalar()
    if lot is not None:
        return lot, None
    batch = (await session.execute(select(Code).where(Code.value == code))).scalar()
    if batch is not None:
        return (await session.get(Lot, batch.lot_id)), None  # type: ignore[return-value]
    elements = gs1.parse_digital_link(code) if "/" in code else {}
    if "01" in elements and "10" in elements and "21" not in elements:
        lot = (await session.execute(select(Lot).where(Lot.number == elements["10"]))).scalar()
        if lot is not None:
            return lot, None
    info = await lookup(session, code)
    if info.status == "ambiguous":
        raise Conflict(f"code {code!r}: {info.reason}", field="code")
    if info.status in ("issued", "voided") and info.lot is not None:
        return info.lot, code
    legacy = await _legacy_resolve(session, elements)
    if legacy is not None:
        return legacy, code
    raise NotFound(
        f"code {code!r} is not known: give a lot number, a batch code or a unit serial (Digital Link URI)",
        field="code")


async def _legacy_resolve(session: AsyncSession, elements: dict[str, str]) -> Lot | None:
    """Serials issued before code rules existed (table code_block, 12-digit sequence numbers)."""
    if "01" not in elements or "21" not in elements or not elements["21"].isdigit():
        return None
    item = (await session.execute(select(Item).where(Item.gtin == elements["01"]))).scalar()
    if item is None:  # a GTIN the item held before a correction (domain/items.py): its serials name it still
        item = (await session.execute(select(Item).join(ItemGtin, ItemGtin.item_id == Item.id)
                                      .where(ItemGtin.gtin == elements["01"]))).scalar()
    if item is None:
        return None
    seq = int(elements["21"])
    block = (await session.execute(select(CodeBlock).where(
        CodeBlock.item_id == item.id, CodeBlock.first_seq <= seq, CodeBlock.first_seq + CodeBlock.count > seq,
    ))).scalar()
    return await session.get(Lot, block.lot_id) if block else None


async def units_of_lot(session: AsyncSession, lot: Lot, resolver: str, limit: int = 100) -> dict:
    blocks = (await session.execute(select(SerialBlock).where(and_(SerialBlock.lot_id == lot.id))
                                    .order_by(SerialBlock.id))).scalars().all()
    legacy = (await session.execute(select(CodeBlock).where(CodeBlock.lot_id == lot.id))).scalars().all()
    out_blocks: list[dict[str, Any]] = []
    sample: list[str] = []
    for b in blocks:
        v = await block_view(session, b)
        first, last = v.render(0, 1, resolver)[0], v.render(b.count - 1, 1, resolver)[0]
        out_blocks.append({"first": _serial_of(first), "last": _serial_of(last), "count": b.count,
                           "rule_version": v.rule.version, "block": b.id})
        take = min(b.count, limit - len(sample))
        if take > 0:
            sample += [r.digital_link or r.value for r in v.render(0, take, resolver)]
    for lb in legacy:
        out_blocks.append({"first": serial_text(lb.first_seq), "last": serial_text(lb.first_seq + lb.count - 1),
                           "count": lb.count})
        for i in range(min(lb.count, limit - len(sample))):
            sample.append(f"{resolver}/01/{lot.item.gtin}/21/{serial_text(lb.first_seq + i)}")
    return {"count": sum(b.count for b in blocks) + sum(b.count for b in legacy), "blocks": out_blocks,
            "first_units": sample}


__all__ = ["LEVELS", "IssuedCodes", "issue_for_lot", "lookup", "resolve", "save_rule", "units_of_lot"]
