"""EPCIS query subscriptions (EPCIS 2.0 §8.2.5, REST bindings `/queries/{name}/subscriptions`): a named
query whose new events go to a webhook, on a cron-like schedule or as they are captured (stream).

The schedule fields are EPCIS/cron strings per field (`second`, `minute`, `hour`, `dayOfMonth`, `month`,
`dayOfWeek`): `*`, a value `5`, a list `1,15`, a range `1-5`, a step `*/10` or `0/30` or `8-18/2`. They are
parsed here into ranges (start, end, step) that the delivery schedule uses as is (workflows/epcis_subscription.py
turns them into a Temporal calendar spec). A stream subscription is delivered by a short interval instead.

Delivery is at least once: each run sends the events recorded since the watermark (`min_record_time`) up to a
cut-off a few seconds in the past (so a capture still committing is not skipped), in batches, and moves the
watermark only once every batch was accepted. A receiver that fails makes the run retry; one that answered
some batches before failing gets them again, so receivers deduplicate by eventID (they are content hashes).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain import epcis_query
from domain.epcis_capture import learn_company_prefixes
from domain.epcis_query import NoSuchNameException, QueryParameterException, get_named
from domain.models import utcnow
from domain.models_trace import EpcisSubscription

# field -> (lowest, highest) value
FIELDS = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "dayOfMonth": (1, 31), "month": (1, 12),
          "dayOfWeek": (0, 6)}
_ITEM = re.compile(r"(\*|\d{1,2})(?:-(\d{1,2}))?(?:/(\d{1,2}))?")


class SubscriptionControlsException(QueryParameterException):
    kind = "SubscriptionControlsException"


def parse_schedule(schedule: Any) -> dict[str, list[tuple[int, int, int]]]:
    """{field: [(start, end, step), ...]} for the fields given; fields left out are `*` (every value) below the
    finest field given and the lowest value above it, as cron does (`{"hour": "1", "minute": "5"}` is 01:05:00)."""
    if not isinstance(schedule, dict) or not schedule:
        raise SubscriptionControlsException('schedule: give at least one field, e.g. {"hour": "1", "minute": "5"}',
                                            field="schedule")
    unknown = sorted(set(schedule) - set(FIELDS))
    if unknown:
        raise SubscriptionControlsException(f"schedule.{unknown[0]} is not a schedule field: use "
                                            f"{', '.join(FIELDS)}", field=f"schedule.{unknown[0]}")
    out: dict[str, list[tuple[int, int, int]]] = {}
    for name, raw in schedule.items():
        lo, hi = FIELDS[name]
        ranges = []
        for item in str(raw).replace(" ", "").split(","):
            m = _ITEM.fullmatch(item)
            bad = f"schedule.{name}: {raw!r} is not a schedule value; write *, 5, 1,15, 1-5, */10 or 0/30 ({lo}-{hi})"
            if not m:
                raise SubscriptionControlsException(bad, field=f"schedule.{name}")
            start = lo if m[1] == "*" else int(m[1])
            end = int(m[2]) if m[2] else (hi if m[1] == "*" or m[3] else start)
            step = int(m[3]) if m[3] else 1
            if not (lo <= start <= end <= hi) or step < 1 or (m[1] == "*" and m[2]):
                raise SubscriptionControlsException(bad, field=f"schedule.{name}")
            ranges.append((start, end, step))
        out[name] = ranges
    # cron semantics: fields finer than the finest given are at their lowest value, coarser ones are every value
    finest = max(i for i, f in enumerate(FIELDS) if f in out and f != "dayOfWeek") if set(out) - {"dayOfWeek"} \
        else len(FIELDS) - 2
    for i, f in enumerate(FIELDS):
        if f not in out and f != "dayOfWeek":
            lo, hi = FIELDS[f]
            out[f] = [(lo, lo, 1)] if i < finest else [(lo, hi, 1)]
    return out


def _check_dest(dest: Any) -> str:
    if not isinstance(dest, str) or not dest:
        raise SubscriptionControlsException('dest: give the URL the results are POSTed to, e.g. '
                                            '"https://client.example.com/queryCallback"', field="dest")
    u = urlparse(dest)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise SubscriptionControlsException(f"dest: {dest!r} is not an http(s) URL", field="dest")
    return dest


async def create(session: AsyncSession, query_name: str, body: Any, *, epc_format: str,
                 own_prefixes: list[str] | tuple[str, ...] = ()) -> EpcisSubscription:
    """A subscription to a named query. `own_prefixes`: the plant's GS1 company prefixes (settings); with
    Always_EPC_URN they are kept with the learned ones, so the worker that delivers can write the hub's own
    identifiers as EPC URNs."""
    await get_named(session, query_name)
    if not isinstance(body, dict):
        raise SubscriptionControlsException('send {"dest": "...", "stream": true} or {"dest": "...", "schedule": '
                                            '{"hour": "1", "minute": "5"}}', field="body")
    dest = _check_dest(body.get("dest"))
    stream, schedule = body.get("stream"), body.get("schedule")
    if stream not in (None, True, False):
        raise SubscriptionControlsException("stream: true or leave it out", field="stream")
    if bool(stream) == (schedule is not None):
        raise SubscriptionControlsException("give exactly one of `stream: true` (events as they are captured) or "
                                            "`schedule` (cron-like fields)", field="schedule" if stream else "stream")
    parsed = parse_schedule(schedule) if schedule is not None else None
    token = body.get("signatureToken")
    if token is not None and (not isinstance(token, str) or not 1 <= len(token) <= 500):
        raise SubscriptionControlsException("signatureToken: a string of 1 to 500 characters", field="signatureToken")
    report_if_empty = body.get("reportIfEmpty", False)
    if not isinstance(report_if_empty, bool):
        raise SubscriptionControlsException("reportIfEmpty: true or false", field="reportIfEmpty")
    now = utcnow()
    initial = now
    if body.get("initialRecordTime") is not None:
        initial = epcis_query.parse_time("initialRecordTime", body["initialRecordTime"])
    unknown = sorted(set(body) - {"dest", "stream", "schedule", "signatureToken", "reportIfEmpty",
                                  "initialRecordTime"})
    if unknown:
        raise SubscriptionControlsException(f"{unknown[0]} is not a subscription field", field=unknown[0])
    if epc_format == "Always_EPC_URN" and own_prefixes:
        await learn_company_prefixes(session, own_prefixes)
    row = EpcisSubscription(
        id=str(uuid.uuid4()), query_name=query_name, dest=dest, signature_token=token,
        report_if_empty=report_if_empty, stream=bool(stream), schedule=schedule if parsed is not None else None,
        epc_format=epc_format, initial_record_time=initial, min_record_time=initial, created_at=now)
    session.add(row)
    await session.flush()
    return row


async def get(session: AsyncSession, query_name: str, sub_id: str) -> EpcisSubscription:
    row = await session.get(EpcisSubscription, sub_id)
    if row is None or row.deleted_at is not None or row.query_name != query_name:
        raise NoSuchNameException(f"query {query_name!r} has no subscription {sub_id!r}: list them at "
                                  f"GET /epcis/queries/{query_name}/subscriptions", field="subscriptionID")
    return row


async def list_active(session: AsyncSession, query_name: str) -> list[EpcisSubscription]:
    await get_named(session, query_name)
    return list((await session.execute(select(EpcisSubscription).where(
        EpcisSubscription.query_name == query_name, EpcisSubscription.deleted_at.is_(None))
        .order_by(EpcisSubscription.created_at))).scalars())


async def delete(session: AsyncSession, row: EpcisSubscription) -> None:
    row.deleted_at = utcnow()
    await session.flush()


def view(row: EpcisSubscription) -> dict[str, Any]:
    """The subscription as the REST bindings show it: never its signatureToken."""
    out: dict[str, Any] = {
        "subscriptionID": row.id, "queryName": row.query_name, "dest": row.dest,
        "createdAt": epcis_query.z(row.created_at), "initialRecordTime": epcis_query.z(row.initial_record_time),
        "minRecordTime": epcis_query.z(row.min_record_time), "epcFormat": row.epc_format,
        "signed": row.signature_token is not None,
    }
    if row.stream:
        out["stream"] = True
    else:
        out["schedule"] = row.schedule
        out["reportIfEmpty"] = row.report_if_empty
    if row.last_notified_at is not None:
        out["lastNotifiedAt"] = epcis_query.z(row.last_notified_at)
    if row.last_error:
        out["lastError"] = row.last_error
    return out


def signature(token: str, body: bytes) -> str:
    """`GS1-Signature` of a callback: HMAC-SHA256 of the exact body with the subscriber's signatureToken."""
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


