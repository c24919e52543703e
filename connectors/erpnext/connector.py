"""ERP over REST in the shape of ERPNext (Frappe): /api/resource/{DocType}, `token key:secret` auth,
paged lists (limit_start, limit_page_length), and HMAC-SHA256 webhook signatures.

Idempotent writes: Frappe names a new document itself (naming series such as MAT-STE-.YYYY.-, a field,
or a hash) and discards a `name` the client sends unless the DocType's autoname is "prompt". So the hub
cannot key its documents by name. It keys them by a field ERPNext keeps: a custom field (default
`custom_hub_key`, Data, Unique) on every DocType the hub writes, a one-time setup of the ERPNext site.
`write_once` looks the key up before it posts, and a retry after a timeout, a lost answer or a killed
worker finds the document the first attempt created instead of creating a second one.

Batch holds: the hub's recalls send a hold as a `Batch Hold` notice (`batch_no`, `hold` 1 or 0), a DocType ERPNext
does not have. ERPNext blocks a batch with the Batch DocType's `disabled` check (a disabled batch cannot be used in
stock transactions), so this connector sets `disabled` on the Batch instead (PUT /api/resource/Batch/{batch_no}):
1 for a hold, 0 for its release. Setting a value is idempotent: a retried hold or release changes nothing more.

Warehouses: ERPNext refuses a stock entry row that takes material without its source warehouse (`s_warehouse`) and a
Manufacture entry's finished row without its target warehouse (`t_warehouse`). The hub's notices name no warehouse
(the hub does not know the site's), so this connector fills a row that names none from the endpoint's
`source_warehouse` and `target_warehouse`.

A blocked batch written off: a recall's reject (or an NCR's scrap) of a held lot takes material from a batch its hold
disabled, and ERPNext refuses a disabled batch in any stock transaction. So a consuming entry of a disabled batch
enables the batch, writes the entry once, and disables it again (`_write_unblocking`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from connectors.base import Connector, ConnectorConfig, Point
from connectors.erpnext.documents import erpnext_field, receipt_from_erpnext, work_order_from_erpnext
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)
from connectors.polling import PURCHASE_RECEIPT, WORK_ORDER, PolledDocument, Version, poll_every_field

_FIELDNAME = re.compile(r"[a-z][a-z0-9_]*")  # a Frappe fieldname (Custom Fields get the custom_ prefix)


# the DocTypes the hub creates that ERPNext submits (stock and deliveries move only once submitted)
SUBMITTABLE = frozenset({"Stock Entry", "Delivery Note", "Purchase Receipt"})


# the notice the hub's recalls send to block and unblock a batch (workflows/recall.py); here the Batch's `disabled`
HOLD_DOCTYPE = "Batch Hold"

STOCK_ENTRY = "Stock Entry"
# stock entry types (ERPNext's purposes) whose rows take material out of a warehouse; of a Manufacture, every row but
# the finished item (and scrap items, which go into a warehouse)
CONSUMING = frozenset({"Material Issue", "Material Consumption for Manufacture", "Manufacture",
                       "Material Transfer for Manufacture"})


class ErpnextConfig(ConnectorConfig):
    base_url: AnyHttpUrl = Field(title="Base URL", description="ERP site URL, e.g. https://erp.example.com")
    api_key: str = Field(min_length=1, title="API key", description="the API user's key")
    api_secret: SecretStr = Field(title="API secret", description="the API user's secret")
    timeout_s: float = Field(default=10.0, gt=0, le=300, title="Timeout (s)", description="per request")
    page_length: int = Field(default=100, ge=1, le=1000, title="Page length",
                             description="documents per page when listing (limit_page_length)")
    hub_key_field: str = Field(
        default="custom_hub_key", min_length=1, max_length=140, title="Hub key field",
        description="the field of each document the hub writes (Stock Entry, Delivery Note, Purchase Receipt, ...) "
                    "that keeps the hub's idempotency key: a Custom Field (type Data, Unique) added once on the "
                    "ERPNext site; the hub looks it up before every create, so a retry never makes a second document")
    submit: bool = Field(
        default=True, title="Submit documents",
        description="create the hub's stock entries, delivery notes and purchase returns submitted (docstatus 1), so "
                    "stock moves at once; false: as drafts that a person submits in ERPNext (a REST create is a "
                    "draft unless it says otherwise)")
    source_warehouse: str = Field(
        default="Stores", max_length=140, title="Source warehouse",
        description="the ERPNext Warehouse the hub's stock entries take material from when a row names none: the rows "
                    "of a Material Issue (an NCR's scrap, a recall's write-off), of a Material Consumption for "
                    "Manufacture and the raw rows of a Manufacture. ERPNext names a warehouse with the company's "
                    "abbreviation, e.g. 'Stores - TH'")
    target_warehouse: str = Field(
        default="Finished Goods", max_length=140, title="Target warehouse",
        description="the ERPNext Warehouse a Manufacture entry puts the finished lot into when its row names none, "
                    "e.g. 'Finished Goods - TH'")
    poll_every_s: int | None = poll_every_field()
    webhook_secret: SecretStr | None = Field(
        default=None, title="Webhook secret",
        description="the ERPNext webhook's secret: incoming events must carry its HMAC-SHA256 signature "
                    "(X-Frappe-Webhook-Signature); unset accepts unsigned events (development only)")

    @field_validator("hub_key_field")
    @classmethod
    def _fieldname(cls, v: str) -> str:
        if not _FIELDNAME.fullmatch(v):
            raise ValueError(f"{v!r} is not an ERPNext fieldname: lower-case letters, digits and underscores, "
                             "starting with a letter (e.g. custom_hub_key)")
        return v

    @field_validator("source_warehouse", "target_warehouse")
    @classmethod
    def _warehouse(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty: name an ERPNext Warehouse of the site as ERPNext lists it, e.g. 'Stores - TH'")
        return v.strip()


def webhook_signature(secret: str, body: bytes) -> str:
    """ERPNext's webhook signature: base64 of HMAC-SHA256 of the raw request body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify_webhook(secret: str, body: bytes, signature: str | None) -> bool:
    """True when `signature` is the body's signature under `secret` (constant-time comparison)."""
    if not signature:
        return False
    return hmac.compare_digest(webhook_signature(secret, body), signature.strip())


