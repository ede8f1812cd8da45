"""console: an index per order of the gateway list, each user's language

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 22:30:00

The single-column indexes on display_name, connection_status, model_name and
software_version_key are replaced by (column, uuid) ones: they serve the same filters, and a
page of the list sorted by the column (ties by uuid) is then read from the index in order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPLACED = ("display_name", "connection_status", "model_name", "software_version_key")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("locale", sa.String(length=16), server_default="", nullable=False)
        )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        for column in REPLACED:
            batch_op.drop_index(f"ix_devices_{column}")
            batch_op.create_index(f"ix_devices_{column}_uuid", [column, "uuid"], unique=False)
        batch_op.create_index(
            "ix_devices_connection_changed_at_uuid", ["connection_changed_at", "uuid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_connection_changed_at_uuid")
        for column in REPLACED:
            batch_op.drop_index(f"ix_devices_{column}_uuid")
            batch_op.create_index(f"ix_devices_{column}", [column], unique=False)
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("locale")
