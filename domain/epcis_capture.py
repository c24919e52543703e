"""EPCIS capture: validate a whole document, then store all of its events or none (GS1 rollback semantics).

The capture server assigns recordTime itself (an incoming one is ignored) and gives an event without an
eventID its CBV 2.0 hash. Capturing the same event twice stores it once. An error declaration repeats
the eventID of the event it retracts, so it is kept in its own table keyed on (eventID, declarationTime),
where it cannot collide with the original or drop a later correction.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
from psycopg.errors import UniqueViolation
from sqlalchemy import ARRAY, String, any_, bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import InvalidInput, NotFound
from domain.epcis_hash import context_prefixes, event_hash
from domain.epcis_ids import canonical, gcp_of_urn, vocab_term
from domain.epcis_index import IndexRows, bulk_insert, index_rows, write_index
from domain.epcis_validate import Violation, events_of, validate, validate_single_event
from domain.models import EpcisEvent, utcnow
from domain.models_trace import EpcisCaptureJob, EpcisErrorDeclaration, EpcisNamespace, Gs1CompanyPrefix

CAPTURE_LIMIT = 10_000  # events per document (GS1-EPCIS-Capture-Limit)
CAPTURE_FILE_SIZE_LIMIT = 16 * 1024 * 1024  # bytes (GS1-EPCIS-Capture-File-Size-Limit)
_ID_FIELDS = ("epcList", "childEPCs", "inputEPCList", "outputEPCList")
_NOT_STORED = ("recordTime", "@context")  # the server's recordTime is its own; prefixes are kept apart
_Q_FIELDS = ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")


class CaptureLimitExceeded(InvalidInput):
    """More events or bytes than the advertised capture limits."""

    kind = "CaptureLimitExceededException"


def _utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("z", "Z"))


def _company_prefixes(ev: dict[str, Any]) -> set[str]:
    out = set()
    ids = [x for f in _ID_FIELDS for x in ev.get(f) or []]
    ids += [q.get("epcClass", "") for f in _Q_FIELDS for q in ev.get(f) or []]
    ids += [ev.get("parentID") or "", (ev.get("readPoint") or {}).get("id", ""),
            (ev.get("bizLocation") or {}).get("id", "")]
    for x in ids:
        if isinstance(x, str) and (p := gcp_of_urn(x)):
            out.add(p)
    return out


async def _learn(session: AsyncSession, prefixes: dict[str, str], gcps: set[str]) -> None:
    if prefixes:
        known = set((await session.execute(
            select(EpcisNamespace.prefix).where(EpcisNamespace.prefix.in_(list(prefixes))))).scalars())
        new = [{"prefix": p[:64], "iri": i[:300]} for p, i in prefixes.items() if p not in known]
        if new:
            await session.execute(insert(EpcisNamespace), new)
    if gcps:
        known = set((await session.execute(
            select(Gs1CompanyPrefix.prefix).where(Gs1CompanyPrefix.prefix.in_(list(gcps))))).scalars())
        new = [{"prefix": p} for p in gcps if p not in known]
        if new:
            await session.execute(insert(Gs1CompanyPrefix), new)


async def _stored_ids(session: AsyncSession, event_ids: list[str]) -> set[str]:
    if session.bind.dialect.name == "postgresql":
        q = select(EpcisEvent.event_id).where(
            EpcisEvent.event_id == any_(bindparam("ids", event_ids, type_=ARRAY(String))))
        return set((await session.execute(q)).scalars())
    found: set[str] = set()
    for i in range(0, len(event_ids), 500):
        found |= set((await session.execute(
            select(EpcisEvent.event_id).where(EpcisEvent.event_id.in_(event_ids[i:i + 500])))).scalars())
    return found


async def _insert_events(session: AsyncSession, rows: list[dict[str, Any]], docs: list[dict[str, Any]],
                         prefixes: dict[str, str]) -> tuple[int, IndexRows]:
    """Store the events not stored yet: (how many, their index rows, keyed by their primary keys).

    PostgreSQL: the keys come from the table's sequence in one round trip and the rows go in with COPY, in a
    savepoint: a document of new events (the usual case) costs no lookup at all, and only when one of them is
    stored already (the unique eventID refuses the COPY) are the stored ones looked up and left out."""
    pairs = list(zip(rows, docs, strict=True))
    if session.bind.dialect.name != "postgresql":
        stored = await _stored_ids(session, [r["event_id"] for r in rows])
        keep = [(r, d) for r, d in pairs if r["event_id"] not in stored]
        if keep:
            await bulk_insert(session, EpcisEvent.__table__, [r for r, _ in keep])
            pk_of: dict[str, int] = {}
            ids = [r["event_id"] for r, _ in keep]
            for i in range(0, len(ids), 500):
                pk_of.update((await session.execute(
                    select(EpcisEvent.event_id, EpcisEvent.id).where(EpcisEvent.event_id.in_(ids[i:i + 500])))).all())
            for r, _ in keep:
                r["id"] = pk_of[r["event_id"]]
        return len(keep), index_rows([(r["id"], d, prefixes) for r, d in keep])
    keys = (await session.execute(
        text("SELECT nextval(pg_get_serial_sequence('epcis_event', 'id')) FROM generate_series(1, :n)"),
        {"n": len(rows)})).scalars()
    for r, k in zip(rows, keys, strict=True):
        r["id"] = k
    try:
        async with session.begin_nested():
            await bulk_insert(session, EpcisEvent.__table__, rows, encoded=("document",))
        return len(pairs), index_rows([(r["id"], d, prefixes) for r, d in pairs])
    except (IntegrityError, UniqueViolation):
        stored = await _stored_ids(session, [r["event_id"] for r in rows])
        keep = [(r, d) for r, d in pairs if r["event_id"] not in stored]
        if keep:
            await bulk_insert(session, EpcisEvent.__table__, [r for r, _ in keep], encoded=("document",))
        return len(keep), index_rows([(r["id"], d, prefixes) for r, d in keep])


async def store_events(session: AsyncSession, events: list[dict[str, Any]],
                       prefixes: dict[str, str]) -> tuple[int, int]:
    """Store validated events with their indexes and lineage; returns (stored, duplicates)."""
    now = utcnow()
    pg = session.bind.dialect.name == "postgresql"
    rows: list[dict[str, Any]] = []
    docs: list[dict[str, Any]] = []
    decls: list[dict[str, Any]] = []
    gcps: set[str] = set()
    seen: set[str] = set()
    for ev in events:
        if ev.get("eventID"):
            doc = {k: v for k, v in ev.items() if k not in _NOT_STORED}
        else:  # the hash leaves out recordTime and @context itself: one copy of the event, with its id in front
            doc = {"type": ev["type"], "eventID": event_hash(ev, prefixes)}
            doc.update((k, v) for k, v in ev.items() if k not in _NOT_STORED and k != "type")
        gcps |= _company_prefixes(doc)
        decl = doc.get("errorDeclaration")
        if decl:
            decls.append({"event_id": doc["eventID"][:200], "declaration_time": _utc(decl["declarationTime"]),
                          "reason": vocab_term("errorReason", decl["reason"])[:200] if decl.get("reason") else None,
                          "corrective_event_ids": list(decl.get("correctiveEventIDs") or []),
                          "record_time": now, "document": doc})
            continue
        if doc["eventID"] in seen:
            continue
        seen.add(doc["eventID"])
        rows.append({
            "event_id": doc["eventID"][:200], "event_type": str(doc["type"])[:32], "event_time": _utc(doc["eventTime"]),
            "record_time": now, "action": doc.get("action"),
            "biz_step": vocab_term("bizStep", doc["bizStep"])[:40] if doc.get("bizStep") else None,
            "disposition": vocab_term("disposition", doc["disposition"])[:40] if doc.get("disposition") else None,
            "read_point": canonical(doc["readPoint"]["id"])[:200] if (doc.get("readPoint") or {}).get("id") else None,
            "biz_location": canonical(doc["bizLocation"]["id"])[:200]
            if (doc.get("bizLocation") or {}).get("id") else None,
            # PostgreSQL: the document goes in as its JSON text, ready for COPY (and a row of plain values is
            # not one more object for the garbage collector to follow while the capture runs)
            "lot_id": None, "work_order_id": None, "document": orjson.dumps(doc).decode() if pg else doc,
        })
        docs.append(doc)
    stored = dup = 0
    if rows:
        n, ix = await _insert_events(session, rows, docs, prefixes)
        dup += len(rows) - n
        if n:
            await write_index(session, ix)
            stored += n
    if decls:
        existing_d = set((await session.execute(
            select(EpcisErrorDeclaration.event_id, EpcisErrorDeclaration.declaration_time)
            .where(EpcisErrorDeclaration.event_id.in_({d["event_id"] for d in decls})))).all())
        new = []
        for d in decls:
            key = (d["event_id"], d["declaration_time"])
            if key in existing_d:
                dup += 1
                continue
            existing_d.add(key)
            new.append(d)
        if new:
            await session.execute(insert(EpcisErrorDeclaration), new)
            stored += len(new)
    await _learn(session, prefixes, gcps)
    return stored, dup


async def _identity_violations(session: AsyncSession, events: list[Any],
                               prefixes: dict[str, str]) -> list[Violation]:
    """An error declaration must be otherwise identical to the event it retracts, when that one is here."""
    out = []
    decl_ids = {ev["eventID"]: i for i, ev in enumerate(events)
                if isinstance(ev, dict) and ev.get("errorDeclaration") and ev.get("eventID")}
    if not decl_ids:
        return out
    originals = {r.event_id: r.document for r in (await session.execute(
        select(EpcisEvent.event_id, EpcisEvent.document).where(EpcisEvent.event_id.in_(list(decl_ids))))).all()}
    for eid, i in decl_ids.items():
        orig = originals.get(eid)
        if orig is None:
            continue
        mine = {k: v for k, v in events[i].items() if k not in ("errorDeclaration", "recordTime", "@context")}
        if event_hash(mine, prefixes) != event_hash(orig, {**prefixes, "hub": "https://ns.tracehub.example/epcis/"}):
            out.append(Violation(i, "errorDeclaration", "an error declaration must repeat the retracted event "
                                 "exactly (every field but errorDeclaration and recordTime)", eid))
    return out


async def capture(session: AsyncSession, doc: Any, *, behaviour: str = "rollback",
                  single_event: bool = False) -> EpcisCaptureJob:
    """Validate and store a document (or one event); the capture job says what happened."""
    events = [doc] if single_event else (events_of(doc) if isinstance(doc, dict) else [])
    if len(events) > CAPTURE_LIMIT:
        raise CaptureLimitExceeded(f"the document has {len(events)} events; the capture limit is {CAPTURE_LIMIT}: "
                                   "split it into smaller documents", field="epcisBody.eventList")
    job = EpcisCaptureJob(id=str(uuid.uuid4()), running=True, error_behaviour=behaviour, event_count=len(events))
    session.add(job)
    violations = validate_single_event(doc) if single_event else validate(doc)
    prefixes = context_prefixes(doc.get("@context")) if isinstance(doc, dict) else {}
    if not violations:
        violations = await _identity_violations(session, events, prefixes)
    if violations and behaviour == "rollback":
        job.success = False
        job.errors = [v.as_problem() for v in violations]
    else:
        bad = {v.event for v in violations}
        if None in bad:  # the document itself is wrong: nothing can be taken from it
            good = []
        else:
            good = [ev for i, ev in enumerate(events) if i not in bad]
        stored, _ = await store_events(session, good, prefixes)
        job.stored_count = stored
        job.success = not violations
        job.errors = [v.as_problem() for v in violations]
    job.running = False
    job.finished_at = utcnow()
    await session.flush()
    return job


async def get_job(session: AsyncSession, job_id: str) -> EpcisCaptureJob:
    job = await session.get(EpcisCaptureJob, job_id)
    if job is None:
        raise NotFound(f"capture job {job_id!r} does not exist: list jobs at GET /epcis/capture", field="captureID")
    return job


def job_view(job: EpcisCaptureJob) -> dict[str, Any]:
    out: dict[str, Any] = {
        "captureID": job.id, "createdAt": job.created_at.isoformat().replace("+00:00", "Z"),
        "running": job.running, "success": job.success, "captureErrorBehaviour": job.error_behaviour,
        "eventCount": job.event_count, "storedCount": job.stored_count, "errors": job.errors,
    }
    if job.finished_at:
        out["finishedAt"] = job.finished_at.isoformat().replace("+00:00", "Z")
    return out
