"""Trace both ways (genealogy)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import SessionDep, SettingsDep
from domain import trace

router = APIRouter(prefix="/api/trace", tags=["trace"])


@router.get("/backward/{code:path}", summary="Where did it come from: from a unit, batch code or lot")
async def trace_backward(code: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    return await trace.backward(session, code, resolver=settings.resolver_base_url)


@router.get("/forward/{lot}", summary="Where did it go: every lot made from it and where each is now")
async def trace_forward(lot: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    return await trace.forward(session, lot, resolver=settings.resolver_base_url)
