"""Electronic signatures: the signer re-authenticates and states the meaning; the signature keeps
the hash of what was signed, so a later change to the record shows the signature as invalid."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import InvalidInput
from domain.audit import audit, diff
from domain.models_identity import Signature

MEANINGS = ("reviewed", "approved", "rejected", "released", "verified")  # verified: an NCR's follow-up


def content_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def record_signature(session: AsyncSession, *, signer: str, signer_name: str | None, role: str, meaning: str,
                           entity: str, key: str, content: dict[str, Any], comment: str | None = None) -> Signature:
    if meaning not in MEANINGS:
        raise InvalidInput(f"meaning: {meaning!r} is not a signature meaning; use one of {MEANINGS}", field="meaning")
    sig = Signature(signer=signer, signer_name=signer_name, role=role, meaning=meaning, entity=entity,
                    entity_key=key, content=content, content_hash=content_hash(content), comment=comment)
    session.add(sig)
    await session.flush()
    # a signature is created, never changed: before None, after the signature as stored
    await audit(session, actor=signer, action="signature.signed", entity=entity, key=key,
                changes=diff(None, {"signature_id": sig.id, "signer": signer, "signer_name": signer_name,
                                    "role": role, "meaning": meaning, "content_hash": sig.content_hash,
                                    "signed_at": sig.signed_at.isoformat(), "comment": comment},
                             meaning=meaning, role=role, content_hash=sig.content_hash))
    return sig


async def signatures_for(session: AsyncSession, entity: str, key: str) -> list[Signature]:
    return list((await session.execute(
        select(Signature).where(Signature.entity == entity, Signature.entity_key == key).order_by(Signature.id)
    )).scalars())


def is_valid(sig: Signature, current_content: dict[str, Any]) -> bool:
    """True while the signed record is unchanged."""
    return sig.content_hash == content_hash(current_content) and sig.content_hash == content_hash(sig.content)
