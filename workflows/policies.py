"""Named timeouts and retry policies: every activity call names one of these."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Business-rule errors never heal by retrying; connector outages and database contention do.
NON_RETRYABLE = ["NotFound", "Conflict", "InvalidInput", "ConnectorConfigError", "DeviceRejected", "ProtocolError"]

DB_TIMEOUT = timedelta(seconds=15)
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=NON_RETRYABLE,
)
# A short database write run as a local activity (in the worker) retries as DB_RETRY does for 6 attempts (about 6 s:
# a blip), then gives up: the workflow runs it again as a regular activity, retried with DB_RETRY until the database
# is back and visible in the history's pending list meanwhile. Bounded by attempts, not schedule_to_close: the SDK
# (temporalio 1.35) kept retrying a local activity past its schedule_to_close_timeout.
DB_LOCAL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=6,
    non_retryable_error_types=NON_RETRYABLE,
)

ERP_TIMEOUT = timedelta(seconds=30)
# The ERP may be down for hours: retry forever, at most a minute apart, and let status say so.
ERP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    non_retryable_error_types=NON_RETRYABLE,
)
