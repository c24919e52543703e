"""Quality: inspection plan versions, ISO 2859-1 sampling with the switching state (reduced inspection by ANSI/ASQ
Z1.4 Table II-C), SPC, and CSV upload of
inspection results (which goes through the same path as the JSON results route)."""

from __future__ import annotations

import csv
import io
from math import isfinite
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from activities.models import InspectionResults
from api.deps import ReadSessionDep, SessionDep, TemporalDep
from api.limits import read_bounded
from api.routes.inspections import submit_results
from api.security import PrincipalDep, current_principal
from core.errors import InvalidInput
from domain import quality_plans, sampling, spc_warnings
from domain.quality_plans import PlanIn

router = APIRouter(tags=["quality"])

CSV_LIMIT_BYTES = 1024 * 1024  # one CSV upload; larger bodies get 413 after at most this much is read
CSV_MAX_PROBLEMS = 20  # problems listed in one answer; the rest are counted


class LotResultIn(BaseModel):
    supplier: str = Field(min_length=1, max_length=80)
    item: str = Field(min_length=1, max_length=64)
    lot: str = Field(min_length=1, max_length=64, description="the lot judged; a re-send of it changes nothing")
    lot_size: int = Field(ge=2)
    level: sampling.Level = "II"
    aql: float
    nonconforming: int = Field(
        ge=0, description="nonconforming items found in the sample; on reduced inspection (ANSI/ASQ Z1.4 Table "
                          "II-C) a count between Ac and Re accepts the lot and reinstates normal inspection")
    production_steady: bool = Field(default=True, description="false: production is irregular or delayed (reduced "
                                                              "inspection then goes back to normal)")


class ReduceIn(BaseModel):
    supplier: str = Field(min_length=1, max_length=80)
    item: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=3, max_length=400,
                        description="why the responsible authority considers reduced inspection desirable")
    production_steady: bool = Field(default=True, description="production is at a steady rate; false is "
                                                              "refused (409): reduced inspection needs it")


class ResumeIn(BaseModel):
    supplier: str = Field(min_length=1, max_length=80)
    item: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=3, max_length=400, description="the supplier's corrective action")


