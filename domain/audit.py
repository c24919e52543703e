"""The audit log: who changed what, when. Append-only and hash-chained.

Each entry carries the hash of the previous one, so `verify_chain` finds any entry altered, removed
or inserted after the fact. Appends are serialised (an advisory lock on PostgreSQL, the write lock
on SQLite) so the chain never forks; the database refuses UPDATE and DELETE on the table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import AuditLog, utcnow

GENESIS = "0" * 64
_LOCK_KEY = 7_245_001  # pg_advisory_xact_lock key of the audit chain


def canonical_changes(changes: dict[str, Any]) -> str:
    return json.dumps(changes, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def entry_hash(prev_hash: str, seq: int, at: datetime, actor: str, action: str, entity: str, key: str,
               changes_json: str) -> str:
    body = "\x1f".join([prev_hash, str(seq), at.isoformat(), actor, action, entity, key, changes_json])
    return hashlib.sha256(body.encode()).hexdigest()


def _hash_of(row: AuditLog) -> str:
    return entry_hash(row.prev_hash, row.seq, row.at, row.actor, row.action, row.entity, row.entity_key,
                      canonical_changes(row.changes))


async def audit(
    session: AsyncSession, *, actor: str, action: str, entity: str, key: str, changes: dict[str, Any]
) -> AuditLog:
    """Append one entry to the chain, in the caller's transaction."""
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


async def _rows(session: AsyncSession, batch: int) -> AsyncIterator[AuditLog]:
    after = 0
    while True:
        rows = (await session.execute(
            select(AuditLog).where(AuditLog.seq > after).order_by(AuditLog.seq).limit(batch)
        )).scalars().all()
        if not rows:
            return
        for r in rows:
            yield r
        after = rows[-1].seq
        session.expunge_all()


async def verify_chain(session: AsyncSession, *, batch: int = 5000, max_problems: int = 100) -> ChainReport:
    """Walk the chain and name every entry altered, removed or inserted."""
    report = ChainReport()
    expected_seq, prev_hash = 1, GENESIS
    async for row in _rows(session, batch):
        report.entries += 1
        if row.seq != expected_seq:
            missing = f"{expected_seq}" if row.seq == expected_seq + 1 else f"{expected_seq}-{row.seq - 1}"
            report.problems.append(f"entries {missing} removed (the chain jumps to entry {row.seq})")
        if row.prev_hash != prev_hash:
            report.problems.append(
                f"entry {row.seq} ({row.action} {row.entity} {row.entity_key}) does not follow entry "
                f"{row.seq - 1}: inserted, or its predecessor was altered or removed")
        if _hash_of(row) != row.hash:
            report.problems.append(
                f"entry {row.seq} ({row.action} {row.entity} {row.entity_key}, {row.at.isoformat()}) was altered "
                "after it was written")
        expected_seq, prev_hash = row.seq + 1, row.hash
        if len(report.problems) >= max_problems:
            report.problems.append("... stopped after too many problems")
            break
    return report