async def pending(session: AsyncSession, sub_id: str, *, lag: timedelta, batch: int,
                  now: datetime | None = None) -> tuple[EpcisSubscription | None, datetime, list[dict[str, Any]]]:
    """(subscription or None if it is gone, cut-off, the EPCISQueryDocuments to send, in order): the named
    query's events recorded from the watermark up to the cut-off, `batch` events per document."""
    row = await session.get(EpcisSubscription, sub_id)
    if row is None or row.deleted_at is not None:
        return None, utcnow(), []
    cutoff = (now or utcnow()) - lag
    if cutoff <= row.min_record_time:
        return row, row.min_record_time, []
    try:
        named = await get_named(session, row.query_name)
    except NoSuchNameException:
        return None, cutoff, []
    params: dict[str, Any] = {k: v for k, v in named.query.items() if k not in ("orderBy", "orderDirection",
                                                                               "eventCountLimit", "maxEventCount")}
    params.update({"GE_recordTime": epcis_query.z(row.min_record_time), "LT_recordTime": epcis_query.z(cutoff),
                   "orderBy": "recordTime", "perPage": str(batch)})
    docs: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = dict(params, nextPageToken=token) if token else params
        doc, token = await epcis_query.run(session, page, epc_format=row.epc_format,  # with its @context
                                           declared_ns=named.namespaces)
        results = doc["epcisBody"]["queryResults"]
        results["queryName"] = row.query_name
        results["subscriptionID"] = row.id
        if results["resultsBody"]["eventList"] or (not docs and row.report_if_empty and not row.stream):
            docs.append(doc)
        if token is None:
            return row, cutoff, docs


async def delivered(session: AsyncSession, sub_id: str, *, cutoff: datetime, notified: bool) -> None:
    """Move the watermark once every document up to `cutoff` was accepted."""
    row = await session.get(EpcisSubscription, sub_id)
    if row is None:
        return
    row.min_record_time = max(row.min_record_time, cutoff)
    if notified:
        row.last_notified_at = utcnow()
    row.last_error = None
    await session.flush()


async def failed(session: AsyncSession, sub_id: str, error: str) -> None:
    row = await session.get(EpcisSubscription, sub_id)
    if row is not None:
        row.last_error = error[:2000]
        await session.flush()
