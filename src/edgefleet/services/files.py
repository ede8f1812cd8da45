"""Stored files (filebin uploads, task attachments) and the firmware catalogue.

Every stored file has a row in ``files``; the bytes are in the ``FileStore`` that bootstrap
chose (a directory or S3). A gateway is handed a *file reference*
``{url, physicalPath, headers}``: ``url`` downloads the file with no credential until it
expires, so ``headers`` is empty (the original put the caller's ``mx-api-token`` there).

Uploads expire (``storage.file_ttl_seconds``, an hour by default, as the original's filebin
kept them): ``expire`` deletes, from the store and then from the database, every file older
than that which neither the firmware catalogue nor a task that may still send it refers to
(a task refers to a file when its payload holds the file's key, as ``physicalPath`` or
inside a download ``url``). ``run_expiry`` does it periodically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid as uuidlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.files import FileRepo, FirmwareRepo
from edgefleet.db.tables import File, Firmware
from edgefleet.domain.firmware import parse_models, parse_notes, parse_version
from edgefleet.errors import (
    EdgefleetError,
    FirmwareNotFoundError,
    StorageError,
    StoredFileNotFoundError,
)
from edgefleet.files import DEFAULT_CONTENT_TYPE, FileStore, StoredFile
from edgefleet.files.signing import UrlSigner
from edgefleet.services.retention import every
from edgefleet.settings import StorageSettings

log = logging.getLogger(__name__)

DISPATCH_TTL = 3600
"""Seconds a URL handed to a gateway stays valid: long enough for a task to reach it and the
download to start."""
EXPIRY_BATCH = 500
"""Files looked at per transaction when expiring."""
MAX_EXPIRY_INTERVAL = 300.0
"""Expiry runs a quarter of the file lifetime apart, and at least this often."""


class FileKind(StrEnum):
    FILEBIN = "filebin"
    ATTACHMENT = "attachment"
    """Uploaded with a multipart ``deviceTasks`` call."""
    FIRMWARE = "firmware"


class FileService:
    def __init__(
        self,
        db: Database,
        store: FileStore,
        signer: UrlSigner,
        settings: StorageSettings,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.store = store
        self.signer = signer
        self.settings = settings
        self.clock = clock

    @property
    def max_file_bytes(self) -> int:
        return self.settings.max_file_bytes

    async def save(
        self,
        chunks: AsyncIterable[bytes],
        filename: str,
        content_type: str = "",
        *,
        kind: FileKind = FileKind.FILEBIN,
        created_by: str = "",
    ) -> StoredFile:
        """Stream a file into the store and record it; over the limit: ``FileTooLargeError``,
        and nothing is kept."""
        stored = await self.store.put(
            chunks,
            filename[:255] or "file",
            (content_type or DEFAULT_CONTENT_TYPE)[:255],
            self.max_file_bytes,
        )
        row = File(
            key=stored.key,
            kind=kind.value,
            filename=stored.filename,
            size=stored.size,
            sha256=stored.sha256,
            content_type=stored.content_type,
            created_at=self.clock(),
            created_by=created_by[:254],
        )
        try:
            async with self.db.session() as s:
                await FileRepo(s).add(row)
        except BaseException:
            with contextlib.suppress(EdgefleetError):
                await self.store.delete(stored.key)
            raise
        return stored

    async def discard(self, keys: Sequence[str]) -> None:
        """Forget files and remove their bytes (what a failed request had stored)."""
        if not keys:
            return
        async with self.db.session() as s:
            await FileRepo(s).delete(list(keys))
        for key in keys:
            try:
                await self.store.delete(key)
            except StorageError:
                log.warning("could not remove stored file %s", key, exc_info=True)

    async def recent(self, limit: int = 100) -> list[File]:
        """Stored files, newest first."""
        async with self.db.session() as s:
            return await FileRepo(s).recent(limit)

    async def get(self, key: str) -> File:
        async with self.db.session() as s:
            row = await FileRepo(s).get(key)
        if row is None:
            raise StoredFileNotFoundError(key)
        return row

    async def open(self, key: str) -> AsyncIterator[bytes]:
        return await self.store.open(key)

    async def download_url(self, key: str, ttl_seconds: int | None = None) -> str:
        return await self.store.download_url(key, ttl_seconds or self.settings.url_ttl_seconds)

    async def reference(self, key: str, ttl_seconds: int = DISPATCH_TTL) -> dict[str, Any]:
        """``{url, physicalPath, headers}`` for a gateway to download ``key``."""
        return {
            "url": await self.download_url(key, ttl_seconds),
            "physicalPath": key,
            "headers": {},
        }

    def check_signature(self, key: str, expires: int, sig: str) -> None:
        """``PermissionDeniedError`` unless ``sig`` is a valid, unexpired link signature."""
        self.signer.check(key, expires, sig)

    async def expire(self, batch: int = EXPIRY_BATCH) -> int:
        """Delete the files past ``file_ttl_seconds`` that nothing refers to (see the module
        docstring); returns how many. A file the store cannot delete now is kept, and tried
        again next time."""
        ttl = self.settings.file_ttl_seconds
        if not ttl:
            return 0
        cutoff = self.clock() - timedelta(seconds=ttl)
        referenced: str | None = None
        after, total = "", 0
        while True:
            async with self.db.session() as s:
                keys = await FileRepo(s).expired(cutoff, after, batch)
            if not keys:
                return total
            after = keys[-1]
            if referenced is None:  # read once per run, and only when something expired
                async with self.db.session() as s:
                    payloads = await FileRepo(s).task_payloads(cutoff)
                referenced = "\n".join(json.dumps(p) for p in payloads)
            gone = [k for k in keys if k not in referenced and await self._remove(k)]
            if gone:
                async with self.db.session() as s:
                    await FileRepo(s).delete(gone)
                total += len(gone)
                log.info("files: %d uploads older than %d s deleted", len(gone), ttl)
            if len(keys) < batch:
                return total

    async def _remove(self, key: str) -> bool:
        try:
            await self.store.delete(key)
        except StorageError as exc:
            log.warning("files: could not delete expired %s: %s", key, exc.message)
            return False
        return True

    async def run_expiry(self) -> None:
        """Expire files now and periodically until cancelled."""
        ttl = self.settings.file_ttl_seconds
        interval = min(MAX_EXPIRY_INTERVAL, ttl / 4) if ttl else MAX_EXPIRY_INTERVAL
        await every(max(interval, 1.0), self.expire, "files")


class FirmwareService:
    def __init__(self, db: Database, files: FileService, clock: Clock = utcnow) -> None:
        self.db = db
        self.files = files
        self.clock = clock

    async def add_firmware(
        self,
        stored: StoredFile,
        *,
        version: str | None,
        models: Iterable[str] = (),
        notes: str | None = "",
        created_by: str = "",
    ) -> Firmware:
        """Catalogue an image already saved (``FileService.save``, kind firmware); when that
        fails (bad version, a duplicate version and file name) the file is discarded."""
        try:
            row = Firmware(
                uuid=str(uuidlib.uuid4()),
                version=parse_version(version),
                models=parse_models(models),
                file_key=stored.key,
                filename=stored.filename[:255],
                size=stored.size,
                sha256=stored.sha256,
                notes=parse_notes(notes),
                created_at=self.clock(),
                created_by=created_by[:254],
            )
            async with self.db.session() as s:
                await FirmwareRepo(s).add(row)
        except BaseException:
            await self.files.discard([stored.key])
            raise
        log.info("firmware %s (%s) catalogued as %s", row.version, row.filename, row.id)
        return row

    async def list_firmware(self, *, offset: int, limit: int) -> tuple[int, list[Firmware]]:
        async with self.db.session() as s:
            return await FirmwareRepo(s).page(offset=offset, limit=limit)

    async def get(self, firmware_id: int) -> Firmware:
        async with self.db.session() as s:
            row = await FirmwareRepo(s).get(firmware_id)
        if row is None:
            raise FirmwareNotFoundError(firmware_id)
        return row

    async def delete_firmware(self, firmware_id: int) -> Firmware:
        """Remove the image from the catalogue and its file from the store."""
        async with self.db.session() as s:
            repo = FirmwareRepo(s)
            row = await repo.get(firmware_id)
            if row is None:
                raise FirmwareNotFoundError(firmware_id)
            await repo.delete(firmware_id)
        await self.files.discard([row.file_key])
        return row

    async def dispatch_file(
        self, firmware_id: int, ttl_seconds: int = DISPATCH_TTL
    ) -> dict[str, Any]:
        """The ``file`` of a ``POST /system/firmware`` task: ``{url, physicalPath, headers,
        size, sha256}`` with a fresh URL; the gateway checks size and digest."""
        row = await self.get(firmware_id)
        ref = await self.files.reference(row.file_key, ttl_seconds)
        return {**ref, "size": row.size, "sha256": row.sha256}
