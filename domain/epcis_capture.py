"""EPCIS capture: validate a whole document, then store all of its events or none (GS1 rollback semantics).

The capture server assigns recordTime itself (an incoming one is ignored) and gives an event without an
eventID its CBV 2.0 hash. Capturing the same event twice stores it once. An error declaration repeats
the eventID of the event it retracts, so it is kept in its own table keyed on (eventID, declarationTime),
where it cannot collide with the original or drop a later correction.

Asynchronous capture: a document of more than INLINE_MAX_EVENTS events is kept durably with its job
(`enqueue`) and processed by a capture workflow's activity (`run_job`), which validates and stores it in ONE
transaction together with the job's outcome: an attempt killed half-way leaves nothing, the retry does all
of it, and a retry after a finished attempt finds the job finished and stores nothing again. Smaller documents
are processed in the request (`capture`), with the same semantics. Location master data in the header
(`epcisHeader.epcisMasterData.vocabularyList`) is stored with the events, all or nothing alike.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
from psycopg.errors import UniqueViolation
from sqlalchemy import ARRAY, String, any_, bindparam, delete, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import conflict_insert
from core.errors import InvalidInput, NotFound
from domain.epcis_hash import context_prefixes, event_hash
from domain.epcis_ids import canonical, gcp_of_urn, vocab_term
from domain.epcis_index import (
    IndexRows,
    bulk_insert,
    index_rows,
    retract_lineage,
    retracted_by_new_events,
    withdrawn,
    write_index,
)
from domain.epcis_validate import Violation, events_of, validate, validate_single_event
from domain.models import EpcisEvent, utcnow
from domain.models_epcis_master import (
    EpcisCaptureDocument,
    EpcisVocabularyAttribute,
    EpcisVocabularyChild,
    EpcisVocabularyElement,
)
from domain.models_trace import EpcisCaptureJob, EpcisErrorDeclaration, EpcisNamespace, Gs1CompanyPrefix

CAPTURE_LIMIT = 10_000  # events per document (GS1-EPCIS-Capture-Limit)
CAPTURE_FILE_SIZE_LIMIT = 16 * 1024 * 1024  # bytes (GS1-EPCIS-Capture-File-Size-Limit)
# documents with more events than this are captured by a workflow, not in the request (the 202 says running):
# 1,000 events are validated and stored in about 0.2 s, a reasonable time to hold a request; beyond that (up to
# the 10,000-event limit, a few seconds) the client gets its job at once and polls it
INLINE_MAX_EVENTS = 1000
READ_POINT = "urn:epcglobal:epcis:vtype:ReadPoint"
BUSINESS_LOCATION = "urn:epcglobal:epcis:vtype:BusinessLocation"
_ID_FIELDS = ("epcList", "childEPCs", "inputEPCList", "outputEPCList")
_NOT_STORED = ("recordTime", "@context")  # the server's recordTime is its own; prefixes are kept apart
_Q_FIELDS = ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")


class CaptureLimitExceeded(InvalidInput):
    """More events or bytes than the advertised capture limits."""

    kind = "CaptureLimitExceededException"


def _utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("z", "Z"))


def event_prefixes(ev: Any, prefixes: dict[str, str]) -> dict[str, str]:
    """The prefix bindings in force for one event: its document's, overridden by those of the event's own
    `@context` (EPCIS 2.0 JSON-LD allows one on each event; it binds prefixes for that event only). The
    document's dict itself when the event has no context of its own (the usual case: nothing is copied)."""
    own = ev.get("@context") if isinstance(ev, dict) else None
    if own is None:
        return prefixes
    mine = context_prefixes(own)
    return {**prefixes, **mine} if mine else prefixes


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


