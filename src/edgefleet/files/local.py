"""Files in a directory of this server (default ``<data dir>/files``), served by the server.

A file is written to ``.partial/`` first and moved into place only when complete, so a
failed or oversized upload leaves nothing behind. Download links point at the server's
``/filebin/download/{key}`` with a signed, expiring query (``files.signing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.errors import FileTooLargeError, StorageError, StoredFileNotFoundError
from edgefleet.files import CHUNK_SIZE, FileStore, StoredFile, is_key, new_key
from edgefleet.files.signing import UrlSigner

WRITE_BATCH = 1024 * 1024
"""Bytes gathered before one write in the worker thread (fewer thread hops per file)."""

DOWNLOAD_PATH = "/filebin/download/"


class LocalFileStore(FileStore):
    def __init__(self, root: Path, signer: UrlSigner, public_url: str) -> None:
        self.root = root
        self.signer = signer
        self.url_base = public_url.rstrip("/") + DOWNLOAD_PATH

    def _path(self, key: str) -> Path:
        if not is_key(key):
            raise StoredFileNotFoundError(key)
        return self.root / key

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        filename: str,
        content_type: str,
        max_bytes: int,
    ) -> StoredFile:
        return await self._write(new_key(filename), chunks, filename, content_type, max_bytes)

    async def put_at(self, key: str, chunks: AsyncIterable[bytes], content_type: str) -> StoredFile:
        self._path(key)  # a malformed key is refused before anything is written
        return await self._write(key, chunks, key.rsplit("/", 1)[-1], content_type, None)

    async def _write(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        filename: str,
        content_type: str,
        max_bytes: int | None,
    ) -> StoredFile:
        partial = self.root / ".partial" / secrets.token_hex(16)
        try:
            f = await asyncio.to_thread(_create, partial)
        except OSError as exc:
            raise StorageError(f"file store: cannot write {self.root}: {exc.strerror}") from exc
        digest, size, batch = hashlib.sha256(), 0, bytearray()
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLargeError(max_bytes)
                digest.update(chunk)
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await _io(key, f.write, batch)
                    batch = bytearray()
            await _io(key, _finish, f, batch, partial, self.root / key)
        except BaseException:
            f.close()
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return StoredFile(key, size, digest.hexdigest(), filename, content_type)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise StoredFileNotFoundError(key) from None
        except OSError as exc:
            raise StorageError(f"file store: cannot read {key}: {exc.strerror}") from exc
        return _read(f)

    async def delete(self, key: str) -> None:
        if is_key(key):
            await asyncio.to_thread(_remove, self._path(key))

    async def download_url(self, key: str, ttl_seconds: int) -> str:
        return f"{self.url_base}{key}?{self.signer.query(key, ttl_seconds)}"


async def _io(key: str, fn: Callable[..., object], /, *args: Any) -> None:
    """A write in the worker thread; the disk's errors (not the stream's) become StorageError."""
    try:
        await asyncio.to_thread(fn, *args)
    except OSError as exc:
        raise StorageError(f"file store: cannot write {key}: {exc.strerror or exc}") from exc


def _create(path: Path) -> BinaryIO:
    # the store's directories are the server's alone (0700), its files 0600
    path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _finish(f: BinaryIO, rest: bytearray, partial: Path, final: Path) -> None:
    f.write(rest)
    f.close()
    final.parent.mkdir(mode=0o700, exist_ok=True)
    os.replace(partial, final)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # each key has a directory of its own


async def _read(f: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK_SIZE):
            yield chunk
    finally:
        f.close()
