"""The only place hub and connector errors become Temporal ApplicationErrors."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from temporalio.exceptions import ApplicationError

from connectors.errors import ConnectorError
from core.errors import HubError

P = ParamSpec("P")
R = TypeVar("R")


def to_application_error(exc: BaseException) -> BaseException:
    if isinstance(exc, HubError):
        return ApplicationError(exc.message, {"field": exc.field}, type=exc.kind, non_retryable=True)
    if isinstance(exc, ConnectorError):
        return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=not exc.retryable)
    if isinstance(exc, (IntegrityError, OperationalError)):
        # a concurrent writer or a database outage: the next attempt sees the committed state
        return ApplicationError(f"database: {type(exc).__name__}: {str(exc)[:300]}", type="DatabaseBusy")
    return exc


def translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ApplicationError:
            raise
        except Exception as exc:
            mapped = to_application_error(exc)
            if mapped is exc:
                raise
            # no chained traceback: Temporal keeps failures small, and the message says it all
            raise mapped from None

    return wrapper
