"""Inspection plans (versioned per item and operation), acceptance sampling with the switching state per
supplier and item, and SPC over recorded measurements. Plain async functions; they flush, never commit."""

from __future__ import annotations

import re
from math import isfinite
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain import sampling, spc
from domain.audit import audit, diff
from domain.models import CharacteristicResult, Inspection, Item, Lot, utcnow
from domain.models_inspection import PlanTrigger
from domain.models_quality import InspectionPlan, PlanCharacteristic, PlanSampling, SamplingLot, SamplingState
from domain.production import upsert_item

Kind = Literal["variable", "attribute", "visual"]
NcSeverity = Literal["critical", "major", "minor"]
_CODE = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"


class PlanCharacteristicIn(BaseModel):
    name: str = Field(min_length=1, max_length=80)
    kind: Kind
    severity: NcSeverity
    nominal: float | None = Field(default=None, allow_inf_nan=False)
    lower: float | None = Field(default=None, allow_inf_nan=False, description="lower spec limit (inclusive)")
    upper: float | None = Field(default=None, allow_inf_nan=False, description="upper spec limit (inclusive)")
    unit: str = Field(default="", max_length=20)
    gauge: str | None = Field(
        default=None, max_length=80,
        description="the gauge that measures it (variable): a label, or `<endpoint>:<point>` to read it through "
                    "a connector endpoint (POST /api/inspections/{number}/read-gauges)")
    defect_codes: list[str] = Field(default_factory=list, description="attribute: the defects it is judged on")
    photo_required: bool | None = Field(default=None, description="visual: a photo is attached (always)")


class SamplingIn(BaseModel):
    aql: float = Field(description="AQL of ISO 2859-1, e.g. 0.065, 1.0, 2.5")
    level: sampling.Level = "II"


# operations that are not steps of a routing: their plans are triggered by receipt, the end of production and
# shipment, never by units made or minutes run
NOT_ROUTING = ("iqc", "final", "outgoing")


class TriggersIn(BaseModel):
    """When the plan's inspection is opened (domain/inspection_triggers.py). Versioned with the plan."""

    first_article: bool = Field(
        default=False, description="routing operation: the first unit of its first run is inspected and must "
                                   "pass before the operation's report is recorded")
    patrol_every_units: int | None = Field(
        default=None, ge=1, le=10_000_000, description="routing operation: a patrol inspection each time the "
                                                       "MES's progress reports pass another N units")
    patrol_every_minutes: float | None = Field(
        default=None, gt=0, le=7 * 24 * 60, allow_inf_nan=False,
        description="routing operation: a patrol inspection every N minutes while the operation runs")
    outgoing: bool | None = Field(
        default=None, description="operation 'outgoing': a passed outgoing inspection is required before the "
                                  "lot ships (default true for an 'outgoing' plan)")


class PlanIn(BaseModel):
    """A plan as saved: every save is a new version of the item's plan at that operation."""

    item: str = Field(pattern=_CODE)
    operation: str = Field(min_length=1, max_length=80, description="iqc, final, or a routing operation")
    characteristics: list[PlanCharacteristicIn] = Field(min_length=1, max_length=500)
    sampling: dict[NcSeverity, SamplingIn] = Field(
        default_factory=dict, description="AQL and inspection level per severity of the characteristics")
    note: str | None = Field(default=None, max_length=400)
    triggers: TriggersIn = Field(default_factory=TriggersIn)


_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as api/routes/endpoints.py accepts it


def gauge_source(gauge: str | None) -> tuple[str, str] | None:
    """(endpoint, point) of a gauge written `<endpoint>:<point>`; None for a plain label."""
    if not gauge or ":" not in gauge:
        return None
    endpoint, _, point = gauge.partition(":")
    endpoint, point = endpoint.strip(), point.strip()
    if not _ENDPOINT_NAME.match(endpoint) or not point:
        return None
    return endpoint, point


