"""schema_compat: which code each schema revision runs with

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 05:30:00

Every migration from here on records the oldest code that runs on the schema it makes
(``db/migrate.py``: expand then contract). A server one release behind the database (a
rollback) reads it and runs, instead of refusing every schema but its own.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from edgefleet.db.migrate import declare_compatible, forget_compatible

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "schema_compat",
        sa.Column("revision", sa.String(length=32), nullable=False),
        sa.Column("oldest_code", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_compat")),
    )
    declare_compatible(revision, oldest_code="0009")  # expand: a new table only


def downgrade() -> None:
    forget_compatible(revision)
    op.drop_table("schema_compat")
