"""Connectors by kind: the built-in ones plus every `tracehub.connectors` entry point.

A connector shipped in a separate distribution declares, in its pyproject.toml:

    [project.entry-points."tracehub.connectors"]
    linescale = "tracehub_linescale:LineScaleConnector"

and is found without editing the hub. A connector that fails to load raises ConnectorLoadError naming
it (the worker stops with that message); it is never skipped silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from connectors.base import Connector, ConnectorConfig
from connectors.errors import ConnectorLoadError

ENTRY_POINT_GROUP = "tracehub.connectors"

# kind -> "module:Class"; imported on first use so a process that needs none pays for none
BUILTIN: dict[str, str] = {
    "erpnext": "connectors.erpnext:ErpnextConnector",
    "rest": "connectors.rest:RestConnector",
    "soap": "connectors.soap:SoapConnector",
    "modbus": "connectors.modbus:ModbusConnector",
    "opcua": "connectors.opcua:OpcuaConnector",
    "mqtt": "connectors.mqtt:MqttConnector",
}

_loaded: dict[str, type[Connector]] | None = None


def _check_class(obj: object, kind: str, origin: str) -> type[Connector]:
    if not (isinstance(obj, type) and issubclass(obj, Connector)):
        raise ConnectorLoadError(f"connector {kind!r} ({origin}) is not a subclass of connectors.base.Connector")
    if obj.kind != kind:
        raise ConnectorLoadError(
            f"connector {kind!r} ({origin}) declares kind {obj.kind!r}: the entry point name must equal its kind")
    if not (isinstance(obj.Config, type) and issubclass(obj.Config, ConnectorConfig)):
        raise ConnectorLoadError(f"connector {kind!r} ({origin}): Config must subclass ConnectorConfig")
    return obj


def _load_builtin(kind: str, spec: str) -> type[Connector]:
    module, _, name = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except Exception as exc:
        raise ConnectorLoadError(
            f"built-in connector {kind!r} ({spec}) failed to load: {type(exc).__name__}: {exc}; "
            "reinstall the hub (make install)") from exc
    return _check_class(obj, kind, spec)


def load_connectors(eps: Iterable[EntryPoint] | None = None) -> dict[str, type[Connector]]:
    """Every connector class by kind; raises ConnectorLoadError naming the first that fails."""
    found = {kind: _load_builtin(kind, spec) for kind, spec in BUILTIN.items()}
    for ep in eps if eps is not None else entry_points(group=ENTRY_POINT_GROUP):
        dist = f"distribution {ep.dist.name} {ep.dist.version}" if ep.dist else "an unknown distribution"
        origin = f"entry point {ep.value!r} from {dist}"
        if ep.name in found:
            raise ConnectorLoadError(f"connector {ep.name!r} ({origin}) clashes with a connector of the same kind; "
                                     "rename its entry point and kind")
        try:
            obj = ep.load()
        except Exception as exc:
            raise ConnectorLoadError(
                f"connector {ep.name!r} ({origin}) failed to load: {type(exc).__name__}: {exc}; "
                "fix or uninstall that distribution") from exc
        found[ep.name] = _check_class(obj, ep.name, origin)
    return found


def connectors(*, reload: bool = False) -> dict[str, type[Connector]]:
    """The loaded registry (loaded once per process)."""
    global _loaded
    if _loaded is None or reload:
        _loaded = load_connectors()
    return _loaded


def connector_class(kind: str) -> type[Connector]:
    if kind in BUILTIN and (_loaded is None or kind not in _loaded):
        return _load_builtin(kind, BUILTIN[kind])
    known = connectors()
    if kind not in known:
        known = connectors(reload=True)  # installed since this process started
    try:
        return known[kind]
    except KeyError:
        raise KeyError(f"no connector of kind {kind!r}; known kinds: {sorted(known)}") from None