def plan_problems(p: PlanIn) -> list[tuple[str, str]]:
    """Every problem of a plan as (field, what to do); empty for a good plan."""
    out: list[tuple[str, str]] = []

    def bad(field: str, what: str) -> None:
        out.append((field, what))

    seen: dict[str, int] = {}
    for i, c in enumerate(p.characteristics):
        f = f"characteristics[{i}]"
        if c.name in seen:
            bad(f"{f}.name", f"{c.name!r} is also characteristics[{seen[c.name]}]; names are unique "
                             "within a plan")
        seen.setdefault(c.name, i)
        if c.kind == "variable":
            if c.gauge and ":" in c.gauge and gauge_source(c.gauge) is None:
                bad(f"{f}.gauge", f"{c.name!r}: gauge {c.gauge!r} names a connector as `<endpoint>:<point>`; "
                                  "give an endpoint name (letters, digits, . _ -) and a point after the colon")
            if c.lower is None and c.upper is None:
                bad(f"{f}.lower", f"variable characteristic {c.name!r} needs a lower or an upper spec "
                                  "limit (or both)")
            if c.lower is not None and c.upper is not None and c.lower > c.upper:
                bad(f"{f}.lower", f"{c.name!r}: lower limit {c.lower} is above upper limit {c.upper}")
            if c.nominal is not None and ((c.lower is not None and c.nominal < c.lower)
                                          or (c.upper is not None and c.nominal > c.upper)):
                bad(f"{f}.nominal", f"{c.name!r}: nominal {c.nominal} is outside the spec limits "
                                    f"[{c.lower}, {c.upper}]")
            if c.defect_codes:
                bad(f"{f}.defect_codes", f"{c.name!r} is measured (variable): defect codes belong to "
                                         "attribute characteristics")
            if c.photo_required:
                bad(f"{f}.photo_required", f"{c.name!r} is measured (variable): a required photo "
                                           "belongs to visual characteristics")
        else:
            for name in ("nominal", "lower", "upper", "gauge"):
                if getattr(c, name) not in (None, ""):
                    bad(f"{f}.{name}", f"{c.name!r} is {c.kind}, judged pass/fail: it has no {name}; "
                                       "make it a variable characteristic to measure it")
            if c.unit:
                bad(f"{f}.unit", f"{c.name!r} is {c.kind}: it has no unit")
        if c.kind == "attribute":
            codes = [d.strip() for d in c.defect_codes]
            if not codes or any(not d for d in codes):
                bad(f"{f}.defect_codes", f"attribute characteristic {c.name!r} needs its defect codes "
                                         "(e.g. ['SCRATCH', 'DENT'])")
            elif len(set(codes)) != len(codes):
                bad(f"{f}.defect_codes", f"{c.name!r}: a defect code is listed twice")
            if c.photo_required:
                bad(f"{f}.photo_required", f"{c.name!r} is an attribute: a required photo belongs to "
                                           "visual characteristics")
        if c.kind == "visual":
            if c.photo_required is False:
                bad(f"{f}.photo_required", f"visual characteristic {c.name!r} always has a photo "
                                           "attached: leave photo_required out or set it true")
            if c.defect_codes:
                bad(f"{f}.defect_codes", f"{c.name!r} is visual: defect codes belong to attribute "
                                         "characteristics")
    for sev in sorted({c.severity for c in p.characteristics} - set(p.sampling)):
        bad(f"sampling.{sev}", f"{sev} characteristics have no AQL and inspection level: add "
                               f"sampling.{sev} = {{\"aql\": ..., \"level\": \"II\"}}")
    t = p.triggers
    if p.operation in NOT_ROUTING:
        for name in ("first_article", "patrol_every_units", "patrol_every_minutes"):
            if getattr(t, name):
                bad(f"triggers.{name}", f"a {name.replace('_', ' ')} inspection belongs to a routing operation "
                                        f"(its name or seq), not to {p.operation!r}")
    if t.outgoing is not None and p.operation != "outgoing":
        bad("triggers.outgoing", "the outgoing inspection is the plan of operation 'outgoing': save this "
                                 "plan with operation 'outgoing'")
    for sev, s in p.sampling.items():
        try:
            sampling.aql_key(s.aql)
        except InvalidInput as exc:
            bad(f"sampling.{sev}.aql", exc.message.removeprefix("aql: "))
    return out


