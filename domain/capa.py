"""Corrective and preventive action (CAPA) records: a problem, its root cause, the NCRs it answers, actions
with owners and due dates, and an effectiveness check before it is closed with a signature.

States: open -> in_progress (an action is started or done) -> effectiveness_check (every action done or
cancelled) -> closed (effective, signed by a quality manager); found not effective it goes back to in_progress."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain.audit import audit, diff
from domain.models import Ncr, utcnow
from domain.models_ncr import Capa, CapaAction, NcrReview
from domain.ncr_review import ROOT_CAUSE_CATEGORIES, review_of
from domain.signatures import is_valid, record_signature, signatures_for

ACTION_KINDS = ("corrective", "preventive")
ACTION_STATUSES = ("open", "in_progress", "done", "cancelled")
OPEN_ACTION = ("open", "in_progress")


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


def _check_category(category: str | None) -> None:
    if category is not None and category not in ROOT_CAUSE_CATEGORIES:
        raise InvalidInput(f"root_cause_category: {category!r} is not a root cause category; use one of "
                           f"{ROOT_CAUSE_CATEGORIES} (the 6M)", field="root_cause_category")


async def get_capa(session: AsyncSession, number: str) -> Capa:
    capa = (await session.execute(select(Capa).where(Capa.number == number))).scalar()
    if capa is None:
        raise NotFound(f"CAPA {number!r} does not exist: list CAPAs at GET /api/capas", field="number")
    return capa


def _action(a: CapaAction, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    return {"seq": a.seq, "kind": a.kind, "description": a.description, "owner": a.owner, "due_at": _iso(a.due_at),
            "status": a.status, "done_at": _iso(a.done_at),
            "overdue": a.status in OPEN_ACTION and a.due_at < now}


def _check_action(kind: str, status: str = "open") -> None:
    if kind not in ACTION_KINDS:
        raise InvalidInput(f"kind: {kind!r} is not an action kind; use one of {ACTION_KINDS}", field="kind")
    if status not in ACTION_STATUSES:
        raise InvalidInput(f"status: {status!r} is not an action status; use one of {ACTION_STATUSES}",
                           field="status")


async def create_capa(session: AsyncSession, *, actor: str, title: str, problem: str,
                      root_cause_category: str | None, root_cause: str | None, ncrs: list[str],
                      actions: list[dict[str, Any]], effectiveness_criteria: str | None) -> Capa:
    _check_category(root_cause_category)
    for i, a in enumerate(actions):
        if a["kind"] not in ACTION_KINDS:
            raise InvalidInput(f"actions[{i}].kind: {a['kind']!r} is not an action kind; use one of {ACTION_KINDS}",
                               field=f"actions[{i}].kind")
    rows = []
    for n in dict.fromkeys(ncrs):
        row = (await session.execute(select(Ncr).where(Ncr.number == n))).scalar()
        if row is None:
            raise NotFound(f"ncrs: NCR {n!r} does not exist: list NCRs at GET /api/ncrs", field="ncrs")
        rows.append(row)
    capa = Capa(number=f"tmp-{uuid.uuid4().hex[:20]}", title=title, problem=problem,
                root_cause_category=root_cause_category, root_cause=root_cause, state="open",
                effectiveness_criteria=effectiveness_criteria, created_by=actor)
    session.add(capa)
    await session.flush()
    capa.number = f"CAPA-{capa.id:05d}"
    for i, a in enumerate(actions, start=1):
        session.add(CapaAction(capa_id=capa.id, seq=i, kind=a["kind"], description=a["description"],
                               owner=a["owner"], due_at=a["due"], status="open", created_by=actor))
    for row in rows:
        rev = await review_of(session, row)
        before = rev.capa.number if rev.capa else None
        rev.capa_id = capa.id
        await audit(session, actor=actor, action="ncr.updated", entity="ncr", key=row.number,
                    changes={"before": {"capa": before}, "after": {"capa": capa.number}})
    await session.flush()
    await session.refresh(capa, ["actions"])
    await audit(session, actor=actor, action="capa.created", entity="capa", key=capa.number,
                changes=diff(None, {"title": title, "problem": problem, "ncrs": [r.number for r in rows],
                                    "state": capa.state, "root_cause_category": root_cause_category,
                                    "root_cause": root_cause, "effectiveness_criteria": effectiveness_criteria,
                                    "actions": [_action(a) for a in capa.actions]}))
    return capa


def _next_state(capa: Capa) -> str:
    live = [a for a in capa.actions if a.status != "cancelled"]
    if live and all(a.status == "done" for a in live):
        return "effectiveness_check"
    if any(a.status in ("in_progress", "done") for a in capa.actions) or capa.effective is False:
        return "in_progress"
    return "open"


async def _advance(session: AsyncSession, capa: Capa, actor: str) -> None:
    new = _next_state(capa)
    if new != capa.state:
        await audit(session, actor=actor, action="capa.state", entity="capa", key=capa.number,
                    changes=diff({"state": capa.state}, {"state": new}))
        capa.state = new
        await session.flush()


def _open(capa: Capa) -> None:
    if capa.state == "closed":
        raise Conflict(f"CAPA {capa.number} is closed: open a new CAPA for further actions")


async def add_action(session: AsyncSession, number: str, *, actor: str, kind: str, description: str, owner: str,
                     due: datetime) -> dict[str, Any]:
    _check_action(kind)
    capa = await get_capa(session, number)
    _open(capa)
    # concurrent additions number their actions one after the other (PostgreSQL; SQLite writers queue anyway)
    await session.execute(select(Capa.id).where(Capa.id == capa.id).with_for_update())
    await session.refresh(capa, ["actions"])
    a = CapaAction(capa_id=capa.id, seq=len(capa.actions) + 1, kind=kind, description=description, owner=owner,
                   due_at=due, status="open", created_by=actor)
    session.add(a)
    await session.flush()
    await session.refresh(capa, ["actions"])
    out = _action(a)
    await audit(session, actor=actor, action="capa.action_added", entity="capa", key=number,
                changes={"before": None, "after": out})
    await _advance(session, capa, actor)
    return out


async def update_action(session: AsyncSession, number: str, seq: int, *, actor: str,
                        fields: dict[str, Any]) -> dict[str, Any]:
    capa = await get_capa(session, number)
    _open(capa)
    a = next((a for a in capa.actions if a.seq == seq), None)
    if a is None:
        raise NotFound(f"CAPA {number} has no action {seq}: see GET /api/capas/{number}", field="seq")
    before = _action(a)
    if fields.get("status") is not None:
        _check_action(a.kind, fields["status"])
        a.status = fields["status"]
        a.done_at = (a.done_at or utcnow()) if a.status == "done" else None
    for k in ("description", "owner"):
        if fields.get(k) is not None:
            setattr(a, k, fields[k])
    if fields.get("due") is not None:
        a.due_at = fields["due"]
    await session.flush()
    after = _action(a)
    await audit(session, actor=actor, action="capa.action_updated", entity="capa", key=number,
                changes=diff(before, after, seq=seq))
    await _advance(session, capa, actor)
    return after


def close_content(capa: Capa) -> dict[str, Any]:
    """What the closing signature covers."""
    return {"capa": capa.number, "problem": capa.problem, "root_cause": capa.root_cause,
            "effective": capa.effective, "effectiveness_result": capa.effectiveness_result,
            "actions": [[a.seq, a.kind, a.description, a.status] for a in capa.actions]}


async def close_capa(session: AsyncSession, number: str, *, actor: str, actor_name: str | None, role: str,
                     effective: bool, result: str) -> Capa:
    """Record the effectiveness check; effective closes the CAPA under the signer's signature, not effective
    sends it back to in_progress for more actions."""
    capa = await get_capa(session, number)
    _open(capa)
    if capa.state != "effectiveness_check":
        pending = [a.seq for a in capa.actions if a.status in OPEN_ACTION]
        why = f"actions {pending} are not done" if pending else "it has no actions"
        raise Conflict(f"CAPA {number} is {capa.state}: {why}; the effectiveness check comes when every "
                       "action is done or cancelled")
    before = {"state": capa.state, "effective": capa.effective, "result": capa.effectiveness_result,
              "checked_by": capa.checked_by, "checked_at": _iso(capa.checked_at), "closed_at": _iso(capa.closed_at)}
    capa.effective, capa.effectiveness_result = effective, result
    capa.checked_by, capa.checked_at = actor, utcnow()
    if effective:
        capa.state, capa.closed_at = "closed", utcnow()
    else:
        capa.state = "in_progress"
    await session.flush()
    after = {"state": capa.state, "effective": effective, "result": result, "checked_by": capa.checked_by,
             "checked_at": _iso(capa.checked_at), "closed_at": _iso(capa.closed_at)}
    await audit(session, actor=actor, action="capa.closed" if effective else "capa.not_effective", entity="capa",
                key=number, changes=diff(before, after))
    await record_signature(session, signer=actor, signer_name=actor_name, role=role,
                           meaning="approved" if effective else "rejected", entity="capa", key=number,
                           content=close_content(capa))
    return capa


async def list_capas(session: AsyncSession, *, state: str | None, overdue_actions: bool | None,
                     limit: int) -> list[Capa]:
    q = select(Capa).order_by(Capa.id.desc()).limit(limit)
    if state:
        q = q.where(Capa.state == state)
    if overdue_actions is not None:
        late = exists().where(and_(CapaAction.capa_id == Capa.id, CapaAction.status.in_(OPEN_ACTION),
                                   CapaAction.due_at < utcnow()))
        q = q.where(late if overdue_actions else ~late)
    return list((await session.execute(q)).scalars())


async def read_capa(session: AsyncSession, capa: Capa, *, full: bool = True) -> dict[str, Any]:
    now = utcnow()
    actions = [_action(a, now) for a in capa.actions]
    out: dict[str, Any] = {
        "number": capa.number, "title": capa.title, "problem": capa.problem, "state": capa.state,
        "root_cause": {"category": capa.root_cause_category, "text": capa.root_cause},
        "actions": actions, "overdue_actions": [a["seq"] for a in actions if a["overdue"]],
        "effectiveness": {"criteria": capa.effectiveness_criteria, "result": capa.effectiveness_result,
                          "effective": capa.effective, "checked_by": capa.checked_by,
                          "checked_at": _iso(capa.checked_at)},
        "created_by": capa.created_by, "created_at": _iso(capa.created_at), "closed_at": _iso(capa.closed_at),
    }
    if full:
        out["ncrs"] = list((await session.execute(
            select(Ncr.number).join(NcrReview, NcrReview.ncr_id == Ncr.id).where(NcrReview.capa_id == capa.id)
            .order_by(Ncr.id))).scalars())
        out["signatures"] = [{"signer": s.signer, "role": s.role, "meaning": s.meaning,
                              "signed_at": s.signed_at.isoformat(), "valid": is_valid(s, close_content(capa))}
                             for s in await signatures_for(session, "capa", capa.number)]
    return out
