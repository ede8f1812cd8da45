"""devices by group: an index on (group_id, uuid) in place of the one on group_id

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 03:10:00

The gateway list sorted by group name is read group by group, each group's members in uuid
order: with (group_id, uuid) a page is an index range, not a sort of the fleet (0.45 s for a
deep page at 100,000 gateways on PostgreSQL, sorting 60 MB on disk). The new index serves
every lookup the old one did.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_devices_group_id_uuid", "devices", ["group_id", "uuid"], unique=False)
    op.drop_index("ix_devices_group_id", table_name="devices")


def downgrade() -> None:
    op.create_index("ix_devices_group_id", "devices", ["group_id"], unique=False)
    op.drop_index("ix_devices_group_id_uuid", table_name="devices")
