"""The archive's manifest: what it holds, each member's size and SHA-256, its own digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from edgefleet.services.backup.common import (
    FORMAT_VERSION,
)

# --- the manifest -------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Member(_Model):
    size: int
    sha256: str


class FileEntry(_Model):
    """A row of the ``files`` table as the snapshot had it (what restore puts back where)."""

    key: str
    kind: str
    size: int
    sha256: str
    content_type: str


class DatabaseInfo(_Model):
    dialect: Literal["sqlite", "postgresql"]
    member: str
    schema_revision: str
    server_version: str
    """SQLite's library version, or PostgreSQL's ``server_version``."""
    tool: str
    """What made the copy: ``sqlite3 backup API`` or ``pg_dump --version``."""
    tables: dict[str, int]
    """Rows per table (``alembic_version`` aside) in the snapshot."""


class KeyInfo(_Model):
    source: Literal["setting", "file"]
    """``setting``: EDGEFLEET_SECRET_KEY (not in the archive); ``file``: the data dir's key
    file, archived as ``secret.key``."""
    fingerprint: str
    """A one-way digest of the key: restore compares it with the key it will run with."""


class Manifest(_Model):
    format: Literal["edgefleet-backup"] = "edgefleet-backup"
    format_version: int = FORMAT_VERSION
    edgefleet_version: str
    created_at: str
    database: DatabaseInfo
    files: list[FileEntry]
    secret_key: KeyInfo
    members: dict[str, Member]
    manifest_sha256: str = ""

    def digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"manifest_sha256"})
        return hashlib.sha256(_canonical(body)).hexdigest()

    def sealed(self) -> Manifest:
        return self.model_copy(update={"manifest_sha256": self.digest()})

    def encode(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode() + b"\n"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"edgefleet-backup-key-fingerprint:" + key).hexdigest()
