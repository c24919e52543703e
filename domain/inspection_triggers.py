"""Inspection triggers: which inspections a work order opens from its item's plans, with which sample sizes,
what a verdict feeds back (the ISO 2859-1 switching state), and the shipment gate.

- IQC on receipt: the material item's plan at operation `iqc`; sample sizes from ISO 2859-1 under the switching
  state of the supplier and item (ANSI/ASQ Z1.4 Table II-C on reduced inspection); the verdict moves that state
  (normal -> tightened after 2 of 5 lots rejected; reduced -> normal on a count in the gap or a rejection).
- first-article: a routing operation's plan with `triggers.first_article`; the first unit of the operation's
  first run, one of each characteristic, must pass before the operation's report is recorded.
- patrol: every N units (the MES's progress reports) or every N minutes while the operation runs.
- final: the item's plan at operation `final`, when it has one (work orders started since "final-plan-v1"); the
  work order's own final_plan otherwise.
- outgoing: the item's plan at operation `outgoing`; required before the lot ships.

Every inspection opened from a plan keeps the plan version (`inspection_sampling`): its limits and sample sizes
are copied when it opens, and the severity of a failure is read from that version, so a version saved later
changes nothing of it.

Attribute and visual characteristics are judged by ISO 2859-1 on counts: the inspector reports how many of the n
sampled units were nonconforming and the lot passes with at most Ac of them (the result row's limits are 0 and
Ac). On reduced inspection (ANSI/ASQ Z1.4 Table II-C) the lot also passes with a count between Ac and Re (the
row's upper limit is Re - 1), and that count sends the supplier and item back to normal inspection. Variable
characteristics are measured on each of the n units and judged unit by unit against the spec limits (sampling by
variables, ISO 3951, is not in TraceHub). Plain async functions; they flush, never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain import holds, production, quality_plans, sampling
from domain.audit import audit, diff
from domain.models import Inspection, Lot, LotEdge, Ncr
from domain.models_inspection import InspectionAttachment, InspectionSampling, WorkOrderInspection
from domain.models_quality import InspectionPlan

SEVERITY_ORDER = ("critical", "major", "minor")
TRIGGERS = ("iqc", "first_article", "patrol", "final", "outgoing")
# NCR outcomes after which a lot may still ship (a concession is recorded on the lot)
SHIPPABLE_OUTCOMES = ("dismiss", "use_as_is")


@dataclass(frozen=True)
class _Row:
    """A characteristic as domain.quality.open_inspection stores it."""

    name: str
    nominal: float | None
    lower: float | None
    upper: float | None
    unit: str
    sample_size: int


# --- the work order's triggers ---------------------------------------------------------------------------


async def work_order_triggers(session: AsyncSession, *, work_order: str, item: str,
                              routing: list[tuple[int, str]]) -> dict[str, Any]:
    """The triggers of a work order, from the newest plan versions of its item when it starts; taken once and
    kept (a plan saved while the order runs applies to the next order). Idempotent."""
    wo = await production.get_work_order(session, work_order)
    kept = (await session.execute(
        select(WorkOrderInspection).where(WorkOrderInspection.work_order_id == wo.id))).scalar()
    if kept is not None:
        return dict(kept.triggers)
    operations: dict[str, Any] = {}
    for seq, name in routing:
        plan = await quality_plans.latest_plan(session, item, name) \
            or await quality_plans.latest_plan(session, item, str(seq))
        t = getattr(plan, "trigger", None) if plan else None
        if plan is None or t is None or not (t.first_article or t.patrol_every_units or t.patrol_every_minutes):
            continue
        operations[str(seq)] = {"operation": plan.operation, "plan_version": plan.version,
                                "first_article": t.first_article, "patrol_every_units": t.patrol_every_units,
                                "patrol_every_minutes": t.patrol_every_minutes}
    out_plan = await quality_plans.latest_plan(session, item, "outgoing")
    out_t = getattr(out_plan, "trigger", None) if out_plan else None
    outgoing = bool(out_t and out_t.outgoing)
    triggers = {"operations": operations, "outgoing": outgoing,
                "outgoing_plan_version": out_plan.version if out_plan and outgoing else None}
    session.add(WorkOrderInspection(work_order_id=wo.id, outgoing_required=outgoing,
                                    outgoing_plan_version=triggers["outgoing_plan_version"], triggers=triggers))
    await session.flush()
    if operations or outgoing:
        # the triggers' own keys stay beside before/after: readers of this entry use them
        await audit(session, actor="system", action="work_order.inspection_triggers", entity="work_order",
                    key=work_order, changes=diff(None, {"inspection_triggers": triggers}, **triggers))
    return triggers


# --- opening an inspection from a plan -------------------------------------------------------------------


def _sampling_of(plan: InspectionPlan, trigger: str, lot_size: int, severity: str) -> dict[str, dict[str, Any]]:
    """name -> kind, severity, n, ac, re (and the ISO 2859-1 plan) of each characteristic."""
    by_class = {s.severity: s for s in plan.sampling}
    out: dict[str, dict[str, Any]] = {}
    for c in plan.characteristics:
        base = {"kind": c.kind, "severity": c.severity, "photo_required": bool(c.photo_required)}
        if trigger == "first_article" or lot_size < 2:
            # the first unit (or a lot of one): that unit is inspected, and it conforms or it does not
            out[c.name] = {**base, "n": 1, "ac": 0, "re": 1, "table": None}
            continue
        s = by_class.get(c.severity)
        if s is None:  # plan_problems refuses such a plan; an old row without it inspects every unit
            out[c.name] = {**base, "n": lot_size, "ac": 0, "re": 1, "table": None}
            continue
        p = sampling.plan(lot_size, s.level, s.aql, severity)
        out[c.name] = {**base, "n": p.units_to_inspect, "ac": p.ac, "re": p.re, "table": sampling.TABLE_NAMES[
            p.severity], "code_letter": p.code_letter, "aql": p.aql, "level": p.level}
    return out


async def open_planned_inspection(session: AsyncSession, *, number: str, trigger: str, work_order: str | None,
                                  lot: str, item: str, operation: str, lot_size: int,
                                  supplier: str | None = None, actor: str = "system") -> Inspection | None:
    """Open a pending inspection from the newest version of the item's plan at `operation`, sample sizes from
    ISO 2859-1 (for IQC under the supplier's switching state). None when the item has no such plan.
    Idempotent on the inspection number."""
    from domain import quality  # the inspection record itself

    if trigger not in TRIGGERS:
        raise InvalidInput(f"trigger: {trigger!r} is not one of {', '.join(TRIGGERS)}", field="trigger")
    existing = (await session.execute(select(Inspection).where(Inspection.number == number))).scalar()
    if existing is not None:
        return existing
    plan = await quality_plans.latest_plan(session, item, operation)
    if plan is None:
        return None
    severity = "normal"
    if trigger == "iqc" and supplier:
        severity = await quality_plans.current_severity(session, supplier=supplier, item=item)
    chars = _sampling_of(plan, trigger, lot_size, severity)
    rows = []
    for c in plan.characteristics:
        s = chars[c.name]
        if c.kind == "variable":
            rows.append(_Row(c.name, c.nominal, c.lower, c.upper, c.unit, s["n"]))
        else:  # a count of nonconforming units among the n inspected: accepted up to Ac (below Re on reduced
            # inspection, whose gap between them accepts the lot and reinstates normal inspection)
            rows.append(_Row(c.name, None, 0.0, float(s["re"] - 1), f"nonconforming of {s['n']}", 1))
    if work_order and (await session.execute(select(Lot.id).where(Lot.number == lot))).scalar() is None:
        await production.ensure_output_lot(session, await production.get_work_order(session, work_order), lot)
    ins = await quality.open_inspection(session, number=number, kind=trigger, work_order=work_order, lot=lot,
                                        plan=rows)
    session.add(InspectionSampling(inspection_id=ins.id, plan_id=plan.id, plan_version=plan.version,
                                   trigger=trigger, item=item, supplier=supplier, lot_size=lot_size,
                                   severity=severity, characteristics=chars, switching_recorded=False))
    await session.flush()
    opened = {"trigger": trigger, "lot": lot, "item": item, "operation": operation, "plan_version": plan.version,
              "severity": severity, "lot_size": lot_size, "sample": {n: s["n"] for n, s in chars.items()}}
    await audit(session, actor=actor, action="inspection.opened", entity="inspection", key=number,
                changes=diff(None, {"status": ins.status, "work_order": work_order, **opened}, **opened))
    return ins


async def sampling_of(session: AsyncSession, ins: Inspection) -> InspectionSampling | None:
    return (await session.execute(
        select(InspectionSampling).where(InspectionSampling.inspection_id == ins.id))).scalar()


def sampling_view(row: InspectionSampling | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"trigger": row.trigger, "plan_version": row.plan_version, "item": row.item, "supplier": row.supplier,
            "lot_size": row.lot_size, "severity": row.severity, "characteristics": row.characteristics,
            "switching_recorded": row.switching_recorded}


# --- results: what the plan adds to the checks of domain/quality.py -----------------------------------------


async def check_planned_results(session: AsyncSession, ins: Inspection, measurements: list[Any]) -> None:
    """Counts of attribute and visual characteristics are whole numbers within the sample, and a visual
    characteristic that needs a photo has one. Nothing to check for an inspection not opened from a plan."""
    row = await sampling_of(session, ins)
    if row is None:
        return
    problems: list[str] = []
    for i, m in enumerate(measurements):
        s = row.characteristics.get(m.characteristic)
        if s is None or s["kind"] == "variable":
            continue
        if len(m.values) != 1 or m.values[0] != int(m.values[0]) or not 0 <= m.values[0] <= s["n"]:
            problems.append(f"measurements[{i}].values: {m.characteristic!r} is {s['kind']}: send one value, the "
                            f"number of nonconforming units among the {s['n']} inspected (0 to {s['n']})")
    photos = set((await session.execute(select(InspectionAttachment.characteristic).where(
        InspectionAttachment.inspection_id == ins.id))).scalars())
    for name, s in row.characteristics.items():
        if s["kind"] == "visual" and s.get("photo_required") and name not in photos:
            problems.append(f"measurements: visual characteristic {name!r} needs a photo before its verdict: "
                            f"upload it to POST /api/inspections/{ins.number}/characteristics/{name}/photos")
    if problems:
        raise InvalidInput("; ".join(problems), field="measurements")


def _nonconforming(ins: Inspection, row: InspectionSampling) -> int:
    count = 0
    for c in ins.characteristics:
        kind = row.characteristics.get(c.name, {}).get("kind", "variable")
        values = c.values or []
        if kind == "variable":
            count += sum(1 for v in values if not ((c.lower is None or v >= c.lower)
                                                   and (c.upper is None or v <= c.upper)))
        else:
            count += int(values[0]) if values else 0
    return count


def _gap(ins: Inspection, row: InspectionSampling) -> tuple[str, int, int, int] | None:
    """The first attribute or visual characteristic whose count fell between its Ac and Re (only reduced plans
    have such a gap), as (name, count, Ac, Re): the lot is accepted but normal inspection is reinstated."""
    for c in sorted(ins.characteristics, key=lambda c: c.name):
        s = row.characteristics.get(c.name, {})
        if s.get("kind", "variable") == "variable" or not c.values or s.get("ac") is None or s.get("re") is None:
            continue
        count = int(c.values[0])
        if sampling.lot_verdict(count, int(s["ac"]), int(s["re"])) == "accepted_reinstate_normal":
            return c.name, count, int(s["ac"]), int(s["re"])
    return None


async def after_verdict(session: AsyncSession, ins: Inspection, *, actor: str) -> dict[str, Any] | None:
    """An IQC verdict moves the ISO 2859-1 switching state of its supplier and item (once per inspection)."""
    row = await sampling_of(session, ins)
    if row is None or row.trigger != "iqc" or not row.supplier or row.switching_recorded \
            or ins.status not in ("passed", "failed"):
        return None
    plan = await session.get(InspectionPlan, row.plan_id)
    assert plan is not None
    classes = {s.severity: s for s in plan.sampling}
    governing = next((classes[sev] for sev in SEVERITY_ORDER if sev in classes), None)
    if governing is None:
        return None
    res = await quality_plans.record_verdict(
        session, supplier=row.supplier, item=row.item, lot=ins.lot.number, lot_size=row.lot_size,
        level=governing.level, aql=governing.aql, severity=row.severity, nonconforming=_nonconforming(ins, row),
        accepted=ins.status == "passed", inspection=ins.number, actor=actor, gap=_gap(ins, row))
    row.switching_recorded = True
    await session.flush()
    return res


# --- the shipment gate -----------------------------------------------------------------------------------


async def _lots_in(session: AsyncSession, lot: Lot) -> list[Lot]:
    """The lot and every lot consumed into it, directly or further up the genealogy."""
    seen = {lot.id: lot}
    frontier = [lot.id]
    while frontier and len(seen) < 10_000:
        parents = (await session.execute(
            select(Lot).join(LotEdge, LotEdge.parent_lot_id == Lot.id).where(LotEdge.child_lot_id.in_(frontier))
        )).scalars().all()
        frontier = [p.id for p in parents if p.id not in seen]
        seen.update({p.id: p for p in parents})
    return list(seen.values())


async def shipment_problems(session: AsyncSession, *, work_order: str, lot: str) -> list[str]:
    """Why the lot may not ship now (empty: it may): a missing or unpassed outgoing inspection the work order
    requires, and any NCR open on the lot or on a lot consumed into it."""
    wo = await production.get_work_order(session, work_order)
    lot_row = await production.get_lot(session, lot)
    problems: list[str] = []
    kept = (await session.execute(
        select(WorkOrderInspection).where(WorkOrderInspection.work_order_id == wo.id))).scalar()
    if kept is not None and kept.outgoing_required:
        outs = (await session.execute(select(Inspection).where(
            Inspection.lot_id == lot_row.id, Inspection.kind == "outgoing").order_by(Inspection.id))).scalars().all()
        ok = any(i.status == "passed" for i in outs)
        if not ok:
            for i in outs:
                if i.status != "failed":
                    continue
                ncr = (await session.execute(select(Ncr).where(Ncr.inspection_id == i.id))).scalar()
                if ncr is not None and ncr.closed_at is not None and (
                        ncr.state == "dismissed" or ncr.disposition in SHIPPABLE_OUTCOMES):
                    ok = True  # released by its NCR (dismissed, or used as is under concession)
        if not ok:
            pending = [i.number for i in outs if i.status == "pending"]
            failed = [i.number for i in outs if i.status == "failed"]
            problems.append(
                f"outgoing inspection (plan version {kept.outgoing_plan_version} of item {wo.item.code}) not "
                "passed: " + (f"{', '.join(pending)} waits for results" if pending
                              else f"{', '.join(failed)} failed and its NCR allows no shipment yet" if failed
                              else "none was opened yet"))
    lots = await _lots_in(session, lot_row)
    names = {x.id: x.number for x in lots}
    # an NCR whose disposition is carried out and that only waits for the verification of its effect (the
    # lot's re-inspection, a supervisor's signature) no longer holds the lot: its disposition allowed it on
    open_ncrs = (await session.execute(select(Ncr).where(
        Ncr.lot_id.in_(list(names)), Ncr.closed_at.is_(None), Ncr.state != "verification").order_by(Ncr.id)
    )).scalars().all()
    for n in open_ncrs:
        where = "the lot" if n.lot_id == lot_row.id else f"consumed lot {names[n.lot_id]}"
        problems.append(f"NCR {n.number} is open ({n.state}) on {where}")
    # a recall's hold ends only by a reviewer's decision on the recall (ship_lot refuses the lot until then)
    for r in await holds.recall_holds(session, lot_row.id):
        problems.append(f"recall {r} holds the lot: a reviewer's release decision on the recall lets it ship")
    return problems


async def check_shipment(session: AsyncSession, *, work_order: str, lot: str) -> None:
    """Conflict naming every reason the lot may not ship (defence in depth under the workflow's own wait)."""
    try:
        problems = await shipment_problems(session, work_order=work_order, lot=lot)
    except NotFound:
        return  # ship_lot says which record is missing
    if problems:
        raise Conflict(f"lot {lot!r} of work order {work_order} cannot ship: " + "; ".join(problems),
                       field="shipment")
