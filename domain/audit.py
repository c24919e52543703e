"""The audit log: who changed what, when. Append-only and hash-chained.

Each entry carries the hash of the previous one, so `verify_chain` finds any entry altered, removed
or inserted after the fact. Appends are serialised (an advisory lock on PostgreSQL, the write lock
on SQLite) so the chain never forks; the database refuses UPDATE and DELETE on the table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Text, cast, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import AuditLog, utcnow

GENESIS = "0" * 64
_LOCK_KEY = 7_245_001  # pg_advisory_xact_lock key of the audit chain


# json.dumps(changes, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False), built once:
# json.dumps would build this encoder again for every entry
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
_decode_json = json.JSONDecoder().decode  # json.loads of a str, without its per-call checks


def canonical_changes(changes: dict[str, Any]) -> str:
    return _CANONICAL.encode(changes)


def entry_hash(prev_hash: str, seq: int, at: datetime, actor: str, action: str, entity: str, key: str,
               changes_json: str) -> str:
    body = "\x1f".join([prev_hash, str(seq), at.isoformat(), actor, action, entity, key, changes_json])
    return hashlib.sha256(body.encode()).hexdigest()


# The shape of `changes` (the convention of every entry that changes a record): {"before": {...} | None,
# "after": {...} | None, **context}. `before` is None when the record was created, `after` None when it
# was deleted; for an update both name only the fields that changed. Context keys (the inspection of a
# verdict, the reason of a decision) sit beside them.
MASK = "**********"
_SECRET_WORDS = ("password", "secret", "token", "private", "credential", "api_key", "apikey")


def _is_secret(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in _SECRET_WORDS)


def masked(value: Any) -> Any:
    """`value` with every secret-looking field (password, token, secret, private key ...) shown as MASK."""
    if isinstance(value, dict):
        return {k: (MASK if _is_secret(str(k)) and v not in (None, "") else masked(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None, **context: Any) -> dict[str, Any]:
    """`changes` for one entry: the fields that differ, before and after (all of them on create/delete)."""
    if before is not None and after is not None:
        keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
        before, after = {k: before.get(k) for k in keys}, {k: after.get(k) for k in keys}
    return {**context, "before": before, "after": after}


# Who is acting in this API request: the API's authentication sets it. The actor of an entry written through the API
# is always that principal (a user's name, or a system token's name): routes pass `principal.subject` as `actor`,
# and a name the request body gives (the operator at the station, the inspector who measured, whom a recall is
# on behalf of) goes into the entry's changes as data, never into `actor`. An entry written with the placeholder
# actor "api" records the request's principal instead; outside a request (a workflow's activity) the placeholder
# stays, and marks work whose sender was not carried (signals and inputs sent before the principal travelled with
# them: see InspectionResultInput.submitted_by, OperationReport.reported_by, RecallInput.opened_by).
_acting: ContextVar[str | None] = ContextVar("tracehub_audit_acting", default=None)
PLACEHOLDER_ACTOR = "api"


def acting_as(subject: str | None) -> None:
    """Name the principal of the current request (None outside one)."""
    _acting.set(subject)


def actor_of(actor: str | None) -> str:
    """The actor an entry records: the request's principal in place of the placeholder."""
    if actor in (None, PLACEHOLDER_ACTOR):
        return _acting.get() or PLACEHOLDER_ACTOR
    return actor


async def audit(
    session: AsyncSession, *, actor: str, action: str, entity: str, key: str, changes: dict[str, Any]
) -> AuditLog:
    """Append one entry to the chain, in the caller's transaction."""
    actor = actor_of(actor)
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    last = (await session.execute(
        select(AuditLog.seq, AuditLog.hash).order_by(AuditLog.seq.desc()).limit(1)
    )).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    changes_json = canonical_changes(changes)
    at = utcnow()
    row = AuditLog(
        seq=seq, prev_hash=prev, at=at, actor=actor, action=action, entity=entity, entity_key=key,
        changes=json.loads(changes_json),
        hash=entry_hash(prev, seq, at, actor, action, entity, key, changes_json),
    )
    session.add(row)
    await session.flush()
    return row


