"""epcis_ns_iri: EPCIS extension prefixes are bound per captured document, not by one global table

Revision ID: 0023_epcis_ns_iri
Revises: 0003_trace (epcis_namespace, epcis_error_declaration; epcis_event is 0001's, which 0003 follows)

Before: `epcis_namespace` kept one IRI per prefix (the first captured won), and query answers declared every
prefix with it, so a second partner's `ex:` fields came back under the first partner's namespace.
After:
- `epcis_event.namespaces` and `epcis_error_declaration.namespaces` (JSON, NULL allowed) keep the prefixes of
  the document each event was captured with; `epcis_named_query.namespaces` the IRIs a named query's extension
  parameters meant when it was created;
- `epcis_namespace` keeps every (prefix, IRI) binding seen, primary key (prefix, iri); `legacy` marks the rows
  that were there before this migration.
Existing events keep `namespaces` NULL and are read with the legacy bindings, which are exactly what they were
read with before, so nothing is lost and no event row is rewritten (the event log can be large). Runs on
PostgreSQL and SQLite: the namespace table is small and is rebuilt rather than altered (SQLite cannot change a
primary key in place).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023_epcis_ns_iri"
down_revision = "0003_trace"
branch_labels = None
depends_on = None

_NEW = "epcis_namespace_0023"


def upgrade() -> None:
    op.add_column("epcis_event", sa.Column("namespaces", sa.JSON(), nullable=True))
    op.add_column("epcis_error_declaration", sa.Column("namespaces", sa.JSON(), nullable=True))
    op.add_column("epcis_named_query", sa.Column("namespaces", sa.JSON(), nullable=True))
    new = op.create_table(
        _NEW,
        sa.Column("prefix", sa.String(64), nullable=False),
        sa.Column("iri", sa.String(300), nullable=False),
        sa.Column("legacy", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("prefix", "iri", name="pk_epcis_namespace_binding"),
    )
    old = sa.table("epcis_namespace", sa.column("prefix", sa.String), sa.column("iri", sa.String))
    op.execute(new.insert().from_select(["prefix", "iri", "legacy"],
                                        sa.select(old.c.prefix, old.c.iri, sa.true())))
    op.drop_table("epcis_namespace")
    op.rename_table(_NEW, "epcis_namespace")


def downgrade() -> None:
    # back to one IRI per prefix: the legacy binding where there is one, else the alphabetically first IRI
    old = op.create_table(
        _NEW,
        sa.Column("prefix", sa.String(64), nullable=False),
        sa.Column("iri", sa.String(300), nullable=False),
        sa.PrimaryKeyConstraint("prefix", name="pk_epcis_namespace_prefix"),
    )
    cur = sa.table("epcis_namespace", sa.column("prefix", sa.String), sa.column("iri", sa.String),
                   sa.column("legacy", sa.Boolean))
    ranked = sa.select(cur.c.prefix, cur.c.iri, sa.func.row_number().over(
        partition_by=cur.c.prefix, order_by=(cur.c.legacy.desc(), cur.c.iri)).label("n")).subquery()
    op.execute(old.insert().from_select(["prefix", "iri"],
                                        sa.select(ranked.c.prefix, ranked.c.iri).where(ranked.c.n == 1)))
    op.drop_table("epcis_namespace")
    op.rename_table(_NEW, "epcis_namespace")
    for table in ("epcis_named_query", "epcis_error_declaration", "epcis_event"):
        # DROP COLUMN in place on both (SQLite >= 3.35): batch mode would copy the whole event log on SQLite
        op.execute(f"ALTER TABLE {table} DROP COLUMN namespaces")
