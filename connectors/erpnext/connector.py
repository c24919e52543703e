"""ERP over REST in the shape of ERPNext (Frappe): /api/resource/{DocType}, `token key:secret` auth."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr

from connectors.base import CheckResult, Connector, ConnectorConfig
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)


class ErpnextConfig(ConnectorConfig):
    base_url: str = Field(title="Base URL", description="ERP site URL, e.g. https://erp.example.com")
    api_key: str = Field(title="API key", description="the API user's key")
    api_secret: SecretStr = Field(title="API secret", description="the API user's secret")
    timeout_s: float = Field(default=10.0, gt=0, le=300, title="Timeout (s)", description="per request")


class ErpnextConnector(Connector):
    """Reads and writes ERPNext documents. `write` is idempotent on the document's `name`."""

    kind = "erpnext"
    Config = ErpnextConfig
    config: ErpnextConfig

    def __init__(self, config: ErpnextConfig | dict[str, Any], *, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(config)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        c = self.config
        self._client = httpx.AsyncClient(
            base_url=c.base_url.rstrip("/"),
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
        try:
            resp = await self.client.request(method, path, **kw)
        except Exception as exc:
            raise self._translate(exc) from exc
        if resp.status_code in (401, 403):
            raise ConnectorConfigError(
                f"ERP refused the credentials ({resp.status_code}): check the endpoint's api_key and api_secret"
            )
        if resp.status_code == 429 or resp.status_code >= 500:
            raise ConnectorUnavailable(f"ERP answered {resp.status_code} on {method} {path}: will retry")
        return resp

    async def check(self) -> CheckResult:
        try:
            resp = await self._request("GET", "/api/method/frappe.auth.get_logged_user")
        except ConnectorError as exc:
            return CheckResult(ok=False, message=str(exc))
        if resp.status_code != 200:
            return CheckResult(ok=False, message=f"ERP answered {resp.status_code}: check base_url")
        return CheckResult(ok=True, message=f"logged in as {resp.json().get('message')}")

    async def discover(self) -> list[dict[str, Any]]:
        resp = await self._request("GET", "/api/resource/DocType", params={"limit_page_length": 0})
        return [{"name": d["name"]} for d in self._json(resp).get("data", [])]

    async def read(self, resource: str, **params: Any) -> Any:
        name = params.pop("name", None)
        path = f"/api/resource/{quote(resource)}" + (f"/{quote(name, safe='')}" if name else "")
        resp = await self._request("GET", path, params=params or None)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused reading {resource}: {resp.status_code} {resp.text[:200]}")
        return self._json(resp).get("data")

    async def write(self, resource: str, data: Any) -> Any:
        """Create a document; an existing document of the same name counts as done (safe retries)."""
        resp = await self._request("POST", f"/api/resource/{quote(resource)}", json=data)
        if resp.status_code == 409:
            return await self.read(resource, name=data.get("name")) if data.get("name") else None
        if resp.status_code >= 400:
            raise DeviceRejected(f"ERP refused {resource} {data.get('name', '')}: {resp.status_code} {resp.text[:300]}")
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

    def _translate(self, exc: BaseException) -> Exception:
        if isinstance(exc, (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError,
                            httpx.ReadError, httpx.WriteError, httpx.PoolTimeout)):
            return ConnectorUnavailable(f"ERP at {self.config.base_url} unreachable ({type(exc).__name__}: {exc})")
        if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
            return ConnectorConfigError(f"ERP base_url {self.config.base_url!r} is not a valid URL: fix it")
        return ProtocolError(f"ERP call failed: {type(exc).__name__}: {exc}")
