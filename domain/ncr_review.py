"""The review content of an NCR beyond its opening: severity, defect codes, quantity affected, containment
actions, root cause, the link to a CAPA, its due time (overdue NCRs) and what it waits for, and who.

The review's states (open -> qa_review -> mrb -> disposition -> verification -> closed, or dismissed) are
driven by the NCR's workflow; this module keeps what people write into the record, each change audited."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain.audit import audit
from domain.models import Ncr, NcrDecisionRecord, utcnow
from domain.models_ncr import Capa, DefectCode, NcrContainment, NcrReview

SEVERITIES = ("critical", "major", "minor")
SEVERITY_RANK = {"minor": 0, "major": 1, "critical": 2}
# the 6M of the Ishikawa diagram ("mother nature" named environment)
ROOT_CAUSE_CATEGORIES = ("man", "machine", "method", "material", "measurement", "environment")
FINAL_STATES = ("closed", "dismissed")
DISPOSITION_ACTIONS = ("rework", "scrap", "use_as_is", "return_to_supplier")
# what a disposition's signature covers of the NCR (domain.quality.decision_content): frozen once one is recorded
CLASSIFICATION = ("severity", "defect_codes", "quantity_affected")
REVIEW_ROLES = ["qa_supervisor", "quality_manager"]
MRB_ROLES = ["mrb_production", "mrb_engineering", "quality_manager"]


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


# --- defect codes ------------------------------------------------------------------------------------


async def list_defect_codes(session: AsyncSession, *, include_inactive: bool = False) -> list[DefectCode]:
    q = select(DefectCode).order_by(DefectCode.code)
    if not include_inactive:
        q = q.where(DefectCode.active.is_(True))
    return list((await session.execute(q)).scalars())


async def create_defect_code(session: AsyncSession, *, code: str, description: str, default_severity: str,
                             actor: str) -> DefectCode:
    if default_severity not in SEVERITIES:
        raise InvalidInput(f"default_severity: {default_severity!r} is not a severity; use one of {SEVERITIES}",
                           field="default_severity")
    if (await session.execute(select(DefectCode.id).where(DefectCode.code == code))).scalar() is not None:
        raise Conflict(f"code: defect code {code!r} already exists; choose another code", field="code")
    row = DefectCode(code=code, description=description, default_severity=default_severity, created_by=actor)
    session.add(row)
    await session.flush()
    await audit(session, actor=actor, action="defect_code.created", entity="defect_code", key=code,
                changes={"before": None, "after": {"description": description, "default_severity": default_severity}})
    return row


async def _known_codes(session: AsyncSession, codes: list[str]) -> dict[str, DefectCode]:
    rows = {c.code: c for c in (await session.execute(
        select(DefectCode).where(DefectCode.code.in_(codes), DefectCode.active.is_(True)))).scalars()}
    unknown = [c for c in codes if c not in rows]
    if unknown:
        raise InvalidInput(f"defect_codes: unknown code(s) {unknown}; list them at GET /api/defect-codes "
                           "(a quality manager adds new ones)", field="defect_codes")
    return rows


# --- the review record --------------------------------------------------------------------------------


def due_at(opened_at: datetime, timing: dict[str, Any], severity: str) -> datetime | None:
    t = timing.get(severity)
    return opened_at + timedelta(seconds=t["due_after"]) if t else None


async def start_review(session: AsyncSession, ncr: Ncr, *, severity: str, timing: dict[str, dict[str, float]]) -> NcrReview:
    """The review row of a new NCR, with its durations per severity (seconds). Idempotent."""
    rev = await find_review(session, ncr)
    if rev is not None:
        return rev
    rev = NcrReview(ncr_id=ncr.id, severity=severity, timing=timing, defect_codes=[], escalated_users=[],
                    due_at=due_at(ncr.opened_at, timing, severity))
    session.add(rev)
    await session.flush()
    return rev


async def find_review(session: AsyncSession, ncr: Ncr) -> NcrReview | None:
    return (await session.execute(select(NcrReview).where(NcrReview.ncr_id == ncr.id))).scalar()


async def review_of(session: AsyncSession, ncr: Ncr) -> NcrReview:
    """The review row; an NCR opened before the review existed gets one (major, no due time) on first edit."""
    rev = await find_review(session, ncr)
    if rev is None:
        rev = NcrReview(ncr_id=ncr.id, severity="major", timing={}, defect_codes=[], escalated_users=[])
        session.add(rev)
        await session.flush()
    return rev


async def _ncr(session: AsyncSession, number: str) -> Ncr:
    ncr = (await session.execute(select(Ncr).where(Ncr.number == number))).scalar()
    if ncr is None:
        raise NotFound(f"NCR {number!r} does not exist: list NCRs at GET /api/ncrs", field="number")
    return ncr


def _snapshot(rev: NcrReview) -> dict[str, Any]:
    return {"severity": rev.severity, "defect_codes": list(rev.defect_codes or []),
            "quantity_affected": rev.quantity_affected, "capa": rev.capa.number if rev.capa else None,
            "due_at": _iso(rev.due_at)}


async def lock_ncr(session: AsyncSession, ncr: Ncr) -> None:
    """Serialise a change of the NCR's classification with the recording of a decision that signs it
    (PostgreSQL row lock until the transaction ends; SQLite's writers queue anyway)."""
    await session.execute(select(Ncr.id).where(Ncr.id == ncr.id).with_for_update())


async def _signed_disposition(session: AsyncSession, ncr: Ncr) -> NcrDecisionRecord | None:
    """The first disposition decided on the NCR (read after lock_ncr: one committed meanwhile counts)."""
    return (await session.execute(
        select(NcrDecisionRecord).where(NcrDecisionRecord.ncr_id == ncr.id,
                                        NcrDecisionRecord.action.in_(DISPOSITION_ACTIONS))
        .order_by(NcrDecisionRecord.id).limit(1))).scalar()


async def update_ncr(session: AsyncSession, number: str, *, actor: str, fields: dict[str, Any]) -> tuple[Ncr, bool]:
    """Change severity, defect codes, quantity affected or the CAPA link. Returns the NCR and whether the
    severity changed (its workflow then re-times its reminder and escalation).

    Once a disposition is decided, its signature covers the severity, defect codes and quantity affected
    (domain.quality.decision_content): they are frozen from then on; the CAPA link may still change."""
    ncr = await _ncr(session, number)
    await lock_ncr(session, ncr)
    rev = await review_of(session, ncr)
    before = _snapshot(rev)
    final = ncr.state in FINAL_STATES
    if final and set(CLASSIFICATION) & set(fields):
        raise Conflict(f"NCR {number} is {ncr.state}: its severity, defect codes and quantity are history; "
                       "only the root cause and the CAPA link may still be completed",
                       field=next(f for f in CLASSIFICATION if f in fields))
    if "quantity_affected" in fields:
        q = fields["quantity_affected"]
        if q is not None and q > ncr.lot.quantity:
            raise InvalidInput(f"quantity_affected: {q:g} is more than lot {ncr.lot.number} holds "
                               f"({ncr.lot.quantity:g} {ncr.lot.uom})", field="quantity_affected")
        rev.quantity_affected = q
    if "defect_codes" in fields:
        codes = list(dict.fromkeys(fields["defect_codes"] or []))
        known = await _known_codes(session, codes)
        rev.defect_codes = codes
        if "severity" not in fields and known:
            # a code's default severity raises the NCR's severity; lowering it is a person's decision
            top = max((c.default_severity for c in known.values()), key=SEVERITY_RANK.__getitem__)
            if SEVERITY_RANK[top] > SEVERITY_RANK[rev.severity]:
                fields = {**fields, "severity": top}
    if "severity" in fields:
        rev.severity = fields["severity"]
        rev.due_at = due_at(ncr.opened_at, rev.timing or {}, rev.severity) if rev.timing else rev.due_at
    if "capa" in fields:
        if fields["capa"] is None:
            rev.capa_id = None
            rev.capa = None
        else:
            capa = (await session.execute(select(Capa).where(Capa.number == fields["capa"]))).scalar()
            if capa is None:
                raise NotFound(f"capa: CAPA {fields['capa']!r} does not exist: create it at POST /api/capas",
                               field="capa")
            rev.capa_id = capa.id
            rev.capa = capa
    after = _snapshot(rev)
    # after the changes, so a severity raised by a defect code's default counts too (a field sent with its current
    # value changes nothing and passes); the caller's transaction rolls the changes back on the refusal
    changed = [f for f in CLASSIFICATION if after[f] != before[f]]
    if changed and (signed := await _signed_disposition(session, ncr)) is not None:
        raise Conflict(
            f"{changed[0]}: NCR {number}'s disposition {signed.action} ({signed.decision_id}) was signed by "
            f"{signed.reviewer} over its severity, defect codes and quantity affected as they were; they cannot "
            "change after it (the signature would no longer hold). Record what you found in the root cause or a "
            "containment action, or open a new NCR", field=changed[0])
    await session.flush()
    if after != before:
        await audit(session, actor=actor, action="ncr.updated", entity="ncr", key=number,
                    changes={"before": {k: v for k, v in before.items() if after[k] != v},
                             "after": {k: v for k, v in after.items() if before[k] != v}})
    return ncr, after["severity"] != before["severity"]


async def set_root_cause(session: AsyncSession, number: str, *, actor: str, category: str, text: str) -> Ncr:
    if category not in ROOT_CAUSE_CATEGORIES:
        raise InvalidInput(f"category: {category!r} is not a root cause category; use one of "
                           f"{ROOT_CAUSE_CATEGORIES} (the 6M)", field="category")
    ncr = await _ncr(session, number)
    rev = await review_of(session, ncr)
    before = {"category": rev.root_cause_category, "text": rev.root_cause}
    rev.root_cause_category, rev.root_cause = category, text
    await session.flush()
    await audit(session, actor=actor, action="ncr.root_cause", entity="ncr", key=number,
                changes={"before": before, "after": {"category": category, "text": text}})
    return ncr


def _containment(c: NcrContainment) -> dict[str, Any]:
    return {"seq": c.seq, "action": c.action, "owner": c.owner, "due_at": _iso(c.due_at), "done_at": _iso(c.done_at),
            "created_by": c.created_by, "created_at": _iso(c.created_at)}


async def containments(session: AsyncSession, ncr: Ncr) -> list[NcrContainment]:
    return list((await session.execute(
        select(NcrContainment).where(NcrContainment.ncr_id == ncr.id).order_by(NcrContainment.seq))).scalars())


async def add_containment(session: AsyncSession, number: str, *, actor: str, action: str, owner: str,
                          due: datetime | None) -> dict[str, Any]:
    ncr = await _ncr(session, number)
    if ncr.state in FINAL_STATES:
        raise Conflict(f"NCR {number} is {ncr.state}: containment is added while an NCR is open")
    # concurrent additions number their actions one after the other (PostgreSQL; SQLite writers queue anyway)
    await session.execute(select(Ncr.id).where(Ncr.id == ncr.id).with_for_update())
    seq = len(await containments(session, ncr)) + 1
    c = NcrContainment(ncr_id=ncr.id, seq=seq, action=action, owner=owner, due_at=due, created_by=actor)
    session.add(c)
    await session.flush()
    out = _containment(c)
    await audit(session, actor=actor, action="ncr.containment_added", entity="ncr", key=number,
                changes={"before": None, "after": out})
    return out


async def update_containment(session: AsyncSession, number: str, seq: int, *, actor: str,
                             fields: dict[str, Any]) -> dict[str, Any]:
    ncr = await _ncr(session, number)
    c = next((c for c in await containments(session, ncr) if c.seq == seq), None)
    if c is None:
        raise NotFound(f"NCR {number} has no containment action {seq}: see GET /api/ncrs/{number}", field="seq")
    before = _containment(c)
    if "done" in fields:
        done = fields.pop("done")
        c.done_at = (c.done_at or utcnow()) if done else None
    for k in ("action", "owner"):
        if k in fields and fields[k] is not None:
            setattr(c, k, fields[k])
    if "due" in fields:
        c.due_at = fields["due"]
    if "done_at" in fields and fields["done_at"] is not None:
        c.done_at = fields["done_at"]
    await session.flush()
    after = _containment(c)
    await audit(session, actor=actor, action="ncr.containment_updated", entity="ncr", key=number,
                changes={"seq": seq, "before": {k: v for k, v in before.items() if after[k] != v},
                         "after": {k: v for k, v in after.items() if before[k] != v}})
    return after


# --- what an NCR waits for -----------------------------------------------------------------------------


def waits(ncr: Ncr, *, stage_iqc: bool = False) -> tuple[str | None, list[str]]:
    """What the NCR waits for, and which roles (or 'system') can move it, from its recorded state."""
    s = ncr.state
    if s == "open":
        return "QA supervisor: take into review (review), confirm into MRB or dismiss", REVIEW_ROLES
    if s == "qa_review":
        return "QA supervisor: confirm into MRB or dismiss", REVIEW_ROLES
    if s == "mrb":
        since = [d for d in ncr.decisions if d.action == "confirm"][-1:]
        after = [d for d in ncr.decisions if since and d.id > since[0].id]
        signed = {d.role for d in after if d.action == "use_as_is"}
        if signed and after[-1].action == "use_as_is":
            missing = sorted({"mrb_production", "mrb_engineering"} - signed)
            signers = sorted({d.reviewer for d in after if d.action == "use_as_is"})
            return (f"material review board: use_as_is needs the signature of {', '.join(missing)} too, "
                    f"from another person than {', '.join(signers)}"), missing
        who = f", by another person than {since[0].reviewer}, who confirmed it" if since else ""
        return f"material review board: disposition (rework, scrap, use_as_is, return_to_supplier){who}", MRB_ROLES
    if s == "disposition":
        return f"system: carrying out {ncr.disposition} (lot status, ERP)", ["system"]
    if s == "verification":
        if ncr.disposition == "rework":
            return ("inspector: re-inspection of the reworked lot (a QA supervisor may verify instead)",
                    ["inspector", "qa_supervisor", "quality_manager"])
        what = "scrapped material destroyed" if ncr.disposition == "scrap" else "material shipped back"
        return f"QA supervisor: verify {what} (signed)", REVIEW_ROLES
    return None, []


def is_overdue(ncr: Ncr, rev: NcrReview | None, now: datetime | None = None) -> bool:
    return bool(rev and rev.due_at and ncr.state not in FINAL_STATES and rev.due_at < (now or utcnow()))


def overdue_clause(now: datetime) -> Any:
    return and_(NcrReview.due_at.is_not(None), NcrReview.due_at < now, Ncr.state.not_in(FINAL_STATES))


def not_overdue_clause(now: datetime) -> Any:
    return or_(NcrReview.due_at.is_(None), NcrReview.due_at >= now, Ncr.state.in_(FINAL_STATES))


async def review_fields(session: AsyncSession, ncr: Ncr, rev: NcrReview | None, *, now: datetime | None = None,
                        with_containment: bool = True) -> dict[str, Any]:
    waiting_for, waiting_on = waits(ncr)
    out: dict[str, Any] = {
        "severity": rev.severity if rev else None,
        "defect_codes": list(rev.defect_codes or []) if rev else [],
        "quantity_affected": rev.quantity_affected if rev else None,
        "root_cause": ({"category": rev.root_cause_category, "text": rev.root_cause}
                       if rev and rev.root_cause_category else None),
        "capa": rev.capa.number if rev and rev.capa else None,
        "due_at": _iso(rev.due_at) if rev else None,
        "overdue": is_overdue(ncr, rev, now),
        "escalated_to": ({"role": rev.escalated_to, "users": list(rev.escalated_users or [])}
                         if rev and rev.escalated_to else None),
        "verification": ({"result": rev.verification, "by": rev.verified_by, "at": _iso(rev.verified_at),
                          "note": rev.verification_note} if rev and rev.verification else None),
        "waiting_for": waiting_for, "waiting_on": waiting_on,
    }
    if with_containment:
        out["containment"] = [_containment(c) for c in await containments(session, ncr)]
    return out
