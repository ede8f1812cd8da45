"""File storage: the port every backend implements (``FileStore``) and what it hands back.

Backends: ``local.LocalFileStore`` (a directory; downloads through the server's own
``/filebin/download/{key}`` with an HMAC-signed, expiring query) and ``s3.S3FileStore``
(any S3 API; downloads by presigned GET). Only ``bootstrap`` picks one.

A file is streamed in: ``put`` reads chunks as they arrive, counts and hashes them, and
never holds a whole file in memory. Keys are ``<32 hex digits>/<safe file name>``, so a
URL's last segment is a usable file name for whoever downloads it.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath

CHUNK_SIZE = 64 * 1024
"""Bytes per chunk when a store reads a file back."""

DEFAULT_CONTENT_TYPE = "application/octet-stream"

_KEY = re.compile(r"[0-9a-f]{32}/[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class StoredFile:
    """A file as stored: its key in the store, and what was measured while storing it."""

    key: str
    size: int
    sha256: str
    filename: str
    content_type: str


class FileStore(ABC):
    """Where uploaded files live. Every method may raise ``StorageError`` (the store failed)."""

    @abstractmethod
    async def put(
        self,
        chunks: AsyncIterable[bytes],
        filename: str,
        content_type: str,
        max_bytes: int,
    ) -> StoredFile:
        """Store the stream under a new key, computing size and SHA-256 on the way.

        More than ``max_bytes`` raises ``FileTooLargeError``; on that or any other error
        (the stream's own included) nothing of the file is left in the store.
        """

    @abstractmethod
    async def put_at(self, key: str, chunks: AsyncIterable[bytes], content_type: str) -> StoredFile:
        """Store the stream under ``key`` exactly, replacing what is there (``edgefleet
        restore`` puts files back under the keys the database knows). No size limit; on
        error nothing of the new file is left, and a file already there stays as it was."""

    @abstractmethod
    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks; ``StoredFileNotFoundError`` (at once) if it is not there."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the file; a key that is not there is not an error."""

    @abstractmethod
    async def download_url(self, key: str, ttl_seconds: int) -> str:
        """An absolute URL that GETs the file with no other credential, for ``ttl_seconds``."""


def safe_filename(name: str) -> str:
    """The last path segment of ``name`` in ``[A-Za-z0-9._-]``, at most 100 characters."""
    base = PurePosixPath(name.replace("\\", "/")).name
    clean = _UNSAFE.sub("_", base).lstrip(".-")
    if len(clean) > 100:
        stem, dot, ext = clean.rpartition(".")
        clean = (stem[: 99 - len(ext)] + dot + ext) if dot and len(ext) < 20 else clean[:100]
    return clean or "file"


def new_key(filename: str) -> str:
    return f"{secrets.token_hex(16)}/{safe_filename(filename)}"


def is_key(key: str) -> bool:
    """Whether ``key`` has the shape ``new_key`` makes (so it cannot climb out of a store)."""
    return _KEY.fullmatch(key) is not None