async def _learn(session: AsyncSession, bindings: set[tuple[str, str]], gcps: set[str]) -> None:
    if bindings:
        # every (prefix, IRI) binding is kept: another partner's IRI for a known prefix is a second row, not lost
        # (the events themselves keep their own document's bindings: epcis_event.namespaces); one query per document
        pairs = {(p[:64], i[:300]) for p, i in bindings}
        known = set((await session.execute(
            select(EpcisNamespace.prefix, EpcisNamespace.iri)
            .where(EpcisNamespace.prefix.in_(sorted({p for p, _ in pairs}))))).all())
        new = [{"prefix": p, "iri": i, "legacy": False} for p, i in sorted(pairs - known)]
        if new:  # a concurrent capture may have learnt the same binding meanwhile: that is no conflict
            await session.execute(conflict_insert(session)(EpcisNamespace).on_conflict_do_nothing(), new)
    if gcps:
        known = set((await session.execute(
            select(Gs1CompanyPrefix.prefix).where(Gs1CompanyPrefix.prefix.in_(list(gcps))))).scalars())
        new = [{"prefix": p} for p in gcps if p not in known]
        if new:
            await session.execute(insert(Gs1CompanyPrefix), new)


async def learn_company_prefixes(session: AsyncSession, prefixes: list[str] | tuple[str, ...] | set[str]) -> None:
    """Keep GS1 company prefixes (e.g. the plant's own, from settings) with those learned from captured URNs."""
    await _learn(session, set(), {p for p in prefixes if p.isdigit() and 6 <= len(p) <= 12})


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
                         ctxs: list[dict[str, str]]) -> tuple[int, IndexRows]:
    """Store the events not stored yet: (how many, their index rows, keyed by their primary keys). `ctxs`: each
    event's prefix bindings (event_prefixes), in the order of `rows` and `docs`.

    PostgreSQL: the keys come from the table's sequence in one round trip and the rows go in with COPY, in a
    savepoint: a document of new events (the usual case) costs no lookup at all, and only when one of them is
    stored already (the unique eventID refuses the COPY) are the stored ones looked up and left out."""
    pairs = list(zip(rows, docs, ctxs, strict=True))
    if session.bind.dialect.name != "postgresql":
        stored = await _stored_ids(session, [r["event_id"] for r in rows])
        keep = [(r, d, c) for r, d, c in pairs if r["event_id"] not in stored]
        if keep:
            await bulk_insert(session, EpcisEvent.__table__, [r for r, _, _ in keep])
            pk_of: dict[str, int] = {}
            ids = [r["event_id"] for r, _, _ in keep]
            for i in range(0, len(ids), 500):
                pk_of.update((await session.execute(
                    select(EpcisEvent.event_id, EpcisEvent.id).where(EpcisEvent.event_id.in_(ids[i:i + 500])))).all())
            for r, _, _ in keep:
                r["id"] = pk_of[r["event_id"]]
        return len(keep), index_rows([(r["id"], d, c) for r, d, c in keep])
    keys = (await session.execute(
        text("SELECT nextval(pg_get_serial_sequence('epcis_event', 'id')) FROM generate_series(1, :n)"),
        {"n": len(rows)})).scalars()
    for r, k in zip(rows, keys, strict=True):
        r["id"] = k
    try:
        async with session.begin_nested():
            await bulk_insert(session, EpcisEvent.__table__, rows, encoded=("document", "namespaces"))
        return len(pairs), index_rows([(r["id"], d, c) for r, d, c in pairs])
    except (IntegrityError, UniqueViolation):
        stored = await _stored_ids(session, [r["event_id"] for r in rows])
        keep = [(r, d, c) for r, d, c in pairs if r["event_id"] not in stored]
        if keep:
            await bulk_insert(session, EpcisEvent.__table__, [r for r, _, _ in keep],
                              encoded=("document", "namespaces"))
        return len(keep), index_rows([(r["id"], d, c) for r, d, c in keep])


