"""The first admin created at set-up (`tracehub up`): once, with its password in an owner-only file."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from core.db import make_engine, make_sessionmaker
from core.settings import DatabaseSettings, Settings
from domain import identity
from domain.models_identity import User
from migrations import upgrade
from tracehub_cli import _ensure_first_admin

pytestmark = pytest.mark.asyncio


@pytest.fixture
def empty_db(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database without users, on the backend of the run (the shared one has the test users)."""
    u = make_url(db_url)
    if u.get_backend_name() == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'first-admin.db'}"
        upgrade(url)
        yield url
        return
    name = f"{u.database}_admin_{uuid.uuid4().hex[:6]}"
    admin = create_engine(u.set(drivername="postgresql+psycopg", database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = u.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def test_first_admin_is_created_once_with_an_owner_only_password_file(empty_db: str, tmp_path: Path):
    settings = Settings(database=DatabaseSettings(url=empty_db))
    secret = tmp_path / "var" / "admin-password"
    old_umask = os.umask(0o022)  # the usual umask: a plain write would leave the file world-readable
    created: list[int] = []
    real_open = os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, mode, *args, **kwargs)
        if Path(path) == secret:
            created.append(stat.S_IMODE(os.fstat(fd).st_mode))  # its mode the moment it exists, still empty
        return fd

    try:
        os.open = watching_open  # type: ignore[assignment]
        password = await _ensure_first_admin(settings, password_file=secret)
    finally:
        os.open = real_open  # type: ignore[assignment]
        os.umask(old_umask)
    assert password
    assert created == [0o600], f"the password file was created with mode {[oct(m) for m in created]}"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text() == password + "\n"

    engine = make_engine(empty_db)
    try:
        async with make_sessionmaker(engine)() as s:
            users = (await s.execute(select(User))).scalars().all()
            assert [(u.username, u.roles, u.active) for u in users] == [("admin", ["admin"], True)]
            await identity.check_password(s, "admin", password)  # the file holds the admin's password

        # a second start changes nothing: no second admin, the file and its password stay
        assert await _ensure_first_admin(settings, password_file=secret) is None
        assert secret.read_text() == password + "\n"
        async with make_sessionmaker(engine)() as s:
            assert (await s.execute(select(User.username))).scalars().all() == ["admin"]
            await identity.check_password(s, "admin", password)
    finally:
        await engine.dispose()


async def test_a_password_file_left_readable_is_narrowed_before_the_password_is_written(empty_db: str,
                                                                                         tmp_path: Path):
    secret = tmp_path / "admin-password"
    secret.write_text("stale\n")
    secret.chmod(0o644)
    password = await _ensure_first_admin(Settings(database=DatabaseSettings(url=empty_db)), password_file=secret)
    assert password and secret.read_text() == password + "\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