async def save_plan(session: AsyncSession, p: PlanIn, *, actor: str) -> InspectionPlan:
    """Validate and save a new version of the plan of an item at an operation. A bad plan is refused whole,
    every problem named by its field."""
    problems = plan_problems(p)
    if problems:
        raise InvalidInput("; ".join(f"{f}: {what}" for f, what in problems), field=problems[0][0])
    item = await upsert_item(session, p.item)  # plans are written before the first work order brings the item
    prior = await latest_plan(session, p.item, p.operation)
    before = plan_view(prior) if prior is not None else None
    last = (await session.execute(select(func.max(InspectionPlan.version)).where(
        InspectionPlan.item_id == item.id, InspectionPlan.operation == p.operation))).scalar()
    plan = InspectionPlan(item_id=item.id, operation=p.operation, version=(last or 0) + 1, note=p.note,
                          created_by=actor)
    session.add(plan)
    await session.flush()
    for i, c in enumerate(p.characteristics):
        session.add(PlanCharacteristic(
            plan_id=plan.id, position=i, name=c.name, kind=c.kind, severity=c.severity, nominal=c.nominal,
            lower=c.lower, upper=c.upper, unit=c.unit, gauge=c.gauge or None,
            defect_codes=[d.strip() for d in c.defect_codes], photo_required=c.kind == "visual"))
    for sev, s in sorted(p.sampling.items()):
        session.add(PlanSampling(plan_id=plan.id, severity=sev, aql=sampling.aql_key(s.aql), level=s.level))
    t = p.triggers
    session.add(PlanTrigger(plan_id=plan.id, first_article=t.first_article,
                            patrol_every_units=t.patrol_every_units, patrol_every_minutes=t.patrol_every_minutes,
                            outgoing=p.operation == "outgoing" and t.outgoing is not False))
    await session.flush()
    await session.refresh(plan, ["characteristics", "sampling", "trigger"])
    await audit(session, actor=actor, action="inspection_plan.saved", entity="inspection_plan",
                key=f"{p.item}:{p.operation}", changes={"version": plan.version, "plan": plan_view(plan),
                                                        **diff(before, plan_view(plan))})
    return plan


async def plan_versions(session: AsyncSession, item: str, operation: str) -> list[InspectionPlan]:
    rows = (await session.execute(
        select(InspectionPlan).join(Item, Item.id == InspectionPlan.item_id)
        .where(Item.code == item, InspectionPlan.operation == operation).order_by(InspectionPlan.version)
    )).scalars().all()
    if not rows:
        raise NotFound(f"item {item!r} has no inspection plan for operation {operation!r}: save one with "
                       "POST /api/quality/plans", field="operation")
    return list(rows)


def triggers_view(row: PlanTrigger | None) -> dict[str, Any]:
    """Trigger settings of a plan version; a version saved before triggers existed has none."""
    if row is None:
        return {"first_article": False, "patrol_every_units": None, "patrol_every_minutes": None,
                "outgoing": False}
    return {"first_article": row.first_article, "patrol_every_units": row.patrol_every_units,
            "patrol_every_minutes": row.patrol_every_minutes, "outgoing": row.outgoing}


async def latest_plan(session: AsyncSession, item: str, operation: str) -> InspectionPlan | None:
    """The newest version of an item's plan at an operation, or None."""
    return (await session.execute(
        select(InspectionPlan).join(Item, Item.id == InspectionPlan.item_id)
        .where(Item.code == item, InspectionPlan.operation == operation)
        .order_by(InspectionPlan.version.desc()).limit(1))).scalar()


async def plan_in_force(session: AsyncSession, ins: Inspection) -> InspectionPlan | None:
    """The plan version in force when an inspection not opened from a plan was opened (an inspection opened from
    the work order's own list before its item had a plan at that operation has none): the newest version saved
    before it opened, never one saved afterwards."""
    lot = await session.get(Lot, ins.lot_id)
    if lot is None:
        return None
    return (await session.execute(
        select(InspectionPlan).where(InspectionPlan.item_id == lot.item_id, InspectionPlan.operation == ins.kind,
                                     InspectionPlan.created_at <= ins.opened_at)
        .order_by(InspectionPlan.version.desc()).limit(1))).scalar()


