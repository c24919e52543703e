"""A loopback ERP simulator in the shape of ERPNext (Frappe REST), for the demo and the tests.

- `/api/resource/{DocType}` (list with limit_start / limit_page_length, get, create) with
  `Authorization: token key:secret`. A create is named as Frappe names it: a client's `name` is dropped
  (no DocType here is named by prompt) and the DocType's autoname gives it (a naming series such as
  MAT-STE-.YYYY.-, a field such as Batch's batch_id, or a hash). A second document with the name of an
  existing one answers 409 (DuplicateEntryError); a value of a Unique field (the hub's `custom_hub_key`, as
  the README's ERPNext setup makes it) that another document has answers 417 (UniqueValidationError).
- Errors answer as Frappe's do: `exc_type` (the exception class), `exception` and `_server_messages`.
- `/sim/work-orders` releases work orders: it stores them and sends the hub the ERP events
  (work_order.released with its purchase receipt), as a real ERP's webhooks would.
- Documents are kept in a JSON file when `state_file` is given, so a restart keeps them.
- Webhooks are signed as ERPNext signs them when `webhook_secret` is given: base64 HMAC-SHA256 of the
  body in `X-Frappe-Webhook-Signature`.
- Lists take `fields`, `filters` and `order_by` as Frappe does: only `name` unless `fields` asks for more,
  `["*"]` for every field of the document itself, never child tables (`items`, `operations`: GET the document
  for those), newest `modified` first unless `order_by` says otherwise. Every document has `modified`, so an
  ERP without webhooks can be polled for new and changed documents. PUT changes a document.
- `/sim/faults` makes the ERP answer 503 for a while (an outage that is not a refused connection).
- Batches are blocked as ERPNext blocks them: the Batch's `disabled` check (PUT /api/resource/Batch/{name},
  `{"disabled": 1}`; an unknown batch answers 404). A stock entry row that takes a disabled batch from a warehouse
  and a delivery note row of one are refused (417 ValidationError "Batch ... is disabled"). A row that takes
  material (a Material Issue's, a material consumption's, a Manufacture's raw rows) without its Source Warehouse is
  refused, and so is a Manufacture entry's finished row without its Target Warehouse (417, "... is mandatory").
  A Manufacture entry's finished row makes its Batch when the ERP has none of that number (an Item set to create
  new batches), and keeps one that exists as it is (a batch the hub blocked before it was made stays disabled).
- `/sim/hold` (tests) stores the next create of a DocType (of one hub key) and holds its answer until released
  (DELETE) or for `seconds`: the ERP has the document and the caller has no answer yet (a lost answer, or a
  caller killed in the middle of its write); GET lists the answers held.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

# what /api/resource/DocType lists (the doctypes the hub and the simulator use)
DOCTYPES = ["Work Order", "Purchase Receipt", "Batch", "Stock Entry", "Delivery Note", "Item", "Sales Order",
            "Supplier", "Customer"]
# fields Frappe would refuse a document without (417 MandatoryError)
MANDATORY = {"Delivery Note": ["customer"], "Stock Entry": ["stock_entry_type"], "Purchase Receipt": ["supplier"]}
# how each DocType names a new document (its autoname, as ERPNext ships it); any other DocType: a hash
AUTONAME = {
    "Work Order": "naming_series:MFG-WO-.YYYY.-", "Purchase Receipt": "naming_series:MAT-PRE-.YYYY.-",
    "Stock Entry": "naming_series:MAT-STE-.YYYY.-", "Delivery Note": "naming_series:MAT-DN-.YYYY.-",
    "Sales Order": "naming_series:SAL-ORD-.YYYY.-", "Batch": "field:batch_id", "Item": "field:item_code",
    "Customer": "field:customer_name", "Supplier": "field:supplier_name",
}
# Custom Fields with Unique set (the hub's idempotency key, README "ERPNext setup")
UNIQUE_FIELDS = ("custom_hub_key",)


class ReleaseRequest(BaseModel):
    count: int = Field(default=1, ge=1, le=10000)
    prefix: str = Field(default="WO-", max_length=20)
    quantity: int = Field(default=50, ge=1, le=1_000_000)
    start: int | None = Field(default=None, ge=1, description="first number; default: next free")
    with_shipment: bool = True
    notify: str = Field(default="webhook", pattern="^(webhook|none)$",
                        description="webhook: send the hub the events; none: only store (the hub polls)")
    heat_prefix: str = Field(default="H", max_length=10, description="heat numbers of the material: H<number>")
    plant: bool = Field(default=False, description="name the demo plant's endpoints: process data from the PLC "
                                                   "and the oven, the material certificate from the supplier")


class FaultRequest(BaseModel):
    status: int = Field(default=503, ge=400, le=599)
    count: int | None = Field(default=None, ge=1, description="answer this many requests with `status`")
    seconds: float | None = Field(default=None, gt=0, description="or answer with `status` for this long")


class HoldRequest(BaseModel):
    doctype: str = Field(min_length=1, description="the DocType whose next create is held")
    key: str | None = Field(default=None, description="only the create of this hub key (custom_hub_key)")
    seconds: float = Field(default=60.0, gt=0, le=600, description="answer anyway after this long")


def sign(secret: str, body: bytes) -> str:
    """ERPNext's webhook signature: base64 of HMAC-SHA256 of the request body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _matches(doc: dict[str, Any], flt: list[Any]) -> bool:
    field, op, value = flt[-3], flt[-2], flt[-1]  # [field, op, value] or [doctype, field, op, value]
    have = doc.get(field)
    if op == "=":
        return have == value
    if op == "!=":
        return have != value
    if op == "in":
        return have in value
    if op == "not in":
        return have not in value
    if op == "like":
        return isinstance(have, str) and value.strip("%") in have
    if op == "not like":
        return not (isinstance(have, str) and value.strip("%") in have)
    if op == "is":
        return (have not in (None, "")) == (value == "set")
    if have is None:
        return False
    return {">": have > value, ">=": have >= value, "<": have < value, "<=": have <= value}[op]


