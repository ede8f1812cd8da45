"""Stored files and the firmware catalogue."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import File, Firmware
from edgefleet.errors import DuplicateError


class FileRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, row: File) -> None:
        self.s.add(row)
        await self.s.flush()

    async def get(self, key: str) -> File | None:
        return await self.s.get(File, key)

    async def recent(self, limit: int) -> list[File]:
        """The newest files first (the console's file list)."""
        q = select(File).order_by(File.created_at.desc(), File.key).limit(limit)
        return list((await self.s.scalars(q)).all())

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self.s.execute(delete(File).where(File.key.in_(keys)))


class FirmwareRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, row: Firmware) -> None:
        self.s.add(row)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            raise DuplicateError(
                "firmware", "version and file name", f"{row.version} {row.filename}"
            ) from exc

    async def get(self, firmware_id: int) -> Firmware | None:
        return await self.s.get(Firmware, firmware_id)

    async def page(self, *, offset: int, limit: int) -> tuple[int, list[Firmware]]:
        total = await self.s.scalar(select(func.count()).select_from(Firmware))
        rows = await self.s.scalars(
            select(Firmware).order_by(Firmware.id.desc()).offset(offset).limit(limit)
        )
        return int(total or 0), list(rows)

    async def delete(self, firmware_id: int) -> None:
        await self.s.execute(delete(Firmware).where(Firmware.id == firmware_id))