def plan_view(plan: InspectionPlan) -> dict[str, Any]:
    def char(c: PlanCharacteristic) -> dict[str, Any]:
        base: dict[str, Any] = {"name": c.name, "kind": c.kind, "severity": c.severity}
        if c.kind == "variable":
            base |= {"nominal": c.nominal, "lower": c.lower, "upper": c.upper, "unit": c.unit, "gauge": c.gauge}
        elif c.kind == "attribute":
            base |= {"defect_codes": list(c.defect_codes)}
        else:
            base |= {"photo_required": c.photo_required}
        return base

    return {"item": plan.item.code, "operation": plan.operation, "version": plan.version, "note": plan.note,
            "created_by": plan.created_by, "created_at": plan.created_at.isoformat(),
            "characteristics": [char(c) for c in plan.characteristics],
            "sampling": {s.severity: {"aql": s.aql, "level": s.level} for s in plan.sampling},
            "triggers": triggers_view(plan.trigger)}  # type: ignore[attr-defined]


# --- acceptance sampling with the switching rules --------------------------------------------------------


def _state_of(row: SamplingState | None) -> sampling.SwitchingState:
    if row is None:
        return sampling.SwitchingState()
    return sampling.SwitchingState(
        severity=row.severity, switching_score=row.switching_score, recent_normal=tuple(row.recent_normal),
        tightened_accepted_run=row.tightened_accepted_run, tightened_not_accepted=row.tightened_not_accepted,
        lots=row.lots)


def _store(row: SamplingState, s: sampling.SwitchingState) -> None:
    row.severity, row.switching_score, row.recent_normal = s.severity, s.switching_score, list(s.recent_normal)
    row.tightened_accepted_run, row.tightened_not_accepted, row.lots = (
        s.tightened_accepted_run, s.tightened_not_accepted, s.lots)


def state_view(s: sampling.SwitchingState) -> dict[str, Any]:
    return {"severity": s.severity, "switching_score": s.switching_score, "reduced_eligible": s.reduced_eligible,
            "recent_normal": list(s.recent_normal), "tightened_accepted_run": s.tightened_accepted_run,
            "tightened_not_accepted": s.tightened_not_accepted, "lots": s.lots}


def sampling_plan_view(p: sampling.SamplingPlan) -> dict[str, Any]:
    return {"code_letter": p.code_letter, "plan_letter": p.plan_letter, "n": p.n, "ac": p.ac, "re": p.re,
            "severity": p.severity, "table": sampling.TABLE_NAMES[p.severity], "aql": p.aql, "level": p.level,
            "lot_size": p.lot_size, "inspect_all": p.inspect_all, "units_to_inspect": p.units_to_inspect}


def _plan_for(state: sampling.SwitchingState, supplier: str, item: str, lot_size: int, level: str,
              aql: float | str) -> sampling.SamplingPlan:
    if state.severity == "discontinued":
        raise Conflict(f"acceptance sampling of {item!r} from {supplier!r} is discontinued: 5 lots were not "
                       "accepted on tightened inspection; it resumes on tightened inspection after the "
                       "supplier's corrective action (POST /api/quality/sampling/resume)")
    return sampling.plan(lot_size, level, aql, state.severity)


async def sampling_for(session: AsyncSession, *, supplier: str, item: str, lot_size: int, level: str,
                       aql: float | str) -> dict[str, Any]:
    """The plan for the next lot of an item from a supplier, under the severity its switching state says."""
    row = (await session.execute(select(SamplingState).where(
        SamplingState.supplier == supplier, SamplingState.item == item))).scalar()
    state = _state_of(row)
    p = _plan_for(state, supplier, item, lot_size, level, aql)
    return {"supplier": supplier, "item": item, "plan": sampling_plan_view(p), "state": state_view(state)}


async def _locked_state(session: AsyncSession, supplier: str, item: str) -> SamplingState:
    dialect = session.bind.dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(SamplingState)
    await session.execute(ins.values(
        supplier=supplier, item=item, severity="normal", switching_score=0, recent_normal=[],
        tightened_accepted_run=0, tightened_not_accepted=0, lots=0, updated_at=utcnow(),
    ).on_conflict_do_nothing())
    # concurrent results for one supplier and item are applied one after the other
    q = select(SamplingState).where(SamplingState.supplier == supplier, SamplingState.item == item)
    row = (await session.execute(q.with_for_update() if dialect == "postgresql" else q)).scalar_one()
    await session.refresh(row)
    return row


