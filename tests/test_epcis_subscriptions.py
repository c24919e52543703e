"""EPCIS query subscriptions: webhooks fed by Temporal Schedules, against a real receiver on loopback.

The worker is the suite's; the API here serves streams every second with no record lag, so a test waits
seconds, not minutes. The receiver is a plain HTTP server that can be told to fail (503) for a while."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.service import RPCError

from api.main import create_app
from core.settings import EpcisSettings
from tests.conftest import free_port
from tests.helpers import SUPER_HEADERS
from tests.test_epcis import document, shipping

pytestmark = pytest.mark.asyncio


class Receiver:
    """A subscriber's webhook: keeps every POST; answers `status` (200, or 503 during an outage)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/callback"
        self.status = 200
        self.received: list[dict[str, Any]] = []
        self.refused = 0

        async def callback(request: Request) -> Response:
            body = await request.body()
            if self.status != 200:
                self.refused += 1
                return Response("receiver is down", status_code=self.status)
            self.received.append({"headers": dict(request.headers), "body": body, "doc": orjson.loads(body)})
            return Response(status_code=200)

        app = Starlette(routes=[Route("/callback", callback, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def event_ids(self, sub: str) -> list[str]:
        return [e["eventID"] for r in self.received
                if r["doc"]["epcisBody"]["queryResults"].get("subscriptionID") == sub
                for e in r["doc"]["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]


async def until(check, timeout: float = 20.0, what: str = "the callback") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def hub(settings, sessionmaker, client, worker):
    fast = settings.model_copy(update={"epcis": EpcisSettings(stream_every_seconds=1, record_lag_seconds=0)})
    app = create_app(fast, sessionmaker=sessionmaker, temporal=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


async def test_subscriptions_are_validated(hub):
    name = f"subs-{uuid.uuid4().hex[:8]}"
    assert (await hub.post("/epcis/queries", json={"name": name, "query": {"EQ_bizStep": "shipping"}})).status_code == 201
    url = f"/epcis/queries/{name}/subscriptions"
    for body, field in (({"dest": "https://x.example/cb"}, "stream"),
                        ({"dest": "https://x.example/cb", "stream": True, "schedule": {"hour": "1"}}, "schedule"),
                        ({"dest": "ftp://x.example/cb", "stream": True}, "dest"),
                        ({"dest": "https://x.example/cb", "schedule": {"minute": "61"}}, "schedule.minute"),
                        ({"dest": "https://x.example/cb", "schedule": {"fortnight": "1"}}, "schedule.fortnight"),
                        ({"dest": "https://x.example/cb", "stream": True, "colour": "red"}, "colour")):
        r = await hub.post(url, json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["type"] == "epcisException:SubscriptionControlsException" and r.json()["field"] == field
    r = await hub.post("/epcis/queries/no-such-query/subscriptions", json={"dest": "https://x.example/cb", "stream": True})
    assert r.status_code == 404 and r.json()["type"] == "epcisException:NoSuchNameException"


async def test_a_stream_subscription_delivers_new_events_signed_once_each_and_waits_out_an_outage(
        hub, receiver, client):
    tag = uuid.uuid4().hex[:8]
    name = f"subs-{tag}"
    po = f"urn:epcglobal:cbv:bt:4012345000054:PO{tag}"
    assert (await hub.post("/epcis/queries", json={"name": name, "query": {"EQ_bizTransaction_po": po}})
            ).status_code == 201
    r = await hub.post(f"/epcis/queries/{name}/subscriptions",
                       json={"dest": receiver.url, "signatureToken": "s3cret-token", "stream": True})
    assert r.status_code == 201, r.text
    sub = r.json()["subscriptionID"]
    assert r.headers["Location"] == f"/epcis/queries/{name}/subscriptions/{sub}"
    shown = (await hub.get(r.headers["Location"])).json()
    assert shown["stream"] is True and shown["dest"] == receiver.url and "signatureToken" not in shown
    assert "s3cret" not in (await hub.get(f"/epcis/queries/{name}/subscriptions")).text
    # two matching events and one that is not
    doc = document(shipping(f"{tag}1", po=f"PO{tag}"), shipping(f"{tag}2", minute=1, po=f"PO{tag}"),
                   shipping(f"{tag}3", minute=2, po=f"OTHER{tag}"))
    assert (await hub.post("/epcis/capture", json=doc)).status_code == 202
    await until(lambda: len(receiver.event_ids(sub)) >= 2)
    first = receiver.received[0]
    assert first["headers"]["gs1-signature"] == "sha256=" + hmac.new(b"s3cret-token", first["body"],
                                                                     hashlib.sha256).hexdigest()
    results = first["doc"]["epcisBody"]["queryResults"]
    assert first["doc"]["type"] == "EPCISQueryDocument" and results["queryName"] == name
    # the receiver goes down: the next event waits, the error shows, nothing is lost when it is back
    receiver.status = 503
    assert (await hub.post("/epcis/capture", json=document(shipping(f"{tag}4", minute=3, po=f"PO{tag}")))
            ).status_code == 202
    await until(lambda: receiver.refused >= 2, what="delivery attempts during the outage")
    assert "503" in (await hub.get(f"/epcis/queries/{name}/subscriptions/{sub}")).json()["lastError"]
    receiver.status = 200
    await until(lambda: len(receiver.event_ids(sub)) >= 3)
    await asyncio.sleep(2.5)  # two more stream runs: nothing is sent again
    ids = receiver.event_ids(sub)
    assert len(ids) == len(set(ids)) == 3
    shown = (await hub.get(f"/epcis/queries/{name}/subscriptions/{sub}")).json()
    assert "lastError" not in shown and "lastNotifiedAt" in shown
    # deleting the named query unsubscribes its subscribers
    assert (await hub.delete(f"/epcis/queries/{name}")).status_code == 204
    with pytest.raises(RPCError):
        await client.get_schedule_handle(f"epcis-subscription-{sub}").describe()


async def test_a_scheduled_subscription_reports_if_empty_and_unsubscribing_stops_it(hub, receiver, client):
    name = f"subs-{uuid.uuid4().hex[:8]}"
    assert (await hub.post("/epcis/queries", json={"name": name, "query": {"EQ_bizStep": "no-such-step"}})
            ).status_code == 201
    r = await hub.post(f"/epcis/queries/{name}/subscriptions",
                       json={"dest": receiver.url, "reportIfEmpty": True, "schedule": {"second": "*/2"}})
    assert r.status_code == 201, r.text
    sub = r.json()["subscriptionID"]
    assert r.json()["schedule"] == {"second": "*/2"} and r.json()["reportIfEmpty"] is True
    desc = await client.get_schedule_handle(f"epcis-subscription-{sub}").describe()
    cal = desc.schedule.spec.calendars[0]
    assert [(x.start, x.end, x.step) for x in cal.second] == [(0, 59, 2)]
    await until(lambda: any(x["doc"]["epcisBody"]["queryResults"].get("subscriptionID") == sub
                            for x in receiver.received), what="an empty report")
    assert receiver.event_ids(sub) == []
    assert (await hub.delete(f"/epcis/queries/{name}/subscriptions/{sub}")).status_code == 204
    assert (await hub.get(f"/epcis/queries/{name}/subscriptions/{sub}")).status_code == 404
    with pytest.raises(RPCError):
        await client.get_schedule_handle(f"epcis-subscription-{sub}").describe()
