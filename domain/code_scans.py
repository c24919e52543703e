"""The public side of a code: what a person scanning it may see, and the record of each scan.

Only public facts leave here: product, lot, dates, where it was made, whether it passed its inspections.
Never operator names, NCR texts or measurements.

The resolver records scans through a `ScanRecorder`: the rows (CodeScan, CodeAlert) are written in batches
off the request path, and the recorder remembers the last located scan of each code, so the travel check
sees scans that are not written yet.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import BatchWriter, FastReader
from domain import gs1
from domain.codes import CODE_STATE, CodeInfo, code_state_params, lookup, lookup_cached
from domain.models import Inspection, Lot, WorkOrder, utcnow
from domain.models_codes import CodeAlert, CodeRule, CodeScan, Container, Containment, SerialBlock

# faster than an airliner between two scans of one serial means two physical copies of it
MAX_PLAUSIBLE_KMH = 900.0
COARSE_DEGREES = 1  # locations are kept to one decimal of a degree (about 10 km)


@dataclass
class ScanResult:
    status: str  # genuine | unknown | voided
    suspicious: bool
    reason: str | None
    facts: dict[str, Any]


class ScanRecorder(BatchWriter):
    """Writes scans and their alerts in batches (see `BatchWriter`) and remembers, for the travel check, the
    last located scan of up to `remember` codes (the least recently scanned are forgotten first)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession] | None = None, *,
                 remember: int = 100_000, **kwargs: Any) -> None:
        super().__init__(sessionmaker, **kwargs)
        self.remember = remember
        self._located: OrderedDict[str, tuple[datetime, float, float]] = OrderedDict()

    def last_located(self, code: str, at: datetime) -> tuple[datetime, float, float] | None:
        """The latest remembered located scan of `code` at or before `at`."""
        last = self._located.get(code)
        return last if last is not None and last[0] <= at else None

    def located(self, code: str, at: datetime, lat: float, lon: float) -> None:
        last = self._located.get(code)
        if last is None or at >= last[0]:
            self._located[code] = (at, lat, lon)
        self._located.move_to_end(code)
        while len(self._located) > self.remember:
            self._located.popitem(last=False)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(math.sqrt(a))


def _facts(*, item_code: str, item_name: str | None, item_gtin: str | None, rule: CodeRule, value: str) -> dict[str, Any]:
    # a case or pallet with a GTIN of its own carries that GTIN, not its units'
    ns = rule.namespace
    gtin = ns.removeprefix("sgtin:") if ns.startswith("sgtin:") else item_gtin
    return {"product": item_name or item_code, "item": item_code, "gtin": gtin, "level": rule.level, "code": value}


def _lot_facts(facts: dict[str, Any], *, lot_number: str, lot_status: str, count: int, last: str | None,
               made_at: str | None) -> None:
    facts["lot"] = lot_number
    facts["inspections"] = {"count": count, "passed": count > 0 and last == "passed"
                            and lot_status in ("released", "shipped", "consumed")}
    facts["made_at"] = made_at


def _dates(facts: dict[str, Any], block: SerialBlock, lot_created: str | None) -> None:
    facts["production_date"] = block.production_date or lot_created
    facts["expiry_date"] = block.expiry_date


async def public_facts(session: AsyncSession, info: CodeInfo, lot_in_uri: str | None) -> dict[str, Any]:
    v = info.view
    assert v is not None
    item = v.item
    facts = _facts(item_code=item.code, item_name=item.name, item_gtin=item.gtin, rule=v.rule, value=info.value)
    lot: Lot | None = info.lot
    if lot is not None:
        if info.lot_facts is not None and info.lot_facts[0] == lot.id:  # read along with the code's state
            _, count, last, line = info.lot_facts
        else:
            finals = (await session.execute(select(Inspection.status).where(
                Inspection.lot_id == lot.id).order_by(Inspection.id))).scalars().all()
            count, last = len(finals), (finals[-1] if finals else None)
            wo = await session.get(WorkOrder, lot.work_order_id) if lot.work_order_id else None
            line = wo.line if wo else None
        _lot_facts(facts, lot_number=lot.number, lot_status=lot.status, count=count, last=last,
                   made_at=line or lot.location)
    _dates(facts, v.block, lot.created_at.date().isoformat() if lot is not None else None)
    if lot_in_uri is not None and lot is not None and lot_in_uri != lot.number:
        facts["lot_mismatch"] = True
    if v.rule.level in ("case", "pallet"):
        n = (await session.execute(select(func.count()).select_from(Containment).where(
            Containment.parent == info.value, Containment.unpacked_at.is_(None)))).scalar_one()
        c = (await session.execute(select(Container).where(Container.code == info.value))).scalar()
        facts["contains"] = n
        facts["shipped"] = bool(c and c.status == "shipped")
    return facts