async def store_events(session: AsyncSession, events: list[dict[str, Any]],
                       prefixes: dict[str, str]) -> tuple[int, int]:
    """Store validated events with their indexes and lineage; returns (stored, duplicates).

    `prefixes`: the document's bindings; an event with its own `@context` is stored, hashed and indexed with
    those overridden by its own (event_prefixes), and keeps them in its `namespaces`."""
    now = utcnow()
    pg = session.bind.dialect.name == "postgresql"
    rows: list[dict[str, Any]] = []
    docs: list[dict[str, Any]] = []
    ctxs: list[dict[str, str]] = []
    decls: list[dict[str, Any]] = []
    gcps: set[str] = set()
    seen: set[str] = set()
    bindings = set(prefixes.items())
    for ev in events:
        ctx = event_prefixes(ev, prefixes)
        if ctx is not prefixes:
            bindings.update(ctx.items())
        if ev.get("eventID"):
            doc = {k: v for k, v in ev.items() if k not in _NOT_STORED}
        else:  # the hash leaves out recordTime and @context itself: one copy of the event, with its id in front
            doc = {"type": ev["type"], "eventID": event_hash(ev, ctx)}
            doc.update((k, v) for k, v in ev.items() if k not in _NOT_STORED and k != "type")
        gcps |= _company_prefixes(doc)
        decl = doc.get("errorDeclaration")
        if decl:
            decls.append({"event_id": doc["eventID"][:200], "declaration_time": _utc(decl["declarationTime"]),
                          "reason": vocab_term("errorReason", decl["reason"])[:200] if decl.get("reason") else None,
                          "corrective_event_ids": list(decl.get("correctiveEventIDs") or []),
                          "record_time": now, "document": doc, "namespaces": dict(ctx) or None})
            continue
        if doc["eventID"] in seen:
            continue
        seen.add(doc["eventID"])
        ctxs.append(ctx)
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
        # each event keeps its document's prefixes (one JSON text for the whole document on PostgreSQL's COPY),
        # an event with its own @context its own bindings
        def encoded(ctx: dict[str, str]) -> Any:
            ns = dict(ctx) or None
            return (orjson.dumps(ns).decode() if ns is not None else None) if pg else ns

        ns_value = encoded(prefixes)
        for r, ctx in zip(rows, ctxs, strict=True):
            r["namespaces"] = ns_value if ctx is prefixes else encoded(ctx)
        n, ix = await _insert_events(session, rows, docs, ctxs)
        dup += len(rows) - n
        if n:
            await write_index(session, ix)
            stored += n
            # an event declared did_not_occur (or corrected) before it arrived here does not stay in the genealogy,
            # and an event that corrects an incorrect_data declaration replaces the event it corrects
            ids = [r["event_id"] for r in rows]
            await retract_lineage(session, await retracted_by_new_events(session, ids))
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
            # an event that did not occur leaves the genealogy in this transaction; one with incorrect data stays
            # until a corrective event is here (now, or when it is captured: above), which replaces it
            await retract_lineage(session, await withdrawn(session, {d["event_id"] for d in new}))
    await _learn(session, bindings, gcps)
    return stored, dup


async def _identity_violations(session: AsyncSession, events: list[Any],
                               prefixes: dict[str, str]) -> list[Violation]:
    """An error declaration must be otherwise identical to the event it retracts, when that one is here."""
    out = []
    decl_ids = {ev["eventID"]: i for i, ev in enumerate(events)
                if isinstance(ev, dict) and ev.get("errorDeclaration") and ev.get("eventID")}
    if not decl_ids:
        return out
    originals = {r.event_id: (r.document, r.namespaces) for r in (await session.execute(
        select(EpcisEvent.event_id, EpcisEvent.document, EpcisEvent.namespaces)
        .where(EpcisEvent.event_id.in_(list(decl_ids))))).all()}
    for eid, i in decl_ids.items():
        if eid not in originals:
            continue
        orig, orig_ns = originals[eid]
        ctx = event_prefixes(events[i], prefixes)  # the declaration's keys mean what its (event's) context binds
        # the original's extension keys mean what its own document bound them to (before 0023: as this one does)
        orig_ctx = {**ctx, "hub": "https://ns.tracehub.example/epcis/", **(orig_ns or {})}
        mine = {k: v for k, v in events[i].items() if k not in ("errorDeclaration", "recordTime", "@context")}
        if event_hash(mine, ctx) != event_hash(orig, orig_ctx):
            out.append(Violation(i, "errorDeclaration", "an error declaration must repeat the retracted event "
                                 "exactly (every field but errorDeclaration and recordTime)", eid))
    return out


