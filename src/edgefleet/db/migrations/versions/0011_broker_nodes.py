"""broker nodes: leases on their inbound streams, server instances, each gateway's node

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 05:30:00

With several independent broker nodes (``mqtt.nodes``), one server instance at a time
consumes each node's inbound stream under a lease (``broker_leases``); the live instances
(``server_instances``, by heartbeat) share the nodes evenly; a gateway's requests go to the
node its status came through (``devices.broker_node``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from edgefleet.db.migrate import declare_compatible, forget_compatible

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broker_leases",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_broker_leases")),
    )
    op.create_table(
        "server_instances",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_instances")),
    )
    # plain ALTER TABLEs, not a batch: SQLite adds and drops a column in place, and a batch
    # would copy the table without its expression index (0008), which it cannot reflect
    op.add_column("devices", sa.Column("broker_node", sa.String(length=255), nullable=True))
    op.create_index(
        "ix_devices_broker_node_connection_status",
        "devices",
        ["broker_node", "connection_status"],
        unique=False,
    )
    declare_compatible(revision, oldest_code="0010")  # expand: new tables, a nullable column


def downgrade() -> None:
    forget_compatible(revision)
    op.drop_index("ix_devices_broker_node_connection_status", table_name="devices")
    op.drop_column("devices", "broker_node")
    op.drop_table("server_instances")
    op.drop_table("broker_leases")
