"""Request limits.

`BodySizeLimit`: a body over the route's limit is refused with 413 before it is read, or as soon as the bytes
read so far pass the limit. A body is never buffered there, so an endless chunked upload costs at most `limit`
bytes of memory. A plain ASGI middleware (not BaseHTTPMiddleware, which would buffer and wrap every request);
it runs before routing and authentication: a client declaring a gigabyte is refused without a database look-up.

`refuse_nul_characters`: an app-wide dependency that refuses the NUL character (U+0000) in a path or query
parameter or in a JSON body, naming where it is (422). PostgreSQL text cannot hold it: without this check the
driver's error surfaced as a 500 from every route that stores or looks up what it was sent. It refuses NaN and
Infinity in a JSON body the same way (422 naming the field).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import Request

from core.errors import InvalidInput
from core.values import first_at, non_finite_at

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# EPCIS clients expect RFC 7807 problems typed epcisException:... (api/routes/epcis.py); they get the same
# refusal in that shape, with the hub's `error` and `detail` too
_EPCIS_PREFIX = "/epcis"


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies larger than `default` bytes, or than `routes[(method, path)]` for that route."""

    def __init__(self, app: ASGIApp, *, default: int, routes: Mapping[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.default = default
        self.routes = dict(routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = self.routes.get((method, path), self.default)
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, path, 400, "InvalidInput",
                          "the Content-Length header is not a whole number of bytes: send a valid one, or none "
                          "(chunked)", limit=None)
            return
        if declared is not None and declared > limit:
            await _refuse(send, method, path, limit, f"Content-Length says {declared} bytes")
            return

        received = 0
        refused = False
        started = False

        async def receive_within_limit() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise _TooLarge
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if refused:
                return  # whatever the app makes of the cut-off body (FastAPI: a 400), the answer is our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_unless_refused)
        except _TooLarge:
            if started:
                raise  # the app answered before it read the body: nothing sensible can follow
        if refused and not started:
            await _refuse(send, method, path, limit, f"more than {limit} bytes were sent")


def _content_length(scope: Scope) -> int | None:
    """The declared length; None without one; -1 for a value that is not a length."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            v = value.strip()
            return int(v) if v.isdigit() else -1
    return None


async def _refuse(send: Send, method: str, path: str, limit: int, what: str) -> None:
    await _answer(send, path, 413, "PayloadTooLarge",
                  f"the request body is too large: {what}; the limit is {limit} bytes for {method} {path}. "
                  "Send a smaller body, or split it into several requests", limit=limit)


async def _answer(send: Send, path: str, status: int, error: str, detail: str, *, limit: int | None) -> None:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if limit is not None:
        body["limit"] = limit
    media = "application/json"
    if path == _EPCIS_PREFIX or path.startswith(_EPCIS_PREFIX + "/"):
        name = "CaptureLimitExceededException" if status == 413 else "ValidationException"
        body = {"type": f"epcisException:{name}", "title": name, "status": status, **body}
        media = "application/problem+json"
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", media.encode()), (b"content-length", str(len(raw)).encode()),
        # the unread rest of the body cannot be skipped on this connection
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": raw})


def _nul_at(value: Any) -> str | None:
    """The dotted path of the first string (or key) holding a NUL character, if any."""
    return first_at(value, lambda v: isinstance(v, str) and "\x00" in v)


def _refuse_nul(field: str) -> InvalidInput:
    return InvalidInput(f"{field}: contains the NUL character (U+0000), which the hub cannot store; remove it",
                        field=field)


async def refuse_nul_characters(request: Request) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise _refuse_nul(name)
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise _refuse_nul(name.replace("\x00", "\\u0000") or "query")
    if getattr(request.state, "signed_webhook", False):
        return  # its route checks the signature before anything looks into the body, then the body
    await refuse_nul_in_body(request)


async def refuse_nul_in_body(request: Request) -> None:
    if "json" in request.headers.get("content-type", ""):
        raw = await request.body()  # FastAPI reads a JSON body whole anyway; the size limit bounds it
        nul = b"\\u0000" in raw  # JSON text can only carry NUL escaped; no escape, nothing to parse
        # NaN, Infinity and -Infinity are not JSON, but Python's parser (FastAPI's) takes them as numbers: a
        # measurement or quantity sent so was accepted, then could not travel to its workflow (Temporal's JSON
        # has no such numbers) and was dropped after a 202. Only a body holding the words is parsed to look.
        non_finite = b"NaN" in raw or b"Infinity" in raw
        if nul or non_finite:
            try:
                doc = json.loads(raw)
            except ValueError:
                return  # not JSON: the route says so in its own words
            if nul and (found := _nul_at(doc)) is not None:
                raise _refuse_nul(found or "body")
            if non_finite and (found := non_finite_at(doc)) is not None:
                raise InvalidInput(f"{found or 'body'}: NaN and Infinity are not numbers JSON allows: send a finite "
                                   "number (or null where the field may be empty)", field=found or "body")



async def read_bounded(request: Request, limit: int) -> bytes | None:
    """A handler's own bounded read (an upload with its own limit): the body, or None as soon as it is known to
    exceed `limit`. Never more than `limit` bytes are held."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)
