"""The GS1 Digital Link resolver and the public scan page.

A phone gets a clean HTML page; a machine asking for JSON (Accept: application/json, or `linkType` as GS1
resolvers take it) gets the same facts as JSON. Only public facts: never operator names or NCR texts.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select

from api.deps import ReadSessionDep
from domain import gs1
from domain.code_scans import COARSE_DEGREES, ScanResult, scan, scan_cached
from domain.items import lot_under_gtin
from domain.models import Inspection, utcnow
from domain.models_codes import CodeAlert, CodeScan

router = APIRouter(tags=["resolver"])
log = logging.getLogger(__name__)


def _wants_json(request: Request) -> bool:
    if "linkType" in request.query_params:
        return True
    accept = request.headers.get("accept", "")
    return ("application/json" in accept or "application/linkset+json" in accept) and "text/html" not in accept


def _coarse(request: Request) -> tuple[float | None, float | None]:
    try:
        lat = float(request.query_params["lat"])
        lon = float(request.query_params["lon"])
    except (KeyError, ValueError):
        return None, None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None
    return lat, lon


_CSS = """
*{box-sizing:border-box}body{margin:0;font:16px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
background:#f4f5f7;color:#1d2330}main{max-width:32rem;margin:0 auto;padding:1.25rem}
.card{background:#fff;border-radius:14px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:1.25rem 1.25rem .5rem}
.badge{display:inline-block;border-radius:999px;padding:.25rem .75rem;font-weight:600;font-size:.9rem}
.ok{background:#e3f5e9;color:#17653a}.bad{background:#fde8e8;color:#9b1c1c}
h1{font-size:1.4rem;margin:.75rem 0 1rem}dl{margin:0}dt{color:#5b6475;font-size:.85rem}
dd{margin:0 0 .9rem;font-weight:500;word-break:break-all}footer{color:#7a8294;font-size:.8rem;margin-top:1rem}
"""


def _page(title: str, badge: str, ok: bool, rows: list[tuple[str, str]], note: str | None = None) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    n = f"<p>{html.escape(note)}</p>" if note else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
            f'<div class="card"><span class="badge {"ok" if ok else "bad"}" id="verdict">{html.escape(badge)}</span>'
            f"<h1>{html.escape(title)}</h1>{n}<dl>{items}</dl></div>"
            f"<footer>Traceability by TraceHub</footer></main></body></html>")


def _rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("Product", f["product"])]
    if f.get("gtin"):
        rows.append(("GTIN", f["gtin"]))
    if f.get("lot"):
        rows.append(("Lot", f["lot"]))
    if f.get("serial"):
        rows.append(("Serial", f["serial"]))
    if f.get("production_date"):
        rows.append(("Production date", f["production_date"]))
    if f.get("expiry_date"):
        rows.append(("Use by", f["expiry_date"]))
    if f.get("made_at"):
        rows.append(("Made at", f["made_at"]))
    ins = f.get("inspections")
    if ins is not None:
        rows.append(("Quality", "Passed its inspections" if ins["passed"] else "Inspection not passed"))
    if "contains" in f:
        rows.append(("Contains", f"{f['contains']} items"))
    return rows


def _respond(request: Request, elements: dict[str, str], res: ScanResult) -> Response:
    code = "/" + "/".join(f"{k}/{v}" for k, v in elements.items())
    body = {"code": code, "status": res.status, "suspicious": res.suspicious, "reason": res.reason, **res.facts}
    if "21" in elements:
        body["serial"] = elements["21"]
    http = 200 if res.status == "genuine" else 410 if res.status == "voided" else 404
    if _wants_json(request):
        if http != 200:  # the hub's refusals say why in `detail`; here it is the scan's reason
            body["detail"] = res.reason or (f"code {code} was withdrawn" if res.status == "voided"
                                            else f"code {code} was never issued")
            body["field"] = "code"  # the scanned code is what the answer is about
        return JSONResponse(body, status_code=http)
    if res.status == "genuine":
        f = {**res.facts, "serial": elements.get("21"), "sscc": elements.get("00")}
        rows = _rows(f)
        if elements.get("00"):
            rows.insert(1, ("SSCC", elements["00"]))
        badge = "Genuine product" if not res.suspicious else "Check this product"
        note = res.reason if res.suspicious else None
        return HTMLResponse(_page(f["product"], badge, not res.suspicious, rows, note), status_code=http)
    if res.status == "voided":
        text = ("This code was withdrawn and is not valid on any product. "
                "If it is printed on something you bought, please contact the seller.")
        return HTMLResponse(_page("Code not valid", "Not valid", False, [("Code", code)], text), status_code=http)
    text = ("We did not issue this code, so we cannot confirm this product. "
            "If it is printed on something you bought, please contact the seller.")
    return HTMLResponse(_page("Unknown code", "Not recognised", False, [("Code", code)], text), status_code=http)


_UNIT_PATH = re.compile(r"/01/([^/]+)(?:/10/([^/]+))?/21/([^/]+)")


class ResolverFastPath:
    """Plain ASGI in front of the app: a GET of a unit code (`/01/{gtin}[/10/{lot}]/21/{serial}`) without a
    location is answered by `scan_cached` (cached rule and block, one plain statement) without FastAPI's routing
    and dependencies. Whatever it cannot answer (a cache miss, a located scan, anything unusual, a database
    error) goes on to the ordinary routes below, which give the same answer the slower way."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith("/01/"):
            m = _UNIT_PATH.fullmatch(scope["path"])
            state = scope["app"].state if "app" in scope else None
            reader = getattr(state, "fast_reader", None)
            if m and reader is not None and reader.available and b"lat=" not in scope.get("query_string", b""):
                elements = {"01": m[1], "21": m[3]} if m[2] is None else {"01": m[1], "10": m[2], "21": m[3]}
                try:
                    res = await scan_cached(reader, elements=elements, recorder=state.scan_recorder)
                except Exception:  # the ordinary route answers, and reports a real fault
                    log.debug("resolver fast path fell back", exc_info=True)
                    res = None
                if res is not None:
                    await _respond(Request(scope), elements, res)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _scan(request: Request, session: Any, elements: dict[str, str]) -> Response:
    lat, lon = _coarse(request)
    res = await scan(session, elements=elements, lat=lat, lon=lon, recorder=request.app.state.scan_recorder)
    return _respond(request, elements, res)


@router.get("/01/{gtin}/10/{lot}/21/{serial}", summary="Resolve a unit (GTIN, lot and serial)")
async def resolve_unit_with_lot(gtin: str, lot: str, serial: str, request: Request,
                                session: ReadSessionDep) -> Response:
    return await _scan(request, session, {"01": gtin, "10": lot, "21": serial})


@router.get("/01/{gtin}/21/{serial}", summary="Resolve a unit (GTIN and serial)")
async def resolve_unit(gtin: str, serial: str, request: Request, session: ReadSessionDep) -> Response:
    return await _scan(request, session, {"01": gtin, "21": serial})


@router.get("/00/{sscc}", summary="Resolve a case or pallet (SSCC)")
async def resolve_sscc(sscc: str, request: Request, session: ReadSessionDep) -> Response:
    return await _scan(request, session, {"00": sscc})


def _record_lot_scan(request: Request, elements: dict[str, str], res: ScanResult) -> None:
    """A lot scan goes on record as unit and SSCC scans do (`domain.code_scans.scan`): a CodeScan row, and for a lot
    never made under the GTIN a `scan_unknown` alert. No travel check: one lot code is on many things at once."""
    recorder = request.app.state.scan_recorder
    lat, lon = _coarse(request)
    if lat is not None and lon is not None:
        lat, lon = round(lat, COARSE_DEGREES), round(lon, COARSE_DEGREES)
    code, at = "/" + "/".join(f"{k}/{v}" for k, v in elements.items()), utcnow()
    if res.status != "genuine":
        recorder.add(CodeAlert, {"kind": f"scan_{res.status}", "code": code, "details": {"reason": res.reason},
                                 "pool_id": None, "created_at": at})
    recorder.add(CodeScan, {"code": code, "scanned_at": at, "lat": lat, "lon": lon, "outcome": res.status,
                            "suspicious": res.suspicious, "reason": res.reason})


@router.get("/01/{gtin}/10/{lot}", summary="Resolve a lot (GTIN and batch)")
async def resolve_lot(gtin: str, lot: str, request: Request, session: ReadSessionDep) -> Response:
    elements = {"01": gtin, "10": lot}
    # the item's GTIN now, else one it held when the lot was made (a GTIN corrected since: domain/items.py)
    row = await lot_under_gtin(session, gtin, lot) if not gs1.check_digit_problem(gtin) else None
    if row is None:
        res = ScanResult("unknown", True, "this lot was never made under this GTIN", {})
        _record_lot_scan(request, elements, res)
        return _respond(request, elements, res)
    statuses = (await session.execute(select(Inspection.status).where(Inspection.lot_id == row.id)
                                      .order_by(Inspection.id))).scalars().all()
    facts = {"product": row.item.name or row.item.code, "item": row.item.code, "gtin": gtin, "lot": row.number,
             "level": "lot", "production_date": row.created_at.date().isoformat(), "made_at": row.location,
             "inspections": {"count": len(statuses), "passed": bool(statuses) and statuses[-1] == "passed"
                             and row.status in ("released", "shipped", "consumed")}}
    res = ScanResult("genuine", False, None, facts)
    _record_lot_scan(request, elements, res)
    return _respond(request, elements, res)
