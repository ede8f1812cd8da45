"""Stored files and the firmware catalogue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import File, Firmware, Task
from edgefleet.domain.tasks import TASK_OPEN
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

    async def expired(self, before: datetime, after_key: str, limit: int) -> list[str]:
        """Keys of files stored before ``before`` that the firmware catalogue does not
        hold, in key order from just after ``after_key``."""
        catalogued = select(Firmware.file_key)
        q = (
            select(File.key)
            .where(File.created_at < before, File.key > after_key, File.key.not_in(catalogued))
            .order_by(File.key)
            .limit(limit)
        )
        return list((await self.s.scalars(q)).all())

    async def task_payloads(self, finished_after: datetime) -> list[Any]:
        """The payloads of the tasks that may still send their files: open ones, and those
        finished after ``finished_after`` (a failed share may be run again)."""
        q = select(Task.payload).where(
            or_(Task.state.in_([s.value for s in TASK_OPEN]), Task.finished_at >= finished_after)
        )
        return list((await self.s.scalars(q)).all())


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