class FrappeError(Exception):
    """An error answered as Frappe answers it (status, exception class, message)."""

    def __init__(self, status: int, exc_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.exc_type, self.message = status, exc_type, message


class Store:
    def __init__(self, path: Path | None, *, missing_fields: tuple[str, ...] = ()) -> None:
        self.path = path
        self.missing_fields = frozenset(missing_fields)
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        self.series: dict[str, int] = {}  # naming series prefix -> last number (found again from names)
        if path and path.exists():
            self.docs = json.loads(path.read_text())

    def lacks(self, doctype: str, field: str) -> bool:
        """This site's `doctype` has no `field` (missing_fields names it, alone or as "DocType.field")."""
        return field in self.missing_fields or f"{doctype}.{field}" in self.missing_fields

    def put_events(self, events: Any) -> int:
        """Store the ERP's own records behind work_order.released events (erpnext_documents), the state file
        written once; how many documents."""
        n = 0
        for ev in events:
            for doctype, doc in erpnext_documents(ev):
                self.put(doctype, doc, exist_ok=True, save=False)
                n += 1
        self.save()
        return n

    def put(self, doctype: str, doc: dict[str, Any], *, exist_ok: bool = False, save: bool = True) -> dict[str, Any]:
        """Store a document under the name it has: the ERP's own records (the simulator's releases)."""
        bucket = self.docs.setdefault(doctype, {})
        name = doc.get("name") or self.new_name(doctype, doc)
        if name in bucket:
            if exist_ok:
                return bucket[name]
            raise FrappeError(409, "DuplicateEntryError", f"{doctype} {name} already exists")
        stamp = now_iso()
        doc = {"docstatus": 1, **doc, "name": name, "doctype": doctype, "creation": stamp, "modified": stamp}
        bucket[name] = doc
        if save:
            self.save()
        return doc

    def insert(self, doctype: str, doc: dict[str, Any]) -> dict[str, Any]:
        """A create through the REST API, as Frappe's insert does it: the client's `name` is dropped and the
        DocType's autoname names the document; a Unique field's value another document has is refused."""
        doc = {k: v for k, v in doc.items()
               if k not in ("name", "doctype", "creation", "modified") and not self.lacks(doctype, k)}
        bucket = self.docs.get(doctype, {})
        for field in UNIQUE_FIELDS:
            value = doc.get(field)
            if value not in (None, "") and any(d.get(field) == value for d in bucket.values()):
                raise FrappeError(417, "UniqueValidationError", f"{field} must be unique: {doctype} with "
                                                                 f"{field} {value!r} exists")
        name = self.new_name(doctype, doc)
        # a REST create is a draft (docstatus 0) unless the client submits it (docstatus 1), as in Frappe
        return self.put(doctype, {**doc, "docstatus": doc.get("docstatus", 0), "name": name})

    def new_name(self, doctype: str, doc: dict[str, Any]) -> str:
        autoname = AUTONAME.get(doctype, "hash")
        if autoname.startswith("field:"):
            field = autoname.removeprefix("field:")
            name = str(doc.get(field) or "").strip()
            if not name:
                raise FrappeError(417, "MandatoryError", f"{doctype}: {field} is required (it names the document)")
            return name
        if autoname.startswith("naming_series:"):
            pattern = str(doc.get("naming_series") or autoname.removeprefix("naming_series:"))
            doc["naming_series"] = pattern
            return self._next_in_series(doctype, pattern)
        return secrets.token_hex(5)  # Frappe's hash naming: 10 hex characters

    def _next_in_series(self, doctype: str, pattern: str) -> str:
        """PREFIX-.YYYY.-.##### as Frappe expands it: dotted parts are date codes or the counter's digits."""
        now = datetime.now(UTC)
        parts = pattern.split(".")
        if not any(p and set(p) == {"#"} for p in parts):
            parts.append("#####")
        prefix, digits = "", 5
        for part in parts:
            if part and set(part) == {"#"}:
                digits = len(part)
                break
            prefix += {"YYYY": f"{now:%Y}", "YY": f"{now:%y}", "MM": f"{now:%m}", "DD": f"{now:%d}"}.get(part, part)
        if prefix not in self.series:
            numbers = [int(n[len(prefix):]) for n in self.docs.get(doctype, {})
                       if n.startswith(prefix) and n[len(prefix):].isdigit()]
            self.series[prefix] = max(numbers, default=0)
        self.series[prefix] += 1
        return f"{prefix}{self.series[prefix]:0{digits}d}"

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.docs))
            tmp.replace(self.path)


