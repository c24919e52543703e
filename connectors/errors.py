"""Connector error taxonomy. Activities turn these into Temporal retry decisions in one place."""

from __future__ import annotations


class ConnectorError(Exception):
    """Base: the message says what was wrong and what to do."""

    retryable = False


class ConnectorConfigError(ConnectorError):
    """Bad URL, credentials or an unknown point: fix the endpoint's configuration."""


class ConnectorUnavailable(ConnectorError):
    """Refused, timed out, 429 or 5xx: the call is retried by its RetryPolicy."""

    retryable = True


class DeviceRejected(ConnectorError):
    """The peer answered no."""


class ProtocolError(ConnectorError):
    """The peer answered something that is not its protocol."""