async def record_lot(session: AsyncSession, *, supplier: str, item: str, lot: str, lot_size: int, level: str,
                     aql: float | str, nonconforming: int, production_steady: bool = True,
                     actor: str) -> dict[str, Any]:
    """Judge a lot by the plan its switching state gives, and move the state. Idempotent on the lot."""
    if nonconforming < 0:
        raise InvalidInput("nonconforming: a count of nonconforming items is 0 or more", field="nonconforming")
    row = await _locked_state(session, supplier, item)  # first: a concurrent copy of this lot waits here
    existing = (await session.execute(select(SamplingLot).where(SamplingLot.lot == lot))).scalar()
    if existing is not None:
        st = await session.get(SamplingState, existing.state_id)
        assert st is not None
        same = (st.supplier, st.item, existing.lot_size, existing.level, existing.aql, existing.nonconforming) \
            == (supplier, item, lot_size, level, sampling.aql_key(aql), nonconforming)
        if not same:
            raise Conflict(f"lot {lot!r} was already judged ({existing.nonconforming} nonconforming, "
                           f"{'accepted' if existing.accepted else 'not accepted'}); a result is not changed "
                           "after the fact", field="lot")
        return {**_lot_view(existing), "state": state_view(_state_of(st)), "duplicate": True}
    state = _state_of(row)
    state_before = state_view(state)
    p = _plan_for(state, supplier, item, lot_size, level, aql)
    if nonconforming > p.units_to_inspect:
        raise InvalidInput(f"nonconforming: {nonconforming} nonconforming items in a sample of "
                           f"{p.units_to_inspect}: count each nonconforming item once", field="nonconforming")
    # the responsible authority asks for reduced inspection on its own (reduce_sampling), not with a lot; on
    # reduced inspection (Z1.4 Table II-C) a count between Ac and Re is accepted and reinstates normal inspection
    t = state.after_lot(sampling.LotOutcome(
        nonconforming=nonconforming, ac=p.ac, re=p.re, tighter_ac=sampling.tighter_acceptance_number(p),
        production_steady=production_steady, reduced_wanted=False))
    _store(row, t.state)
    rec = SamplingLot(lot=lot, state_id=row.id, severity=p.severity, lot_size=lot_size, level=level, aql=p.aql,
                      code_letter=p.code_letter, n=p.n, ac=p.ac, re=p.re, nonconforming=nonconforming,
                      accepted=t.accepted, switched_to=t.switched_to, recorded_by=actor)
    session.add(rec)
    await session.flush()
    await audit(session, actor=actor, action="sampling.lot_judged", entity="sampling_state",
                key=f"{supplier}:{item}", changes={
                    "lot": lot, "plan": sampling_plan_view(p), "nonconforming": nonconforming,
                    "accepted": t.accepted, "switched_to": t.switched_to, "reason": t.reason,
                    **diff(state_before, state_view(t.state))})
    return {**_lot_view(rec), "switch_reason": t.reason, "state": state_view(t.state), "duplicate": False}


def _lot_view(rec: SamplingLot) -> dict[str, Any]:
    return {"lot": rec.lot, "severity": rec.severity, "lot_size": rec.lot_size, "aql": rec.aql,
            "level": rec.level, "code_letter": rec.code_letter, "n": rec.n, "ac": rec.ac, "re": rec.re,
            "nonconforming": rec.nonconforming, "accepted": rec.accepted, "switched_to": rec.switched_to}