def _frappe_error(status: int, exc_type: str, message: str) -> JSONResponse:
    return JSONResponse({"exc_type": exc_type, "exception": f"frappe.exceptions.{exc_type}: {message}",
                         "_server_messages": json.dumps([json.dumps({"message": message})])}, status_code=status)


def _list_fields(docs: list[dict[str, Any]], fields: str | None) -> list[dict[str, Any]]:
    """What a Frappe list returns of each document: `name` unless asked; `*` is the document's own fields
    (columns), never its child tables."""
    try:
        wanted = json.loads(fields) if fields else ["name"]
    except ValueError as exc:
        raise FrappeError(417, "DataError", f"fields is not JSON: {exc}") from exc
    if not isinstance(wanted, list) or not all(isinstance(f, str) for f in wanted):
        raise FrappeError(417, "DataError", "fields must be a JSON array of fieldnames")
    out = []
    for d in docs:
        row: dict[str, Any] = {}
        for f in wanted:
            if f == "*":
                row.update({k: v for k, v in d.items() if not isinstance(v, list)})
            elif isinstance(d.get(f), list):
                raise FrappeError(417, "DataError", f"Field not permitted in query: {f} (a child table: GET the "
                                                    "document for it)")
            else:
                row[f] = d.get(f)
        out.append(row)
    return out


