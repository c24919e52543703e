"""Timeouts and retry policies of the calls that go through connectors (equipment, certificate
services, ERP polling). Outages are retried without end, at most a minute apart, and the work order's
status says what it waits for; rejections (the taxonomy's non-retryable kinds) are not retried."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from workflows.policies import NON_RETRYABLE

DEVICE_TIMEOUT = timedelta(seconds=30)
DEVICE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    non_retryable_error_types=NON_RETRYABLE,
)
CERTIFICATE_TIMEOUT = timedelta(seconds=60)


def sampling_timeouts(every_s: float, for_s: float | None) -> tuple[timedelta, timedelta]:
    """(start_to_close, heartbeat) for a sampler: long enough for the whole window, and a heartbeat
    timeout a few intervals long, so a sampler whose worker died is retried (resumed) soon."""
    heartbeat = timedelta(seconds=max(3 * every_s, 2.0))
    total = timedelta(seconds=(for_s or 7 * 86400) + 60)
    return total, heartbeat


POLL_TIMEOUT = timedelta(minutes=5)
POLL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,  # the next scheduled poll tries again anyway
    non_retryable_error_types=NON_RETRYABLE,
)