async def reduce_sampling(session: AsyncSession, *, supplier: str, item: str, reason: str,
                          production_steady: bool = True, actor: str) -> dict[str, Any]:
    """The responsible authority considers reduced inspection desirable: a supplier and item on normal inspection
    with a switching score of 30 or more, at a steady rate of production, go to reduced inspection (ANSI/ASQ Z1.4
    Table II-C plans) from their next lot."""
    row = await _locked_state(session, supplier, item)
    state_before = state_view(_state_of(row))
    state = _state_of(row).reduce(production_steady=production_steady)
    _store(row, state)
    await session.flush()
    await audit(session, actor=actor, action="sampling.reduced", entity="sampling_state",
                key=f"{supplier}:{item}", changes={"severity": state.severity, "reason": reason,
                                                   **diff(state_before, state_view(state))})
    return {"supplier": supplier, "item": item, "state": state_view(state),
            "switch_reason": f"switching score {state_before['switching_score']} >= {sampling.REDUCED_SCORE}, "
                             "steady production and reduced inspection wanted by the responsible authority"}


async def resume_sampling(session: AsyncSession, *, supplier: str, item: str, reason: str,
                          actor: str) -> dict[str, Any]:
    """Corrective action accepted: a discontinued supplier and item start again on tightened inspection."""
    row = (await session.execute(select(SamplingState).where(
        SamplingState.supplier == supplier, SamplingState.item == item))).scalar()
    if row is None:
        raise NotFound(f"no lots of {item!r} from {supplier!r} were judged yet: nothing to resume",
                       field="supplier")
    state_before = state_view(_state_of(row))
    state = _state_of(row).resume()
    _store(row, state)
    await session.flush()
    await audit(session, actor=actor, action="sampling.resumed", entity="sampling_state",
                key=f"{supplier}:{item}", changes={"severity": state.severity, "reason": reason,
                                                   **diff(state_before, state_view(state))})
    return {"supplier": supplier, "item": item, "state": state_view(state)}


# --- SPC over recorded measurements ----------------------------------------------------------------------


async def spc_for(session: AsyncSession, *, item: str, characteristic: str, subgroup: int,
                  last: int) -> dict[str, Any]:
    """X-bar/R chart, Cp/Cpk and Western Electric rule violations of the last `last` recorded values of a
    characteristic of an item (inspection -> lot -> item), oldest first. Violations are warnings here: they
    open no NCR."""
    # every recorded result holds at least one value, so the newest `last` results hold enough of them
    rows = (await session.execute(
        select(CharacteristicResult, Inspection.number, Inspection.inspected_at)
        .join(Inspection, Inspection.id == CharacteristicResult.inspection_id)
        .join(Lot, Lot.id == Inspection.lot_id).join(Item, Item.id == Lot.item_id)
        .where(Item.code == item, CharacteristicResult.name == characteristic,
               CharacteristicResult.values.is_not(None), CharacteristicResult.verdict.is_not(None))
        .order_by(Inspection.inspected_at.desc(), Inspection.id.desc(), CharacteristicResult.id.desc())
        .limit(last)
    )).all()
    if not rows:
        raise NotFound(f"no recorded measurements of {characteristic!r} for item {item!r}: check the item code "
                       "and the characteristic name, or record inspection results first", field="characteristic")
    rows = list(reversed(rows))
    values: list[float] = []
    source: list[str] = []
    for r, number, _ in rows:
        for v in r.values or []:
            if isinstance(v, int | float) and isfinite(v):
                values.append(float(v))
                source.append(number)
    values, source = values[-last:], source[-last:]
    newest = rows[-1][0]
    chart = spc.xbar_r(values, subgroup)
    warnings: list[str] = []
    if {(r.lower, r.upper) for r, _, _ in rows} != {(newest.lower, newest.upper)}:
        warnings.append("the spec limits changed within the window: Cp/Cpk use the newest ones "
                        f"[{newest.lower}, {newest.upper}]")
    cap = spc.capability(chart, newest.lower, newest.upper) \
        if newest.lower is not None or newest.upper is not None else None
    violations = spc.western_electric(chart.means, chart.grand_mean, chart.sigma_xbar)
    out_r = spc.range_violations(chart)
    k = len(chart.means)
    if k < 20:
        warnings.append(f"control limits from {k} subgroups are provisional: 20 to 25 subgroups make them "
                        "reliable")
    for v in violations:
        warnings.append(f"subgroup {v.index + 1}: Western Electric rule {v.rule} ({v.description}), "
                        f"{v.side} the centre line")
    for i in out_r:
        warnings.append(f"subgroup {i + 1}: range {chart.ranges[i]:.6g} outside the R chart limits")
    a2, d3, d4, d2 = spc.CONSTANTS[subgroup]
    used_from = chart.dropped
    return {
        "item": item, "characteristic": characteristic, "unit": newest.unit, "nominal": newest.nominal,
        "subgroup_size": subgroup, "values_used": len(values) - chart.dropped, "values_dropped": chart.dropped,
        "subgroups": [{"index": i + 1, "mean": m, "range": rg,
                       "inspections": sorted(set(source[used_from + i * subgroup:used_from + (i + 1) * subgroup]))}
                      for i, (m, rg) in enumerate(zip(chart.means, chart.ranges, strict=True))],
        "xbar_chart": {"centre": chart.grand_mean, "ucl": chart.xbar_ucl, "lcl": chart.xbar_lcl,
                       "sigma_of_mean": chart.sigma_xbar},
        "r_chart": {"centre": chart.r_bar, "ucl": chart.r_ucl, "lcl": chart.r_lcl},
        "constants": {"A2": a2, "D3": d3, "D4": d4, "d2": d2},
        "sigma": {"value": chart.sigma, "method": "R-bar / d2 (within subgroups)"},
        "capability": None if cap is None else {
            "lower": cap.lower, "upper": cap.upper, "cp": cap.cp, "cpk": cap.cpk, "cpu": cap.cpu, "cpl": cap.cpl,
            "mean": cap.mean, "sigma": cap.sigma, "method": cap.method},
        "violations": [{"rule": v.rule, "description": v.description, "subgroup": v.index + 1, "side": v.side,
                        "subgroups": [j + 1 for j in v.points]} for v in violations],
        "range_out_of_control": [i + 1 for i in out_r],
        "warnings": warnings,
    }