async def scan(session: AsyncSession, *, elements: dict[str, str], lat: float | None = None,
               lon: float | None = None, at: datetime | None = None,
               recorder: ScanRecorder | None = None) -> ScanResult:
    """Resolve a scanned code (its Digital Link AIs), record the scan, and judge whether it is suspicious.

    With a `recorder` the scan (and any alert) is queued there and `session` is only read; without one they
    are added to `session` (which must then be a writing session) and flushed."""
    at = at or utcnow()
    if lat is not None and lon is not None:
        lat, lon = round(lat, COARSE_DEGREES), round(lon, COARSE_DEGREES)
    path = "/" + "/".join(f"{k}/{v}" for k, v in elements.items())
    info = await lookup(session, path, with_lot_facts=True)
    reason: str | None = None
    suspicious = False
    facts: dict[str, Any] = {}
    alerts: list[dict[str, Any]] = []
    if info.status in ("unknown", "returned"):
        status, suspicious = "unknown", True
        reason = "this code was never issued"
    elif info.status == "voided":
        status, suspicious = "voided", True
        reason = "this code was voided and must not be on any product"
    else:
        status = "genuine"
        facts = await public_facts(session, info, elements.get("10"))
        if facts.get("lot_mismatch"):
            status, suspicious = "unknown", True
            reason = "the lot printed with this code is not the lot it was issued for"
            facts = {}
    if status == "genuine" and lat is not None and lon is not None:
        prev = await _previous_located(session, info.value, at, recorder)
        if prev is not None:
            p_at, p_lat, p_lon = prev
            km = _km(p_lat, p_lon, lat, lon)
            hours = max((at - p_at).total_seconds() / 3600, 1 / 3600)
            if km > 50 and km / hours > MAX_PLAUSIBLE_KMH:
                suspicious = True
                reason = (f"scanned {km:,.0f} km from its previous scan {hours * 60:,.0f} minutes earlier: "
                          "two copies of one serial")
                alerts.append({"kind": "implausible_travel", "code": info.value, "details": {
                    "km": round(km), "minutes": round(hours * 60, 1), "from": [p_lat, p_lon], "to": [lat, lon]}})
    if status != "genuine" and gs1.parse_digital_link(path):
        alerts.append({"kind": f"scan_{status}", "code": info.value, "details": {"reason": reason}})
    row = {"code": info.value, "scanned_at": at, "lat": lat, "lon": lon, "outcome": status,
           "suspicious": suspicious, "reason": reason}
    if recorder is None:
        session.add_all([CodeAlert(**a) for a in alerts])
        session.add(CodeScan(**row))
        await session.flush()
    else:
        for a in alerts:
            recorder.add(CodeAlert, {**a, "pool_id": None, "created_at": at})
        recorder.add(CodeScan, row)
        if status == "genuine" and lat is not None and lon is not None:
            recorder.located(info.value, at, lat, lon)
    return ScanResult(status, suspicious, reason, facts)


async def scan_cached(reader: FastReader, *, elements: dict[str, str], recorder: ScanRecorder,
                      at: datetime | None = None) -> ScanResult | None:
    """`scan` for the common case, a genuine unit code whose rule and block this process has cached (see
    `codes.lookup_cached`): one plain statement, no session. None whenever anything is unusual (a cache miss,
    a located scan, a voided or returned range, a lot or binding that changed...): then use `scan`."""
    c = lookup_cached(elements)
    if c is None or c.rule.level != "unit":
        return None
    row = await reader.fetchone(CODE_STATE, code_state_params(c))
    if row is None:
        return None
    (used, used_lot, rng_state, lot_id, lot_number, lot_status, location, lot_created, item_code, item_name,
     item_gtin, count, last, line) = row
    if rng_state is not None or item_code is None or lot_number != c.lot_number or item_gtin != c.gtin:
        return None
    if used is not None and used_lot and lot_id != used_lot:
        return None
    if "10" in elements and lot_number is not None and elements["10"] != lot_number:
        return None
    facts = _facts(item_code=item_code, item_name=item_name, item_gtin=item_gtin, rule=c.rule, value=c.value)
    if lot_number is not None:
        _lot_facts(facts, lot_number=lot_number, lot_status=lot_status, count=count, last=last,
                   made_at=line or location)
    created = (lot_created[:10] if isinstance(lot_created, str) else lot_created.date().isoformat()) \
        if lot_created is not None else None
    _dates(facts, c.block, created)
    recorder.add(CodeScan, {"code": c.value, "scanned_at": at or utcnow(), "lat": None, "lon": None,
                            "outcome": "genuine", "suspicious": False, "reason": None})
    return ScanResult("genuine", False, None, facts)


async def _previous_located(session: AsyncSession, code: str, at: datetime,
                            recorder: ScanRecorder | None) -> tuple[datetime, float, float] | None:
    """The latest located scan of the code at or before `at`: written ones, and the recorder's memory of those
    it has not written yet (or that another process wrote: both are asked)."""
    prev = (await session.execute(select(CodeScan.scanned_at, CodeScan.lat, CodeScan.lon).where(
        CodeScan.code == code, CodeScan.lat.is_not(None), CodeScan.lon.is_not(None), CodeScan.scanned_at <= at)
        .order_by(CodeScan.scanned_at.desc()).limit(1))).first()
    best = (prev[0], prev[1], prev[2]) if prev is not None else None
    mem = recorder.last_located(code, at) if recorder is not None else None
    if mem is not None and (best is None or mem[0] > best[0]):
        best = mem
    return best
