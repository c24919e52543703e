"""Inspections with automatic verdicts, and nonconformance reports (NCRs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain import holds, ncr_review, supplier_returns
from domain.audit import PLACEHOLDER_ACTOR, audit, diff
from domain.events import hub_uri, lot_class_uri, record_event
from domain.models import (
    AuditLog,
    CharacteristicResult,
    EpcisEvent,
    Inspection,
    Lot,
    LotStatus,
    Ncr,
    NcrDecisionRecord,
    WorkOrder,
    utcnow,
)
from domain.models_identity import User
from domain.models_trace import EpcisEventKey
from domain.production import get_lot, set_lot_status
from domain.signatures import is_valid, record_signature, signatures_for


def judge_value(value: float, lower: float | None, upper: float | None) -> bool:
    return (lower is None or value >= lower) and (upper is None or value <= upper)


async def open_inspection(
    session: AsyncSession, *, number: str, kind: str, work_order: str | None, lot: str, plan: list[Any]
) -> Inspection:
    """Create a pending inspection from a plan. Idempotent on the inspection number."""
    existing = (await session.execute(select(Inspection).where(Inspection.number == number))).scalar()
    if existing is not None:
        return existing
    lot_row = await get_lot(session, lot)
    wo_id = None
    if work_order:
        wo_id = (await session.execute(select(WorkOrder.id).where(WorkOrder.number == work_order))).scalar()
    ins = Inspection(number=number, kind=kind, lot_id=lot_row.id, work_order_id=wo_id, status="pending")
    session.add(ins)
    await session.flush()
    for c in plan:
        session.add(CharacteristicResult(
            inspection_id=ins.id, name=c.name, nominal=c.nominal, lower=c.lower, upper=c.upper, unit=c.unit,
            sample_size=c.sample_size,
        ))
    await session.flush()
    await session.refresh(ins, ["characteristics"])
    await audit(session, actor="workflow", action="inspection.created", entity="inspection", key=number,
                changes=diff(None, {"kind": kind, "lot": lot, "work_order": work_order, "status": "pending",
                                    "characteristics": [c.name for c in ins.characteristics]}))
    return ins


async def get_inspection(session: AsyncSession, number: str) -> Inspection:
    ins = (await session.execute(select(Inspection).where(Inspection.number == number))).scalar()
    if ins is None:
        raise NotFound(f"inspection {number!r} does not exist: list open inspections at GET /api/inspections",
                       field="number")
    return ins


def check_results(ins: Inspection, measurements: list[Any]) -> dict[str, list[float]]:
    """Validate measurements against the plan; every problem is named. Returns values by characteristic."""
    plan = {c.name: c for c in ins.characteristics}
    given: dict[str, list[float]] = {}
    problems = []
    for i, m in enumerate(measurements):
        if m.characteristic not in plan:
            problems.append(
                f"measurements[{i}].characteristic: {m.characteristic!r} is not in the plan "
                f"(expected one of {sorted(plan)})"
            )
            continue
        if m.characteristic in given:
            problems.append(f"measurements[{i}]: {m.characteristic!r} is given twice; send it once")
            continue
        given[m.characteristic] = list(m.values)
    for name, c in plan.items():
        if name not in given:
            problems.append(f"measurements: {name!r} is missing: measure it ({c.sample_size} value(s))")
        elif len(given[name]) < c.sample_size:
            problems.append(
                f"measurements: {name!r} has {len(given[name])} value(s); the plan's sample size is {c.sample_size}"
            )
    if problems:
        raise InvalidInput("; ".join(problems), field="measurements")
    return given


def verdict_of(ins: Inspection, values: dict[str, list[float]]) -> tuple[str, list[str]]:
    failed = [
        c.name for c in ins.characteristics
        if not all(judge_value(v, c.lower, c.upper) for v in values[c.name])
    ]
    return ("failed" if failed else "passed"), failed


def _source(m: Any) -> dict[str, Any]:
    src = m.source
    d = src.model_dump(mode="json") if hasattr(src, "model_dump") else dict(src)
    return {k: d.get(k) for k in ("endpoint", "point", "at", "unit", "index")}


async def record_results(
    session: AsyncSession,
    *,
    number: str,
    inspector: str,
    measurements: list[Any],
    inspected_at: datetime | None,
    result_id: str | None,
    resolver: str,
    actor: str | None = None,
) -> tuple[Inspection, list[str]]:
    """Record measurements and the system's verdict. A re-send of the same results is harmless.

    `actor`, the audit entry's actor, is the login (or system token) that posted the results; `inspector`, who
    measured (a person, or the gauge posting for them), is data. Without an actor (results signalled before the
    hub carried it) the entry names the placeholder actor, never the inspector the body claimed."""
    ins = await get_inspection(session, number)
    values = check_results(ins, measurements)
    if ins.status != "pending":
        stored = {c.name: c.values for c in ins.characteristics}
        if stored == values:
            return ins, verdict_of(ins, values)[1]
        raise Conflict(
            f"inspection {number!r} already has results ({ins.status}, by {ins.inspector}): "
            "results are not changed after the fact; open a new inspection instead"
        )
    verdict, failed = verdict_of(ins, values)
    # values read from a gauge through a connector carry their source (endpoint, point, time)
    sources = {m.characteristic: _source(m) for m in measurements if getattr(m, "source", None) is not None}
    before = {"status": ins.status, "inspector": ins.inspector,
              "results": {c.name: {"values": c.values, "verdict": c.verdict} for c in ins.characteristics}}
    for c in ins.characteristics:
        c.values = values[c.name]
        c.verdict = "passed" if c.name not in failed else "failed"
    ins.status = verdict
    ins.inspector = inspector
    ins.result_id = result_id
    ins.inspected_at = inspected_at or utcnow()
    await session.flush()
    lot = ins.lot
    await record_event(
        session, key=f"inspection:{number}", event_type="ObjectEvent", biz_step="inspecting",
        disposition="conformant" if verdict == "passed" else "non_conformant", event_time=ins.inspected_at,
        quantity_list=[{"epcClass": lot_class_uri(lot, resolver), "quantity": lot.quantity}],
        biz_transactions=[("testprd", hub_uri("inspection-plan", f"{ins.kind}")),
                          ("testres", hub_uri("inspection", number))],
        persistent_disposition={"set": ["non_conformant"]} if verdict == "failed" else None,
        extensions={"inspection": {
            "number": number, "kind": ins.kind, "inspector": inspector, "verdict": verdict,
            "characteristics": [
                {"name": c.name, "nominal": c.nominal, "lower": c.lower, "upper": c.upper, "unit": c.unit,
                 "values": c.values, "verdict": c.verdict,
                 **({"source": sources[c.name]} if c.name in sources else {})} for c in ins.characteristics],
        }},
        lot=lot, work_order_id=ins.work_order_id,
    )
    await audit(session, actor=actor or PLACEHOLDER_ACTOR, action="inspection.recorded", entity="inspection",
                key=number,
                changes={"inspector": inspector, "verdict": verdict, "failed": failed, "values": values,
                         **({"sources": sources} if sources else {}),
                         **diff(before, {"status": verdict, "inspector": inspector,
                                         "results": {c.name: {"values": c.values, "verdict": c.verdict}
                                                     for c in ins.characteristics}})})
    # a first-article or patrol inspection passes a lot still in production: it is released by final inspection
    if verdict == "passed" and ins.kind not in ("first_article", "patrol"):
        if lot.status == LotStatus.quarantine:
            await set_lot_status(session, lot, LotStatus.released, actor="system",
                                 why=f"{ins.kind} inspection {number} passed")
        else:
            # held by a recall: only its reviewer's decision lifts the hold; the lot is released when it ends
            await holds.defer_status(session, lot, LotStatus.released, by=f"inspection {number}",
                                     why=f"{ins.kind} inspection {number} passed", actor="system")
    return ins, failed


# --- NCR ---------------------------------------------------------------------------------------------


def _held_quantity(lot: Lot) -> float:
    """The quantity an NCR's hold and outcome apply to: what is left of the lot (the whole lot when nothing is
    recorded as left, e.g. a lot still being produced)."""
    return lot.quantity_remaining if lot.quantity_remaining and lot.quantity_remaining > 0 else lot.quantity


async def get_ncr(session: AsyncSession, number: str) -> Ncr:
    ncr = (await session.execute(select(Ncr).where(Ncr.number == number))).scalar()
    if ncr is None:
        raise NotFound(f"NCR {number!r} does not exist: list NCRs at GET /api/ncrs", field="number")
    return ncr


async def open_ncr(
    session: AsyncSession, *, number: str, workflow_id: str, work_order: str | None, lot: str,
    inspection: str | None, description: str, resolver: str, severity: str | None = None,
    timing: dict[str, dict[str, float]] | None = None,
) -> Ncr:
    """Open an NCR and put its lot on hold. Idempotent on the NCR number. With a severity (NCRs opened
    since the review states), its review record starts too: severity, durations, due time."""
    existing = (await session.execute(select(Ncr).where(Ncr.number == number))).scalar()
    if existing is not None:
        if severity is not None:
            await ncr_review.start_review(session, existing, severity=severity, timing=timing or {})
        return existing
    lot_row = await get_lot(session, lot)
    wo_id = None
    if work_order:
        wo_id = (await session.execute(select(WorkOrder.id).where(WorkOrder.number == work_order))).scalar()
    ins_id = None
    if inspection:
        ins_id = (await session.execute(select(Inspection.id).where(Inspection.number == inspection))).scalar()
    ncr = Ncr(number=number, workflow_id=workflow_id, work_order_id=wo_id, lot_id=lot_row.id,
              inspection_id=ins_id, description=description, state="open")
    session.add(ncr)
    await session.flush()
    await set_lot_status(session, lot_row, LotStatus.on_hold, actor="system", why=f"NCR {number} opened")
    await record_event(
        session, key=f"hold:{number}", event_type="ObjectEvent", biz_step="holding",
        disposition="non_conformant",
        quantity_list=[{"epcClass": lot_class_uri(lot_row, resolver), "quantity": _held_quantity(lot_row)}],
        biz_transactions=[("testres", hub_uri("ncr", number))],
        lot=lot_row, work_order_id=wo_id,
    )
    if severity is not None:
        await ncr_review.start_review(session, ncr, severity=severity, timing=timing or {})
    await audit(session, actor="system", action="ncr.opened", entity="ncr", key=number,
                changes={"lot": lot, "inspection": inspection, "description": description,
                         **({"severity": severity} if severity is not None else {}),
                         **diff(None, {"state": "open", "lot": lot, "inspection": inspection,
                                       "work_order": work_order, "description": description, "severity": severity})})
    await session.refresh(ncr, ["lot", "decisions"])
    return ncr


DISPOSITION_ACTIONS = ncr_review.DISPOSITION_ACTIONS
# decisions whose signature also covers the NCR's classification (severity, defect codes, quantity affected): a
# disposition, and what comes once the classification is frozen (verify) or final (dismiss). A confirm or review
# signature does not: the NCR is classified after it is confirmed, in the MRB.
COVERS_CLASSIFICATION = (*DISPOSITION_ACTIONS, "dismiss", "verify")
# signatures of NCR decisions: version 1 (no `content_version` key; signed before the NCR's content was covered)
# holds the decision only; version 2 also what was signed about the NCR (`signed_ncr`)
DECISION_CONTENT_VERSION = 2


def ncr_signed_fields(lot: str, rev: Any) -> dict[str, Any]:
    """What a decision's signature says about its NCR: the lot, and the classification as it is now (`rev`: the
    NCR's review row or anything with its severity, defect_codes and quantity_affected; None: not classified)."""
    return {"lot": lot, "severity": rev.severity if rev is not None else None,
            "defect_codes": list(rev.defect_codes or []) if rev is not None else [],
            "quantity_affected": rev.quantity_affected if rev is not None else None}


