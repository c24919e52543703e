"""Code issuance: one batch code per lot and unit serials allocated as blocks (one row per block)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import InvalidInput, NotFound
from domain.audit import audit
from domain.events import lot_class_uri, record_event
from domain.models import Code, CodeBlock, CodeSequence, Item, Lot

SERIAL_WIDTH = 12  # GS1 AI 21 allows up to 20 characters


def serial_text(seq: int) -> str:
    return str(seq).zfill(SERIAL_WIDTH)


def unit_uri(item: Item, seq: int, resolver: str) -> str:
    if item.gtin:
        return f"{resolver}/01/{item.gtin}/21/{serial_text(seq)}"
    return f"urn:tracehub:unit:{item.code}:{serial_text(seq)}"


@dataclass
class IssuedCodes:
    batch_code: str
    block: CodeBlock | None


async def _allocate(session: AsyncSession, item_id: int, count: int) -> int:
    """Carve `count` serials from the item's sequence; the row update serialises concurrent issuers."""
    seq = (await session.execute(select(CodeSequence).where(CodeSequence.item_id == item_id))).scalar()
    if seq is None:
        session.add(CodeSequence(item_id=item_id, next_seq=1))
        await session.flush()
    res = await session.execute(
        update(CodeSequence)
        .where(CodeSequence.item_id == item_id)
        .values(next_seq=CodeSequence.next_seq + count)
        .returning(CodeSequence.next_seq)
    )
    return int(res.scalar_one()) - count


async def issue_for_lot(
    session: AsyncSession, *, work_order: str, lot: Lot, quantity: int, resolver: str
) -> IssuedCodes:
    """Issue the lot's batch code and `quantity` unit serials. Idempotent on (work order, lot)."""
    key = f"{work_order}:{lot.number}:unit"
    batch_value = lot_class_uri(lot, resolver)
    batch = (await session.execute(select(Code).where(Code.value == batch_value))).scalar()
    if batch is None:
        session.add(Code(value=batch_value, kind="batch", lot_id=lot.id))
        await session.flush()
    block = (await session.execute(select(CodeBlock).where(CodeBlock.key == key))).scalar()
    if block is None and quantity > 0:
        first = await _allocate(session, lot.item_id, quantity)
        block = CodeBlock(key=key, item_id=lot.item_id, lot_id=lot.id, first_seq=first, count=quantity)
        session.add(block)
        await session.flush()
        units = [unit_uri(lot.item, first + i, resolver) for i in range(min(quantity, 1000))]
        await record_event(
            session, key=f"commission:{key}", event_type="ObjectEvent", action="ADD", biz_step="commissioning",
            disposition="active", epc_list=units if quantity <= 1000 else [],
            quantity_list=None if quantity <= 1000 else [{"epcClass": batch_value, "quantity": quantity}],
            ilmd={"cbvmda:lotNumber": lot.number},
            extensions={"serialBlock": {"first": serial_text(first), "count": quantity}},
            lot=lot, work_order_id=lot.work_order_id,
        )
        await audit(session, actor="system", action="codes.issued", entity="lot", key=lot.number,
                    changes={"batch_code": batch_value, "first_serial": serial_text(first), "count": quantity})
    return IssuedCodes(batch_code=batch_value, block=block)


_DL_SERIAL = re.compile(r"/01/(\d{14})/21/([^/?#]+)")
_URN_UNIT = re.compile(r"^urn:tracehub:unit:([^:]+):(\d+)$")
_DL_LOT = re.compile(r"/01/(\d{14})/10/([^/?#]+)")


async def resolve(session: AsyncSession, code: str) -> tuple[Lot, str | None]:
    """Find the lot behind a lot number, a batch code or a unit serial. Returns (lot, unit code or None)."""
    lot = (await session.execute(select(Lot).where(Lot.number == code))).scalar()
    if lot is not None:
        return lot, None
    batch = (await session.execute(select(Code).where(Code.value == code))).scalar()
    if batch is not None:
        return (await session.get(Lot, batch.lot_id)), None  # type: ignore[return-value]
    m = _DL_LOT.search(code)
    if m:
        lot = (await session.execute(select(Lot).where(Lot.number == m.group(2)))).scalar()
        if lot is not None:
            return lot, None
    item = None
    serial = None
    m = _DL_SERIAL.search(code)
    if m:
        item = (await session.execute(select(Item).where(Item.gtin == m.group(1)))).scalar()
        serial = m.group(2)
    else:
        m2 = _URN_UNIT.match(code)
        if m2:
            item = (await session.execute(select(Item).where(Item.code == m2.group(1)))).scalar()
            serial = m2.group(2)
    if item is not None and serial is not None:
        if not serial.isdigit():
            raise InvalidInput(f"serial {serial!r} is not one the hub issued (hub serials are digits)")
        seq = int(serial)
        block = (
            await session.execute(
                select(CodeBlock).where(
                    CodeBlock.item_id == item.id, CodeBlock.first_seq <= seq,
                    CodeBlock.first_seq + CodeBlock.count > seq,
                )
            )
        ).scalar()
        if block is not None:
            return (await session.get(Lot, block.lot_id)), code  # type: ignore[return-value]
    raise NotFound(
        f"code {code!r} is not known: give a lot number, a batch code or a unit serial (Digital Link URI)"
    )


async def units_of_lot(session: AsyncSession, lot: Lot, resolver: str, limit: int = 100) -> dict:
    blocks = (await session.execute(select(CodeBlock).where(CodeBlock.lot_id == lot.id))).scalars().all()
    total = sum(b.count for b in blocks)
    sample = []
    for b in blocks:
        for i in range(min(b.count, limit - len(sample))):
            sample.append(unit_uri(lot.item, b.first_seq + i, resolver))
    return {
        "count": total,
        "blocks": [{"first": serial_text(b.first_seq), "last": serial_text(b.first_seq + b.count - 1),
                    "count": b.count} for b in blocks],
        "first_units": sample,
    }
