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
1 for a hold, 0 for its release. Setting a value is idempotent: a retried hold or release changes nothing more."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from connectors.base import Connector, ConnectorConfig, Point
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)

_FIELDNAME = re.compile(r"[a-z][a-z0-9_]*")  # a Frappe fieldname (Custom Fields get the custom_ prefix)


# the DocTypes the hub creates that ERPNext submits (stock and deliveries move only once submitted)
SUBMITTABLE = frozenset({"Stock Entry", "Delivery Note", "Purchase Receipt"})


# the notice the hub's recalls send to block and unblock a batch (workflows/recall.py); here the Batch's `disabled`
HOLD_DOCTYPE = "Batch Hold"


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


def webhook_signature(secret: str, body: bytes) -> str:
    """ERPNext's webhook signature: base64 of HMAC-SHA256 of the raw request body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify_webhook(secret: str, body: bytes, signature: str | None) -> bool:
    """True when `signature` is the body's signature under `secret` (constant-time comparison)."""
    if not signature:
        return False
    return hmac.compare_digest(webhook_signature(secret, body), signature.strip())


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
            return await self.set_batch_hold(data, key)
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
        resp = await self._request("PUT", path, json={"disabled": disabled})
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
