"""Built-in connectors by kind."""

from __future__ import annotations

from connectors.base import Connector
from connectors.erpnext import ErpnextConnector

BUILTIN: dict[str, type[Connector]] = {ErpnextConnector.kind: ErpnextConnector}


def connector_class(kind: str) -> type[Connector]:
    try:
        return BUILTIN[kind]
    except KeyError:
        raise KeyError(f"no connector of kind {kind!r}; known kinds: {sorted(BUILTIN)}") from None
