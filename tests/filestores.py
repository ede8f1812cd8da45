"""The server under test over a chosen file store, served over real HTTP too (fixtures
``file_backend``, ``http_socket``, ``store_env`` and ``live_store_env`` in conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container
from edgefleet.db.tables import File
from edgefleet.settings import Settings, StorageSettings
from tests.answers import checked_client
from tests.httpserver import serving
from tests.s3server import REGION, S3Server

FILE_LIMIT = 2 * 1024 * 1024
"""``storage.max_file_bytes`` in these tests: small, so going over it is quick."""


@dataclass(frozen=True)
class FileBackend:
    name: str
    s3: S3Server | None = None
    bucket: str = ""

    def configure(self, settings: Settings) -> None:
        """Point ``settings`` at this store (before a container is built from them)."""
        if self.s3 is None:
            settings.storage = StorageSettings(max_file_bytes=FILE_LIMIT)
            return
        settings.storage = StorageSettings(
            url=f"s3://{self.bucket}/edgefleet",
            s3_endpoint_url=self.s3.endpoint,
            s3_region=REGION,
            max_file_bytes=FILE_LIMIT,
        )


@dataclass
class StoreEnv:
    """The app: an ASGI client, its real-HTTP base URL, and what its store holds."""

    c: Container
    api: httpx.AsyncClient
    base_url: str
    backend: FileBackend

    def stored(self) -> list[str]:
        """Every object (and unfinished S3 upload) in the store."""
        s3 = self.backend.s3
        if s3 is not None:
            return s3.objects(self.backend.bucket) + s3.open_uploads(self.backend.bucket)
        root = self.c.settings.files_dir
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    async def rows(self) -> int:
        """Rows in the ``files`` table."""
        async with self.c.db.session() as s:
            return int(await s.scalar(select(func.count()).select_from(File)) or 0)


@asynccontextmanager
async def serve(
    container: Container, sock: socket.socket, backend: FileBackend
) -> AsyncIterator[StoreEnv]:
    app = create_app(container)
    async with serving(app, sock) as base_url:
        client = ("198.51.100.7", 40000)
        async with checked_client(app, "http://testserver", client) as api:
            yield StoreEnv(container, api, base_url, backend)


async def fetch(url: str, **kwargs: Any) -> httpx.Response:
    """A GET over real HTTP with no credential, as a gateway makes it."""
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url, **kwargs)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """The problem+json body of ``r``, which must have ``status``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    return body
