"""sealed endpoint configs: encrypt the configs (with their passwords, API keys and webhook secrets) stored before

Revision ID: 0016_sealed
Revises: 0004_connectors
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from core import secrets

revision = "0016_sealed"
down_revision = "0004_connectors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Every plain config becomes `enc:v1:<token>` under the installation's key (HUB_SECRET_KEY or
    var/secret-key, as the hub's processes use: core/secrets.py)."""
    conn = op.get_bind()
    endpoint = sa.table("endpoint", sa.column("id", sa.Integer), sa.column("config", sa.JSON))
    for pk, config in conn.execute(sa.select(endpoint.c.id, endpoint.c.config)).all():
        if config is None or secrets.sealed(config):
            continue
        plain = json.loads(config) if isinstance(config, str) else config
        conn.execute(endpoint.update().where(endpoint.c.id == pk).values(
            config=secrets.box().seal(json.dumps(plain, sort_keys=True, default=str))))


def downgrade() -> None:
    conn = op.get_bind()
    endpoint = sa.table("endpoint", sa.column("id", sa.Integer), sa.column("config", sa.JSON))
    for pk, config in conn.execute(sa.select(endpoint.c.id, endpoint.c.config)).all():
        if secrets.sealed(config):
            conn.execute(endpoint.update().where(endpoint.c.id == pk).values(
                config=json.loads(secrets.box().open(config))))
