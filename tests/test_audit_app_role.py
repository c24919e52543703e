"""On PostgreSQL the application's role (settings database.app_role) may append to the audit trail, and may not
change it, empty it, or switch its guard off (migrations/app_role.py, migration 0019_audit_app_role)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from core.db import sync_url
from migrations import upgrade
from migrations.app_role import grant_app_role
from tests.test_audit import _verify, _write, fresh_db  # noqa: F401  (fresh_db: a database of its own)
from tracehub_cli import _grant_app_role

REFUSED = "permission denied|must be owner"


@pytest.fixture
def postgres_only(db_url: str) -> None:
    if make_url(db_url).get_backend_name() != "postgresql":
        pytest.skip("database roles are PostgreSQL's: on SQLite the triggers of 0005_audit are the guard")


@pytest.fixture
def app_role(postgres_only, db_url: str) -> Iterator[tuple[str, str]]:
    """A throwaway login role that is not a superuser (role name, password); dropped at the end."""
    role, password = f"tracehub_app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = create_engine(sync_url(db_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'"))
    yield role, password
    with admin.connect() as c:  # the tests drop it; a test that failed half-way may not have
        c.execute(text(f"DROP ROLE IF EXISTS {role}"))
    admin.dispose()


def _drop(url: str, role: str) -> None:
    """What the role was granted in this database, then the role (roles are the cluster's)."""
    owner = create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    with owner.connect() as c:
        c.execute(text(f"DROP OWNED BY {role}"))
        c.execute(text(f"DROP ROLE {role}"))
    owner.dispose()


def test_the_app_role_appends_to_the_audit_trail_and_cannot_change_it(app_role, fresh_db: str):  # noqa: F811
    role, password = app_role
    owner = create_engine(sync_url(fresh_db))
    app_url = make_url(fresh_db).set(username=role, password=password).render_as_string(hide_password=False)
    app = create_engine(sync_url(app_url))
    try:
        with owner.begin() as c:
            grant_app_role(c, role)
        _grant_app_role(fresh_db, role)  # what `tracehub migrate` does after every upgrade: the same, again
        # the hub's own append, as the app role: advisory lock, the newest entry, INSERT (and nextval)
        asyncio.run(_write(app_url, 3, writers=1))
        with app.connect() as c:
            assert c.execute(text("SELECT current_user")).scalar() == role
            assert c.execute(text("SELECT count(*) FROM audit_log")).scalar() == 3
        for st in ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
                   "DELETE FROM audit_log WHERE seq = 3",
                   "TRUNCATE audit_log",
                   "ALTER TABLE audit_log DISABLE TRIGGER USER",
                   "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update",
                   "DROP TRIGGER audit_log_no_update ON audit_log",
                   "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), 1)",
                   "UPDATE alembic_version SET version_num = version_num"):
            with pytest.raises(DBAPIError, match=REFUSED), app.begin() as c:
                c.execute(text(st))
        # the rows of the other tables are the application's to write
        with app.begin() as c:
            c.execute(text("UPDATE lot SET location = location WHERE false"))
            c.execute(text("DELETE FROM ncr_decision WHERE false"))
            c.execute(text("INSERT INTO supplier (code, name) VALUES (:c, 'Acme') "), {"c": f"S-{role}"})
            c.execute(text("DELETE FROM supplier WHERE code = :c"), {"c": f"S-{role}"})
        # a table a later migration creates (as the owner) follows, by default privileges
        with owner.begin() as c:
            c.execute(text("CREATE TABLE later_table (id serial PRIMARY KEY, v text)"))
        with app.begin() as c:
            c.execute(text("INSERT INTO later_table (v) VALUES ('x')"))
            c.execute(text("UPDATE later_table SET v = 'y'"))
        report = asyncio.run(_verify(fresh_db))
        assert report.ok and report.entries == 3, report.problems
    finally:
        app.dispose()
        with owner.begin() as c:
            c.execute(text("DROP TABLE IF EXISTS later_table"))
        owner.dispose()
        _drop(fresh_db, role)


def test_the_migration_grants_the_role_the_setting_names(db_url: str, app_role, monkeypatch):
    role, _ = app_role
    u = make_url(db_url)
    name = f"tracehub_role_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sync_url(u.set(database="postgres").render_as_string(hide_password=False)),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = u.set(database=name).render_as_string(hide_password=False)
    owner = create_engine(sync_url(url))
    try:
        monkeypatch.setenv("HUB_DATABASE__APP_ROLE", role)
        upgrade(url)  # every branch: tables created before and after 0019_audit_app_role
        with owner.connect() as c:
            def may(table: str, privilege: str) -> bool:
                return bool(c.execute(text("SELECT has_table_privilege(:r, :t, :p)"),
                                      {"r": role, "t": table, "p": privilege}).scalar())

            tables = c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
            assert "audit_log" in tables and "e_signature" in tables and len(tables) > 20
            assert may("audit_log", "SELECT") and may("audit_log", "INSERT")
            assert not any(may("audit_log", p) for p in ("UPDATE", "DELETE", "TRUNCATE"))
            assert may("alembic_version", "SELECT") and not may("alembic_version", "UPDATE")
            for table in tables:
                if table not in ("audit_log", "alembic_version"):
                    assert all(may(table, p) for p in ("SELECT", "INSERT", "UPDATE", "DELETE")), table
                    assert not may(table, "TRUNCATE"), table
            # PUBLIC has no way to change the trail either
            assert not c.execute(text(
                "SELECT has_table_privilege('public', 'audit_log', 'UPDATE') "
                "OR has_table_privilege('public', 'audit_log', 'DELETE')")).scalar()
    finally:
        owner.dispose()
        _drop(url, role)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_superuser_is_refused_as_the_app_role(postgres_only, fresh_db: str):  # noqa: F811
    owner = create_engine(sync_url(fresh_db))
    with owner.connect() as c:
        me = c.execute(text("SELECT current_user")).scalar()
        with pytest.raises(RuntimeError, match="database.app_role"):
            grant_app_role(c, me)
        with pytest.raises(RuntimeError, match="does not exist"):
            grant_app_role(c, f"nobody_{uuid.uuid4().hex[:8]}")
    owner.dispose()