def decision_content(ncr: str, rec: Any, signed_ncr: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a reviewer's signature covers: changing any of it afterwards invalidates the signature.

    Without `signed_ncr`: version 1, the decision only (how signatures were made before version 2; kept so they
    are still checked against what they covered). With it (ncr_signed_fields): version 2, also the NCR's lot and,
    for COVERS_CLASSIFICATION decisions, its severity, defect codes and quantity affected."""
    content = {"ncr": ncr, "decision_id": rec.decision_id, "action": rec.action, "reviewer": rec.reviewer,
               "role": rec.role, "reason": rec.reason, "rework_operation": rec.rework_operation}
    if signed_ncr is None:
        return content
    covered = signed_ncr if rec.action in COVERS_CLASSIFICATION else {"lot": signed_ncr["lot"]}
    return {**content, "content_version": DECISION_CONTENT_VERSION, "signed_ncr": covered}


def content_version(signed: Any) -> int:
    """The version of a stored signature's content (1: before the NCR's content was covered)."""
    return int(signed.get("content_version", 1)) if isinstance(signed, dict) else 1


def decision_content_now(ncr: str, rec: Any, signed: Any, signed_ncr_now: dict[str, Any]) -> dict[str, Any]:
    """The content a stored signature is checked against: the decision and NCR as they are now, in the form the
    signature was made in (`signed`: the stored content)."""
    return decision_content(ncr, rec, signed_ncr_now if content_version(signed) >= 2 else None)


async def record_decision(
    session: AsyncSession, *, ncr: str, decision_id: str, action: str, reviewer: str, role: str,
    reason: str, rework_operation: int | None, new_state: str, signature: Any = None,
) -> NcrDecisionRecord:
    """Record a reviewer's decision, and its electronic signature if given. Idempotent on decision_id."""
    existing = (
        await session.execute(select(NcrDecisionRecord).where(NcrDecisionRecord.decision_id == decision_id))
    ).scalar()
    if existing is not None:
        return existing
    row = await get_ncr(session, ncr)
    # the classification this decision signs is the one committed now: a PATCH of the NCR waits for this
    # transaction (and is then refused once a disposition is recorded; ncr_review.update_ncr takes the same lock)
    await ncr_review.lock_ncr(session, row)
    rec = NcrDecisionRecord(decision_id=decision_id, ncr_id=row.id, action=action, reviewer=reviewer, role=role,
                            reason=reason, rework_operation=rework_operation)
    session.add(rec)
    before = row.state
    before_fields = {"state": row.state, "disposition": row.disposition,
                     "closed_at": row.closed_at.isoformat() if row.closed_at else None}
    row.state = new_state
    if action in DISPOSITION_ACTIONS and new_state in ("closed", "dismissed", "disposition"):
        row.disposition = action
    if new_state in ("closed", "dismissed"):
        row.closed_at = utcnow()
    if action == "verify":
        rev = await ncr_review.review_of(session, row)
        rev.verification, rev.verified_by, rev.verified_at = "verified", reviewer, utcnow()
        rev.verification_note = reason
        if row.disposition == "return_to_supplier":
            await supplier_returns.mark_shipped(session, ncr=row, actor=reviewer, note=reason)
    await session.flush()
    await audit(session, actor=reviewer, action=f"ncr.{action}", entity="ncr", key=ncr,
                changes={"state": [before, new_state], "role": role, "reason": reason,
                         "rework_operation": rework_operation, "decision_id": decision_id,
                         **diff(before_fields, {"state": row.state, "disposition": row.disposition,
                                                "closed_at": row.closed_at.isoformat() if row.closed_at else None})})
    if signature is not None:
        # a decision that covers the classification makes sure the NCR has its review row now (an NCR opened
        # before the review states gets it on first use), so the row appearing later does not change what it signed
        rev = await (ncr_review.review_of(session, row) if action in COVERS_CLASSIFICATION
                     else ncr_review.find_review(session, row))
        await record_signature(session, signer=signature.signer, signer_name=signature.signer_name, role=role,
                               meaning=signature.meaning, entity="ncr_decision", key=decision_id,
                               content=decision_content(ncr, rec, ncr_signed_fields(row.lot.number, rev)))
    return rec


