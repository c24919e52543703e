"""Wire contract of code issuance between workflows and activities (pydantic, no domain imports)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class IssueCodeBlocksInput(BaseModel):
    work_order: str
    lot: str
    quantity: int = Field(ge=0)
    chunk_size: int = Field(default=10_000_000, ge=1, description="codes per block of a very large order")


class IssueCodeBlocksProgress(BaseModel):
    chunks_done: int
    chunks_total: int
    codes_done: int


class IssueCodeBlocksResult(BaseModel):
    batch_code: str
    first_serial: str | None
    last_serial: str | None
    count: int
    blocks: int
