"""Items: read the master data and correct it (a wrong GTIN, a name). See domain/items.py for what a GTIN
correction keeps working (codes printed under the old GTIN resolve and trace as before)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ReadSessionDep, SessionDep
from api.security import PrincipalDep
from domain import items

router = APIRouter(prefix="/api/items", tags=["items"])


class ItemUpdate(BaseModel):
    """Only the fields given are changed."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not silently ignored

    gtin: str | None = Field(default=None, max_length=40,
                             description="the correct GTIN-14 (a GTIN-8/12/13 is left-padded with zeros); codes "
                                         "printed under the old GTIN keep resolving to this item")
    name: str | None = Field(default=None, max_length=items.NAME_MAX, description="the item's name (description)")


@router.get("", summary="Items, by code; filter by code prefix or by a GTIN (held now or before a correction)")
async def list_items(session: ReadSessionDep,
                     code: str | None = Query(None, max_length=64, description="item codes starting with this"),
                     gtin: str | None = Query(None, max_length=14, description="the item with this GTIN, now or "
                                                                               "before a correction"),
                     limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**31)) -> dict[str, Any]:
    return await items.list_items(session, code=code, gtin=gtin, limit=limit, offset=offset)


@router.get("/{code:path}", summary="An item: master data, and the codes issued under each GTIN it has had")
async def get_item(code: str, session: ReadSessionDep) -> dict[str, Any]:
    return await items.item_view(session, code)


@router.patch("/{code:path}", summary="Correct an item's master data (GTIN, name); audited")
async def update_item(code: str, body: ItemUpdate, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return await items.correct_item(session, code, body.model_dump(exclude_unset=True), actor=principal.subject)