async def decision_signatures(session: AsyncSession, ncr: Ncr) -> dict[str, dict[str, Any]]:
    """The signature of each decision of an NCR, with whether it is still valid: checked against the decision and
    the NCR (lot, classification) as they are now, in the content version the signature was made in."""
    out: dict[str, dict[str, Any]] = {}
    now: dict[str, Any] | None = None
    for d in ncr.decisions:
        for sig in await signatures_for(session, "ncr_decision", d.decision_id):
            if now is None:
                now = ncr_signed_fields(ncr.lot.number, await ncr_review.find_review(session, ncr))
            out[d.decision_id] = {"signer": sig.signer, "signer_name": sig.signer_name, "role": sig.role,
                                  "meaning": sig.meaning, "signed_at": sig.signed_at.isoformat(),
                                  "content_hash": sig.content_hash,
                                  "content_version": content_version(sig.content),
                                  "valid": is_valid(sig, decision_content_now(ncr.number, d, sig.content, now))}
    return out


_DISPOSED = {"scrap": "written off", "return_to_supplier": "returned to the supplier",
             "use_as_is": "released under concession", "rework": "sent back for rework"}


async def disposed_quantity(session: AsyncSession, ncr: Ncr) -> dict[str, Any] | None:
    """The quantity the NCR's disposition was carried out on, from the event that recorded it (None until then).

    A disposition applies to what is left of the whole lot (apply_disposition): the hub does not split a lot, so a
    scrap writes off the remaining lot even when `quantity_affected` is smaller; the answer says so."""
    if ncr.disposition not in _DISPOSED:
        return None
    doc = (await session.execute(
        select(EpcisEvent.document).join(EpcisEventKey, EpcisEventKey.event_pk == EpcisEvent.id)
        .where(EpcisEventKey.key == f"disposition:{ncr.number}"))).scalar()
    quantities = (doc or {}).get("quantityList") or []
    if not quantities:
        return None
    quantity = float(quantities[0]["quantity"])
    rev = await ncr_review.find_review(session, ncr)
    affected = rev.quantity_affected if rev else None
    lot = ncr.lot
    note = f"{quantity:g} {lot.uom} of lot {lot.number} {_DISPOSED[ncr.disposition]}: what was left of the whole lot"
    if affected is not None and affected < quantity:
        note += (f"; quantity_affected ({affected:g}) is what was found nonconforming, and a disposition applies to "
                 "the lot, not a part of it")
    return {"action": ncr.disposition, "lot": lot.number, "quantity": quantity, "uom": lot.uom,
            "quantity_affected": affected, "note": note}


