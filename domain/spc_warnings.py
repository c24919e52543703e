"""SPC warnings: when an inspection's measurements are recorded, the X-bar chart of each of its variable
characteristics (over the item's recorded values) is checked against the Western Electric rules; a violation
the new values complete is a warning to the quality engineer. It opens no NCR and holds no lot. It is addressed
to `RECIPIENTS`: the quality engineer first, then the QA supervisor and the quality manager, so a plant without a
quality engineer still sees its warnings (api/security.py lets exactly these roles list and acknowledge them).

The chart is the one GET /api/quality/spc shows by default: the newest `CHART_LAST` values of the characteristic
of the item, in subgroups of `CHART_SUBGROUP` ending with the newest value. A violation is raised only when the
newest subgroup completes it and that subgroup holds values of the inspection just recorded: older subgroups were
judged when their values were the newest (and the limits move as values arrive, which would otherwise raise old
points again). The same violation is not raised twice:
- its fingerprint (item, characteristic, rule, side, the measured values of its completing subgroup) is unique,
  so recording the same results again, or a retried activity, finds it;
- a pattern that shares measured values with an open (unacknowledged) warning of the same rule and side is that
  warning going on (eight points on one side, then a ninth), not a new one.
Plain async functions; they flush, never commit.
"""

from __future__ import annotations

import hashlib
import json
from math import isfinite
from typing import Any, Literal
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, NotFound
from domain import spc
from domain.audit import audit, diff
from domain.models import CharacteristicResult, Inspection, Item, Lot, utcnow
from domain.models_inspection import InspectionSampling
from domain.models_quality import SpcWarning

RECIPIENTS = ("quality_engineer", "qa_supervisor", "quality_manager")  # who a warning is to, in that order
CHART_SUBGROUP = 5  # the defaults of GET /api/quality/spc: the chart the engineer opens from the warning
CHART_LAST = 100


def _point(number: str, index: int) -> str:
    """A measured value's identity: the inspection and the value's position in its sample."""
    return f"{number}#{index}"


async def _series(session: AsyncSession, item_id: int, characteristic: str) -> list[tuple[float, str, int]]:
    """(value, inspection, position) of the newest CHART_LAST recorded values, oldest first; counts of
    attribute and visual characteristics (inspections opened from a plan say the kind) are not measurements."""
    rows = (await session.execute(
        select(CharacteristicResult, Inspection.number, InspectionSampling.characteristics)
        .join(Inspection, Inspection.id == CharacteristicResult.inspection_id)
        .join(Lot, Lot.id == Inspection.lot_id)
        .outerjoin(InspectionSampling, InspectionSampling.inspection_id == Inspection.id)
        .where(Lot.item_id == item_id, CharacteristicResult.name == characteristic,
               CharacteristicResult.values.is_not(None), CharacteristicResult.verdict.is_not(None))
        .order_by(Inspection.inspected_at.desc(), Inspection.id.desc(), CharacteristicResult.id.desc())
        .limit(CHART_LAST)
    )).all()
    out: list[tuple[float, str, int]] = []
    for r, number, kinds in reversed(rows):
        if ((kinds or {}).get(characteristic) or {}).get("kind", "variable") != "variable":
            continue
        for i, v in enumerate(r.values or []):
            if isinstance(v, int | float) and not isinstance(v, bool) and isfinite(v):
                out.append((float(v), number, i))
    return out[-CHART_LAST:]


