"""ERP over REST in the shape of ERPNext (Frappe): /api/resource/{DocType}, `token key:secret` auth,
paged lists (limit_start, limit_page_length), and HMAC-SHA256 webhook signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr

from connectors.base import Connector, ConnectorConfig, Point
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)


class ErpnextConfig(ConnectorConfig):
    base_url: AnyHttpUrl = Field(title="Base URL", description="ERP site URL, e.g. https://erp.example.com")
    api_key: str = Field(min_length=1, title="API key", description="the API user's key")
    api_secret: SecretStr = Field(title="API secret", description="the API user's secret")
    timeout_s: float = Field(default=10.0, gt=0, le=300, title="Timeout (s)", description="per request")
    page_length: int = Field(default=100, ge=1, le=1000, title="Page length",
                             description="documents per page when listing (limit_page_length)")
    webhook_secret: SecretStr | None = Field(
        default=None, title="Webhook secret",
        description="the ERPNext webhook's secret: incoming events must carry its HMAC-SHA256 signature "
                    "(X-Frappe-Webhook-Signature); unset accepts unsigned events (development only)")


def webhook_signature(secret: str, body: bytes) -> str:
    """ERPNext's webhook signature: base64 of HMAC-SHA256 of the raw request body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify_webhook(secret: str, body: bytes, signature: str | None) -> bool:
    """True when `signature` is the body's signature under `secret` (constant-time comparison)."""
    if not signature:
        return False
    return hmac.compare_digest(webhook_signature(secret, body), signature.strip())


class ErpnextConnector(Connector):
    """Reads and writes ERPNext documents. `write` is idempotent on the document's `name`."""

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
            raise ConnectorUnavailable(f"ERP at {self.base_url} answered {resp.status_code} on {method} {path}: "
                                       "will retry")
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
        """Create a document; an existing document of the same name counts as done (safe retries)."""
        resp = await self._request("POST", f"/api/resource/{quote(resource)}", json=data)
        if resp.status_code == 409:
            return await self.read(resource, name=data.get("name")) if data.get("name") else None
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused {resource} {data.get('name', '')}: {resp.status_code} {resp.text[:300]}")
        return self._json(resp).get("data")

    async def update(self, resource: str, name: str, data: dict[str, Any]) -> Any:
        resp = await self._request("PUT", f"/api/resource/{quote(resource)}/{quote(name, safe='')}", json=data)
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused updating {resource} {name}: {resp.status_code} {resp.text[:300]}")
        return self._json(resp).get("data")

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