async def record_notice(session: AsyncSession, *, ncr: str, notice: str, to_role: str | None = None) -> None:
    row = await get_ncr(session, ncr)
    field = {"reminder": "reminded_at", "escalation": "escalated_at"}.get(notice)
    if notice == "reminder" and row.reminded_at is None:
        row.reminded_at = utcnow()
    elif notice == "escalation" and row.escalated_at is None:
        row.escalated_at = utcnow()
    else:
        return
    changes: dict[str, Any] = {"state": row.state}
    if notice == "escalation" and to_role:
        rev = await ncr_review.review_of(session, row)
        users = await _usernames_with_role(session, to_role)
        rev.escalated_to, rev.escalated_users = to_role, users
        changes.update({"to_role": to_role, "to_users": users})
    await session.flush()
    assert field is not None
    changes.update(diff({field: None}, {field: getattr(row, field).isoformat()}))
    await audit(session, actor="system", action=f"ncr.{notice}", entity="ncr", key=ncr, changes=changes)


async def _usernames_with_role(session: AsyncSession, role: str) -> list[str]:
    users = (await session.execute(select(User).where(User.active.is_(True)).order_by(User.username))).scalars()
    return [u.username for u in users if role in (u.roles or [])]


async def set_ncr_state(session: AsyncSession, *, ncr: str, state: str, note: str = "",
                        verification: str | None = None) -> None:
    """A state change the NCR's workflow makes itself (carried out, verified by re-inspection). Idempotent."""
    row = await get_ncr(session, ncr)
    rev = await ncr_review.review_of(session, row)
    if state == "verification" and rev.baseline_inspection_id is None:
        # the re-inspection that verifies a rework is one opened after this point
        rev.baseline_inspection_id = (await session.execute(
            select(func.max(Inspection.id)).where(Inspection.lot_id == row.lot_id))).scalar() or 0
    if verification and rev.verification is None:
        rev.verification, rev.verified_by, rev.verified_at = verification, "system", utcnow()
        rev.verification_note = note
    if row.state == state:
        await session.flush()
        return
    before = row.state
    row.state = state
    if state in ("closed", "dismissed") and row.closed_at is None:
        row.closed_at = utcnow()
    await session.flush()
    await audit(session, actor="system", action="ncr.state", entity="ncr", key=ncr,
                changes={"state": [before, state], "note": note, "verification": verification,
                         **diff({"state": before}, {"state": state})})


