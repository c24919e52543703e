"""Offline code pools (after the OPC UA OPEN-SCS serial pool): a line that may lose its network gets codes
in advance; when it reconnects it uploads the codes it used; reconciliation returns or voids the rest.

Per-code states: unassigned (in no block), allocated (in a pool's block, unused), commissioned (uploaded
as used: a used_code row), returned / destroyed (a code_range row `returned` / `voided`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain.audit import PLACEHOLDER_ACTOR, audit, diff
from domain.codes import current_rule, get_item, issue_block, lookup
from domain.events import record_event
from domain.models import Lot, Ncr, WorkOrder, utcnow
from domain.models_codes import CodeAlert, CodePool, CodeRange, PoolUpload, SerialBlock, UsedCode
from domain.packing import epc


async def get_pool(session: AsyncSession, number: str) -> CodePool:
    pool = (await session.execute(select(CodePool).where(CodePool.number == number))).scalar()
    if pool is None:
        raise NotFound(f"code pool {number!r} does not exist: check the pool number", field="pool")
    return pool


async def allocate_pool(session: AsyncSession, *, number: str, item: str, level: str, count: int, line: str,
                        printer: str | None, actor: str) -> CodePool:
    """Allocate `count` codes to a line (or printer) in advance. Idempotent on the pool number."""
    existing = (await session.execute(select(CodePool).where(CodePool.number == number))).scalar()
    if existing is not None:
        return existing
    it = await get_item(session, item)
    rule = await current_rule(session, it, level)
    block = await issue_block(session, rule=rule, count=count, key=f"pool:{number}", purpose="pool", line=None,
                              gtin=it.gtin, actor=None)
    pool = CodePool(number=number, line=line, printer=printer, block_id=block.id, state="allocated")
    session.add(pool)
    await session.flush()
    await audit(session, actor=actor, action="code_pool.allocated", entity="code_pool", key=number,
                changes=diff(None, {"state": "allocated", "line": line, "printer": printer, "block": block.id,
                                    "item": it.code, "level": level, "count": count},
                             line=line, printer=printer, block=block.id, count=count))
    return pool


async def revoke_pool(session: AsyncSession, *, number: str, actor: str, at: datetime | None = None) -> CodePool:
    pool = await get_pool(session, number)
    if pool.state == "allocated":
        pool.state = "revoked"
        pool.revoked_at = at or utcnow()
        await session.flush()
        await audit(session, actor=actor, action="code_pool.revoked", entity="code_pool", key=number,
                    changes=diff({"state": "allocated", "revoked_at": None},
                                 {"state": "revoked", "revoked_at": pool.revoked_at.isoformat()}))
    return pool


async def _alert(session: AsyncSession, kind: str, code: str, pool: CodePool | None, **details: Any) -> CodeAlert:
    a = CodeAlert(kind=kind, code=code, pool_id=pool.id if pool else None, details=details)
    session.add(a)
    await session.flush()
    return a


async def upload(session: AsyncSession, *, number: str, upload_id: str, used: list[dict[str, Any]],
                 resolver: str, actor: str = PLACEHOLDER_ACTOR) -> dict[str, Any]:
    """The codes a line used while offline, each with its time and lot. Idempotent on `upload_id`.
    Flags duplicates, codes outside the pool and codes used after the pool was revoked.

    Uploads to one pool are serialised by a lock on the pool's row (PostgreSQL; SQLite serialises every writer):
    a second upload of the same code, or a resent upload id, sent while the first is still open waits for it and
    then sees its codes, so it gets its duplicate alert (or `duplicate_upload`) rather than a unique-index error."""
    pool = (await session.execute(select(CodePool).where(CodePool.number == number).with_for_update())).scalar()
    if pool is None:
        pool = await get_pool(session, number)  # raises NotFound
    prior = (await session.execute(select(PoolUpload).where(PoolUpload.upload_id == upload_id))).scalar()
    if prior is not None:
        alerts = (await session.execute(select(CodeAlert).where(CodeAlert.pool_id == pool.id))).scalars().all()
        return {"pool": number, "upload_id": upload_id, "duplicate_upload": True, "accepted": prior.count,
                "alerts": [_alert_view(a) for a in alerts]}
    if pool.state == "reconciled":
        raise Conflict(f"pool {number} is already reconciled: upload before reconciling", field="pool")
    block = await session.get(SerialBlock, pool.block_id)
    assert block is not None
    accepted: list[str] = []
    alerts: list[CodeAlert] = []
    lots: dict[str, Lot] = {}
    for i, u in enumerate(used):
        code, used_at, lot_no = u["code"], u["used_at"], u.get("lot")
        info = await lookup(session, code)
        if info.status == "ambiguous":  # a house code other items' blocks hold too: this pool's block is meant
            info = next((c for c in info.candidates or [] if c.view and c.view.block.id == block.id), info)
        if info.status in ("unknown", "ambiguous") or info.view is None:
            why = info.reason if info.status == "ambiguous" else "never issued"
            alerts.append(await _alert(session, "outside_pool", code, pool, reason=why,
                                       used_at=used_at.isoformat(), line=pool.line))
            continue
        if info.view.block.id != block.id:
            alerts.append(await _alert(session, "outside_pool", info.value, pool, used_at=used_at.isoformat(),
                                       line=pool.line, belongs_to_block=info.view.block.id))
            continue
        if info.status == "voided":
            alerts.append(await _alert(session, "voided_used", info.value, pool, used_at=used_at.isoformat()))
            continue
        if pool.revoked_at is not None and used_at > pool.revoked_at:
            alerts.append(await _alert(session, "after_revocation", info.value, pool, used_at=used_at.isoformat(),
                                       revoked_at=pool.revoked_at.isoformat()))
            continue
        lot = None
        if lot_no:
            lot = lots.get(lot_no) or (await session.execute(select(Lot).where(Lot.number == lot_no))).scalar()
            if lot is None:
                raise InvalidInput(f"used[{i}].lot {lot_no!r} does not exist: check the lot number",
                                   field=f"used[{i}].lot")
            if lot.item_id != info.view.item.id:
                raise InvalidInput(f"used[{i}].lot {lot_no!r} is a lot of item {lot.item.code!r}, not of item "
                                   f"{info.view.item.code!r} whose codes pool {number} holds: give the lot the code "
                                   "was printed for", field=f"used[{i}].lot")
            lots[lot_no] = lot
        first = info.used
        if first is None:
            # ON CONFLICT: a packer (or anything else) that marked the code used in a transaction still open when we
            # looked is waited for; once it committed the code is a duplicate like any other, not an error
            ins = (postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert)(UsedCode)
            inserted = (await session.execute(ins.values(
                value=info.value, block_id=block.id, seq=info.seq, level=info.view.rule.level, state="commissioned",
                lot_id=lot.id if lot else None, pool_id=pool.id, line=pool.line, used_at=used_at,
            ).on_conflict_do_nothing(index_elements=[UsedCode.value]).returning(UsedCode.id))).scalar()
            if inserted is not None:
                accepted.append(info.value)
                continue
            first = (await session.execute(select(UsedCode).where(UsedCode.value == info.value))).scalar_one()
        first_lot = (await session.get(Lot, first.lot_id)).number if first.lot_id else None  # type: ignore
        dup = await _alert(
            session, "duplicate", info.value, pool, used_at=used_at.isoformat(), line=pool.line,
            lot=lot_no, first_used_at=first.used_at.isoformat(), first_line=first.line, first_lot=first_lot)
        # one code on two things: the lot that got the second copy is held under an NCR (the caller starts
        # its review workflow; the number is kept here, in the upload's transaction)
        if lot_no or first_lot:
            dup.ncr = f"NCR-DUP-{dup.id}"
            await session.flush()
        alerts.append(dup)
    session.add(PoolUpload(upload_id=upload_id, pool_id=pool.id, count=len(accepted)))
    await session.flush()
    if accepted:
        await record_event(
            session, key=f"pool-upload:{upload_id}", event_type="ObjectEvent", action="ADD",
            biz_step="commissioning", disposition="active", event_time=max(u["used_at"] for u in used),
            epc_list=[epc(v, resolver) for v in accepted[:1000]],
            extensions={"codePool": number, "line": pool.line, "count": len(accepted)})
    # the actor is who sent the upload (the request's login, or the placeholder outside a request); the line is data
    await audit(session, actor=actor, action="code_pool.uploaded", entity="code_pool", key=number,
                changes=diff(None, {"state": "commissioned", "codes": accepted[:1000], "count": len(accepted)},
                             line=pool.line, upload_id=upload_id, accepted=len(accepted), alerts=len(alerts)))
    return {"pool": number, "upload_id": upload_id, "duplicate_upload": False, "accepted": len(accepted),
            "alerts": [_alert_view(a) for a in alerts]}


async def duplicate_ncrs(session: AsyncSession, alert_ids: list[int]) -> list[dict[str, Any]]:
    """What the NCR of each duplicate alert is about: its number, lot, work order and description."""
    out = []
    if not alert_ids:
        return out
    for a in (await session.execute(select(CodeAlert).where(CodeAlert.id.in_(alert_ids), CodeAlert.ncr.is_not(None))
                                    .order_by(CodeAlert.id))).scalars():
        d = a.details
        lot_no = d.get("lot") or d.get("first_lot")
        lot = (await session.execute(select(Lot).where(Lot.number == lot_no))).scalar_one()
        wo = (await session.execute(select(WorkOrder.number).where(WorkOrder.id == lot.work_order_id))).scalar() \
            if lot.work_order_id else None
        out.append({"alert": a.id, "ncr": a.ncr, "lot": lot_no, "work_order": wo or "", "description": (
            f"code {a.code} was used twice: first {d.get('first_used_at')} on line {d.get('first_line') or '?'}"
            f" (lot {d.get('first_lot') or '?'}), again {d.get('used_at')} on line {d.get('line') or '?'}"
            f" (lot {d.get('lot') or '?'}): one code on two items; relabel, or scrap the copies")})
    return out


async def unstarted_ncrs(session: AsyncSession, *, older_than: datetime, limit: int = 100) -> list[dict[str, Any]]:
    """Duplicate alerts whose NCR workflow is not marked started and that were recorded before `older_than`
    (younger ones are their upload route's to start), as duplicate_ncrs describes them, each with its alert id
    and whether the NCR is recorded already (its workflow's first activity writes the row)."""
    ids = list((await session.execute(
        select(CodeAlert.id).where(CodeAlert.kind == "duplicate", CodeAlert.ncr.is_not(None),
                                   CodeAlert.ncr_started_at.is_(None), CodeAlert.created_at < older_than)
        .order_by(CodeAlert.id).limit(limit))).scalars())
    if not ids:
        return []
    out = await duplicate_ncrs(session, ids)
    recorded = set((await session.execute(select(Ncr.number).where(Ncr.number.in_([d["ncr"] for d in out]))))
                   .scalars())
    return [{**d, "recorded": d["ncr"] in recorded} for d in out]


async def mark_ncr_started(session: AsyncSession, alert_ids: list[int], *, actor: str) -> list[str]:
    """Record that the NCR workflows of these alerts were started (or found started); returns the NCR numbers
    newly marked (an alert marked before is left as it is)."""
    if not alert_ids:
        return []
    now = utcnow()
    marked = []
    for a in (await session.execute(select(CodeAlert).where(
            CodeAlert.id.in_(alert_ids), CodeAlert.ncr.is_not(None), CodeAlert.ncr_started_at.is_(None))
            .order_by(CodeAlert.id))).scalars():
        a.ncr_started_at = now
        await session.flush()
        await audit(session, actor=actor, action="code_alert.ncr_started", entity="code_alert", key=str(a.id),
                    changes=diff({"ncr_started_at": None}, {"ncr_started_at": now.isoformat()}, ncr=a.ncr,
                                 code=a.code))
        marked.append(a.ncr or "")
    return marked


def _alert_view(a: CodeAlert) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "code": a.code, "details": a.details, "ncr": a.ncr,
            "created_at": a.created_at.isoformat(),
            "ncr_started_at": a.ncr_started_at.isoformat() if a.ncr_started_at else None}


async def reconcile(session: AsyncSession, *, number: str, action: str, actor: str,
                    operator: str | None = None) -> dict[str, Any]:
    """Close a pool: its unused codes are returned (unassigned again, never resolvable as issued) or voided
    (destroyed: a scan says so). Stored as ranges, so a pool of millions writes a few rows."""
    if action not in ("return", "void"):
        raise InvalidInput(f"action {action!r}: use return or void", field="action")
    pool = await get_pool(session, number)
    block = await session.get(SerialBlock, pool.block_id)
    assert block is not None
    state_before = pool.state
    if pool.state == "reconciled":
        ranges = (await session.execute(select(CodeRange).where(CodeRange.block_id == block.id))).scalars().all()
        return {"pool": number, "state": pool.state, "used": None,
                "unused": sum(r.count for r in ranges), "ranges": len(ranges)}
    used_seqs = sorted((await session.execute(select(UsedCode.seq).where(UsedCode.block_id == block.id)))
                       .scalars().all())
    state = "returned" if action == "return" else "voided"
    ranges = []
    cursor = block.first_seq
    for s in used_seqs + [block.first_seq + block.count]:
        if s > cursor:
            ranges.append(CodeRange(block_id=block.id, first_seq=cursor, count=s - cursor, state=state,
                                    reason=f"unused in pool {number}, {state} at reconciliation"))
        cursor = s + 1
    session.add_all(ranges)
    pool.state = "reconciled"
    pool.reconciled_at = utcnow()
    await session.flush()
    unused = sum(r.count for r in ranges)
    await audit(session, actor=actor, action="code_pool.reconciled", entity="code_pool", key=number,
                changes=diff({"state": state_before, "unused_codes": "unassigned"},
                             {"state": pool.state, "unused_codes": state},
                             action=action, used=len(used_seqs), unused=unused,
                             **({"operator": operator} if operator else {}),
                             ranges=[[r.first_seq, r.count] for r in ranges[:1000]]))
    return {"pool": number, "state": pool.state, "used": len(used_seqs), "unused": unused, "ranges": len(ranges)}


async def alerts(session: AsyncSession, *, kind: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    q = select(CodeAlert).order_by(CodeAlert.id.desc()).limit(limit)
    if kind:
        q = q.where(CodeAlert.kind == kind)
    return [_alert_view(a) for a in (await session.execute(q)).scalars().all()]