# --- the switching state fed by inspection verdicts (domain/inspection_triggers.py) ------------------------


async def current_severity(session: AsyncSession, *, supplier: str, item: str) -> str:
    """The severity the next lot of an item from a supplier is inspected under (normal if none judged yet);
    a discontinued supplier and item is refused (Conflict) until sampling is resumed."""
    row = (await session.execute(select(SamplingState).where(
        SamplingState.supplier == supplier, SamplingState.item == item))).scalar()
    state = _state_of(row)
    if state.severity == "discontinued":
        _plan_for(state, supplier, item, 2, "II", "1.0")  # raises the Conflict that says what to do
    return state.severity


async def record_verdict(session: AsyncSession, *, supplier: str, item: str, lot: str, lot_size: int, level: str,
                         aql: str, severity: str, nonconforming: int, accepted: bool, inspection: str,
                         actor: str, gap: tuple[str, int, int, int] | None = None) -> dict[str, Any]:
    """Move the switching state by an inspection's verdict on a lot. `accepted` is the inspection's verdict
    (every class of characteristic within its acceptance number, variables within their limits); the plan
    that governs the switching is the one of the most severe class of the inspection plan. `gap` (on reduced
    inspection): a characteristic whose count fell between its Ac and Re, as (name, count, Ac, Re): the lot is
    accepted but normal inspection is reinstated. Idempotent on the lot: a second call returns what the first
    recorded."""
    row = await _locked_state(session, supplier, item)
    existing = (await session.execute(select(SamplingLot).where(SamplingLot.lot == lot))).scalar()
    if existing is not None:
        st = await session.get(SamplingState, existing.state_id)
        assert st is not None
        return {**_lot_view(existing), "state": state_view(_state_of(st)), "duplicate": True}
    state = _state_of(row)
    state_before = state_view(state)
    p = sampling.plan(max(lot_size, 2), level, aql, severity if severity in sampling.TABLES else "normal")
    # the state may have moved since the inspection opened (another lot's verdict came first): the switching
    # rules then count this lot under the plan of the state's own severity
    ps = p if state.severity in (p.severity, "discontinued") \
        else sampling.plan(max(lot_size, 2), level, aql, state.severity)
    # the state machine judges by Ac and Re; the inspection's verdict is what decided the lot
    if not accepted:
        outcome = sampling.LotOutcome(nonconforming=max(nonconforming, ps.re), ac=ps.ac, re=ps.re,
                                      tighter_ac=sampling.tighter_acceptance_number(ps), reduced_wanted=False)
    elif gap is not None and ps.severity == "reduced":
        _, count, gap_ac, gap_re = gap
        outcome = sampling.LotOutcome(nonconforming=count, ac=gap_ac, re=gap_re, reduced_wanted=False)
    else:
        outcome = sampling.LotOutcome(nonconforming=min(nonconforming, ps.ac), ac=ps.ac, re=ps.re,
                                      tighter_ac=sampling.tighter_acceptance_number(ps), reduced_wanted=False)
    t = state.after_lot(outcome)
    reason = t.reason if gap is None or t.switched_to is None else f"{t.reason} ({gap[0]})"
    _store(row, t.state)
    rec = SamplingLot(lot=lot, state_id=row.id, severity=p.severity, lot_size=lot_size, level=level, aql=p.aql,
                      code_letter=p.code_letter, n=p.n, ac=p.ac, re=p.re, nonconforming=nonconforming,
                      accepted=accepted, switched_to=t.switched_to, recorded_by=actor)
    session.add(rec)
    await session.flush()
    await audit(session, actor=actor, action="sampling.lot_judged", entity="sampling_state",
                key=f"{supplier}:{item}", changes={
                    "lot": lot, "inspection": inspection, "plan": sampling_plan_view(p),
                    "nonconforming": nonconforming, "accepted": accepted, "switched_to": t.switched_to,
                    "reason": reason, **diff(state_before, state_view(t.state))})
    return {**_lot_view(rec), "switch_reason": reason, "state": state_view(t.state), "duplicate": False}


