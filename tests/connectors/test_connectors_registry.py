"""The registry: built-in connectors plus the `tracehub.connectors` entry point group. An out-of-tree
connector (tests/fixtures/tracehub-sics, a separate distribution) is found, passes the contract, and is
used through the endpoints API; a connector that fails to load stops the worker with its name."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Connector
from connectors.errors import ConnectorLoadError
from connectors.registry import ENTRY_POINT_GROUP, connector_class, load_connectors
from tests.connectors.contract import ConnectorContract
from tests.connectors.peers import SicsScaleSim, free_port

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "tests" / "fixtures" / "tracehub-sics"


def ensure_sics_installed() -> None:
    """`make install` installs the test distribution; install it here too when pytest runs on its own."""
    if any(ep.name == "sics" for ep in entry_points(group=ENTRY_POINT_GROUP)):
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(DIST)], check=True)
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def sics_cls() -> type[Connector]:
    ensure_sics_installed()
    return load_connectors()["sics"]


def test_out_of_tree_connector_is_found_by_its_entry_point(sics_cls: type[Connector]):
    ep = next(ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "sics")
    assert ep.dist is not None and ep.dist.name == "tracehub-sics"
    assert sics_cls.__module__ == "tracehub_sics" and sics_cls.kind == "sics"
    assert connector_class("sics") is sics_cls
    # it lives outside the hub's source tree: nothing in workflows/, activities/ or api/ names it
    for folder in ("workflows", "activities", "api", "connectors"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not re.search(r"\bsics\b|tracehub_sics", path.read_text(), re.IGNORECASE), \
                f"{path} names the out-of-tree connector"


def test_the_template_meets_the_spec_part_of_the_contract():
    from connectors._template.connector import TemplateConnector

    ConnectorContract().test_spec_is_a_json_schema_with_every_field_titled_and_described(TemplateConnector)
    with pytest.raises(Exception, match="password"):
        raise TemplateConnector({"host": "h"})._translate(PermissionError("denied"))


def test_builtins_are_all_there():
    assert {"erpnext", "rest", "soap", "modbus", "opcua", "mqtt"} <= set(load_connectors())


def test_a_connector_that_fails_to_load_names_itself():
    broken = EntryPoint(name="broken", value="no_such_module_anywhere:Thing", group=ENTRY_POINT_GROUP)
    with pytest.raises(ConnectorLoadError) as info:
        load_connectors([broken])
    assert "'broken'" in str(info.value) and "no_such_module_anywhere" in str(info.value)


def test_an_entry_point_that_is_not_a_connector_or_misnamed_is_refused():
    with pytest.raises(ConnectorLoadError, match="not a subclass"):
        load_connectors([EntryPoint(name="path", value="pathlib:Path", group=ENTRY_POINT_GROUP)])
    with pytest.raises(ConnectorLoadError, match="entry point name must equal its kind"):
        load_connectors([EntryPoint(name="scale", value="connectors.modbus:ModbusConnector", group=ENTRY_POINT_GROUP)])
    with pytest.raises(ConnectorLoadError, match="clashes"):
        load_connectors([EntryPoint(name="modbus", value="connectors.modbus:ModbusConnector", group=ENTRY_POINT_GROUP)])


def test_the_worker_stops_naming_a_connector_that_fails_to_load(tmp_path: Path):
    """A distribution on the path whose entry point cannot load: the worker exits at once, saying which."""
    info = tmp_path / "tracehub_broken_plc-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tracehub-broken-plc\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbrokenplc = tracehub_broken_plc:Connector\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HUB_TEMPORAL__ADDRESS": f"127.0.0.1:{free_port()}",
           "HUB_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"}
    proc = subprocess.run([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "brokenplc" in out and "tracehub-broken-plc" in out and "tracehub_broken_plc" in out, out[-2000:]


@pytest.mark.usefixtures("sics_cls")
class TestSicsContract(ConnectorContract):
    @pytest.fixture
    def connector_cls(self, sics_cls: type[Connector]) -> type[Connector]:
        return sics_cls

    @pytest.fixture
    def config(self, scale: SicsScaleSim) -> dict[str, Any]:
        scale.overload = False
        return scale.endpoint_config()

    @pytest.fixture
    def bad_config(self, scale: SicsScaleSim) -> dict[str, Any]:
        return scale.endpoint_config(unit="lb")

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": free_port(), "timeout_s": 1}

    @pytest.fixture
    def rejection(self, scale: SicsScaleSim):
        async def overload(conn: Connector) -> None:
            scale.overload = True
            try:
                await conn.read("weight")
            finally:
                scale.overload = False
        return overload

    @pytest.fixture
    def expected_points(self) -> set[str]:
        return {"weight", "weight_now", "serial_number"}

    @pytest.fixture
    def peer_holds(self, scale: SicsScaleSim) -> dict[str, Any]:
        scale.weight = 25.125
        return {"weight": 25.125, "serial_number": scale.serial}

    @pytest.fixture
    def peer_port(self, scale: SicsScaleSim) -> int:
        return scale.port
