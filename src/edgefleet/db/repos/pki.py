"""The certificate authority's row and the device certificates it issued."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import Authority, DeviceCertificate
from edgefleet.errors import DuplicateError


class CertificateRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def authority(self) -> Authority | None:
        return await self.s.get(Authority, 1)

    async def add_authority(self, row: Authority) -> None:
        """Store the CA; DuplicateError if another instance stored one first."""
        self.s.add(row)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            raise DuplicateError("authority", "id", str(row.id)) from exc

    async def add(self, cert: DeviceCertificate) -> None:
        self.s.add(cert)

    async def revoke_devices(self, device_uuids: Sequence[str], at: datetime) -> int:
        """Revoke every unrevoked certificate of these devices; how many were revoked."""
        result = await self.s.execute(
            update(DeviceCertificate)
            .where(
                DeviceCertificate.device_uuid.in_(device_uuids),
                DeviceCertificate.revoked_at.is_(None),
            )
            .values(revoked_at=at)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def of_device(self, device_uuid: str) -> list[DeviceCertificate]:
        rows = await self.s.scalars(
            select(DeviceCertificate)
            .where(DeviceCertificate.device_uuid == device_uuid)
            .order_by(DeviceCertificate.issued_at)
        )
        return list(rows)

    async def revoked(self, now: datetime) -> list[tuple[str, datetime]]:
        """``(serial, revoked at)`` of the revoked certificates not yet expired at ``now``."""
        rows = await self.s.execute(
            select(DeviceCertificate.serial, DeviceCertificate.revoked_at).where(
                DeviceCertificate.revoked_at.is_not(None), DeviceCertificate.not_after > now
            )
        )
        return [(serial, at) for serial, at in rows if at is not None]
