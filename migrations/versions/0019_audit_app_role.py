"""audit log: the application's database role may read and append to it, never change or empty it

Revision ID: 0019_audit_app_role
Revises: 0005_audit

0005_audit's trigger refuses UPDATE, DELETE and TRUNCATE on audit_log, but the table's owner can disable a
trigger. So on PostgreSQL the hub runs with two roles (migrations/app_role.py):

- migrations (`tracehub migrate`, the hub-migrate service) run as the database's owner role;
- the API and the worker (hub-api, hub-worker) connect as the application's role, named by the setting
  `database.app_role` (HUB_DATABASE__APP_ROLE): rows of every table, but only SELECT and INSERT on audit_log.
  Not the owner, it cannot disable the trigger, truncate the table or alter it.

This revision revokes UPDATE, DELETE and TRUNCATE on audit_log from PUBLIC and, when the setting names a role,
grants it its privileges, with default privileges so that tables later migrations create follow. SQLite has no
roles: nothing to do there (its triggers from 0005 stay the guard).
"""
from __future__ import annotations

from alembic import op

from core.settings import Settings
from migrations.app_role import grant_app_role, revoke_app_role, revoke_audit_changes_from_public

revision = "0019_audit_app_role"
down_revision = "0005_audit"
branch_labels = None
depends_on = None


def _app_role() -> str | None:
    return Settings().database.app_role


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    revoke_audit_changes_from_public(conn)
    role = _app_role()
    if role:
        grant_app_role(conn, role)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    role = _app_role()
    if role:
        revoke_app_role(conn, role)
