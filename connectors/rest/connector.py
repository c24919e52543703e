"""A generic REST connector for ERPs that are not ERPNext: resources, paging, authentication and field
names are configuration, so another ERP is an endpoint row, not new code."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr, model_validator

from connectors.base import Connector, ConnectorConfig, Point
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)

Auth = Literal["none", "bearer", "basic", "header"]
Paging = Literal["none", "offset", "page"]


class Resource(ConnectorConfig):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$", title="Name",
                      description="what the hub calls it, e.g. work_orders")
    path: str = Field(pattern=r"^/", title="Path", description="list and create path, e.g. /api/v1/orders")
    item_path: str | None = Field(default=None, title="Item path",
                                  description="one document, with {id}; default: <path>/{id}")
    items_key: str | None = Field(default="items", title="Items key",
                                  description="dotted key of the list in a list answer; empty: the answer is the list")
    item_key: str | None = Field(default=None, title="Item key",
                                 description="dotted key of the document in a single answer; empty: the answer")
    id_field: str = Field(default="id", title="Id field", description="source field that identifies a document")
    paging: Paging = Field(default="offset", title="Paging", description="none, offset or page")
    offset_param: str = Field(default="offset", title="Offset parameter", description="for offset paging")
    limit_param: str = Field(default="limit", title="Limit parameter", description="page size, offset paging")
    page_param: str = Field(default="page", title="Page parameter", description="for page paging")
    page_size_param: str = Field(default="per_page", title="Page size parameter", description="for page paging")
    first_page: int = Field(default=1, ge=0, le=1, title="First page", description="0 or 1")
    page_size: int = Field(default=100, ge=1, le=1000, title="Page size", description="documents per request")
    fields: dict[str, str] = Field(default_factory=dict, title="Field map",
                                   description="hub field -> dotted source field; empty: documents as they come")
    writable: bool = Field(default=False, title="Writable", description="may the hub create documents here")
    doctype: str | None = Field(
        default=None, max_length=80, title="Hub document",
        description="the hub's ERP notice this resource receives when the endpoint is the hub's ERP: Stock Entry, "
                    "Delivery Note, Batch Hold or Purchase Receipt (sent in ERPNext's shape; `fields` renames them)")
    key_field: str | None = Field(
        default=None, max_length=120, title="Key field",
        description="dotted field of the created document that keeps the hub's key of it; with it, the hub looks "
                    "the key up before creating, so a retried notice never creates a second document")
    key_param: str | None = Field(
        default=None, max_length=80, title="Key parameter",
        description="list query parameter that filters by the key field (default: the key field's name)")
    idempotency_header: str | None = Field(
        default="Idempotency-Key", max_length=80, title="Idempotency header",
        description="request header carrying the hub's key on create (for ERPs that honour one); empty: none")


class RestConfig(ConnectorConfig):
    base_url: AnyHttpUrl = Field(title="Base URL", description="e.g. https://erp.example.com")
    auth: Auth = Field(default="none", title="Authentication", description="none, bearer, basic or header")
    token: SecretStr | None = Field(default=None, title="Token",
                                    description="bearer token, or the header's value for header auth")
    header_name: str = Field(default="X-API-Key", title="Header name", description="for header auth")
    username: str | None = Field(default=None, title="User name", description="for basic auth")
    password: SecretStr | None = Field(default=None, title="Password", description="for basic auth")
    timeout_s: float = Field(default=10.0, gt=0, le=300, title="Timeout (s)", description="per request")
    health_path: str = Field(default="/", pattern=r"^/", title="Health path",
                             description="a GET that answers 2xx when the service and credentials are good")
    resources: list[Resource] = Field(default_factory=list, title="Resources", description="what the ERP offers")

    @model_validator(mode="after")
    def _auth(self) -> RestConfig:
        if self.auth in ("bearer", "header") and self.token is None:
            raise ValueError(f"auth {self.auth}: give token")
        if self.auth == "basic" and not (self.username and self.password):
            raise ValueError("auth basic: give username and password")
        return self


def pick(doc: Any, dotted: str | None) -> Any:
    """doc['a']['b'] for 'a.b' (list indexes allowed); None when a step is missing."""
    if not dotted:
        return doc
    for step in dotted.split("."):
        if isinstance(doc, dict):
            doc = doc.get(step)
        elif isinstance(doc, list) and step.isdigit() and int(step) < len(doc):
            doc = doc[int(step)]
        else:
            return None
    return doc


def place(fields: dict[str, str], data: dict[str, Any]) -> dict[str, Any]:
    """The inverse of the field map: hub fields to a nested source document."""
    out: dict[str, Any] = {}
    for hub_field, value in data.items():
        target = fields.get(hub_field, hub_field).split(".")
        node = out
        for step in target[:-1]:
            node = node.setdefault(step, {})
        node[target[-1]] = value
    return out


class RestConnector(Connector):
    kind = "rest"
    title = "Generic REST (another ERP)"
    description = "Configurable resources, paging, authentication and field names for an ERP's REST API"
    Config = RestConfig
    config: RestConfig

    def __init__(self, config: RestConfig | dict[str, Any]) -> None:
        super().__init__(config)
        self._client: httpx.AsyncClient | None = None

    @property
    def base_url(self) -> str:
        return str(self.config.base_url).rstrip("/")

    async def open(self) -> None:
        c = self.config
        headers = {"Accept": "application/json"}
        auth = None
        if c.auth == "bearer" and c.token:
            headers["Authorization"] = f"Bearer {c.token.get_secret_value()}"
        elif c.auth == "header" and c.token:
            headers[c.header_name] = c.token.get_secret_value()
        elif c.auth == "basic" and c.username and c.password:
            auth = httpx.BasicAuth(c.username, c.password.get_secret_value())
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, auth=auth, timeout=c.timeout_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        assert self._client is not None, "use the connector as an async context manager"
        resp = await self._guard(self._client.request(method, path, **kw))
        if resp.status_code in (401, 403):
            raise ConnectorConfigError(f"{self.base_url} refused the credentials ({resp.status_code}): check "
                                       f"auth ({self.config.auth}) and its secret", field="auth")
        if resp.status_code == 429 or resp.status_code >= 500:
            raise ConnectorUnavailable(f"{self.base_url} answered {resp.status_code} on {method} {path}: will retry")
        return resp

    def _resource(self, name: str) -> Resource:
        """A resource by its name, or by the hub document it receives (`doctype`: the hub's ERP notices are named
        as ERPNext names them, e.g. 'Stock Entry')."""
        for r in self.config.resources:
            if r.name == name:
                return r
        for r in self.config.resources:
            if r.doctype == name:
                return r
        raise ConnectorConfigError(f"no resource named {name!r} in this endpoint (nor one whose doctype is "
                                   f"{name!r}); known: {[r.name for r in self.config.resources]}. As the hub's "
                                   "ERP, give each notice a writable resource with its doctype", field="resources")

    async def _check(self) -> str:
        resp = await self._request("GET", self.config.health_path)
        if resp.status_code >= 400:
            raise ConnectorConfigError(f"{self.base_url}{self.config.health_path} answered {resp.status_code}: "
                                       "check base_url and health_path", field="health_path")
        return f"{self.base_url} answers; {len(self.config.resources)} resource(s) configured"

    async def discover(self) -> list[Point]:
        return [Point(name=r.name, kind="resource", address=r.path, writable=r.writable,
                      description=f"fields: {', '.join(r.fields) or 'as they come'}") for r in self.config.resources]

    def _map(self, r: Resource, doc: Any) -> Any:
        if not r.fields or not isinstance(doc, dict):
            return doc
        return {hub: pick(doc, src) for hub, src in r.fields.items()}

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise ProtocolError(f"answered non-JSON ({resp.status_code}): {resp.text[:120]!r}") from exc

    async def read(self, resource: str, **params: Any) -> Any:
        """One document (`id=`), or every document of the resource, page by page; `params` are passed on."""
        r = self._resource(resource)
        doc_id = params.pop("id", None)
        if doc_id is not None:
            path = (r.item_path or f"{r.path}/{{id}}").replace("{id}", quote(str(doc_id), safe=""))
            resp = await self._request("GET", path, params=params or None)
            if resp.status_code == 404:
                return None
            if resp.status_code >= 400:
                raise DeviceRejected(f"{self.base_url} refused {path}: {resp.status_code} {resp.text[:200]}")
            return self._map(r, pick(self._json(resp), r.item_key))
        out: list[Any] = []
        page = r.first_page
        while True:
            q = dict(params)
            if r.paging == "offset":
                q.update({r.offset_param: len(out), r.limit_param: r.page_size})
            elif r.paging == "page":
                q.update({r.page_param: page, r.page_size_param: r.page_size})
            resp = await self._request("GET", r.path, params=q)
            if resp.status_code >= 400:
                raise DeviceRejected(f"{self.base_url} refused {r.path}: {resp.status_code} {resp.text[:200]}")
            items = pick(self._json(resp), r.items_key)
            if not isinstance(items, list):
                raise ProtocolError(f"{self.base_url}{r.path}: no list at {r.items_key!r} in the answer: "
                                    "check items_key")
            out.extend(self._map(r, d) for d in items)
            if r.paging == "none" or len(items) < r.page_size:
                return out
            page += 1

    async def write(self, resource: str, data: Any) -> Any:
        r = self._resource(resource)
        if not r.writable:
            raise ConnectorConfigError(f"resource {r.name} is not writable: set writable true", field="resources")
        resp = await self._request("POST", r.path, json=place(r.fields, data))
        if resp.status_code == 409:
            return None  # it exists already: a retried create counts as done
        if resp.status_code >= 400:
            raise DeviceRejected(f"{self.base_url} refused creating {r.name}: {resp.status_code} {resp.text[:300]}")
        return self._map(r, pick(self._json(resp), r.item_key))

    async def find_by_key(self, r: Resource, key: str) -> Any:
        """The document of `r` whose key field holds `key`, mapped; None when the ERP has none."""
        assert r.key_field
        param = r.key_param or r.key_field.rsplit(".", 1)[-1]
        resp = await self._request("GET", r.path, params={param: key})
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise DeviceRejected(f"{self.base_url} refused looking up {r.name} by {param}={key!r}: "
                                 f"{resp.status_code} {resp.text[:200]}")
        items = pick(self._json(resp), r.items_key)
        if not isinstance(items, list):
            raise ProtocolError(f"{self.base_url}{r.path}: no list at {r.items_key!r} in the answer: check items_key")
        # only a document that really holds the key counts (an ERP that ignores the parameter lists everything)
        found = next((d for d in items if str(pick(d, r.key_field)) == key), None)
        return None if found is None else self._map(r, found)

    async def write_once(self, resource: str, data: dict[str, Any], key: str) -> Any:
        """Create the hub's document keyed `key` (an ERP notice: `resource` is its doctype or a resource name)
        unless the ERP has it already. The key goes in the resource's key field (looked up first) and in its
        idempotency header; without a key field, an ERP answering 409 for a repeated key is what keeps a retry
        from creating a second document."""
        r = self._resource(resource)
        if not r.writable:
            raise ConnectorConfigError(f"resource {r.name} is not writable: set writable true", field="resources")
        if r.key_field and (found := await self.find_by_key(r, key)) is not None:
            return found
        body = place(r.fields, {k: v for k, v in data.items() if k != "name"})
        if r.key_field:
            node = body
            *steps, last = r.key_field.split(".")
            for step in steps:
                node = node.setdefault(step, {})
            node[last] = key
        headers = {r.idempotency_header: key} if r.idempotency_header else None
        resp = await self._request("POST", r.path, json=body, headers=headers)
        if resp.status_code == 409:
            if r.key_field and (found := await self.find_by_key(r, key)) is not None:
                return found
            return None  # it exists already: a retried create counts as done
        if resp.status_code >= 400:
            raise DeviceRejected(f"{self.base_url} refused creating {r.name} {key}: {resp.status_code} "
                                 f"{resp.text[:300]}")
        return self._map(r, pick(self._json(resp), r.item_key))

    def _translate(self, exc: BaseException) -> ConnectorError:
        if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
            return ConnectorConfigError(f"base_url {self.base_url!r} is not usable: {exc}", field="base_url")
        if isinstance(exc, httpx.TransportError):
            return ConnectorUnavailable(f"{self.base_url} unreachable ({type(exc).__name__}: {exc}); will retry")
        return ProtocolError(f"{self.base_url}: {type(exc).__name__}: {exc}")