@dataclass
class ChainReport:
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# what verify_chain reads: plain rows, not ORM objects (a million identity-map entries cost more than the
# hashing); `changes` as the stored JSON text, parsed here exactly as the ORM would (json.loads)
_COLUMNS = (AuditLog.seq, AuditLog.prev_hash, AuditLog.hash, AuditLog.at, AuditLog.actor, AuditLog.action,
            AuditLog.entity, AuditLog.entity_key, cast(AuditLog.changes, Text))


async def verify_chain(session: AsyncSession, *, batch: int = 5000, max_problems: int = 100) -> ChainReport:
    """Walk the chain and name every entry altered, removed or inserted."""
    report = ChainReport()
    walk = _Walk(report, max_problems)
    conn = await session.connection()  # Core rows: the ORM's row processing is not needed for tuples
    after = 0
    while True:
        rows = (await conn.execute(
            select(*_COLUMNS).where(AuditLog.seq > after).order_by(AuditLog.seq).limit(batch)
        )).all()
        if not rows or not walk.check(rows):
            return report
        after = rows[-1][0]


async def chain_head(session: AsyncSession) -> tuple[int, str]:
    """(seq, hash) of the newest entry; (0, GENESIS) while the trail is empty. Kept somewhere the database's
    users cannot write (`tracehub audit head`), it lets verify find entries removed from the end of the chain,
    which the chain itself cannot show."""
    last = (await session.execute(
        select(AuditLog.seq, AuditLog.hash).order_by(AuditLog.seq.desc()).limit(1))).first()
    return (int(last[0]), last[1]) if last else (0, GENESIS)


async def check_head(session: AsyncSession, seq: int, hash_: str) -> list[str]:
    """What is wrong, if anything, with the entry once kept as the head (chain_head): gone with the entries
    after the current end of the chain, or no longer the same entry."""
    if seq == 0 and hash_ == GENESIS:
        return []
    row = (await session.execute(select(AuditLog.hash).where(AuditLog.seq == seq))).first()
    if row is not None and row[0] == hash_:
        return []
    newest, _ = await chain_head(session)
    kept = f"{seq}:{hash_}"
    if row is None and newest < seq:
        missing = f"entry {seq}" if newest + 1 == seq else f"entries {newest + 1}-{seq}"
        return [(f"{missing} removed from the end of the chain: it ends at entry {newest}, but entry {seq} "
                f"was kept as its head ({kept})")]
    if row is None:
        return [f"entry {seq}, kept as the head ({kept}), was removed"]
    return [(f"entry {seq} is not the entry kept as the head ({kept}): its hash is now {row[0]}, so the chain "
            f"was rewritten up to entry {seq} (entries removed and written again)")]


class _Walk:
    """The chain so far: checks the next rows against it (plain loop over tuples: this is the hot path)."""

    def __init__(self, report: ChainReport, max_problems: int) -> None:
        self.report, self.max_problems = report, max_problems
        self.expected_seq, self.prev_hash = 1, GENESIS

    def check(self, rows: Sequence[Row[Any]]) -> bool:
        """False once there are too many problems to go on."""
        report, problems = self.report, self.report.problems
        expected_seq, prev_hash = self.expected_seq, self.prev_hash
        for seq, prev, hash_, at, actor, action, entity, key, changes_json in rows:
            report.entries += 1
            if seq != expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
                problems.append(f"entries {missing} removed (the chain jumps to entry {seq})")
            if prev != prev_hash:
                problems.append(
                    f"entry {seq} ({action} {entity} {key}) does not follow entry "
                    f"{seq - 1}: inserted, or its predecessor was altered or removed")
            try:
                computed = entry_hash(prev, seq, at, actor, action, entity, key,
                                      _CANONICAL.encode(_decode_json(changes_json)))
            except ValueError:  # the stored changes are no longer JSON at all (SQLite does not check)
                computed = None
            if computed != hash_:
                problems.append(
                    f"entry {seq} ({action} {entity} {key}, {at.isoformat()}) was altered after it was written")
            expected_seq, prev_hash = seq + 1, hash_
            if len(problems) >= self.max_problems:
                problems.append("... stopped after too many problems")
                return False
        self.expected_seq, self.prev_hash = expected_seq, prev_hash
        return True
