"""A loopback ERP simulator in the shape of ERPNext (Frappe REST), for the demo and the tests.

- `/api/resource/{DocType}` (list with limit_start / limit_page_length, get, create) with
  `Authorization: token key:secret`; a duplicate `name` answers 409 like Frappe's DuplicateEntryError.
- `/sim/work-orders` releases work orders: it stores them and sends the hub the ERP events
  (work_order.released with its purchase receipt), as a real ERP's webhooks would.
- Documents are kept in a JSON file when `state_file` is given, so a restart keeps them.
- Webhooks are signed as ERPNext signs them when `webhook_secret` is given: base64 HMAC-SHA256 of the
  body in `X-Frappe-Webhook-Signature`.
- Lists take `fields`, `filters` and `order_by` as Frappe does; every document has `modified`, so an
  ERP without webhooks can be polled for new and changed documents. PUT changes a document.
- `/sim/faults` makes the ERP answer 503 for a while (an outage that is not a refused connection).
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
    if have is None:
        return False
    return {">": have > value, ">=": have >= value, "<": have < value, "<=": have <= value}[op]


class Store:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        if path and path.exists():
            self.docs = json.loads(path.read_text())

    def put(self, doctype: str, doc: dict[str, Any], *, exist_ok: bool = False) -> dict[str, Any]:
        bucket = self.docs.setdefault(doctype, {})
        name = doc.get("name") or f"{doctype[:3].upper()}-{len(bucket) + 1:05d}"
        if name in bucket:
            if exist_ok:
                return bucket[name]
            raise HTTPException(409, {"exc_type": "DuplicateEntryError", "message": f"{doctype} {name} exists"})
        stamp = now_iso()
        doc = {"docstatus": 1, **doc, "name": name, "doctype": doctype, "creation": stamp, "modified": stamp}
        bucket[name] = doc
        self.save()
        return doc

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.docs))
            tmp.replace(self.path)


def create_app(
    *, api_key: str = "tracehub", api_secret: str = "simulator-secret", hub_url: str = "http://127.0.0.1:8000",
    state_file: Path | None = None, webhook_secret: str | None = None,
) -> FastAPI:
    app = FastAPI(title="ERP simulator (ERPNext-shaped)")
    store = Store(state_file)
    lock = asyncio.Lock()
    fault: dict[str, Any] = {}
    app.state.store = store

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
                flts = [[k, "=", v] for k, v in flts.items()]
            docs = [d for d in docs if all(_matches(d, f) for f in flts)]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise HTTPException(417, {"exc_type": "ValidationError", "message": f"bad filters: {exc}"}) from exc
        if order_by:
            key, _, direction = order_by.strip().partition(" ")
            docs.sort(key=lambda d: (d.get(key) is None, d.get(key) or ""), reverse=direction.lower() == "desc")
        end = None if limit_page_length == 0 else limit_start + limit_page_length
        docs = docs[limit_start:end]
        wanted = json.loads(fields) if fields else ["*"]  # Frappe lists only `name` by default; we list all
        if "*" not in wanted:
            docs = [{k: d.get(k) for k in wanted} for d in docs]
        return {"data": docs}

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
        async with lock:
            doc = store.put(doctype, doc)
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
            doc.update({k: v for k, v in changes.items() if k not in ("name", "doctype", "creation")})
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
            for ev in events.values():
                for doctype, doc in erpnext_documents(ev):
                    store.put(doctype, doc, exist_ok=True)
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

    @app.get("/sim/documents")
    async def documents() -> dict:
        return {k: list(v) for k, v in store.docs.items()}

    return app


# stock entry types whose rows take material out of a warehouse (ERPNext's purposes)
CONSUMING = {"Manufacture", "Material Consumption for Manufacture", "Material Issue",
             "Material Transfer for Manufacture"}


def check_stock_entry(store: Store, doc: dict[str, Any]) -> None:
    """Refuse a Stock Entry as ERPNext would (417 ValidationError): every row names an item and a quantity;
    a row that takes material from a warehouse (s_warehouse, not the finished item) needs qty > 0 and, for
    a batched item, a batch that exists (batches come from purchase receipts) and is of that item."""
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
        consumes = not row.get("is_finished_item") and (row.get("s_warehouse") or
                                                         purpose == "Material Consumption for Manufacture")
        if not consumes:
            continue
        if purpose not in CONSUMING:
            refuse(f"Row {i}: a {purpose} entry takes no material from a warehouse")
        if not row.get("s_warehouse"):
            refuse(f"Row {i}: Source Warehouse is mandatory for {row['item_code']}")
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
            out.append(("Batch", {"name": lot["lot"], "item": lot["item"], "supplier": lot["supplier"],
                                  "reference_doctype": "Purchase Receipt", "reference_name": r["receipt"],
                                  "custom_heat_number": lot.get("heat_number")}))
    return out
