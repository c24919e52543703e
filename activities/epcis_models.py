"""Wire contract of EPCIS subscription delivery between its workflow and activity (pydantic, no domain imports)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DeliverSubscriptionInput(BaseModel):
    subscription_id: str
    lag_seconds: float = Field(default=5.0, ge=0, description="events recorded this recently wait for the next run")
    batch: int = Field(default=500, ge=1, le=10_000, description="events per callback document")


class DeliverSubscriptionResult(BaseModel):
    subscription_id: str
    gone: bool = False
    documents: int = 0
    events: int = 0