def _check_limit(events: list[Any]) -> None:
    if len(events) > CAPTURE_LIMIT:
        raise CaptureLimitExceeded(f"the document has {len(events)} events; the capture limit is {CAPTURE_LIMIT}: "
                                   "split it into smaller documents", field="epcisBody.eventList")


async def capture(session: AsyncSession, doc: Any, *, behaviour: str = "rollback",
                  single_event: bool = False) -> EpcisCaptureJob:
    """Validate and store a document (or one event) now; the capture job says what happened."""
    events = [doc] if single_event else (events_of(doc) if isinstance(doc, dict) else [])
    _check_limit(events)
    job = EpcisCaptureJob(id=str(uuid.uuid4()), running=True, error_behaviour=behaviour, event_count=len(events))
    session.add(job)
    await _process(session, job, doc, events, single_event=single_event)
    return job


def event_count(doc: Any) -> int:
    return len(events_of(doc)) if isinstance(doc, dict) else 0


async def enqueue(session: AsyncSession, doc: Any, body: bytes, *, behaviour: str = "rollback",
                  content_type: str | None = None) -> EpcisCaptureJob:
    """A running job with its document kept durably, for a capture workflow to process (`run_job`)."""
    events = events_of(doc) if isinstance(doc, dict) else []
    _check_limit(events)
    job = EpcisCaptureJob(id=str(uuid.uuid4()), running=True, error_behaviour=behaviour, event_count=len(events),
                          errors=[], stored_count=0)
    session.add(job)
    await session.flush()
    session.add(EpcisCaptureDocument(job_id=job.id, body=body, content_type=content_type))
    await session.flush()
    return job


async def _locked_job(session: AsyncSession, job_id: str) -> EpcisCaptureJob:
    # the row lock makes a second attempt (a zombie's retry) wait for the first and then find the job finished
    q = select(EpcisCaptureJob).where(EpcisCaptureJob.id == job_id).with_for_update()
    job = (await session.execute(q)).scalar()
    if job is None:
        raise NotFound(f"capture job {job_id!r} does not exist", field="captureID")
    return job


async def run_job(session: AsyncSession, job_id: str) -> EpcisCaptureJob:
    """Validate and store a queued document, in the caller's transaction with the job's outcome; a job that has
    finished already is returned as it is (a retried attempt stores nothing twice)."""
    job = await _locked_job(session, job_id)
    if not job.running:
        return job
    row = await session.get(EpcisCaptureDocument, job_id)
    if row is None:  # cannot happen while the job runs (both go in one transaction); say so if it does
        return await fail_job(session, job_id, "the captured document is missing: capture it again")
    try:
        doc = orjson.loads(row.body)
    except orjson.JSONDecodeError as exc:
        return await fail_job(session, job_id, f"the body is not JSON ({exc}): send an EPCIS document")
    await _process(session, job, doc, events_of(doc) if isinstance(doc, dict) else [], single_event=False)
    await session.execute(delete(EpcisCaptureDocument).where(EpcisCaptureDocument.job_id == job_id))
    return job


async def fail_job(session: AsyncSession, job_id: str, message: str) -> EpcisCaptureJob:
    """End a job that could not be processed (nothing of it is stored): the reason is its one error."""
    job = await _locked_job(session, job_id)
    if not job.running:
        return job
    job.running, job.success, job.finished_at = False, False, utcnow()
    job.errors = [{"type": "epcisException:ImplementationException", "title": "ImplementationException",
                   "status": 500, "detail": message[:2000]}]
    await session.execute(delete(EpcisCaptureDocument).where(EpcisCaptureDocument.job_id == job_id))
    await session.flush()
    return job


