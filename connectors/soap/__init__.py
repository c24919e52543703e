"""The SOAP connector. zeep (and requests, which it imports) load on first use of the connector, not when the
worker imports the answer helpers (flatten): about 20 MB of the worker's memory when no SOAP service is configured."""

import importlib
from typing import Any

from connectors.soap.values import flatten

__all__ = ["SoapConfig", "SoapConnector", "clear_wsdl_cache", "flatten"]


def __getattr__(name: str) -> Any:
    if name in ("SoapConfig", "SoapConnector", "clear_wsdl_cache", "connector"):
        module = importlib.import_module("connectors.soap.connector")  # binds connectors.soap.connector too
        return module if name == "connector" else getattr(module, name)
    raise AttributeError(f"module 'connectors.soap' has no attribute {name!r}")
