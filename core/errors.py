"""The business error taxonomy. No HTTP, no Temporal here: api/errors.py and activities/errors.py map them."""

from __future__ import annotations


class HubError(Exception):
    """Base of every error a person may see; the message says what was wrong and what to do."""

    kind = "HubError"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(HubError):
    kind = "NotFound"


class Conflict(HubError):
    kind = "Conflict"


class InvalidInput(HubError):
    kind = "InvalidInput"


class Unauthorized(HubError):
    """No valid credentials: log in or send a valid token."""

    kind = "Unauthorized"


class Forbidden(HubError):
    """Authenticated, but the role does not allow this."""

    kind = "Forbidden"
