"""Connector error taxonomy. Activities turn these into Temporal retry decisions in one place
(activities/errors.py), the API into HTTP statuses in one place (api/errors.py)."""

from __future__ import annotations


class ConnectorError(Exception):
    """Base: the message says what was wrong and what to do; `field` names the config field at fault."""

    retryable = False

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConnectorConfigError(ConnectorError):
    """Bad URL, credentials or an unknown point: fix the endpoint's configuration."""


class ConnectorUnavailable(ConnectorError):
    """Refused, timed out, 429 or 5xx: the call is retried by its RetryPolicy."""

    retryable = True


class DeviceRejected(ConnectorError):
    """The peer answered no (a SOAP Fault, a Modbus exception response, a 4xx)."""


class ProtocolError(ConnectorError):
    """The peer answered something that is not its protocol."""


class ConnectorLoadError(Exception):
    """A connector (built in or from an entry point) could not be loaded: the worker must not start."""
