"""A loopback ERP simulator in the shape of ERPNext (Frappe REST), for the demo and the tests.

- `/api/resource/{DocType}` (list with limit_start / limit_page_length, get, create) with
  `Authorization: token key:secret`; a duplicate `name` answers 409 like Frappe's DuplicateEntryError.
- `/sim/work-orders` releases work orders: it stores them and sends the hub the ERP events
  (work_order.released with its purchase receipt), as a real ERP's webhooks would.
- Documents are kept in a JSON file when `state_file` is given, so a restart keeps them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field


class ReleaseRequest(BaseModel):
    count: int = Field(default=1, ge=1, le=10000)
    prefix: str = Field(default="WO-", max_length=20)
    quantity: int = Field(default=50, ge=1, le=1_000_000)
    start: int | None = Field(default=None, ge=1, description="first number; default: next free")
    with_shipment: bool = True


class Store:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        if path and path.exists():
            self.docs = json.loads(path.read_text())

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.docs))
            tmp.replace(self.path)


def create_app(
    *, api_key: str = "tracehub", api_secret: str = "simulator-secret", hub_url: str = "http://127.0.0.1:8000",
    state_file: Path | None = None,
) -> FastAPI:
    app = FastAPI(title="ERP simulator (ERPNext-shaped)")
    store = Store(state_file)
    lock = asyncio.Lock()

    def auth(authorization: str | None) -> None:
        if authorization != f"token {api_key}:{api_secret}":
            raise HTTPException(401, {"exc_type": "AuthenticationError", "message": "invalid token"})

    @app.get("/api/method/frappe.auth.get_logged_user")
    async def logged_user(authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        return {"message": f"{api_key}@erp.local"}

    @app.get("/api/resource/{doctype}")
    async def list_docs(doctype: str, limit_start: int = 0, limit_page_length: int = 20,
                        authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        docs = list(store.docs.get(doctype, {}).values())
        end = None if limit_page_length == 0 else limit_start + limit_page_length
        return {"data": docs[limit_start:end]}

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
        async with lock:
            bucket = store.docs.setdefault(doctype, {})
            name = doc.get("name") or f"{doctype[:3].upper()}-{len(bucket) + 1:05d}"
            if name in bucket:
                raise HTTPException(409, {"exc_type": "DuplicateEntryError", "message": f"{doctype} {name} exists"})
            doc = {**doc, "name": name, "doctype": doctype, "creation": datetime.now(UTC).isoformat(),
                   "docstatus": 1}
            bucket[name] = doc
            store.save()
        return {"data": doc}

    @app.post("/sim/work-orders")
    async def release(req: ReleaseRequest) -> dict:
        """Release work orders and send their events to the hub; returns the numbers."""
        async with lock:
            wos = store.docs.setdefault("Work Order", {})
            start = req.start or len(wos) + 1001
            numbers = [f"{req.prefix}{start + i}" for i in range(req.count)]
            for n in numbers:
                wos.setdefault(n, {"name": n, "doctype": "Work Order", "qty": req.quantity, "status": "Not Started"})
            store.save()
        results = []
        async with httpx.AsyncClient(base_url=hub_url, timeout=30) as client:
            sem = asyncio.Semaphore(8)

            async def send(n: str) -> dict:
                async with sem:
                    ev = release_event(n, req.quantity, with_shipment=req.with_shipment)
                    r = await client.post("/api/erp/events", json=ev)
                    return {"work_order": n, "status": r.status_code, "body": r.json()}

            results = await asyncio.gather(*(send(n) for n in numbers))
        return {"released": numbers, "hub": results}

    @app.get("/sim/documents")
    async def documents() -> dict:
        return {k: list(v) for k, v in store.docs.items()}

    return app


def release_event(number: str, quantity: int, *, with_shipment: bool = True) -> dict[str, Any]:
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
                      "supplier_lot": f"S{secrets.randbelow(10**6):06d}", "heat_number": f"H{n}",
                      "quantity": quantity * 1.2, "uom": "KG", "certificate_ref": f"CERT-H{n}"}],
        }],
    }
    if with_shipment:
        wo["shipment"] = {"shipment": f"DN-{n}", "sales_order": f"SO-{n}", "customer": "Customer A",
                          "carrier": "DHL"}
    return {"event_id": f"erp-wo-released-{n}", "event_type": "work_order.released", "work_order": wo}
