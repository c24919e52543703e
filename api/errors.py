"""The one place errors become HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)
from core.errors import Conflict, Forbidden, HubError, InvalidInput, NotFound, Unauthorized

log = logging.getLogger(__name__)

STATUS = {NotFound: 404, Conflict: 409, InvalidInput: 422, Unauthorized: 401, Forbidden: 403}
# ApplicationError types raised by workflow update validators
APP_ERROR_STATUS = {"NotFound": 404, "Conflict": 409, "InvalidInput": 422, "Forbidden": 403}


class TemporalUnavailable(HubError):
    kind = "TemporalUnavailable"


# the connector taxonomy (CONVENTIONS.md): config 422, outage 503, the peer said no or answered garbage 502
CONNECTOR_STATUS = {ConnectorConfigError: 422, ConnectorUnavailable: 503, DeviceRejected: 502, ProtocolError: 502}


_TAGS = {"work_order.released", "purchase_receipt.posted", "shipment.requested"}


def _loc(loc: tuple) -> str:
    # drop "body" and the discriminator tag pydantic puts in the path of a tagged union
    return ".".join(str(p) for p in loc if p != "body" and p not in _TAGS) or "body"


def _problem(e: dict) -> str:
    if e["type"] == "string_pattern_mismatch":
        return ("use 1-64 letters, digits or . _ / - starting with a letter or digit"
                if "A-Za-z0-9" in e.get("ctx", {}).get("pattern", "") else e["msg"])
    if e["type"] == "union_tag_invalid":
        return f"unknown event_type; use one of: {', '.join(sorted(_TAGS))}"
    return e["msg"]


def field_of(request: Request, message: str) -> str | None:
    """The request parameter a refusal is about when the code that raised it did not name one: the path or query
    parameter whose value the message quotes (an unknown NCR number, inspection, item...), else the only path
    parameter. None when no parameter fits."""
    params = [*request.path_params.items(), *request.query_params.items()]
    quoted = [name for name, value in params if value != "" and (
        f"'{value}'" in message or f'"{value}"' in message or f" {value} " in f" {message} ".replace(":", " "))]
    if len(set(quoted)) == 1:
        return quoted[0]
    if not quoted and len(request.path_params) == 1:
        return next(iter(request.path_params))
    return None


def _constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint that refused the write, when the driver says (PostgreSQL does)."""
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None) if diag is not None else None


def install(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 503
                      if isinstance(exc, TemporalUnavailable) else 400)
        body = {"error": exc.kind, "detail": exc.message}
        field = exc.field or (field_of(request, exc.message) if status in (404, 409) else None)
        if field:
            body["field"] = field
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ConnectorError)
    async def _connector_error(_: Request, exc: ConnectorError) -> JSONResponse:
        status = next((s for cls, s in CONNECTOR_STATUS.items() if isinstance(exc, cls)), 502)
        body = {"error": type(exc).__name__, "detail": exc.message}
        if exc.field:
            body["field"] = exc.field
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own refusals: a body that is not JSON at all names the body
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            body = {"error": "InvalidInput", "field": "body",
                    "detail": "body: not valid JSON; send a JSON object as the schema of this operation describes"}
        elif exc.status_code == 404:  # no route: the path is what is wrong
            body = {"error": "NotFound", "field": "path",
                    "detail": f"path: no such resource ({request.url.path}); see the API at /docs"}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _loc(e["loc"]), "problem": _problem(e)} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['problem']}" for e in errors)
        return JSONResponse({"error": "InvalidInput", "detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
        # the domain checks before it writes; a constraint still refusing means another request wrote the same
        # record between the check and the write (a race), and this one's transaction was rolled back
        log.warning("%s %s: refused by a database constraint (%s)", request.method, request.url.path,
                    _constraint(exc) or type(exc.orig).__name__)
        which = _constraint(exc)
        return JSONResponse({"error": "Conflict", "detail": (
            "another request wrote the same record at the same moment"
            + (f" (constraint {which})" if which else "")
            + "; nothing of this request was stored: send it again, and it is checked against what is there now")},
            status_code=409)

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("%s %s: database not reachable: %s", request.method, request.url.path, exc.orig)
        return JSONResponse({"error": "DatabaseUnavailable",
                             "detail": "the database is not reachable; nothing was changed: send the request again "
                                       "shortly"}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RPCError)
    async def _rpc(_: Request, exc: RPCError) -> JSONResponse:
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return JSONResponse({"error": "TemporalUnavailable",
                                 "detail": f"Temporal is not reachable ({exc.message}); nothing was changed, "
                                           "send the request again shortly"}, status_code=503)
        if exc.status == RPCStatusCode.NOT_FOUND:
            return JSONResponse({"error": "NotFound", "detail": exc.message}, status_code=404)
        return JSONResponse({"error": "TemporalError", "detail": exc.message}, status_code=502)