def create_app(
    *, api_key: str = "tracehub", api_secret: str = "simulator-secret", hub_url: str = "http://127.0.0.1:8000",
    state_file: Path | None = None, webhook_secret: str | None = None, missing_fields: tuple[str, ...] = (),
) -> FastAPI:
    """`missing_fields`: fields this site's DocTypes do not have (a site without the hub's custom field), each
    `field` (every DocType) or `DocType.field` (one): a create or an update drops them, as Frappe drops fields a
    DocType does not define."""
    app = FastAPI(title="ERP simulator (ERPNext-shaped)")
    store = Store(state_file, missing_fields=missing_fields)
    lock = asyncio.Lock()
    fault: dict[str, Any] = {}
    # /sim/hold: creates to hold (armed, each taken by one create) and the answers held (with their release)
    holds: list[HoldRequest] = []
    held: list[dict[str, Any]] = []
    app.state.store = store

    @app.exception_handler(FrappeError)
    async def frappe_error(request: Request, exc: FrappeError) -> JSONResponse:
        return _frappe_error(exc.status, exc.exc_type, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict) and "exc_type" in exc.detail:
            return _frappe_error(exc.status_code, exc.detail["exc_type"], str(exc.detail.get("message", "")))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.middleware("http")
    async def outage(request: Request, call_next: Any) -> Any:
        if fault and request.url.path.startswith("/api/"):
            until, left = fault.get("until"), fault.get("left")
            if (until is not None and time.monotonic() < until) or (left is not None and left > 0):
                if left is not None:
                    fault["left"] = left - 1
                return JSONResponse({"exc_type": "ServiceUnavailable", "message": "simulated outage"},
                                    status_code=fault["status"])
            fault.clear()
        return await call_next(request)

    @app.post("/sim/faults")
    async def set_fault(req: FaultRequest) -> dict:
        """Answer the next `count` API requests (or all for `seconds`) with `status`."""
        fault.clear()
        fault.update(status=req.status, left=req.count,
                     until=time.monotonic() + req.seconds if req.seconds else None)
        return {"fault": {"status": req.status, "count": req.count, "seconds": req.seconds}}

    @app.delete("/sim/faults")
    async def clear_fault() -> dict:
        fault.clear()
        return {"fault": None}

    @app.post("/sim/hold")
    async def arm_hold(req: HoldRequest) -> dict:
        """Store the next create of `doctype` (with hub key `key`, if given) and hold its answer until DELETE
        /sim/hold or for `seconds`."""
        holds.append(req)
        return {"hold": req.model_dump()}

    @app.get("/sim/hold")
    async def list_holds() -> dict:
        return {"armed": [h.model_dump() for h in holds],
                "held": [{k: v for k, v in h.items() if k != "release"} for h in held]}

    @app.delete("/sim/hold")
    async def release_holds() -> dict:
        """Disarm every hold and send the answers held (to callers that may be gone)."""
        holds.clear()
        for h in held:
            h["release"].set()
        return {"released": len(held)}

    async def hold_answer(doctype: str, doc: dict[str, Any]) -> None:
        key = next((doc.get(f) for f in UNIQUE_FIELDS if doc.get(f)), None)
        hold = next((h for h in holds if h.doctype == doctype and h.key in (None, key)), None)
        if hold is None:
            return
        holds.remove(hold)
        entry = {"doctype": doctype, "name": doc["name"], "key": key, "since": now_iso(),
                 "release": asyncio.Event()}
        held.append(entry)
        try:
            await asyncio.wait_for(entry["release"].wait(), hold.seconds)
        except TimeoutError:
            pass
        finally:
            held.remove(entry)

    def auth(authorization: str | None) -> None:
        if authorization != f"token {api_key}:{api_secret}":
            raise HTTPException(401, {"exc_type": "AuthenticationError", "message": "invalid token"})

    @app.get("/api/method/frappe.auth.get_logged_user")
    async def logged_user(authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        return {"message": f"{api_key}@erp.local"}

    @app.get("/api/resource/{doctype}")
    async def list_docs(doctype: str, limit_start: int = 0, limit_page_length: int = 20,
                        fields: str | None = None, filters: str | None = None, order_by: str | None = None,
                        authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        if doctype == "DocType":
            docs: list[dict[str, Any]] = [{"name": d, "module": "Simulator"} for d in DOCTYPES]
        else:
            docs = list(store.docs.get(doctype, {}).values())
        try:
            flts = json.loads(filters) if filters else []
            if isinstance(flts, dict):
                flts = [[k, *v] if isinstance(v, list) else [k, "=", v] for k, v in flts.items()]
            asked = [f[-3] for f in flts] + (json.loads(fields) if fields else [])
            docs = [d for d in docs if all(_matches(d, f) for f in flts)]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise HTTPException(417, {"exc_type": "ValidationError", "message": f"bad filters: {exc}"}) from exc
        unknown = [f for f in asked if store.lacks(doctype, f)]
        if unknown:  # the database has no such column: MariaDB's error, which Frappe answers with 500
            raise FrappeError(500, "OperationalError", f"(1054, \"Unknown column 'tab{doctype}.{unknown[0]}' in "
                                                       "'where clause'\")")
        key, _, direction = (order_by or "modified desc").strip().partition(" ")
        docs.sort(key=lambda d: (d.get(key) is None, d.get(key) or ""), reverse=direction.lower() == "desc")
        end = None if limit_page_length == 0 else limit_start + limit_page_length
        return {"data": _list_fields(docs[limit_start:end], fields)}

    @app.get("/api/resource/{doctype}/{name}")
    async def get_doc(doctype: str, name: str, authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        doc = store.docs.get(doctype, {}).get(name)
        if doc is None:
            raise HTTPException(404, {"exc_type": "DoesNotExistError", "message": f"{doctype} {name} not found"})
        return {"data": doc}

    @app.post("/api/resource/{doctype}")
    async def create_doc(doctype: str, request: Request, authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        doc = await request.json()
        if not isinstance(doc, dict):
            raise HTTPException(417, {"exc_type": "ValidationError", "message": "body must be a JSON object"})
        missing = [f for f in MANDATORY.get(doctype, []) if not doc.get(f)]
        if missing:
            raise HTTPException(417, {"exc_type": "MandatoryError",
                                      "message": f"{doctype}: value missing for {', '.join(missing)}"})
        if doctype == "Stock Entry":
            check_stock_entry(store, doc)
        elif doctype == "Delivery Note":
            check_delivery_note(store, doc)
        async with lock:
            if doctype == "Stock Entry":
                make_finished_batches(store, doc)
            doc = store.insert(doctype, doc)
        if holds:
            await hold_answer(doctype, doc)  # stored: only the answer waits
        return {"data": doc}

    @app.put("/api/resource/{doctype}/{name}")
    async def update_doc(doctype: str, name: str, request: Request,
                         authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        changes = await request.json()
        async with lock:
            doc = store.docs.get(doctype, {}).get(name)
            if doc is None:
                raise HTTPException(404, {"exc_type": "DoesNotExistError", "message": f"{doctype} {name} not found"})
            if doctype == "Batch" and isinstance(changes, dict) and changes.get("disabled", 0) not in (0, 1):
                raise HTTPException(417, {"exc_type": "ValidationError", "message": (
                    f"Batch {name}: disabled is a Check field: 0 or 1, not {changes['disabled']!r}")})
            doc.update({k: v for k, v in changes.items()
                        if k not in ("name", "doctype", "creation") and not store.lacks(doctype, k)})
            doc["modified"] = now_iso()
            store.save()
        return {"data": doc}

    @app.post("/sim/work-orders")
    async def release(req: ReleaseRequest) -> dict:
        """Release work orders (stored as ERPNext documents) and, by webhook, send their events to the hub."""
        async with lock:
            wos = store.docs.setdefault("Work Order", {})
            start = req.start or len(wos) + 1001
            numbers = [f"{req.prefix}{start + i}" for i in range(req.count)]
            events = {n: release_event(n, req.quantity, with_shipment=req.with_shipment,
                                       heat_prefix=req.heat_prefix, plant=req.plant) for n in numbers}
            store.put_events(events.values())
        if req.notify == "none":
            return {"released": numbers, "hub": []}
        async with httpx.AsyncClient(base_url=hub_url, timeout=30) as client:
            sem = asyncio.Semaphore(8)

            async def send(n: str) -> dict:
                async with sem:
                    body = json.dumps(events[n]).encode()
                    headers = {"Content-Type": "application/json"}
                    if webhook_secret:
                        headers["X-Frappe-Webhook-Signature"] = sign(webhook_secret, body)
                    r = await client.post("/api/erp/events", content=body, headers=headers)
                    return {"work_order": n, "status": r.status_code, "body": r.json()}

            results = await asyncio.gather(*(send(n) for n in numbers))
        return {"released": numbers, "hub": results}

    @app.post("/sim/documents")
    async def remember(events: list[dict[str, Any]]) -> dict:
        """Store the ERP's own records behind work_order.released events the caller sends the hub itself (its
        Work Order, Purchase Receipts and their Batches), as an ERP has them before it sends the event: the hub's
        consumption entries then name batches the ERP knows."""
        for i, ev in enumerate(events):
            if not isinstance(ev.get("work_order"), dict) or not ev["work_order"].get("number"):
                raise HTTPException(422, f"events[{i}].work_order: send work_order.released events "
                                         "(erp_sim.app.release_event) with their work order")
        async with lock:
            n = store.put_events(events)
        return {"stored": n}

    @app.get("/sim/documents")
    async def documents(doctype: str | None = None) -> dict:
        """The simulator's own view (not Frappe's API): every DocType's names, or every document of one
        DocType in full."""
        if doctype is not None:
            return {"data": list(store.docs.get(doctype, {}).values())}
        return {k: list(v) for k, v in store.docs.items()}

    return app


# stock entry types whose rows take material out of a warehouse (ERPNext's purposes)
CONSUMING = {"Manufacture", "Material Consumption for Manufacture", "Material Issue",
             "Material Transfer for Manufacture"}


def check_stock_entry(store: Store, doc: dict[str, Any]) -> None:
    """Refuse a Stock Entry as ERPNext would (417 ValidationError): every row names an item and a quantity;
    a row that takes material from a warehouse (every row of a CONSUMING entry but its finished and scrap items)
    needs its Source Warehouse (s_warehouse), qty > 0 and, for a batched item, a batch that exists (batches come
    from purchase receipts), is of that item and is not disabled. A Manufacture entry's finished row needs its
    Target Warehouse (t_warehouse)."""
    items = doc.get("items")
    if items is None:
        return
    purpose = doc.get("stock_entry_type")

    def refuse(message: str) -> None:
        raise HTTPException(417, {"exc_type": "ValidationError", "message": message})

    if not isinstance(items, list):
        refuse("Stock Entry: items must be a list of rows")
    if purpose == "Material Consumption for Manufacture" and not items:
        refuse("Stock Entry: a material consumption needs at least one row")
    batches = store.docs.get("Batch", {})
    for i, row in enumerate(items, start=1):
        if not isinstance(row, dict) or not row.get("item_code"):
            refuse(f"Row {i}: Item Code is mandatory")
        qty = row.get("qty")
        if not isinstance(qty, int | float) or isinstance(qty, bool):
            refuse(f"Row {i}: Quantity must be a number, not {qty!r}")
        finished = bool(row.get("is_finished_item"))
        if purpose == "Manufacture" and finished and not row.get("t_warehouse"):
            refuse(f"Row {i}: Target Warehouse is mandatory for {row['item_code']} (the finished item of a "
                   "Manufacture entry goes into a warehouse)")
        # every row of a consuming entry but its finished and scrap items takes material out of a warehouse
        consumes = not finished and not row.get("is_scrap_item") and (row.get("s_warehouse") or purpose in CONSUMING)
        if not consumes:
            continue
        if purpose not in CONSUMING:
            refuse(f"Row {i}: a {purpose} entry takes no material from a warehouse")
        if not row.get("s_warehouse"):
            refuse(f"Row {i}: Source Warehouse is mandatory for {row['item_code']} (a {purpose} entry takes it "
                   "out of a warehouse)")
        if qty <= 0:
            refuse(f"Row {i}: Quantity must be greater than 0 for {row['item_code']}")
        batch_no = row.get("batch_no")
        if not batch_no:
            continue
        batch = batches.get(batch_no)
        if batch is None:
            refuse(f"Row {i}: Batch {batch_no} not found: it is received with a Purchase Receipt first")
        if batch.get("item") != row["item_code"]:
            refuse(f"Row {i}: Batch {batch_no} does not belong to Item {row['item_code']} "
                   f"(it is of {batch.get('item')})")
        if batch.get("disabled"):
            refuse(f"Row {i}: Batch {batch_no} is disabled: a disabled batch cannot be used in stock transactions "
                   "(enable it on the Batch first)")


def check_delivery_note(store: Store, doc: dict[str, Any]) -> None:
    """Refuse a Delivery Note that delivers a disabled batch (417 ValidationError), as ERPNext does."""
    items = doc.get("items")
    if not isinstance(items, list):
        return
    batches = store.docs.get("Batch", {})
    for i, row in enumerate(items, start=1):
        batch = batches.get(row.get("batch_no")) if isinstance(row, dict) and row.get("batch_no") else None
        if batch is not None and batch.get("disabled"):
            raise HTTPException(417, {"exc_type": "ValidationError", "message": (
                f"Row {i}: Batch {row['batch_no']} is disabled: a disabled batch cannot be used in stock "
                "transactions (enable it on the Batch first)")})


def make_finished_batches(store: Store, doc: dict[str, Any]) -> None:
    """A Manufacture entry's finished row makes its Batch when none of that number exists, as ERPNext does for an
    Item set to create new batches (named here by the row's batch_no)."""
    if doc.get("stock_entry_type") != "Manufacture" or not isinstance(doc.get("items"), list):
        return
    for row in doc["items"]:
        if isinstance(row, dict) and row.get("is_finished_item") and row.get("batch_no") and row.get("item_code"):
            store.put("Batch", {"name": row["batch_no"], "batch_id": row["batch_no"], "item": row["item_code"],
                                "reference_doctype": "Stock Entry", "docstatus": 0}, exist_ok=True, save=False)


def release_event(number: str, quantity: int, *, with_shipment: bool = True, heat_prefix: str = "H",
                  plant: bool = False) -> dict[str, Any]:
    """The ERP's work_order.released event, with the purchase receipt of its material."""
    n = number.replace("/", "-")
    wo: dict[str, Any] = {
        "number": number,
        "item": "SHAFT-25",
        "item_name": "Drive shaft 25 mm",
        "gtin": "09506000134352",
        "quantity": quantity,
        "line": "LINE-1",
        "routing": [
            {"seq": 10, "name": "Turning", "equipment": "LATHE-01"},
            {"seq": 20, "name": "Heat treatment", "equipment": "FURNACE-02"},
        ],
        "receipts": [{
            "receipt": f"PR-{n}",
            "lots": [{"lot": f"{n}-M1", "supplier": "ACME-STEEL", "item": "BAR-42CRMO4",
                      "supplier_lot": f"S{secrets.randbelow(10**6):06d}", "heat_number": f"{heat_prefix}{n}",
                      "quantity": quantity * 1.2, "uom": "KG", "certificate_ref": f"CERT-H{n}"}],
        }],
    }
    if plant:
        from erp_sim.plant import plant_data

        wo["routing"], wo["material_specs"] = plant_data(wo["routing"])
    if with_shipment:
        wo["shipment"] = {"shipment": f"DN-{n}", "sales_order": f"SO-{n}", "customer": "Customer A",
                          "carrier": "DHL"}
    return {"event_id": f"erp-wo-released-{n}", "event_type": "work_order.released", "work_order": wo}


def erpnext_documents(event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ERP's own records behind a work_order.released event, in ERPNext's shape: the Work Order
    (operations as its child table), each Purchase Receipt with its items, and a Batch per received lot.
    Fields ERPNext does not have are custom fields (custom_...), as a real site would add them."""
    wo = event["work_order"]
    ship = wo.get("shipment") or {}
    out: list[tuple[str, dict[str, Any]]] = [("Work Order", {
        "name": wo["number"], "production_item": wo["item"], "item_name": wo.get("item_name"),
        "qty": wo["quantity"], "stock_uom": wo.get("uom", "EA"), "status": "Not Started",
        "custom_gtin": wo.get("gtin"), "custom_line": wo.get("line"),
        "operations": [{"idx": i + 1, "custom_seq": op["seq"], "operation": op["name"],
                        "workstation": op.get("equipment")} for i, op in enumerate(wo["routing"])],
        "sales_order": ship.get("sales_order"), "custom_customer": ship.get("customer"),
        "custom_delivery_note": ship.get("shipment"), "custom_carrier": ship.get("carrier"),
    })]
    for r in wo.get("receipts", []):
        lots = r["lots"]
        out.append(("Purchase Receipt", {
            "name": r["receipt"], "supplier": lots[0]["supplier"], "custom_work_order": wo["number"],
            "items": [{"idx": i + 1, "item_code": lot["item"], "qty": lot["quantity"], "stock_uom": lot.get("uom", "EA"),
                       "batch_no": lot["lot"], "custom_supplier_lot": lot["supplier_lot"],
                       "custom_heat_number": lot.get("heat_number"),
                       "custom_certificate_ref": lot.get("certificate_ref")} for i, lot in enumerate(lots)],
        }))
        for lot in lots:
            out.append(("Batch", {"name": lot["lot"], "batch_id": lot["lot"], "item": lot["item"], "supplier": lot["supplier"],
                                  "reference_doctype": "Purchase Receipt", "reference_name": r["receipt"],
                                  "custom_heat_number": lot.get("heat_number")}))
    return out
