"""registered_nodes: broker nodes that register themselves

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 06:30:00

``edgefleet broker-node --advertise`` says, at every key sync, where the servers reach it;
servers with ``mqtt.node_registration`` take the nodes heard from lately as their list (an
auto-scaled tier with no list to keep). Adds a table only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from edgefleet.db.migrate import declare_compatible, forget_compatible

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "registered_nodes",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_registered_nodes")),
    )
    declare_compatible(revision, oldest_code="0011")  # expand: a new table only


def downgrade() -> None:
    forget_compatible(revision)
    op.drop_table("registered_nodes")
