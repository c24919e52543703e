"""`tracehub audit head` and `tracehub audit verify --expect SEQ:HASH`: entries removed from the end of the chain
leave no trace in the chain itself; a head kept elsewhere finds them."""

from __future__ import annotations

import asyncio
import re

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from core.db import sync_url
from tests.test_audit import _tamper, _write, fresh_db  # noqa: F401  (fresh_db: a database of its own)
from tracehub_cli import app as cli


def _run(url: str, *args: str):
    return CliRunner().invoke(cli, ["audit", *args], env={"HUB_DATABASE__URL": url, "COLUMNS": "400"})


def _again(url: str, statement: str) -> None:
    """More of it, once _tamper has put the database's guard out of the way."""
    engine = create_engine(sync_url(url))
    with engine.begin() as c:
        c.execute(text(statement))
    engine.dispose()


def _text(out) -> str:
    return " ".join(out.output.split())


def test_head_and_verify_expect_find_a_removed_tail(fresh_db: str):  # noqa: F811
    asyncio.run(_write(fresh_db, 6, writers=1))
    out = _run(fresh_db, "head")
    assert out.exit_code == 0, out.output
    head = out.output.strip()
    assert re.fullmatch(r"\d+:[0-9a-f]{64}", head), head
    seq = int(head.split(":")[0])
    out = _run(fresh_db, "verify", "--expect", head)
    assert out.exit_code == 0 and f"audit trail intact: {seq} entries" in _text(out), out.output

    # someone with the owner's rights deletes the two newest entries: the rest of the chain is still whole
    _tamper(fresh_db, f"DELETE FROM audit_log WHERE seq > {seq - 2}")
    out = _run(fresh_db, "verify")
    assert out.exit_code == 0 and f"intact: {seq - 2} entries" in _text(out), out.output
    # ... but not what was kept as its head
    out = _run(fresh_db, "verify", "--expect", head)
    assert out.exit_code == 1, out.output
    assert f"entries {seq - 1}-{seq} removed from the end of the chain: it ends at entry {seq - 2}" in _text(out)
    assert "NOT intact" in out.output
    # one entry short
    out = _run(fresh_db, "head")
    shorter = out.output.strip()
    _again(fresh_db, f"DELETE FROM audit_log WHERE seq = {seq - 2}")
    out = _run(fresh_db, "verify", "--expect", shorter)
    assert out.exit_code == 1 and f"entry {seq - 2} removed from the end of the chain" in _text(out), out.output

    # new entries fill the positions again: the chain is whole, but entry `seq` is not the one kept
    asyncio.run(_write(fresh_db, 3, writers=1))
    assert _run(fresh_db, "verify").exit_code == 0
    out = _run(fresh_db, "verify", "--expect", head)
    assert out.exit_code == 1, out.output
    assert f"entry {seq} is not the entry kept as the head ({head})" in _text(out)
    # the new head verifies
    assert _run(fresh_db, "verify", "--expect", _run(fresh_db, "head").output.strip()).exit_code == 0


def test_verify_expect_refuses_what_is_not_a_head(fresh_db: str):  # noqa: F811
    out = _run(fresh_db, "head")
    assert out.exit_code == 0 and out.output.strip() == "0:" + "0" * 64  # an empty trail: the genesis
    assert _run(fresh_db, "verify", "--expect", out.output.strip()).exit_code == 0
    for bad in ("12", "x:" + "0" * 64, "3:abc"):
        out = _run(fresh_db, "verify", "--expect", bad)
        assert out.exit_code == 2 and "SEQ:HASH" in out.output, out.output
