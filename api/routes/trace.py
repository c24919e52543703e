"""Trace both ways (genealogy), as JSON (graph and flat list), CSV, or a PDF report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.deps import ReadSessionDep, SettingsDep
from domain import trace, trace_containers

router = APIRouter(prefix="/api/trace", tags=["trace"])

Format = Annotated[Literal["json", "csv", "pdf"], Query(description="json, csv or pdf")]


def _render(result: dict[str, Any], fmt: Format, name: str) -> Response:
    if fmt == "csv":
        return Response(trace.to_csv(result), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    if fmt == "pdf":
        return Response(trace.to_pdf(result), media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'})
    return Response(trace.to_json(result), media_type="application/json")  # orjson, sent as it is


def _reader(request: Request) -> Any:
    # the app's autocommit connections for traces (PostgreSQL; None elsewhere: the session reads)
    return getattr(request.app.state, "trace_reader", None)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[-80:]


@router.get("/backward/{code:path}", summary="Where did it come from: from a unit, case, batch code or lot")
async def trace_backward(code: str, request: Request, session: ReadSessionDep, settings: SettingsDep,
                         format: Format = "json") -> Response:
    # a case or pallet: everything inside it; a unit, batch code or lot: its genealogy and packing. as_sent for
    # JSON: serialised once, as it is assembled (the answer bench/trace.py times)
    result = await trace_containers.backward_answer(session, code, resolver=settings.resolver_base_url,
                                                    reader=_reader(request), as_sent=format == "json")
    name = result["container"]["code"] if result.get("container") else result["lot"]
    return _render(result, format, f"trace-backward-{_safe(name)}")


@router.get("/forward", summary="Where did it go: from a lot, supplier lot, heat, or equipment/operator in a window")
async def trace_forward_from(
    request: Request, session: ReadSessionDep, settings: SettingsDep,
    kind: Annotated[Literal["lot", "supplier_lot", "heat", "equipment", "operator"],
                    Query(description="what `value` is")],
    value: Annotated[str, Query(min_length=1, max_length=120)],
    since: Annotated[datetime | None, Query(description="equipment/operator: window start (with offset)")] = None,
    until: Annotated[datetime | None, Query(description="equipment/operator: window end (with offset)")] = None,
    format: Format = "json",
) -> Response:
    result = await trace_containers.forward_answer(session, resolver=settings.resolver_base_url, kind=kind,
                                                   value=value, since=since, until=until, reader=_reader(request))
    return _render(result, format, f"trace-forward-{kind}-{_safe(value)}")


@router.get("/forward/{lot}", summary="Where did it go: every lot made from a lot and where each is now")
async def trace_forward(lot: str, request: Request, session: ReadSessionDep, settings: SettingsDep,
                        format: Format = "json") -> Response:
    result = await trace_containers.forward_answer(session, resolver=settings.resolver_base_url, kind="lot",
                                                   value=lot, reader=_reader(request))
    return _render(result, format, f"trace-forward-{_safe(lot)}")
