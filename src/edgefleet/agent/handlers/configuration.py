"""``POST /system/export`` and ``PUT /system/import``: configuration archives.

An archive is a tar.gz of the paths of the configured scopes (``configScopes``), each stored
under its absolute path without the leading ``/``, plus ``edgefleet-export.json`` (what was
exported). Import downloads an archive, extracts it into a fresh staging directory with
tarfile's ``data`` filter (nothing may leave it through ``..`` or links, a leading ``/`` is
stripped, no devices or set-uid bits), refuses it whole if a file lies outside every configured
scope, and then copies the files of the selected scopes into place, each replaced atomically.
Symbolic links are not imported. ThingsPro gateways reboot 3 s after an import; the agent
does so only with ``rebootAfterImport`` (after ``rebootDelay``, cancellable until then), since
its scopes are whatever paths the host's owner chose.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgefleet.agent.handlers.system import Machine
from edgefleet.agent.plugin import AgentContext, HandlerError, Reply, Request, Route
from edgefleet.agent.util import (
    FileRef,
    TransferError,
    UploadTarget,
    download,
    parse,
    prune,
    upload_into,
)
from edgefleet.gateway import handlers
from edgefleet.gateway.routing import bind

log = logging.getLogger(__name__)

MANIFEST = "edgefleet-export.json"
KEEP_EXPORTS = 5


class ImportRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Applied:
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class ExportBody(UploadTarget):
    scopes: list[str] | None = None


def _rel(p: Path) -> PurePosixPath:
    return PurePosixPath(p.as_posix()).relative_to("/")


def _within(rel: PurePosixPath, roots: Iterable[PurePosixPath]) -> bool:
    return any(rel == r or r in rel.parents for r in roots)


def build_archive(dest: Path, scopes: Mapping[str, list[Path]], manifest: dict[str, Any]) -> int:
    """Write the tar.gz of ``scopes`` to ``dest`` (mode 0600); return the number of entries."""
    tmp = dest.with_name(dest.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    entries = 0
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            doc = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(doc), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(doc))
            for paths in scopes.values():
                for path in paths:
                    if not path.exists():
                        continue
                    for item in [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]:
                        tar.add(item, arcname=str(_rel(item)), recursive=False)
                        entries += 1
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return entries


def apply_archive(
    archive: Path,
    selected: Mapping[str, list[Path]],
    configured: Mapping[str, list[Path]],
    staging_parent: Path,
    max_bytes: int,
    root: Path = Path("/"),
) -> Applied:
    """Extract safely, check, and copy the files of ``selected`` scopes under ``root``."""
    allowed = [_rel(p) for paths in configured.values() for p in paths]
    chosen = [_rel(p) for paths in selected.values() for p in paths]
    staging = Path(tempfile.mkdtemp(prefix="import-", dir=staging_parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                if sum(m.size for m in members) > max_bytes:
                    raise ImportRefused(f"archive expands to more than {max_bytes} bytes")
                tar.extractall(staging, filter="data")
        except tarfile.FilterError as exc:
            raise ImportRefused(f"unsafe archive member refused: {exc}") from None
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ImportRefused(f"not a valid tar.gz archive: {exc}") from None
        applied = Applied()
        files: list[PurePosixPath] = []
        for path in sorted(staging.rglob("*")):
            rel = PurePosixPath(path.relative_to(staging).as_posix())
            if str(rel) == MANIFEST or (path.is_dir() and not path.is_symlink()):
                continue
            if not _within(rel, allowed):
                raise ImportRefused(f"/{rel} is outside the configured scopes")
            if path.is_symlink() or not path.is_file():
                applied.skipped.append(f"/{rel}")
            elif _within(rel, chosen):
                files.append(rel)
        for rel in files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            os.close(fd)
            try:
                shutil.copy2(staging / rel, tmp)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
            applied.files.append(str(target))
        return applied
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ImportMachine(Machine):
    """The machine as the shared import handler's host: the archive is applied to the files
    of the configured scopes."""

    def scopes(self, names: list[str] | None) -> dict[str, list[Path]]:
        configured = self.ctx.config.configScopes
        if names is None:
            return dict(configured)
        unknown = sorted(set(names) - set(configured))
        if unknown:
            raise HandlerError(400, f"unknown scopes {unknown}; configured: {sorted(configured)}")
        return {n: configured[n] for n in names}

    async def import_config(
        self, ref: FileRef, scopes: list[str]
    ) -> tuple[dict[str, Any], float | None]:
        selected = self.scopes(scopes)
        directory = self.ctx.path("imports")
        archive = directory / "import.tar.gz"
        try:
            await download(
                self.ctx.http,
                ref,
                archive,
                max_bytes=self.ctx.config.maxDownloadBytes,
                time_limit=self.ctx.config.downloadTimeout,
            )
        except TransferError as exc:
            raise HandlerError(400, exc.message) from None
        try:
            applied = await asyncio.to_thread(
                apply_archive,
                archive,
                selected,
                self.ctx.config.configScopes,
                directory,
                self.ctx.config.maxDownloadBytes,
            )
        except ImportRefused as exc:
            log.warning("import refused: %s", exc.message)
            raise HandlerError(400, exc.message) from None
        finally:
            archive.unlink(missing_ok=True)
        log.info("imported %d files of scopes %s", len(applied.files), sorted(selected))
        out: dict[str, Any] = {
            "scopes": sorted(selected),
            "files": applied.files,
            "skipped": applied.skipped,
        }
        if not self.ctx.config.rebootAfterImport:
            return out, None
        out["rebootDelay"] = delay = self.ctx.config.rebootDelay
        return out, delay


class Configuration:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.machine = ImportMachine(ctx)

    def routes(self) -> Iterable[Route]:
        return [Route("post", "/system/export", self.export), *bind(self.machine, handlers.IMPORT)]

    async def export(self, req: Request) -> Reply:
        body = parse(ExportBody, req.data)
        scopes = self.machine.scopes(body.scopes)
        directory = self.ctx.path("exports")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dest = directory / f"config-{stamp}-{os.getpid()}-{time.monotonic_ns() % 10**6}.tar.gz"
        manifest = {
            "deviceUUID": self.ctx.config.deviceUUID,
            "created": stamp,
            "scopes": {k: [str(p) for p in v] for k, v in scopes.items()},
        }
        entries = await asyncio.to_thread(build_archive, dest, scopes, manifest)
        prune(directory, "config-*.tar.gz", KEEP_EXPORTS)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(dest.read_bytes()).hexdigest())
        out: dict[str, Any] = {
            "path": str(dest),
            "size": dest.stat().st_size,
            "sha256": digest,
            "entries": entries,
            "scopes": sorted(scopes),
        }
        await upload_into(
            out, self.ctx.http, body.url, body.headers, dest, self.ctx.config.downloadTimeout
        )
        return 200, out

    async def import_(self, req: Request) -> Reply:
        return await handlers.import_config(self.machine, req)


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return Configuration(ctx).routes()
