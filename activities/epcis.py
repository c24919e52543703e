"""EPCIS subscription delivery: the named query's new events POSTed to the subscriber's webhook.

A transport failure, 429 or 5xx is an outage (retried by the workflow's policy; the next scheduled run tries
again anyway); any other 4xx is the receiver refusing (not retried in this run; the events stay pending). The
watermark moves only after every document of the run was accepted (domain/epcis_subscriptions.py)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.base import TransactionalActivities
from activities.epcis_models import DeliverSubscriptionInput, DeliverSubscriptionResult
from activities.errors import translated
from connectors.errors import ConnectorUnavailable, DeviceRejected
from domain import epcis_subscriptions


class EpcisActivities(TransactionalActivities):
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, timeout: float = 30.0) -> None:
        super().__init__(sessionmaker)
        self.timeout = timeout

    def all(self) -> list[object]:
        return [self.deliver_epcis_subscription]

    @activity.defn
    @translated
    async def deliver_epcis_subscription(self, inp: DeliverSubscriptionInput) -> DeliverSubscriptionResult:
        async with self.tx() as s:
            row, cutoff, docs = await epcis_subscriptions.pending(
                s, inp.subscription_id, lag=timedelta(seconds=inp.lag_seconds), batch=inp.batch)
            if row is None:
                return DeliverSubscriptionResult(subscription_id=inp.subscription_id, gone=True)
            dest, token = row.dest, row.signature_token
        events = 0
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            for doc in docs:
                body = orjson.dumps(doc)
                headers = {"content-type": "application/ld+json", "GS1-EPCIS-Version": "2.0.0"}
                if token:
                    headers["GS1-Signature"] = epcis_subscriptions.signature(token, body)
                try:
                    r = await http.post(dest, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    await self._failed(inp.subscription_id, f"{dest}: {type(exc).__name__}: {exc}")
                    raise ConnectorUnavailable(f"subscriber {dest} is unreachable ({type(exc).__name__}): "
                                               "delivery is retried") from None
                if r.status_code >= 300:
                    why = f"{dest} answered {r.status_code}: {r.text[:300]}"
                    await self._failed(inp.subscription_id, why)
                    if r.status_code == 429 or r.status_code >= 500:
                        raise ConnectorUnavailable(f"subscriber {why}: delivery is retried")
                    raise DeviceRejected(f"subscriber {why}: the events stay pending for the next run")
                events += len(doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"])
        async with self.tx() as s:
            await epcis_subscriptions.delivered(s, inp.subscription_id, cutoff=cutoff, notified=bool(docs))
        return DeliverSubscriptionResult(subscription_id=inp.subscription_id, documents=len(docs), events=events)

    async def _failed(self, sub_id: str, error: str) -> None:
        async with self.tx() as s:
            await epcis_subscriptions.failed(s, sub_id, error)
