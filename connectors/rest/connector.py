"""A generic REST connector for ERPs that are not ERPNext: resources, paging, authentication and field
names are configuration, so another ERP is an endpoint row, not new code."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr, ValidationInfo, field_validator, model_validator

from connectors.base import Connector, ConnectorConfig, Point
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)
from connectors.polling import PURCHASE_RECEIPT, WORK_ORDER, PolledDocument, Version, poll_every_field

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
    list_params: dict[str, str] = Field(
        default_factory=dict, title="List parameters",
        description="query parameters sent with every list request, e.g. {\"status\": \"released\"} (a query string "
                    "in path is not kept)")
    row_fields: dict[str, dict[str, str]] = Field(
        default_factory=dict, title="Row field maps",
        description="when polled: for a list field of the hub's document (routing, lots), hub row field -> dotted "
                    "field of each source row, e.g. {\"routing\": {\"seq\": \"step_no\", \"name\": \"operation\"}}; "
                    "a list without one keeps its rows as they come")
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


class RestPoll(ConnectorConfig):
    """Where the hub's ERP poll finds released work orders and posted purchase receipts in this ERP."""

    work_orders: str = Field(
        min_length=1, max_length=80, title="Work orders resource",
        description="name of the resource (in resources) whose path lists the ERP's released work orders (a status "
                    "filter the ERP needs goes in its list_params, e.g. {\"status\": \"released\"}); its "
                    "fields map gives the hub's work order fields: number, item, quantity, routing (rows by "
                    "row_fields), and optionally item_name, gtin, uom, line, output_lot, shipment.<field>")
    receipts: str | None = Field(
        default=None, min_length=1, max_length=80, title="Purchase receipts resource",
        description="name of the resource whose path lists the ERP's posted purchase receipts; its fields map gives "
                    "receipt, work_order (the work order the material is for), lots (rows by row_fields: lot, item, "
                    "supplier_lot, quantity, heat_number ...), supplier; unset: receipts are not polled")
    changed_since_param: str = Field(
        default="modified_since", min_length=1, max_length=80, title="Changed-since parameter",
        description="list query parameter by which the ERP lists documents modified at or after a time; the hub "
                    "sends the last modified time it saw (none on the first poll) and also skips older documents "
                    "itself, for an ERP that ignores the parameter")
    modified_field: str = Field(
        default="modified", min_length=1, max_length=120, title="Modified field",
        description="dotted field of each document holding its last modified time, as text that sorts in time "
                    "order (ISO 8601 in one format, e.g. 2026-11-22T03:00:00.000Z): each value is one version of "
                    "the document, taken once")
    receipt_work_order_param: str | None = Field(
        default=None, min_length=1, max_length=80, title="Receipt work order parameter",
        description="list query parameter filtering the receipts resource by work order number, used to start a "
                    "work order with its receipts; default: the last part of the receipts' work_order source field")
    read_each: bool = Field(
        default=False, title="Read each document",
        description="read each listed document at the resource's item path before using it (for an ERP whose "
                    "lists carry only a summary); false: the listed documents are used as they are")


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
    poll: RestPoll | None = Field(
        default=None, title="ERP polling",
        description="for an ERP without webhooks: the resources the hub's ERP poll schedule lists for released work "
                    "orders and posted purchase receipts, and how it sees what changed; unset: not polled")
    poll_every_s: int | None = poll_every_field()

    @field_validator("poll")
    @classmethod
    def _poll_resources(cls, poll: RestPoll | None, info: ValidationInfo) -> RestPoll | None:
        if poll is None or "resources" not in info.data:  # resources invalid: that error names itself
            return poll
        known = {r.name: r for r in info.data["resources"]}
        required = {"work_orders": ("number", "item", "quantity", "routing"), "receipts": ("receipt", "work_order",
                                                                                           "lots")}
        for what in ("work_orders", "receipts"):
            name = getattr(poll, what)
            if name is None:
                continue
            r = known.get(name)
            if r is None:
                raise ValueError(f"{what}: no resource named {name!r} (known: {sorted(known)}): add a resource "
                                 f"{name!r} with the path where the ERP lists them, or name one that exists")
            missing = [f for f in required[what] if f not in r.fields]
            if missing:
                raise ValueError(f"{what}: resource {name!r} has no source field for {', '.join(missing)}: add "
                                 f"them to its fields map (hub field -> the ERP's dotted field)")
        return poll

    @model_validator(mode="after")
    def _poll_needs_resources(self) -> RestConfig:
        if self.poll_every_s is not None and self.poll is None:
            raise ValueError("poll_every_s: polling needs the poll section (which resources list the work orders and "
                             "receipts): add it, or leave poll_every_s empty")
        return self

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
        return [self._map(r, d) for d in await self._list(r, params)]

    async def _list(self, r: Resource, params: dict[str, Any]) -> list[Any]:
        """Every document of the resource's list as the ERP answers it (not mapped), page by page."""
        out: list[Any] = []
        page = r.first_page
        while True:
            q = {**r.list_params, **params}
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
            out.extend(items)
            if r.paging == "none" or len(items) < r.page_size:
                return out
            page += 1

    async def _read_one(self, r: Resource, doc_id: str) -> Any:
        """One document at the resource's item path, as the ERP answers it (not mapped); None when gone."""
        path = (r.item_path or f"{r.path}/{{id}}").replace("{id}", quote(doc_id, safe=""))
        resp = await self._request("GET", path)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise DeviceRejected(f"{self.base_url} refused {path}: {resp.status_code} {resp.text[:200]}")
        return pick(self._json(resp), r.item_key)

    # --- the hub's ERP poll (connectors.polling.PollableErp), configured by `poll` ------------------------

    def _polled_resource(self, doctype: str) -> Resource | None:
        poll = self.config.poll
        if poll is None:
            raise ConnectorConfigError("this rest endpoint is not set up for ERP polling: give its config a poll "
                                       "section (poll.work_orders: the resource listing released work orders)",
                                       field="poll")
        name = poll.work_orders if doctype == WORK_ORDER else poll.receipts
        return None if name is None else self._resource(name)

    def _version(self, r: Resource, doc: Any) -> Version:
        poll = self.config.poll
        assert poll is not None
        doc_id = pick(doc, r.id_field) if isinstance(doc, dict) else None
        if doc_id is None or doc_id == "":
            raise ConnectorConfigError(f"{self.base_url}{r.path} lists a document without {r.id_field!r}: set "
                                       f"resource {r.name}'s id_field to the field that names a document",
                                       field="resources.id_field")
        modified = pick(doc, poll.modified_field)
        if not isinstance(modified, str) or not modified:
            raise ConnectorConfigError(f"{self.base_url}{r.path}: document {doc_id} has no text modified time at "
                                       f"{poll.modified_field!r} (found {modified!r}): set poll.modified_field to "
                                       "the ERP's field with the last modified time (ISO 8601)",
                                       field="poll.modified_field")
        return Version(name=str(doc_id), modified=modified, doc=doc)

    async def changed(self, doctype: str, since: str) -> list[Version]:
        """The listed documents modified at or after `since`, oldest first (sorted here: an ERP's list order
        is not to be relied on, and the watermark must not pass a document not yet taken)."""
        r = self._polled_resource(doctype)
        if r is None:
            return []
        poll = self.config.poll
        assert poll is not None
        versions = [self._version(r, d) for d in
                    await self._list(r, {poll.changed_since_param: since} if since else {})]
        return sorted((v for v in versions if v.modified >= since), key=lambda v: v.modified)

    async def polled_document(self, doctype: str, version: Version) -> PolledDocument | None:
        r = self._polled_resource(doctype)
        assert r is not None and self.config.poll is not None
        doc = await self._read_one(r, version.name) if self.config.poll.read_each else version.doc
        if doc is None:
            return None
        polled = self._polled(doctype, r, doc if self.config.poll.read_each else version)
        if doctype == WORK_ORDER:
            polled.receipts = await self._receipts_of(pick(doc, r.fields["number"]))
        return polled

    def _polled(self, doctype: str, r: Resource, doc: Any) -> PolledDocument:
        version = doc if isinstance(doc, Version) else self._version(r, doc)
        raw = version.doc if isinstance(version.doc, dict) else {}
        work_order = pick(raw, r.fields["work_order" if doctype == PURCHASE_RECEIPT else "number"])
        return PolledDocument(doctype=doctype, name=version.name, modified=version.modified, doc=raw,
                              work_order=None if work_order in (None, "") else str(work_order))

    async def _receipts_of(self, number: Any) -> list[PolledDocument]:
        """The purchase receipts of work order `number`, for its start (only those that name it: an ERP that
        ignores the filter parameter lists every receipt)."""
        poll = self.config.poll
        assert poll is not None
        if poll.receipts is None or number in (None, ""):
            return []
        rr = self._resource(poll.receipts)
        source = rr.fields["work_order"]
        param = poll.receipt_work_order_param or source.rsplit(".", 1)[-1]
        out = []
        for d in await self._list(rr, {param: str(number)}):
            if str(pick(d, source)) != str(number):
                continue
            if poll.read_each:
                d = await self._read_one(rr, self._version(rr, d).name)
                if d is None:
                    continue
            out.append(self._polled(PURCHASE_RECEIPT, rr, d))
        return out

    def hub_data(self, doc: PolledDocument) -> dict[str, Any]:
        """The document renamed by its resource's fields (dotted hub fields nest, e.g. shipment.customer) and
        row_fields; a receipt's `supplier` goes on each of its lots that has none (the hub keeps it per lot)."""
        r = self._polled_resource(doc.doctype)
        assert r is not None
        data = _drop_empty(_hub_doc(r, doc.doc))
        if doc.doctype == WORK_ORDER:
            data["receipts"] = [self.hub_data(x) for x in doc.receipts]
        else:
            data.pop("work_order", None)
            supplier = data.pop("supplier", None)
            for lot in data.get("lots") or []:
                if isinstance(lot, dict) and supplier is not None:
                    lot.setdefault("supplier", supplier)
        return data

    def erp_field(self, doc: PolledDocument, loc: tuple[Any, ...]) -> str:
        """`<resource>: <the ERP's field>` (rows: `<list field> row <n>: <row field>`); a receipt's field also
        names the receipt."""
        r = self._polled_resource(doc.doctype)
        assert r is not None
        if doc.doctype == PURCHASE_RECEIPT:
            return _source_field(r, f"{r.name} {doc.name}", loc)
        if loc[:1] == ("receipts",) and len(loc) >= 2 and isinstance(loc[1], int) and loc[1] < len(doc.receipts):
            receipt = doc.receipts[loc[1]]
            rr = self._polled_resource(PURCHASE_RECEIPT)
            assert rr is not None
            return _source_field(rr, f"{rr.name} {receipt.name}", loc[2:])
        return _source_field(r, r.name, loc)

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


