"""The contract every connector passes. A connector's tests inherit `ConnectorContract` and provide
fixtures that start its real peer:

- `connector_cls`: the class under test
- `config`: a config (dict) for the running peer
- `bad_config`: a config the peer refuses or that names something the peer lacks (a ConnectorConfigError)
- `unreachable_config`: a config whose peer does not listen
- `rejection`: an async callable taking an open connector; it makes the peer answer "no"
- `expected_points`: names that `discover()` must list
- `peer_holds`: {name: value} the peer holds right now; `read_values()` must give them back
- `peer_port`: the TCP port the connector talks to (for the socket-leak check)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
import psutil
import pytest

from activities.errors import to_application_error
from connectors.base import Connector
from connectors.errors import ConnectorConfigError, ConnectorUnavailable, DeviceRejected
from workflows.policies import NON_RETRYABLE


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(path, property schema) of every property of the schema and of its $defs."""
    out = []
    for where, node in [("", schema), *((f"$defs.{k}", v) for k, v in schema.get("$defs", {}).items())]:
        for name, prop in node.get("properties", {}).items():
            out.append((f"{where}.{name}".lstrip("."), prop))
    return out


def _client_connections(port: int) -> list[Any]:
    return [c for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]


def _client_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of this loop except the in-process peers' own (servers keep per-connection tasks) and the session's
    Temporal worker's (it starts a poll task each time it takes an activity of another test's workflow)."""
    out = set()
    for t in asyncio.all_tasks():
        code = getattr(t.get_coro(), "cr_code", None)
        filename = code.co_filename if code else ""
        if any(s in filename for s in ("/server/", "/erp_sim/", "/tests/", "pytest_asyncio", "/uvicorn/",
                                      "/temporalio/")):
            continue
        out.add(t)
    return out


class ConnectorContract:
    """Inherit and provide the fixtures above; every test here then runs against the real peer."""

    async def read_values(self, conn: Connector, names: list[str]) -> dict[str, Any]:
        return {r.name: r.value for r in await conn.read_many(names)}

    def assert_same(self, got: dict[str, Any], expected: dict[str, Any]) -> None:
        for name, value in expected.items():
            if isinstance(value, float):
                assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
            else:
                assert got[name] == value, name

    # --- the spec -------------------------------------------------------------------------------------

    def test_spec_is_a_json_schema_with_every_field_titled_and_described(self, connector_cls: type[Connector]):
        assert connector_cls.kind and connector_cls.title and connector_cls.description
        schema = connector_cls.config_schema()
        jsonschema.Draft202012Validator.check_schema(schema)
        props = _properties(schema)
        assert props, "the Config has no fields"
        for path, prop in props:
            assert prop.get("title"), f"{path} has no title"
            assert prop.get("description"), f"{path} has no description"
        secret_like = [p for p, s in props if any(w in p.rsplit(".", 1)[-1] for w in ("secret", "password", "token"))]
        for path in secret_like:
            prop = dict(_properties(schema))[path]
            variants = prop.get("anyOf", [prop])
            assert any(v.get("writeOnly") and v.get("format") == "password" for v in variants), \
                f"{path} looks like a secret but is not a SecretStr"

    def test_config_masks_secrets_in_public_form(self, connector_cls: type[Connector], config: dict[str, Any]):
        cfg = connector_cls.validate_config(config)
        public = connector_cls.public_config(cfg)
        stored = connector_cls.stored_config(cfg)
        assert connector_cls.validate_config(stored) == cfg  # the endpoint row round-trips
        secrets = [name for name, prop in connector_cls.config_schema()["properties"].items()
                   if any(v.get("writeOnly") for v in prop.get("anyOf", [prop]))]
        for name in secrets:
            if stored.get(name) is not None:
                assert public[name] == "**********" and stored[name] != "**********", name

    # --- check ------------------------------------------------------------------------------------------

    async def test_check_succeeds_against_the_peer(self, connector_cls: type[Connector], config: dict[str, Any]):
        result = await connector_cls(config).check()
        assert result.ok, result.message
        assert result.message

    async def test_check_with_bad_config_gives_a_clear_message(self, connector_cls: type[Connector],
                                                               bad_config: dict[str, Any]):
        result = await connector_cls(bad_config).check()
        assert not result.ok
        assert result.error == "ConnectorConfigError", result
        assert result.field, f"the message should name the field at fault: {result.message}"
        assert len(result.message) > 20

    async def test_unreachable_peer_is_transient_and_retried(self, connector_cls: type[Connector],
                                                             unreachable_config: dict[str, Any],
                                                             peer_holds: dict[str, Any]):
        result = await connector_cls(unreachable_config).check()
        assert not result.ok and result.error == "ConnectorUnavailable", result
        with pytest.raises(ConnectorUnavailable) as info:
            async with connector_cls(unreachable_config) as conn:
                await self.read_values(conn, list(peer_holds))
        app_error = to_application_error(info.value)
        assert app_error.non_retryable is False and app_error.type not in NON_RETRYABLE

    async def test_a_rejection_is_not_retried(self, connector_cls: type[Connector], config: dict[str, Any],
                                              rejection: Callable[[Connector], Awaitable[Any]]):
        with pytest.raises(DeviceRejected) as info:
            async with connector_cls(config) as conn:
                await rejection(conn)
        assert info.value.message
        app_error = to_application_error(info.value)
        assert app_error.non_retryable is True and app_error.type in NON_RETRYABLE

    def test_a_wrong_config_fails_fast_naming_the_field(self, connector_cls: type[Connector],
                                                        config: dict[str, Any]):
        wrong = {**config, "no_such_field": 1}
        with pytest.raises(ConnectorConfigError) as info:
            connector_cls(wrong)
        assert info.value.field == "no_such_field" and "no_such_field" in info.value.message

    # --- discover and read ----------------------------------------------------------------------------

    async def test_discover_lists_points(self, connector_cls: type[Connector], config: dict[str, Any],
                                         expected_points: set[str]):
        async with connector_cls(config) as conn:
            points = await conn.discover()
        assert expected_points <= {p.name for p in points}

    async def test_read_round_trips_what_the_peer_holds(self, connector_cls: type[Connector],
                                                        config: dict[str, Any], peer_holds: dict[str, Any]):
        async with connector_cls(config) as conn:
            got = await self.read_values(conn, list(peer_holds))
        self.assert_same(got, peer_holds)

    async def test_no_task_or_socket_leaks(self, connector_cls: type[Connector], config: dict[str, Any],
                                           peer_holds: dict[str, Any], peer_port: int):
        async def cycle() -> None:
            async with connector_cls(config) as conn:
                await conn.check()
                await conn.discover()
                await self.read_values(conn, list(peer_holds))

        await cycle()  # first use may fill process-wide caches (a WSDL, a registry)
        tasks_before = _client_tasks()
        for _ in range(3):
            await cycle()
        for _ in range(50):  # a closing transport finishes on the next loop turns
            leaked_tasks = _client_tasks() - tasks_before
            sockets = _client_connections(peer_port)
            if not leaked_tasks and not sockets:
                break
            await asyncio.sleep(0.05)
        assert not leaked_tasks, f"tasks left running: {leaked_tasks}"
        assert not sockets, f"sockets left open to the peer: {sockets}"