@router.post("/api/quality/plans", status_code=201, summary="Save an inspection plan: a new version")
async def create_plan(body: PlanIn, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    plan = await quality_plans.save_plan(session, body, actor=principal.subject)
    return quality_plans.plan_view(plan)


@router.get("/api/quality/plans/{item}/{operation}", summary="Every version of an item's plan at an operation")
async def list_plan_versions(item: str, operation: str, session: ReadSessionDep) -> list[dict[str, Any]]:
    return [quality_plans.plan_view(p) for p in await quality_plans.plan_versions(session, item, operation)]


@router.get("/api/quality/sampling", summary="Single sampling plan for a lot under the supplier's and item's "
                                             "switching state: ISO 2859-1 Table 2-A (normal), 2-B (tightened), "
                                             "ANSI/ASQ Z1.4 Table II-C (reduced)")
async def get_sampling(session: ReadSessionDep, lot_size: Annotated[int, Query(ge=2)], aql: float,
                       supplier: Annotated[str, Query(min_length=1, max_length=80)],
                       item: Annotated[str, Query(min_length=1, max_length=64)],
                       level: sampling.Level = "II") -> dict[str, Any]:
    return await quality_plans.sampling_for(session, supplier=supplier, item=item, lot_size=lot_size,
                                            level=level, aql=aql)


@router.post("/api/quality/sampling/results", summary="Judge a lot by its sampling plan; moves the switching "
                                                      "state (normal, tightened, reduced, discontinued)")
async def post_lot_result(body: LotResultIn, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return await quality_plans.record_lot(
        session, supplier=body.supplier, item=body.item, lot=body.lot, lot_size=body.lot_size, level=body.level,
        aql=body.aql, nonconforming=body.nonconforming, production_steady=body.production_steady,
        actor=principal.subject)


@router.post("/api/quality/sampling/reduce", summary="Reduced inspection (ANSI/ASQ Z1.4 Table II-C) from the next "
                                                     "lot: the responsible authority's decision, once the switching "
                                                     "score is 30 or more")
async def reduce_sampling(body: ReduceIn, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return await quality_plans.reduce_sampling(session, supplier=body.supplier, item=body.item, reason=body.reason,
                                               production_steady=body.production_steady,
                                               actor=principal.subject)


@router.post("/api/quality/sampling/resume", summary="Resume discontinued sampling (on tightened inspection) "
                                                     "after the supplier's corrective action")
async def resume_sampling(body: ResumeIn, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return await quality_plans.resume_sampling(session, supplier=body.supplier, item=body.item,
                                               reason=body.reason, actor=principal.subject)


@router.get("/api/quality/spc", summary="X-bar/R chart, Cp/Cpk and Western Electric warnings of a characteristic")
async def get_spc(session: ReadSessionDep, item: Annotated[str, Query(min_length=1)],
                  characteristic: Annotated[str, Query(min_length=1)],
                  subgroup: Annotated[int, Query(ge=2, le=10)] = 5,
                  last: Annotated[int, Query(ge=4, le=10_000)] = 100) -> dict[str, Any]:
    return await quality_plans.spc_for(session, item=item, characteristic=characteristic, subgroup=subgroup,
                                       last=last)


class AcknowledgeIn(BaseModel):
    note: str | None = Field(default=None, max_length=400, description="what was looked at or done")


@router.get("/api/quality/warnings", summary="SPC warnings (Western Electric rule violations raised when "
                                             "measurements are recorded), open ones first")
async def list_spc_warnings(session: ReadSessionDep,
                            state: Literal["open", "acknowledged", "all"] = "all",
                            item: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
                            characteristic: Annotated[str | None, Query(min_length=1, max_length=80)] = None,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    return await spc_warnings.list_warnings(session, state=state, item=item, characteristic=characteristic,
                                            limit=limit)


@router.post("/api/quality/warnings/{warning_id}/acknowledge",
             summary="Acknowledge an SPC warning (the quality engineer has seen it); once")
async def acknowledge_spc_warning(warning_id: Annotated[int, Path(ge=1, le=2**31 - 1,
                                                                 description="the id GET /api/quality/warnings shows")],
                                  session: SessionDep, principal: PrincipalDep,
                                  body: AcknowledgeIn | None = None) -> dict[str, Any]:
    return await spc_warnings.acknowledge(session, warning_id, actor=principal.subject,
                                          note=body.note if body else None)


@router.post("/api/inspections/{number}/results/csv", status_code=202,
             summary="Post measurements as CSV (columns characteristic,value; one row per value)",
             openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {
                 "type": "string", "example": "characteristic,value\nbore_diameter,25.02\n"}}}}})
async def post_results_csv(number: str, request: Request, client: TemporalDep,
                           inspector: Annotated[str | None, Query(max_length=80)] = None,
                           result_id: Annotated[str | None, Query(max_length=80)] = None) -> JSONResponse:
    raw = await read_bounded(request, CSV_LIMIT_BYTES)
    if raw is None:
        return JSONResponse(
            {"error": "PayloadTooLarge", "limit": CSV_LIMIT_BYTES,
             "detail": f"the CSV is larger than {CSV_LIMIT_BYTES} bytes: split it into several uploads"},
            status_code=413, headers={"connection": "close"})  # the unread rest cannot be skipped
    measurements = parse_results_csv(raw)
    principal = current_principal(request)
    try:
        results = InspectionResults(inspector=inspector or principal.subject,
                                    measurements=measurements, result_id=result_id)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"])
        raise InvalidInput(f"{field}: {e['msg']}", field=field) from exc
    # the session is opened after the upload is read: a slow client holds no transaction (nor SQLite's lock)
    async with request.app.state.sessionmaker() as session, session.begin():
        return await submit_results(number, results, session, client, submitted_by=principal.subject)


def parse_results_csv(raw: bytes) -> list[dict[str, Any]]:
    """`characteristic,value` rows into measurements (values in row order), or InvalidInput naming each bad
    row by its line number (the header is line 1)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"csv: the upload is not UTF-8 text (byte {exc.start}); save the CSV as UTF-8",
                           field="csv") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    problems: list[str] = []
    values: dict[str, list[float]] = {}
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                missing = [c for c in ("characteristic", "value") if c not in header]
                extra = [c for c in header if c not in ("characteristic", "value")]
                if missing or extra or len(header) != 2:
                    raise InvalidInput(
                        f"csv: line {reader.line_num}: the header is {','.join(row)!r}; it must name the two "
                        "columns characteristic,value", field="csv")
                continue
            where = f"line {reader.line_num}"
            if len(row) != 2:
                problems.append(f"{where}: {len(row)} cells; a row is characteristic,value")
                continue
            cells = dict(zip(header, (c.strip() for c in row), strict=True))
            name, value = cells["characteristic"], cells["value"]
            if not name:
                problems.append(f"{where}: the characteristic is empty")
            elif len(name) > 80:
                problems.append(f"{where}: the characteristic is longer than 80 characters")
            try:
                v = float(value)
                if not isfinite(v):
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: value {value!r} is not a number (use a point for decimals: 25.01)")
                continue
            if name and len(name) <= 80:
                values.setdefault(name, []).append(v)
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: {exc}")
    if header is None:
        raise InvalidInput("csv: the upload is empty; send a header characteristic,value and one row per "
                           "measured value", field="csv")
    if problems:
        more = len(problems) - CSV_MAX_PROBLEMS
        listed = "; ".join(problems[:CSV_MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise InvalidInput(f"csv: {listed}", field="csv")
    if not values:
        raise InvalidInput("csv: no values after the header; add one row per measured value", field="csv")
    return [{"characteristic": name, "values": vs} for name, vs in values.items()]