def _message(resp: httpx.Response) -> str:
    """An error answer's message (Frappe: `message`, or `exception`), else its text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        for k in ("message", "exception", "detail"):
            v = body.get(k)
            if isinstance(v, str):
                return v[:300]
            if isinstance(v, dict) and isinstance(v.get("message"), str):
                return v["message"][:300]
    return resp.text[:300]


def _disabled_batch(resp: httpx.Response) -> bool:
    """Does an ERP refusal say a batch is disabled (ERPNext: "Batch B-1 of Item X is disabled.")?"""
    text = _message(resp)
    return "Batch" in text and "disabled" in text


def _exc_type(resp: httpx.Response) -> str | None:
    """Frappe's exception class of an error answer (its `exc_type`), when the body says."""
    try:
        body = resp.json()
    except ValueError:
        return None
    exc_type = body.get("exc_type") if isinstance(body, dict) else None
    return exc_type if isinstance(exc_type, str) else None


class ErpnextConnector(Connector):
    """Reads and writes ERPNext documents. `write_once` is idempotent on the hub's key (`hub_key_field`)."""

    kind = "erpnext"
    title = "ERPNext (REST)"
    description = "An ERP speaking ERPNext's REST API: work orders, purchase receipts, stock entries, delivery notes"
    Config = ErpnextConfig
    config: ErpnextConfig

    def __init__(self, config: ErpnextConfig | dict[str, Any], *, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        # one writer at a time per batch in this process (the worker shares a connector between its calls): a hold,
        # a release and a write-off that enables the batch for a moment must not interleave
        self._batch_locks: dict[str, asyncio.Lock] = {}

    @property
    def base_url(self) -> str:
        return str(self.config.base_url).rstrip("/")

    async def open(self) -> None:
        c = self.config
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"token {c.api_key}:{c.api_secret.get_secret_value()}",
                     "Accept": "application/json"},
            timeout=c.timeout_s,
            transport=self._transport,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("use the connector as an async context manager")
        return self._client

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = await self._guard(self.client.request(method, path, **kw))
        if resp.status_code in (401, 403):
            raise ConnectorConfigError(
                f"ERP refused the credentials ({resp.status_code}): check the endpoint's api_key and api_secret",
                field="api_secret")
        if resp.status_code == 429 or resp.status_code >= 500:
            said = " ".join(resp.text[:200].split())
            raise ConnectorUnavailable(f"ERP at {self.base_url} answered {resp.status_code} on {method} {path}"
                                       f"{f' ({said})' if said else ''}: will retry")
        return resp

    async def _check(self) -> str:
        resp = await self._request("GET", "/api/method/frappe.auth.get_logged_user")
        if resp.status_code != 200:
            raise ConnectorConfigError(f"ERP answered {resp.status_code} at {self.base_url}: check base_url",
                                       field="base_url")
        return f"logged in as {self._json(resp).get('message')}"

    async def discover(self) -> list[Point]:
        docs = await self.read_all("DocType")
        return [Point(name=d["name"], kind="resource", address=f"/api/resource/{d['name']}",
                      description=d.get("module", "")) for d in docs]

    async def read(self, resource: str, **params: Any) -> Any:
        """One document (`name=`) or one page of a list (limit_start, limit_page_length, fields, filters,
        order_by, as ERPNext takes them). A missing document is None."""
        name = params.pop("name", None)
        path = f"/api/resource/{quote(resource)}" + (f"/{quote(name, safe='')}" if name else "")
        for key in ("fields", "filters"):
            if key in params and not isinstance(params[key], str):
                params[key] = json.dumps(params[key])
        resp = await self._request("GET", path, params=params or None)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused reading {resource}: {resp.status_code} {resp.text[:200]}")
        return self._json(resp).get("data")

    async def read_all(self, resource: str, **params: Any) -> list[dict[str, Any]]:
        """Every document of a list, page by page (limit_start / limit_page_length)."""
        page = self.config.page_length
        out: list[dict[str, Any]] = []
        while True:
            data = await self.read(resource, **params, limit_start=len(out), limit_page_length=page)
            if not isinstance(data, list):
                raise ProtocolError(f"ERP answered a {type(data).__name__} for the list of {resource}")
            out.extend(data)
            if len(data) < page:
                return out

    async def write(self, resource: str, data: Any) -> Any:
        """Create a document. One carrying the hub key field (`hub_key_field`) is created once (`write_once`);
        otherwise an existing document of the same name (409, for DocTypes named by a field or by prompt)
        counts as done."""
        if not isinstance(data, dict):
            raise DeviceRejected(f"ERP {resource}: a document is a JSON object, not {type(data).__name__}")
        key = data.get(self.config.hub_key_field)
        if key or resource == HOLD_DOCTYPE:
            return await self.write_once(resource, data, str(key or data.get("name") or ""))
        if resource == STOCK_ENTRY:
            data = self.with_warehouses(data)
        resp = await self._request("POST", f"/api/resource/{quote(resource)}", json=data)
        if resp.status_code == 409 and data.get("name"):
            return await self.read(resource, name=data["name"])
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused {resource} {data.get('name', '')}: {resp.status_code} {resp.text[:300]}")
        return self._json(resp).get("data")

    async def find_by_key(self, resource: str, key: str) -> dict[str, Any] | None:
        """The document of `resource` whose hub key field is `key` (its name and key), or None. The oldest one
        if the ERP holds several (made before the key was looked up)."""
        field = self.config.hub_key_field
        try:
            rows = await self.read(resource, filters=[[field, "=", key]], fields=["name", field],
                                   order_by="creation asc", limit_page_length=1)
        except (DeviceRejected, ConnectorUnavailable) as exc:
            # a DocType without the field: Frappe's query fails on the unknown column (HTTP 500, or 417)
            if isinstance(exc, ConnectorUnavailable) and "unknown column" not in exc.message.lower():
                raise
            raise ConnectorConfigError(
                f"ERP refused looking up {resource} by {field!r} ({exc.message}): add the Custom Field {field} "
                f"(type Data, Unique) to {resource} in ERPNext (see README, ERPNext setup), or set hub_key_field "
                "to the field that exists", field="hub_key_field") from None
        if not isinstance(rows, list):
            raise ProtocolError(f"ERP answered a {type(rows).__name__} for the list of {resource}")
        return rows[0] if rows else None

    async def write_once(self, resource: str, data: dict[str, Any], key: str) -> Any:
        """Create the document keyed `key` unless the ERP has it already; either way answer the ERP's
        document. Frappe names the document itself (a client `name` is dropped), so the key travels in
        `hub_key_field` and is looked up before the POST. Two attempts racing past the lookup: the field's
        Unique constraint refuses the second (UniqueValidationError), which is then looked up again."""
        if resource == HOLD_DOCTYPE:
            async with self._batches_locked([str(data.get("batch_no") or "")]):
                return await self.set_batch_hold(data, key)
        if resource == STOCK_ENTRY:
            data = self.with_warehouses(data)
            batches = consumed_batches(data)
            if batches:
                return await self._write_unblocking(resource, data, key, batches)
        return await self._write_once(resource, data, key)

    async def _write_once(self, resource: str, data: dict[str, Any], key: str) -> Any:
        field = self.config.hub_key_field
        found = await self.find_by_key(resource, key)
        if found is not None:
            return await self.read(resource, name=found["name"]) or found
        doc = {k: v for k, v in data.items() if k != "name"}
        doc[field] = key
        if self.config.submit and resource in SUBMITTABLE:
            doc.setdefault("docstatus", 1)  # Frappe's REST insert makes a draft unless told to submit
        resp = await self._request("POST", f"/api/resource/{quote(resource)}", json=doc)
        if resp.status_code == 409 or (resp.status_code == 417 and _exc_type(resp) == "UniqueValidationError"):
            found = await self.find_by_key(resource, key)
            if found is not None:
                return await self.read(resource, name=found["name"]) or found
        if resp.status_code == 417 and _disabled_batch(resp):
            # the ERP still blocks a batch the hub has let go of: a recall's release sends the ERP its unblock in
            # its own activity, which may land after the work order, woken by that release, ships. So this waits
            # and is retried (the work order's status shows why) until the unblock lands; a batch the ERP keeps
            # blocked for its own reasons shows here until someone enables it there
            raise ConnectorUnavailable(f"ERP still blocks a batch of {resource} {key} (the Batch is disabled there; "
                                       f"a recall's unblock may not have landed yet): {_message(resp)}; "
                                       "retried until the ERP takes it")
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused {resource} {key}: {resp.status_code} {resp.text[:300]}")
        created = self._json(resp).get("data")
        if isinstance(created, dict) and created.get(field) != key:
            # Frappe drops fields a DocType does not have: without the custom field every retry would create
            # another document, so stop here (the one just created is named in the message)
            raise ConnectorConfigError(
                f"ERP {resource} has no field {field!r}: it created {created.get('name')!r} without the hub's key "
                f"{key!r}. Add the Custom Field {field} (type Data, Unique) to {resource} in ERPNext (see README, "
                f"ERPNext setup), or set hub_key_field to the field that exists", field="hub_key_field")
        return created

    def with_warehouses(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The stock entry with the endpoint's warehouses on the rows that name none: `source_warehouse` on a row that
        takes material, `target_warehouse` on a Manufacture entry's finished row. A warehouse a row names stays."""
        items, purpose = doc.get("items"), doc.get("stock_entry_type")
        if not isinstance(items, list):
            return doc
        rows: list[Any] = []
        for row in items:
            if isinstance(row, dict) and not row.get("s_warehouse") and _takes_material(purpose, row):
                row = {**row, "s_warehouse": self.config.source_warehouse}
            elif (isinstance(row, dict) and purpose == "Manufacture" and row.get("is_finished_item")
                  and not row.get("t_warehouse")):
                row = {**row, "t_warehouse": self.config.target_warehouse}
            rows.append(row)
        return {**doc, "items": rows}

    async def _write_unblocking(self, resource: str, data: dict[str, Any], key: str, batches: list[str]) -> Any:
        """Write (once) a stock entry that takes material from `batches`. A batch the ERP has disabled (a recall's
        hold: ERPNext refuses a disabled batch in any stock transaction) is enabled for the write and disabled again
        after it, also when the ERP refuses the entry.

        Why disabled again: the entry takes only what the hub writes off; what is left of the batch (or what comes
        back to it) must stay blocked while a recall holds the lot, and only the hold's release unblocks it.

        A retry after a crash at any step converges. Enabling marks the Batch in `hub_key_field` (the Custom Field the
        hub keeps its key in, on Batch too) and disabling clears the mark. Each attempt reads each Batch once: one
        disabled, or one enabled with a mark (an attempt stopped between its enable and its disable), is blocked, so
        it is enabled (if need be and the entry is not there yet), the entry found or made (write_once), and the
        batch disabled. An enabled batch without a mark is not blocked and is left as it is. Not covered: two worker
        processes writing off the same batch at once (one may disable it between the other's enable and its entry);
        in one process they take turns.

        A write-off (Material Issue) row of a batch the ERP does not have is left out, and a write-off left with no
        row is not written (None): the ERP never had that stock to write off. This is an NCR's scrap of the work
        order's own lot before its Manufacture entry (the work order then sends none: nothing good was made). Any
        other entry naming a batch the ERP lacks goes as it is, and the ERP refuses it naming the batch."""
        field = self.config.hub_key_field
        async with self._batches_locked(batches):
            reopened: list[str] = []
            try:
                # an entry made already (a retry after a lost answer) needs no batch enabled again
                found = await self.find_by_key(resource, key)
                missing: set[str] = set()
                for batch in batches:
                    doc = await self.read("Batch", name=batch)  # the batch's state, read once before deciding
                    if not isinstance(doc, dict):
                        missing.add(batch)
                        continue
                    if doc.get("disabled") and found is None:
                        reopened.append(batch)
                        mark = f"{batch} / {key}"[:140]  # Unique: each batch its own value
                        enabled = await self._put_batch(batch, {"disabled": 0, field: mark}, key)
                        if not isinstance(enabled, dict) or enabled.get(field) != mark:
                            # Frappe drops a field a DocType lacks: unmarked, a crash after the enable would leave the
                            # batch enabled for good, so stop here (the finally disables it again)
                            raise ConnectorConfigError(
                                f"ERP Batch has no field {field!r}: the hub marks a blocked batch it enables for a "
                                f"write-off ({key}) there, so that a retry after a crash blocks it again. Add the "
                                f"Custom Field {field} (type Data, Unique) to Batch in ERPNext (see README, ERPNext "
                                "setup)", field="hub_key_field")
                    elif doc.get(field):
                        reopened.append(batch)  # enabled by an attempt that did not get to disable it again
                if found is not None:
                    return await self.read(resource, name=found["name"]) or found
                if missing and data.get("stock_entry_type") == "Material Issue":
                    items = [row for row in data["items"] if not (isinstance(row, dict)
                                                                  and row.get("batch_no") in missing)]
                    if not items:
                        return None
                    data = {**data, "items": items}
                return await self._write_once(resource, data, key)
            finally:
                for batch in reversed(reopened):
                    await self._put_batch(batch, {"disabled": 1, field: None}, key)

    async def _put_batch(self, batch: str, changes: dict[str, Any], key: str) -> Any:
        resp = await self._request("PUT", f"/api/resource/Batch/{quote(batch, safe='')}", json=changes)
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused setting Batch {batch} disabled={changes.get('disabled')} ({key}): "
                                 f"{resp.status_code} {resp.text[:300]}")
        return self._json(resp).get("data")

    @asynccontextmanager
    async def _batches_locked(self, batches: list[str]) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for batch in sorted(set(batches)):  # one order, so two writers never wait on each other
                await stack.enter_async_context(self._batch_locks.setdefault(batch, asyncio.Lock()))
            yield

    async def set_batch_hold(self, data: dict[str, Any], key: str) -> Any:
        """A hold (`hold` 1) or its release (`hold` 0) of batch `batch_no`, as ERPNext blocks a batch: the Batch's
        `disabled` check. Idempotent (it sets a value). A hold of a batch the ERP does not have yet (a lot still
        being made: its Manufacture entry comes later) creates the Batch disabled, so it is blocked from the moment
        it exists; a release of one has nothing to unblock."""
        batch, hold = data.get("batch_no"), data.get("hold")
        if not isinstance(batch, str) or not batch.strip():
            raise DeviceRejected(f"{HOLD_DOCTYPE} {key}: batch_no is required: the ERPNext Batch to block or unblock")
        if hold not in (0, 1) or isinstance(hold, float):
            raise DeviceRejected(f"{HOLD_DOCTYPE} {key}: hold must be 1 (block the batch) or 0 (unblock it), "
                                 f"not {hold!r}")
        disabled = 1 if hold else 0
        path = f"/api/resource/Batch/{quote(batch, safe='')}"
        # the hold decides: it also clears a write-off's mark (_write_unblocking), which would otherwise block again
        resp = await self._request("PUT", path, json={"disabled": disabled, self.config.hub_key_field: None})
        if resp.status_code == 404 and not disabled:
            return None  # no such batch in the ERP: nothing to unblock
        if resp.status_code == 404:
            item = data.get("item_code")
            if not isinstance(item, str) or not item:
                raise DeviceRejected(f"{HOLD_DOCTYPE} {key}: ERP has no Batch {batch!r}, and item_code (its Item) "
                                     "is required to create it blocked")
            resp = await self._request("POST", "/api/resource/Batch",
                                       json={"batch_id": batch, "item": item, "disabled": 1})
            if resp.status_code == 409:  # created in the meantime (a racing attempt, the ERP's own entry)
                resp = await self._request("PUT", path, json={"disabled": 1})
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused setting Batch {batch} disabled={disabled} ({key}): "
                                 f"{resp.status_code} {resp.text[:300]}")
        return self._json(resp).get("data")

    async def update(self, resource: str, name: str, data: dict[str, Any]) -> Any:
        resp = await self._request("PUT", f"/api/resource/{quote(resource)}/{quote(name, safe='')}", json=data)
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused updating {resource} {name}: {resp.status_code} {resp.text[:300]}")
        return self._json(resp).get("data")

    async def read_changed(self, resource: str, since: str, *, filters: list[Any] | None = None
                           ) -> list[dict[str, Any]]:
        """The name and `modified` of every document of `resource` modified at or after `since`, oldest first.
        A list call returns only the fields it asks for and never child tables: fetch each in full (`read`)."""
        return await self.read_all(resource, fields=["name", "modified"],
                                   filters=[["modified", ">=", since], *(filters or [])], order_by="modified asc")

    # --- the hub's ERP poll (connectors.polling.PollableErp) ---------------------------------------------

    async def changed(self, doctype: str, since: str) -> list[Version]:
        """Released (submitted) Work Orders, or Purchase Receipts, modified at or after `since`, oldest first."""
        filters = [["docstatus", "=", 1]] if doctype == WORK_ORDER else None
        return [Version(name=row["name"], modified=row["modified"])
                for row in await self.read_changed(doctype, since, filters=filters)]

    async def polled_document(self, doctype: str, version: Version) -> PolledDocument | None:
        """The document read in full; a Work Order with its Purchase Receipts (by `custom_work_order`)."""
        doc = await self.read(doctype, name=version.name)
        if doc is None:
            return None
        polled = _polled(doctype, doc)
        if doctype == WORK_ORDER:
            for r in await self.read_all(PURCHASE_RECEIPT, fields=["name"],
                                         filters=[["custom_work_order", "=", version.name]]):
                full = await self.read(PURCHASE_RECEIPT, name=r["name"])
                if full is not None:
                    polled.receipts.append(_polled(PURCHASE_RECEIPT, full))
        return polled

    def hub_data(self, doc: PolledDocument) -> dict[str, Any]:
        if doc.doctype == WORK_ORDER:
            return work_order_from_erpnext(doc.doc, [r.doc for r in doc.receipts])
        return receipt_from_erpnext(doc.doc)

    def erp_field(self, doc: PolledDocument, loc: tuple[Any, ...]) -> str:
        receipts = [r.doc for r in doc.receipts] if doc.doctype == WORK_ORDER else [doc.doc]
        return erpnext_field(doc.doctype, loc, receipts)

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError as exc:
            raise ProtocolError(f"ERP answered non-JSON ({resp.status_code}): {resp.text[:120]!r}") from exc
        if not isinstance(body, dict):
            raise ProtocolError("ERP answered JSON that is not an object")
        return body

    def _translate(self, exc: BaseException) -> ConnectorError:
        if isinstance(exc, (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError,
                            httpx.ReadError, httpx.WriteError, httpx.PoolTimeout)):
            return ConnectorUnavailable(f"ERP at {self.base_url} unreachable ({type(exc).__name__}: {exc})")
        if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
            return ConnectorConfigError(f"ERP base_url {self.base_url!r} is not a valid URL: fix it",
                                        field="base_url")
        return ProtocolError(f"ERP call failed: {type(exc).__name__}: {exc}")


def _takes_material(purpose: Any, row: dict[str, Any]) -> bool:
    """A stock entry row that takes material out of a warehouse (ERPNext then wants its s_warehouse)."""
    if row.get("is_finished_item") or row.get("is_scrap_item"):
        return False
    return purpose in CONSUMING or bool(row.get("s_warehouse"))


def consumed_batches(doc: dict[str, Any]) -> list[str]:
    """The batches a stock entry's rows take out of a warehouse, each once, in the rows' order."""
    items, purpose = doc.get("items"), doc.get("stock_entry_type")
    if not isinstance(items, list):
        return []
    found = [row["batch_no"] for row in items if isinstance(row, dict) and isinstance(row.get("batch_no"), str)
             and row["batch_no"] and _takes_material(purpose, row)]
    return list(dict.fromkeys(found))


def _polled(doctype: str, doc: dict[str, Any]) -> PolledDocument:
    work_order = doc.get("custom_work_order") if doctype == PURCHASE_RECEIPT else None
    return PolledDocument(doctype=doctype, name=str(doc.get("name")), modified=str(doc.get("modified")), doc=doc,
                          work_order=str(work_order) if work_order else None)
