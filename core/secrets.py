"""The hub's secret key, and encryption of what it keeps secret at rest (endpoint configs with their passwords,
API keys and webhook secrets).

The key is a Fernet key (AES-128-CBC + HMAC-SHA256, with a timestamp): `HUB_SECRET_KEY` when set (production:
the same value for the API, the worker and `tracehub migrate`), otherwise the file `var/secret-key`, created
with mode 0600 the first time a process of this installation needs it (the embedded set-up of `make run`
and the tests, whose processes share one `var/`). Values are stored as `enc:v1:<token>`; a value without
the prefix is read as written before encryption (migration 0015 encrypts those in place).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from core.errors import HubError

PREFIX = "enc:v1:"
KEY_FILE = Path("var") / "secret-key"

_box: SecretBox | None = None


class SecretKeyError(HubError):
    kind = "SecretKeyError"


class SecretBox:
    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise SecretKeyError("HUB_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes): make one "
                                 "with `python -c 'from cryptography.fernet import Fernet; "
                                 "print(Fernet.generate_key().decode())'`", field="HUB_SECRET_KEY") from exc

    def seal(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretKeyError("a stored secret cannot be decrypted with this installation's key (HUB_SECRET_KEY "
                                 "or var/secret-key changed): restore the key, or enter the endpoint's config "
                                 "again (PUT /api/endpoints/{name})") from None


def sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def box() -> SecretBox:
    """The installation's box: from HUB_SECRET_KEY, else var/secret-key (created on first use)."""
    global _box
    if _box is None:
        key = os.environ.get("HUB_SECRET_KEY")
        _box = SecretBox(key.strip() if key else _key_file())
    return _box


def configure(key: str | bytes | None) -> None:
    """Use this key from now on (None: back to HUB_SECRET_KEY or var/secret-key at the next use)."""
    global _box
    _box = SecretBox(key) if key else None


def _key_file() -> bytes:
    KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    with contextlib.suppress(FileExistsError):  # another process of this installation made it first: use that
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
    for _ in range(50):  # written by the process that created it, a moment ago
        if key := KEY_FILE.read_bytes().strip():
            return key
        time.sleep(0.01)
    raise SecretKeyError(f"{KEY_FILE} is empty: delete it (a new key is made) or restore the installation's key")
