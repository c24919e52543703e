"""Polling an ERP that is not ERPNext and sends no webhooks, through the generic REST connector: the endpoint's
`poll` config says where the ERP lists released work orders and posted goods receipts, by its own field names, with
its own "changed since" parameter and modified-time field. The hub's ERP poll workflow (the one ERPNext uses) starts
each work order once, takes each changed version once, rejects a document it cannot use naming the ERP's field and
goes on, and waits out an ERP answering 503. The peer is a small REST ERP on loopback that pages its lists and names
its documents its own way."""

from __future__ import annotations

import itertools
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.models_connectors import PollErpInput, PollErpResult
from connectors.errors import ConnectorConfigError
from connectors.rest import RestConnector
from domain.models import ErpEvent
from tests.connectors.peers import ThreadedServer
from tests.helpers import delete_schedule_and_runs, wait_status
from workflows.erp_poll import ErpPollWorkflow

TOKEN = "plant-erp-token"


class PlantErp:
    """The ERP's data and its faults, shared with the test thread (the server runs in its own thread)."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.receipts: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.requests = 0
        self.fail_requests: set[int] = set()  # these request numbers answer 503
        self.served_503 = 0
        self.ids = itertools.count(4711)
        self.last = ""

    def stamp(self) -> str:
        """The ERP's modified time: ISO 8601 UTC with microseconds, strictly increasing."""
        with self.lock:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            if now <= self.last:
                now = self.last[:-1] + "1Z"  # same microsecond: still after the last one as text
            self.last = now
            return now

    def release(self, number: str, *, qty: int = 20, state: str = "released") -> dict[str, Any]:
        uid = f"MO{next(self.ids):07d}"  # the ERP's own id, not the order number
        doc = {"uid": uid, "orderNo": number, "article": {"code": "SHAFT-25", "text": "Shaft 25"}, "plannedQty": qty,
               "unit": "PCS", "cell": "LINE-1", "state": state, "lastChange": self.stamp(),
               "steps": [{"stepNo": 10, "op": "Turning", "machine": "LATHE-01"},
                         {"stepNo": 20, "op": "Heat treatment", "machine": "OVEN-01"}]}
        self.orders[uid] = doc
        return doc

    def change(self, uid: str, **fields: Any) -> None:
        self.orders[uid].update(fields, lastChange=self.stamp())

    def receive(self, gr: str, number: str, *, batch: str | None, qty: float = 12) -> dict[str, Any]:
        doc = {"grNo": gr, "orderRef": number, "vendor": {"name": "ACME-STEEL"}, "lastChange": self.stamp(),
               "lines": [{"batch": batch, "article": "BAR-42CRMO4", "qty": qty, "unit": "KG",
                          "vendorBatch": f"V-{gr}", "heat": "H-881"}]}
        self.receipts[gr] = doc
        return doc

    def app(self) -> Starlette:
        def page(rows: list[dict[str, Any]], request: Request) -> JSONResponse:
            pg, size = int(request.query_params.get("pg", "1")), int(request.query_params.get("size", "50"))
            return JSONResponse({"payload": {"rows": rows[(pg - 1) * size:pg * size], "total": len(rows)}})

        def gate(request: Request) -> JSONResponse | None:
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return JSONResponse({"error": "bad token"}, status_code=401)
            with self.lock:
                self.requests += 1
                if self.requests in self.fail_requests:
                    self.served_503 += 1
                    return JSONResponse({"error": "maintenance"}, status_code=503)
            return None

        async def orders(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            after, state = request.query_params.get("changed_after", ""), request.query_params.get("state")
            # newest first, as this ERP lists them: the hub orders them itself
            rows = sorted((d for d in self.orders.values()
                           if d["lastChange"] >= after and (state is None or d["state"] == state)),
                          key=lambda d: d["lastChange"], reverse=True)
            if request.query_params.get("view") == "summary":  # a list of summaries: no steps
                rows = [{k: v for k, v in d.items() if k != "steps"} for d in rows]
            return page(rows, request)

        async def order(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            doc = self.orders.get(request.path_params["uid"])
            return JSONResponse({"order": doc}) if doc else JSONResponse({"error": "not found"}, status_code=404)

        async def receipts(request: Request) -> JSONResponse:
            if (refused := gate(request)) is not None:
                return refused
            after, ref = request.query_params.get("changed_after", ""), request.query_params.get("forOrder")
            rows = sorted((d for d in self.receipts.values()
                           if d["lastChange"] >= after and (ref is None or d["orderRef"] == ref)),
                          key=lambda d: d["grNo"])
            return page(rows, request)

        return Starlette(routes=[Route("/api/v3/production-orders", orders),
                                 Route("/api/v3/production-orders/{uid}", order),
                                 Route("/api/v3/goods-receipts", receipts),
                                 Route("/health", lambda r: JSONResponse({"ok": True}))])


@pytest.fixture
def plant_erp() -> Any:
    erp = PlantErp()
    server = ThreadedServer(erp.app()).start()
    erp.url = server.url  # type: ignore[attr-defined]
    yield erp
    server.stop()


def rest_config(url: str, **poll: Any) -> dict[str, Any]:
    paged = {"items_key": "payload.rows", "paging": "page", "page_param": "pg", "page_size_param": "size",
             "page_size": 2}
    return {
        "base_url": url, "auth": "bearer", "token": TOKEN, "health_path": "/health", "timeout_s": 5,
        "resources": [
            {"name": "orders", "path": "/api/v3/production-orders", "id_field": "uid", **paged,
             "list_params": {"state": "released"},
             "fields": {"number": "orderNo", "item": "article.code", "item_name": "article.text",
                        "quantity": "plannedQty", "uom": "unit", "line": "cell", "routing": "steps"},
             "row_fields": {"routing": {"seq": "stepNo", "name": "op", "equipment": "machine"}}},
            {"name": "goods_receipts", "path": "/api/v3/goods-receipts", "id_field": "grNo", **paged,
             "fields": {"receipt": "grNo", "work_order": "orderRef", "supplier": "vendor.name", "lots": "lines"},
             "row_fields": {"lots": {"lot": "batch", "item": "article", "supplier_lot": "vendorBatch",
                                     "heat_number": "heat", "quantity": "qty", "uom": "unit"}}},
        ],
        "poll": {"work_orders": "orders", "receipts": "goods_receipts", "changed_since_param": "changed_after",
                 "modified_field": "lastChange", "receipt_work_order_param": "forOrder", **poll},
    }


async def make_endpoint(api: httpx.AsyncClient, url: str) -> str:
    name = f"plant-erp-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/endpoints", json={"name": name, "kind": "rest", "config": rest_config(url)})
    assert r.status_code == 201, r.text
    return name


async def poll(client: Client, settings: Any, endpoint: str) -> PollErpResult:
    return await client.execute_workflow(
        ErpPollWorkflow.run, PollErpInput(endpoint=endpoint, task_queue=settings.temporal.task_queue),
        id=f"poll-test-{uuid.uuid4().hex[:8]}", task_queue=settings.temporal.task_queue, result_type=PollErpResult)


def numbers(n: int) -> list[str]:
    prefix = f"RP{uuid.uuid4().hex[:5].upper()}-"
    return [f"{prefix}{i}" for i in range(1, n + 1)]


async def runs(client: Client, number: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = 'work-order-{number}'")])


async def inbox(sessionmaker: Any, keys: list[str]) -> list[tuple[str, str]]:
    async with sessionmaker() as s:
        return [tuple(r) for r in (await s.execute(select(ErpEvent.event_id, ErpEvent.event_type)
                                                   .where(ErpEvent.business_key.in_(keys))
                                                   .order_by(ErpEvent.id))).all()]


# --- the poll --------------------------------------------------------------------------------------------------

async def test_each_work_order_starts_once_and_a_changed_version_is_seen_again(
        api: httpx.AsyncClient, client: Client, settings: Any, plant_erp: PlantErp, sessionmaker: Any):
    ep = await make_endpoint(api, plant_erp.url)
    wo = numbers(3)
    docs = [plant_erp.release(n) for n in wo]
    plant_erp.receive(f"GR-{wo[0]}", wo[0], batch=f"{wo[0]}-M1")
    plant_erp.release(f"{wo[0]}-DRAFT", state="draft")  # not released: not listed for the hub

    first = await poll(client, settings, ep)
    assert first.started == wo and first.rejected == [] and first.seen == 3 + 1  # 3 orders (2 pages), 1 receipt
    st = await wait_status(api, wo[0], lambda s: bool(s["pending_inspections"]), what="the polled order's IQC")
    # renamed from the ERP's own fields: its steps became the routing, its goods receipt the material lot
    assert st["record"]["quantity"] == 20 and st["record"]["item"] == "SHAFT-25"
    assert [op["name"] for op in st["record"]["routing"]] == ["Turning", "Heat treatment"]
    assert st["status"]["material_lots"] == {f"{wo[0]}-M1": "quarantine"}

    again = await poll(client, settings, ep)  # the last version is listed again (>=), and recognised
    assert again.started == [] and again.signalled == [] and again.rejected == []

    plant_erp.change(docs[1]["uid"], plannedQty=25)  # a new version: taken once, starts nothing new
    changed = await poll(client, settings, ep)
    assert changed.started == [] and changed.seen >= 1
    plant_erp.receive(f"GR-LATE-{wo[2]}", wo[2], batch=f"{wo[2]}-M2")  # a receipt posted later: a signal
    late = await poll(client, settings, ep)
    assert late.signalled == [f"GR-LATE-{wo[2]}"] and late.started == []
    await wait_status(api, wo[2], lambda s: f"{wo[2]}-M2" in s["material_lots"], what="the late receipt")
    assert (await poll(client, settings, ep)).signalled == []

    for n in wo:
        assert await runs(client, n) == 1, n
    rows = await inbox(sessionmaker, wo)
    assert len({e for e, _ in rows}) == len(rows)  # one row per document version
    by_key = {n: [t for e, t in rows if e.split(":")[3] in (docs[i]["uid"], f"GR-{n}", f"GR-LATE-{n}")]
              for i, n in enumerate(wo)}
    assert by_key[wo[0]] == ["work_order.released", "purchase_receipt.posted"]  # its receipt went in with the start
    assert by_key[wo[1]] == ["work_order.released", "work_order.changed"]
    assert by_key[wo[2]] == ["work_order.released", "purchase_receipt.posted"]
    assert all(e.startswith(f"poll:{ep}:") for e, _ in rows)


async def test_a_bad_document_is_rejected_naming_the_erps_field_and_polling_goes_on(
        api: httpx.AsyncClient, client: Client, settings: Any, plant_erp: PlantErp):
    ep = await make_endpoint(api, plant_erp.url)
    bad, good, bad_receipt = numbers(3)
    bad_doc = plant_erp.release(bad, qty=0)  # modified before the good one
    plant_erp.release(good)
    receipt_order = plant_erp.release(bad_receipt)
    plant_erp.receive(f"GR-{bad_receipt}", bad_receipt, batch=None)  # a line without the plant's batch

    first = await poll(client, settings, ep)
    assert first.started == [good]
    # the order whose receipt is bad, and the receipt itself in the receipt pass
    assert first.rejected == [f"Work Order {bad_doc['uid']}", f"Work Order {receipt_order['uid']}",
                              f"Purchase Receipt GR-{bad_receipt}"]
    r = await api.get(f"/api/endpoints/{ep}/rejected")
    assert r.status_code == 200, r.text
    found = {i["document"]: i for i in r.json()["items"]}
    assert found[bad_doc["uid"]]["field"] == "orders: plannedQty" and found[bad_doc["uid"]]["work_order"] == bad
    assert "plannedQty" in found[bad_doc["uid"]]["reason"] and "Correct it in the ERP" in found[bad_doc["uid"]]["reason"]
    assert found[bad_doc["uid"]]["resolved"] is False
    line = f"goods_receipts GR-{bad_receipt}: lines row 1: batch"
    assert found[receipt_order["uid"]]["field"] == found[f"GR-{bad_receipt}"]["field"] == line
    await wait_status(api, good, lambda s: s["stage"] == "material_intake", what="the good order's start")

    # the watermark moved past them: the next poll neither fails on them nor records them again
    again = await poll(client, settings, ep)
    assert again.started == [] and again.rejected == []
    assert (await api.get(f"/api/endpoints/{ep}/rejected")).json()["total"] == 3

    plant_erp.change(bad_doc["uid"], plannedQty=20)  # corrected in the ERP: a new version, taken
    fixed = await poll(client, settings, ep)
    assert fixed.started == [bad] and fixed.rejected == []
    items = (await api.get(f"/api/endpoints/{ep}/rejected")).json()["items"]
    assert {i["document"]: i["resolved"] for i in items} == {bad_doc["uid"]: True, receipt_order["uid"]: False,
                                                            f"GR-{bad_receipt}": False}


async def test_an_erp_answering_503_for_a_while_is_retried_and_nothing_doubles(
        api: httpx.AsyncClient, client: Client, settings: Any, plant_erp: PlantErp, sessionmaker: Any):
    ep = await make_endpoint(api, plant_erp.url)
    wo = numbers(3)
    docs = [plant_erp.release(n) for n in wo]
    # requests: 1-2 list the orders (two pages), 3 the first order's receipts: it starts; then the ERP answers
    # 503 three times (the second order's receipts, and the next two attempts' lists)
    plant_erp.fail_requests = {4, 5, 6}
    result = await poll(client, settings, ep)
    assert plant_erp.served_503 == 3
    assert result.started == wo[1:]  # the attempt that got through; the first order started before the outage
    for n in wo:
        assert await runs(client, n) == 1, n
    assert (await poll(client, settings, ep)).started == []
    rows = await inbox(sessionmaker, wo)
    assert sorted(e.split(":")[3] for e, _ in rows) == sorted(d["uid"] for d in docs)
    assert {t for _, t in rows} == {"work_order.released"}


# --- configuration -----------------------------------------------------------------------------------------------

async def test_bad_poll_config_is_refused_naming_the_field(api: httpx.AsyncClient, client: Client, settings: Any,
                                                          plant_erp: PlantErp):
    async def refused(config: dict[str, Any]) -> dict[str, Any]:
        r = await api.post("/api/endpoints", json={"name": f"bad-{uuid.uuid4().hex[:6]}", "kind": "rest",
                                                   "config": config})
        assert r.status_code == 422, r.text
        return r.json()

    cfg = rest_config(plant_erp.url)
    no_list = {**cfg, "resources": cfg["resources"][1:]}  # polling on, but no resource lists the work orders
    body = await refused(no_list)
    assert body["field"] == "config.poll" and "work_orders" in body["detail"] and "'orders'" in body["detail"]

    no_path = {**cfg, "resources": [{k: v for k, v in cfg["resources"][0].items() if k != "path"},
                                    cfg["resources"][1]]}
    body = await refused(no_path)
    assert body["field"] == "config.resources.0.path"

    unmapped = {**cfg, "resources": [{**cfg["resources"][0], "fields": {"number": "orderNo"}}, cfg["resources"][1]]}
    body = await refused(unmapped)
    assert body["field"] == "config.poll" and "item, quantity, routing" in body["detail"]

    body = await refused({**cfg, "poll": {**cfg["poll"], "changed_since_param": ""}})
    assert body["field"] == "config.poll.changed_since_param"

    # a rest endpoint without a poll section is refused by the poll, naming what to add
    name = f"plain-{uuid.uuid4().hex[:6]}"
    plain = {k: v for k, v in cfg.items() if k != "poll"}
    assert (await api.post("/api/endpoints", json={"name": name, "kind": "rest", "config": plain})).status_code == 201
    with pytest.raises(WorkflowFailureError) as info:
        await poll(client, settings, name)
    failure = info.value.cause.cause  # the workflow's activity failed, at once (not retryable)
    assert isinstance(failure, ApplicationError) and failure.type == "ConnectorConfigError" and failure.non_retryable
    assert "give its config a poll section" in failure.message


async def test_a_listed_document_without_the_modified_field_names_it(plant_erp: PlantErp):
    plant_erp.release(numbers(1)[0])
    async with RestConnector(rest_config(plant_erp.url, modified_field="changedAt")) as erp:
        with pytest.raises(ConnectorConfigError) as info:
            await erp.changed("Work Order", "")
    assert info.value.field == "poll.modified_field" and "changedAt" in info.value.message


async def test_an_erp_listing_summaries_is_read_document_by_document(plant_erp: PlantErp):
    number = numbers(1)[0]
    doc = plant_erp.release(number)
    cfg = rest_config(plant_erp.url)
    cfg["resources"][0] = {**cfg["resources"][0], "list_params": {"state": "released", "view": "summary"},
                           "item_key": "order"}
    for read_each, routing in ((False, None), (True, ["Turning", "Heat treatment"])):
        async with RestConnector({**cfg, "poll": {**cfg["poll"], "read_each": read_each}}) as erp:
            (version,) = await erp.changed("Work Order", "")
            polled = await erp.polled_document("Work Order", version)
            assert polled is not None and polled.name == doc["uid"] and polled.work_order == number
            data = erp.hub_data(polled)
        assert data["number"] == number and data["quantity"] == 20 and data["receipts"] == []
        got = [op.get("name") for op in data["routing"]] if "routing" in data else None
        assert got == routing
    # without it the summary has no steps: a validation error there names the field the map expects
    assert erp.erp_field(polled, ("routing", 1, "seq")) == "orders: steps row 2: stepNo"
    assert erp.erp_field(polled, ("due_date",)) == ("orders: due_date (no source field: add due_date to the fields "
                                                    "map of resource orders)")


async def test_the_connector_schema_describes_the_poll_fields(api: httpx.AsyncClient):
    r = await api.get("/api/connectors")
    assert r.status_code == 200, r.text
    schema = next(c["config_schema"] for c in r.json() if c["kind"] == "rest")
    assert "poll" in schema["properties"] and schema["properties"]["poll"]["description"]
    poll_props = schema["$defs"]["RestPoll"]["properties"]
    for field in ("work_orders", "receipts", "changed_since_param", "modified_field", "receipt_work_order_param",
                  "read_each"):
        assert poll_props[field]["description"] and poll_props[field]["title"], field
    resource = schema["$defs"]["Resource"]["properties"]
    assert resource["row_fields"]["description"] and resource["list_params"]["description"]


# --- the poll schedule, as the endpoint's config says ------------------------------------------------------------

async def test_an_endpoints_poll_every_s_makes_changes_and_removes_its_schedule(
        api: httpx.AsyncClient, client: Client, settings: Any, plant_erp: PlantErp):
    from datetime import timedelta

    from temporalio.service import RPCError

    name = f"plant-erp-{uuid.uuid4().hex[:6]}"
    cfg = rest_config(plant_erp.url)
    r = await api.post("/api/endpoints", json={"name": name, "kind": "rest", "config": {**cfg, "poll_every_s": 3600}})
    assert r.status_code == 201, r.text
    handle = client.get_schedule_handle(f"erp-poll-{name}")
    try:
        assert (await handle.describe()).schedule.spec.intervals[0].every == timedelta(hours=1)
        # the schedule's poll is the real one: a released order starts its work order
        wo = numbers(1)[0]
        plant_erp.release(wo)
        await handle.trigger()
        await wait_status(api, wo, lambda s: s["stage"] == "material_intake", what="the scheduled poll's work order")

        r = await api.put(f"/api/endpoints/{name}", json={"config": {**cfg, "poll_every_s": 60}})
        assert r.status_code == 200, r.text
        assert (await handle.describe()).schedule.spec.intervals[0].every == timedelta(minutes=1)
        r = await api.put(f"/api/endpoints/{name}", json={"config": cfg})  # no poll_every_s: no schedule
        assert r.status_code == 200, r.text
        with pytest.raises(RPCError):
            await handle.describe()
        r = await api.put(f"/api/endpoints/{name}", json={"config": {**cfg, "poll_every_s": 60}})
        assert r.status_code == 200 and (await handle.describe()).schedule.spec.intervals[0].every.total_seconds() == 60
        assert (await api.delete(f"/api/endpoints/{name}")).status_code == 204  # gone with its endpoint
        with pytest.raises(RPCError):
            await handle.describe()
    finally:
        await delete_schedule_and_runs(client, f"erp-poll-{name}")

    # refused, naming the field: too often, and polling without the poll section
    r = await api.post("/api/endpoints", json={"name": f"{name}-x", "kind": "rest",
                                               "config": {**cfg, "poll_every_s": 1}})
    assert r.status_code == 422 and "poll_every_s" in r.json()["field"], r.text
    r = await api.post("/api/endpoints", json={"name": f"{name}-y", "kind": "rest",
                                               "config": {**{k: v for k, v in cfg.items() if k != "poll"},
                                                          "poll_every_s": 60}})
    assert r.status_code == 422 and "poll_every_s" in r.json()["detail"], r.text


async def test_the_worker_brings_the_poll_schedules_in_step_with_the_endpoints_at_start(
        api: httpx.AsyncClient, client: Client, settings: Any, sessionmaker: Any, plant_erp: PlantErp):
    from datetime import timedelta

    from temporalio.service import RPCError

    from worker import sync_poll_schedules
    from workflows.erp_poll import ensure_poll_schedule

    name = f"plant-erp-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/endpoints", json={"name": name, "kind": "rest",
                                               "config": {**rest_config(plant_erp.url), "poll_every_s": 3600}})
    assert r.status_code == 201, r.text
    polled, ghost = client.get_schedule_handle(f"erp-poll-{name}"), f"gone-{uuid.uuid4().hex[:6]}"
    try:
        await polled.delete()  # deleted by hand, say
        await ensure_poll_schedule(client, endpoint=ghost, every=timedelta(hours=1),  # an endpoint deleted since
                                   task_queue=settings.temporal.task_queue)
        await sync_poll_schedules(client, sessionmaker, task_queue=settings.temporal.task_queue)
        assert (await polled.describe()).schedule.spec.intervals[0].every == timedelta(hours=1)
        with pytest.raises(RPCError):
            await client.get_schedule_handle(f"erp-poll-{ghost}").describe()
    finally:
        for sid in (f"erp-poll-{name}", f"erp-poll-{ghost}"):
            try:
                await client.get_schedule_handle(sid).delete()
            except RPCError:
                pass
