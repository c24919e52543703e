"""Supplier returns: what return_to_supplier dispositions send back, and how far each has got."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query

from api.deps import ReadSessionDep
from domain import supplier_returns

router = APIRouter(prefix="/api/supplier-returns", tags=["supplier returns"])

Status = Literal["requested", "erp_notified", "shipped"]


@router.get("", summary="Supplier returns, newest first (filter by supplier code, status)")
async def list_supplier_returns(session: ReadSessionDep, supplier: str | None = Query(None, max_length=80),
                                status: Status | None = None,
                                limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    return await supplier_returns.list_returns(session, supplier=supplier, status=status, limit=limit)


@router.get("/{number}", summary="One supplier return (RTS-<ncr>)")
async def get_supplier_return(number: str, session: ReadSessionDep) -> dict[str, Any]:
    return await supplier_returns.get_return(session, number)
