"""PostgreSQL privileges of the application's role: the audit trail is append-only for it.

Two roles (deploy/postgres-init/01-tracehub.sql, docker-compose.yml):

- the owner role owns the database and its tables; `tracehub migrate` (hub-migrate) runs as it, and only
  migrations do. An owner can drop the audit trigger or the table itself, so nothing that serves requests
  connects as it.
- the application's role (settings `database.app_role`, HUB_DATABASE__APP_ROLE) is the login of the API and
  the worker: it reads and writes the rows of every table, but on audit_log it may only SELECT and INSERT.
  It owns nothing, so it cannot ALTER TABLE audit_log DISABLE TRIGGER, TRUNCATE it, or reset its sequence.

migrations/versions/0019_audit_app_role.py calls these functions; `tracehub migrate` calls grant_app_role again
after every upgrade (it is idempotent), so a role named after that migration ran gets its grants too.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

AUDIT_TABLE = "audit_log"
# the schema version is the migrations' business: the application may read it, not change it
READ_ONLY_TABLES = ("alembic_version",)


def revoke_audit_changes_from_public(conn: Connection) -> None:
    """Nobody but the owner may change or empty the audit trail (PUBLIC has no such grant by default either:
    this makes it explicit, and undoes a grant made by hand)."""
    conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {AUDIT_TABLE} FROM PUBLIC"))


def _check_role(conn: Connection, role: str) -> None:
    row = conn.execute(text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if row is None:
        raise RuntimeError(f"database.app_role: role {role!r} does not exist; create it first (CREATE ROLE "
                           f"{role} LOGIN PASSWORD ...; see deploy/postgres-init/01-tracehub.sql) or unset "
                           "HUB_DATABASE__APP_ROLE")
    if row.rolsuper:
        raise RuntimeError(f"database.app_role: role {role!r} is a superuser, which no privilege restrains; "
                           "name a plain login role")
    owner = conn.execute(text("SELECT tableowner FROM pg_tables WHERE tablename = :t "
                              "AND schemaname = current_schema()"), {"t": AUDIT_TABLE}).scalar()
    if owner is not None and conn.execute(text("SELECT pg_has_role(:r, :o, 'USAGE')"),
                                          {"r": role, "o": owner}).scalar():
        raise RuntimeError(f"database.app_role: role {role!r} is (or acts as) {owner!r}, the owner of "
                           f"{AUDIT_TABLE}, and could disable its trigger; use a separate login role that is "
                           "not a member of the owner role")


def grant_app_role(conn: Connection, role: str) -> None:
    """Grant `role` what the API and the worker need: SELECT, INSERT, UPDATE, DELETE on every table and the use
    of every sequence of the current schema, but only SELECT and INSERT on audit_log (and nextval on its
    sequence, not setval); and the same on tables and sequences the connected (owner) role creates later.
    Idempotent. Run it as the owner role that the migrations run as."""
    _check_role(conn, role)
    q = conn.dialect.identifier_preparer.quote
    r = q(role)
    schema = q(conn.execute(text("SELECT current_schema()")).scalar_one())
    revoke_audit_changes_from_public(conn)
    for st in (
        f"GRANT USAGE ON SCHEMA {schema} TO {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {r}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {r}",
        # later tables and sequences (other migrations' branches run after this one) follow
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r}",
        # the audit trail: read and append only
        f"REVOKE ALL ON {AUDIT_TABLE} FROM {r}",
        f"GRANT SELECT, INSERT ON {AUDIT_TABLE} TO {r}",
    ):
        conn.execute(text(st))
    seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": AUDIT_TABLE}).scalar()
    if seq is not None:  # nextval only: setval (UPDATE) could make the next entry reuse a position
        conn.execute(text(f"REVOKE ALL ON SEQUENCE {seq} FROM {r}"))
        conn.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE {seq} TO {r}"))
    for table in READ_ONLY_TABLES:
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None:
            conn.execute(text(f"REVOKE INSERT, UPDATE, DELETE ON {q(table)} FROM {r}"))


def revoke_app_role(conn: Connection, role: str) -> None:
    """Undo grant_app_role (the migration's downgrade)."""
    if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is None:
        return
    q = conn.dialect.identifier_preparer.quote
    r = q(role)
    schema = q(conn.execute(text("SELECT current_schema()")).scalar_one())
    for st in (
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE USAGE, SELECT, UPDATE ON SEQUENCES FROM {r}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {r}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {r}",
    ):
        conn.execute(text(st))