async def check_reinspection(session: AsyncSession, *, ncr: str, lot: str) -> dict[str, Any]:
    """The first inspection with a verdict on the lot since the rework was decided, or a later NCR on it."""
    row = await get_ncr(session, ncr)
    rev = await ncr_review.review_of(session, row)
    baseline = rev.baseline_inspection_id or 0
    ins = (await session.execute(
        select(Inspection).where(Inspection.lot_id == row.lot_id, Inspection.id > baseline,
                                 Inspection.status.in_(("passed", "failed"))).order_by(Inspection.id).limit(1)
    )).scalar()
    later = (await session.execute(
        select(Ncr.number).where(Ncr.lot_id == row.lot_id, Ncr.id > row.id).order_by(Ncr.id).limit(1))).scalar()
    return {"inspection": ins.number if ins else None, "verdict": ins.status if ins else None, "later_ncr": later}


async def _kept_on_hold(session: AsyncSession, lot_row: Lot, *, ncr: str, outcome: str, reason: str) -> bool:
    """Holds stack (domain/holds.py): a dismissed NCR, or one whose lot is used as is, releases the lot only when
    nothing else holds it. True when the lot is not released: another recall or NCR still holds it (it stays on
    hold, the entry names them; a use-as-is concession is still recorded on the lot), or a recall rejected it
    meanwhile (that stands)."""
    if lot_row.status == LotStatus.rejected:
        return True
    if lot_row.status != LotStatus.on_hold:
        return False
    still = await holds.holders(session, lot_row.id, except_ncr=ncr)
    if not still:
        return False
    if outcome == "use_as_is":
        await set_lot_status(session, lot_row, LotStatus.on_hold, actor="system",
                             why=f"NCR {ncr}: use as is; still on hold for {', '.join(still)}",
                             concession=f"{ncr}: {reason}")
    await holds.keep_hold(session, lot_row, released_by=f"NCR {ncr}", still_held_by=still, actor="system", ncr=ncr,
                          outcome=outcome)
    return True