def _hub_doc(r: Resource, doc: dict[str, Any]) -> dict[str, Any]:
    """A source document in the hub's shape by the resource's fields and row_fields (for the poll)."""
    out: dict[str, Any] = {}
    for hub_field, source in r.fields.items():
        value = pick(doc, source)
        rows = r.row_fields.get(hub_field)
        if rows and isinstance(value, list):
            value = [{h: pick(row, s) for h, s in rows.items()} if isinstance(row, dict) else row for row in value]
        node = out
        *steps, last = hub_field.split(".")
        for step in steps:
            node = node.setdefault(step, {})
        node[last] = value
    return out


def _drop_empty(value: Any) -> Any:
    """Without fields the ERP left empty (None), and without objects left with nothing, so the hub's defaults
    apply and a missing required field is reported by its name."""
    if isinstance(value, dict):
        kept = {k: _drop_empty(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in kept.items() if v != {}}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def _source_field(r: Resource, where: str, loc: tuple[Any, ...]) -> str:
    """The source field a validation error at `loc` (of the hub's document) comes from."""
    for n in range(len(loc), 0, -1):
        hub_field = ".".join(str(x) for x in loc[:n])
        if hub_field not in r.fields:
            continue
        source, rest = r.fields[hub_field], loc[n:]
        if rest and isinstance(rest[0], int):
            row = f"{source} row {rest[0] + 1}"
            if len(rest) >= 2:
                return f"{where}: {row}: {r.row_fields.get(hub_field, {}).get(str(rest[1]), rest[1])}"
            return f"{where}: {row}"
        return f"{where}: {'.'.join([source, *map(str, rest)])}"
    hub_field = ".".join(str(x) for x in loc) or "document"
    return f"{where}: {hub_field} (no source field: add {hub_field} to the fields map of resource {r.name})"