async def _process(session: AsyncSession, job: EpcisCaptureJob, doc: Any, events: list[Any], *,
                   single_event: bool) -> None:
    behaviour = job.error_behaviour
    violations = validate_single_event(doc) if single_event else validate(doc)
    prefixes = context_prefixes(doc.get("@context")) if isinstance(doc, dict) else {}
    if not violations:
        violations = await _identity_violations(session, events, prefixes)
    if violations and behaviour == "rollback":
        job.success = False
        job.stored_count = 0
        job.errors = [v.as_problem() for v in violations]
    else:
        bad = {v.event for v in violations}
        if None in bad:  # the document itself is wrong: nothing can be taken from it
            good = []
        else:
            good = [ev for i, ev in enumerate(events) if i not in bad]
            if not single_event:
                await store_master_data(session, doc, prefixes)
        stored, _ = await store_events(session, good, prefixes)
        job.stored_count = stored
        job.success = not violations
        job.errors = [v.as_problem() for v in violations]
    job.running = False
    job.finished_at = utcnow()
    await session.flush()


# --- master data -------------------------------------------------------------------------------------------

def _attr_iri(attr: str, prefixes: dict[str, str]) -> str:
    """An attribute id in full: `cbvmda:sst` -> `urn:epcglobal:cbv:mda:sst` (and the document's own prefixes)."""
    if attr.startswith(("http://", "https://", "urn:")) or ":" not in attr:
        return attr
    prefix, local = attr.split(":", 1)
    ns = {"cbvmda": "urn:epcglobal:cbv:mda:", **prefixes}
    return ns[prefix] + local if prefix in ns else attr


attr_iri = _attr_iri  # for the query's HASATTR_ / EQ_ATTR_ parameters


def _attr_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v[:500]
    if isinstance(v, bool | int | float):
        return str(v)
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()[:500]


async def store_master_data(session: AsyncSession, doc: Any, prefixes: dict[str, str]) -> int:
    """Keep the vocabulary elements of the document's header (the latest capture of an element wins: its
    attributes, and its children when it names them); returns how many elements were written."""
    header = doc.get("epcisHeader") if isinstance(doc, dict) else None
    vocabularies = ((header or {}).get("epcisMasterData") or {}).get("vocabularyList") or []
    n = 0
    now = utcnow()
    for voc in vocabularies:
        if not isinstance(voc, dict) or not isinstance(voc.get("type"), str):
            continue
        vtype = voc["type"][:120]
        for el in voc.get("vocabularyElementList") or []:
            if not isinstance(el, dict) or not isinstance(el.get("id"), str):
                continue
            eid = canonical(el["id"])[:300]
            row = await session.get(EpcisVocabularyElement, (vtype, eid))
            if row is None:
                session.add(EpcisVocabularyElement(vtype=vtype, element_id=eid, updated_at=now))
            else:
                row.updated_at = now
            if "attributes" in el:
                await session.execute(delete(EpcisVocabularyAttribute).where(
                    EpcisVocabularyAttribute.vtype == vtype, EpcisVocabularyAttribute.element_id == eid))
                attrs = {_attr_iri(a["id"], prefixes)[:300]: _attr_value(a.get("attribute"))
                         for a in el.get("attributes") or [] if isinstance(a, dict) and isinstance(a.get("id"), str)}
                if attrs:
                    await session.execute(insert(EpcisVocabularyAttribute), [
                        {"vtype": vtype, "element_id": eid, "attr": k, "value": v} for k, v in attrs.items()])
            if "children" in el:
                await session.execute(delete(EpcisVocabularyChild).where(
                    EpcisVocabularyChild.vtype == vtype, EpcisVocabularyChild.parent == eid))
                kids = {canonical(c)[:300] for c in el.get("children") or [] if isinstance(c, str)}
                if kids:
                    await session.execute(insert(EpcisVocabularyChild), [
                        {"vtype": vtype, "parent": eid, "child": c} for c in sorted(kids)])
            n += 1
    if n:
        await session.flush()
    return n


async def descendants(session: AsyncSession, vtype: str, roots: list[str]) -> set[str]:
    """The roots and every element below them in the vocabulary's hierarchy (one query per level; a cycle
    in the captured `children` ends the walk, it does not loop)."""
    seen = {canonical(r) for r in roots}
    frontier = set(seen)
    while frontier:
        kids = set((await session.execute(select(EpcisVocabularyChild.child).where(
            EpcisVocabularyChild.vtype == vtype, EpcisVocabularyChild.parent.in_(frontier)))).scalars())
        frontier = kids - seen
        seen |= frontier
    return seen


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