async def written_off(session: AsyncSession, *, ncr: str, lot: Lot, outcome: str) -> float:
    """What an NCR's scrap or return took off the lot: the quantity left that its outcome set to 0, read back from
    the audit (`lot.quantity`), so a retried activity answers as the first did; 0 when nothing was left."""
    entries = (await session.execute(
        select(AuditLog.changes).where(AuditLog.entity == "lot", AuditLog.entity_key == lot.number,
                                       AuditLog.action == "lot.quantity"))).scalars()
    why = f"NCR {ncr}: {outcome}"
    return sum(float((c.get("before") or {}).get("quantity_remaining") or 0) for c in entries
               if isinstance(c, dict) and c.get("why") == why)


async def apply_disposition(
    session: AsyncSession, *, ncr: str, lot: str, outcome: str, resolver: str
) -> Lot:
    """The lot-level effect of an NCR outcome. Idempotent: applying it twice changes nothing."""
    row = await get_ncr(session, ncr)
    lot_row: Lot = await get_lot(session, lot)
    reason = row.decisions[-1].reason if row.decisions else ""
    affected = _held_quantity(lot_row)  # what the outcome applies to (before a write-off sets it to 0)
    if outcome in ("dismiss", "use_as_is") and await _kept_on_hold(session, lot_row, ncr=ncr, outcome=outcome,
                                                                    reason=reason):
        # not released: no `conformant` event either (the lot keeps the disposition its holder gave it); the last
        # holder's release records it
        return lot_row
    if outcome in ("dismiss", "use_as_is"):
        # the last hold ends here: a change deferred while a recall held the lot (a rework still waiting for its
        # re-inspection: quarantine) stands
        back = await holds.deferred_status(session, lot_row) if lot_row.status == LotStatus.on_hold else None
        back = back or LotStatus.released
        if outcome == "dismiss":
            await set_lot_status(session, lot_row, back, actor="system", why=f"NCR {ncr} dismissed")
        else:
            await set_lot_status(session, lot_row, back, actor="system", why=f"NCR {ncr}: use as is",
                                 concession=f"{ncr}: {reason}")
        disp = "conformant"
    elif outcome in ("scrap", "return_to_supplier"):
        if outcome == "return_to_supplier":
            # before the write-off below, which it records the quantity of; a retry finds the one created
            await supplier_returns.request_return(session, ncr=row, lot=lot_row, reason=reason,
                                                  quantity=lot_row.quantity_remaining or lot_row.quantity)
        await set_lot_status(session, lot_row, LotStatus.rejected, actor="system", why=f"NCR {ncr}: {outcome}")
        if lot_row.quantity_remaining:
            await audit(session, actor="system", action="lot.quantity", entity="lot", key=lot_row.number,
                        changes=diff({"quantity_remaining": lot_row.quantity_remaining}, {"quantity_remaining": 0.0},
                                     why=f"NCR {ncr}: {outcome}"))
        lot_row.quantity_remaining = 0.0
        disp = "destroyed" if outcome == "scrap" else "returned"
    elif outcome == "rework":
        why = f"NCR {ncr}: rework, then re-inspection"
        # a lot a recall holds stays on hold (the rework and its re-inspection go on): quarantine once the recall
        # releases it
        if not await holds.defer_status(session, lot_row, LotStatus.quarantine, by=f"NCR {ncr}", why=why,
                                        actor="system"):
            await set_lot_status(session, lot_row, LotStatus.quarantine, actor="system", why=why)
        disp = "in_progress"
    else:
        raise InvalidInput(f"unknown NCR outcome {outcome!r}")
    await record_event(
        session, key=f"disposition:{ncr}", event_type="ObjectEvent",
        biz_step="destroying" if outcome == "scrap" else "holding" if outcome == "rework" else "inspecting",
        action="DELETE" if outcome == "scrap" else "OBSERVE", disposition=disp,
        quantity_list=[{"epcClass": lot_class_uri(lot_row, resolver), "quantity": affected}],
        biz_transactions=[("testres", hub_uri("ncr", ncr))],
        persistent_disposition={"unset": ["non_conformant"]} if outcome in ("dismiss", "use_as_is") else None,
        extensions={"ncrOutcome": outcome},
        lot=lot_row, work_order_id=row.work_order_id,
    )
    return lot_row