# --- the severity of a failed inspection ---------------------------------------------------------------------

SEVERITY_ORDER = {"minor": 0, "major": 1, "critical": 2}


async def failed_severity(session: AsyncSession, ins: Inspection, failed: list[str]) -> str | None:
    """The severity of the most severe failed characteristic (critical > major > minor), from the plan version
    the inspection was taken under; None when no plan names them (the NCR then opens as major).

    Inspections opened from a plan (IQC, first-article, patrol, final, outgoing) record their plan version when
    they open (inspection_sampling); one opened from the work order's own list takes the severities of the plan
    version in force when it opened, if that version has the characteristics; a version saved later never."""
    from domain.models_inspection import InspectionSampling

    if not failed:
        return None
    row = (await session.execute(select(InspectionSampling).where(
        InspectionSampling.inspection_id == ins.id))).scalar()
    severities: list[str] = []
    if row is not None:
        chars = row.characteristics or {}
        severities = [chars[n]["severity"] for n in failed if n in chars and chars[n].get("severity")]
        if not severities:
            plan = await session.get(InspectionPlan, row.plan_id)
            if plan is not None:
                severities = [c.severity for c in plan.characteristics if c.name in failed]
    else:
        plan = await plan_in_force(session, ins)
        if plan is not None:
            severities = [c.severity for c in plan.characteristics if c.name in failed]
    known = [s for s in severities if s in SEVERITY_ORDER]
    return max(known, key=SEVERITY_ORDER.__getitem__) if known else None


async def gauge_points(session: AsyncSession, ins: Inspection) -> dict[str, tuple[str, str]]:
    """characteristic -> (endpoint, point) of the characteristics of a pending inspection whose gauge is a
    connector point (`<endpoint>:<point>`), from the plan version the inspection was taken under (one opened from
    the work order's own list: the version in force when it opened); only characteristics the inspection has."""
    from domain.models_inspection import InspectionSampling

    row = (await session.execute(select(InspectionSampling).where(
        InspectionSampling.inspection_id == ins.id))).scalar()
    plan: InspectionPlan | None
    if row is not None:
        plan = await session.get(InspectionPlan, row.plan_id)
    else:
        plan = await plan_in_force(session, ins)
    if plan is None:
        return {}
    names = {c.name for c in ins.characteristics}
    out = {}
    for c in plan.characteristics:
        src = gauge_source(c.gauge) if c.kind == "variable" else None
        if src is not None and c.name in names:
            out[c.name] = src
    return out
