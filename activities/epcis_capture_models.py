"""Wire contract of asynchronous EPCIS capture between its workflow and activities (pydantic, no domain imports)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CaptureEpcisDocumentInput(BaseModel):
    job_id: str = Field(description="the capture job whose stored document to validate and store")


class CaptureEpcisDocumentResult(BaseModel):
    job_id: str
    success: bool
    stored_count: int = 0
    error_count: int = 0


class FailEpcisCaptureInput(BaseModel):
    job_id: str
    reason: str