def _fingerprint(item: str, characteristic: str, rule: int, side: str, completing: list[str]) -> str:
    doc = json.dumps([item, characteristic, rule, side, completing], separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


async def check_inspection(session: AsyncSession, ins: Inspection) -> list[SpcWarning]:
    """Raise the warnings the recorded results of an inspection complete, for each of its variable
    characteristics; the warnings raised now (none if the results are recorded again)."""
    if ins.status not in ("passed", "failed"):
        return []
    kinds = (await session.execute(select(InspectionSampling.characteristics).where(
        InspectionSampling.inspection_id == ins.id))).scalar() or {}
    item = (await session.execute(
        select(Item).join(Lot, Lot.item_id == Item.id).where(Lot.id == ins.lot_id))).scalar_one()
    raised: list[SpcWarning] = []
    for c in ins.characteristics:
        if not c.values or (kinds.get(c.name) or {}).get("kind", "variable") != "variable":
            continue
        raised += await _check(session, item, c.name, ins)
    return raised


async def _check(session: AsyncSession, item: Item, characteristic: str, ins: Inspection) -> list[SpcWarning]:
    series = await _series(session, item.id, characteristic)
    n = CHART_SUBGROUP
    if len(series) < 2 * n:
        return []  # no chart yet (GET /api/quality/spc refuses it too)
    chart = spc.xbar_r([v for v, _, _ in series], n)
    if chart.sigma_xbar <= 0:
        return []
    used = series[chart.dropped:]
    k = len(chart.means)
    members = [used[i * n:(i + 1) * n] for i in range(k)]
    if not any(number == ins.number for _, number, _ in members[-1]):
        return []  # recorded out of time order: the newest subgroup is not this inspection's doing
    newest = [v for v in spc.western_electric(chart.means, chart.grand_mean, chart.sigma_xbar) if v.index == k - 1]
    if not newest:
        return []
    chart_view = {"subgroup_size": n, "subgroups": k, "centre": chart.grand_mean, "ucl": chart.xbar_ucl,
                  "lcl": chart.xbar_lcl, "sigma_of_mean": chart.sigma_xbar,
                  "provisional": k < 20}  # 20 to 25 subgroups make the limits reliable
    open_rows = (await session.execute(select(SpcWarning).where(
        SpcWarning.item_id == item.id, SpcWarning.characteristic == characteristic,
        SpcWarning.acknowledged_at.is_(None)))).scalars().all()
    raised: list[SpcWarning] = []
    for v in newest:
        completing = [_point(number, i) for _, number, i in members[v.index]]
        fingerprint = _fingerprint(item.code, characteristic, v.rule, v.side, completing)
        subgroups = [{"subgroup": j + 1, "mean": chart.means[j], "range": chart.ranges[j],
                      "inspections": sorted({number for _, number, _ in members[j]}),
                      "values": [{"inspection": number, "index": i, "value": x} for x, number, i in members[j]]}
                     for j in v.points]
        points = {_point(p["inspection"], p["index"]) for g in subgroups for p in g["values"]}
        known = (await session.execute(select(SpcWarning.id).where(SpcWarning.fingerprint == fingerprint))).scalar()
        if known is not None or any(
                w.rule == v.rule and w.side == v.side and points & _points_of(w) for w in [*open_rows, *raised]):
            continue
        w = SpcWarning(item_id=item.id, characteristic=characteristic, rule=v.rule, side=v.side,
                       subgroups=subgroups, chart=chart_view, inspection_id=ins.id, fingerprint=fingerprint,
                       raised_at=utcnow())
        session.add(w)
        await session.flush()
        view = {"item": item.code, "characteristic": characteristic, "rule": v.rule,
                "description": spc.RULES[v.rule], "side": v.side, "inspection": ins.number,
                "subgroups": [{"mean": g["mean"], "inspections": g["inspections"]} for g in subgroups],
                "to": list(RECIPIENTS), "acknowledged_by": None}
        await audit(session, actor="system", action="spc_warning.raised", entity="spc_warning", key=str(w.id),
                    changes=diff(None, view))
        raised.append(w)
    return raised


def _points_of(w: SpcWarning) -> set[str]:
    return {_point(p["inspection"], p["index"]) for g in (w.subgroups or []) for p in g.get("values", [])}


def warning_view(w: SpcWarning, item: str, inspection: str) -> dict[str, Any]:
    return {"id": w.id, "item": item, "characteristic": w.characteristic, "rule": w.rule,
            "description": spc.RULES.get(w.rule, ""), "side": w.side, "inspection": inspection,
            "subgroups": w.subgroups, "chart": w.chart, "raised_at": w.raised_at.isoformat(),
            "to": list(RECIPIENTS), "state": "open" if w.acknowledged_at is None else "acknowledged",
            "acknowledged_by": w.acknowledged_by,
            "acknowledged_at": w.acknowledged_at.isoformat() if w.acknowledged_at else None,
            "note": w.acknowledge_note,
            "spc_url": "/api/quality/spc?" + urlencode({"item": item, "characteristic": w.characteristic})}


async def list_warnings(session: AsyncSession, *, state: Literal["open", "acknowledged", "all"] = "all",
                        item: str | None = None, characteristic: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
    """Warnings, open ones first, each group newest first."""
    q = (select(SpcWarning, Item.code, Inspection.number)
         .join(Item, Item.id == SpcWarning.item_id).join(Inspection, Inspection.id == SpcWarning.inspection_id))
    if state == "open":
        q = q.where(SpcWarning.acknowledged_at.is_(None))
    elif state == "acknowledged":
        q = q.where(SpcWarning.acknowledged_at.is_not(None))
    if item is not None:
        q = q.where(Item.code == item)
    if characteristic is not None:
        q = q.where(SpcWarning.characteristic == characteristic)
    q = q.order_by(SpcWarning.acknowledged_at.is_not(None), SpcWarning.raised_at.desc(), SpcWarning.id.desc())
    rows = (await session.execute(q.limit(limit))).all()
    return [warning_view(w, code, number) for w, code, number in rows]


async def acknowledge(session: AsyncSession, warning_id: int, *, actor: str, note: str | None) -> dict[str, Any]:
    """The quality engineer has seen the warning (and says what was done); once."""
    row = (await session.execute(
        select(SpcWarning, Item.code, Inspection.number)
        .join(Item, Item.id == SpcWarning.item_id).join(Inspection, Inspection.id == SpcWarning.inspection_id)
        .where(SpcWarning.id == warning_id).with_for_update(of=SpcWarning))).first()
    if row is None:
        raise NotFound(f"SPC warning {warning_id} does not exist: list them at GET /api/quality/warnings",
                       field="warning_id")
    w, code, number = row
    if w.acknowledged_at is not None:
        raise Conflict(f"SPC warning {warning_id} was already acknowledged by {w.acknowledged_by} at "
                       f"{w.acknowledged_at.isoformat()}: it is not acknowledged twice", field="warning_id")
    before = {"acknowledged_by": None, "acknowledged_at": None, "note": None}
    w.acknowledged_by, w.acknowledged_at, w.acknowledge_note = actor, utcnow(), note
    await session.flush()
    await audit(session, actor=actor, action="spc_warning.acknowledged", entity="spc_warning", key=str(w.id),
                changes={"item": code, "characteristic": w.characteristic, "rule": w.rule,
                         **diff(before, {"acknowledged_by": actor, "acknowledged_at": w.acknowledged_at.isoformat(),
                                         "note": note})})
    return warning_view(w, code, number)
