"""What several handlers share: commands, downloads, uploads, request bodies."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.gateway.bodies import FileRef, TransferError, parse
from edgefleet.gateway.routing import HandlerError

log = logging.getLogger(__name__)

__all__ = [
    "CommandResult",
    "Downloaded",
    "FileRef",
    "Progress",
    "TransferError",
    "UploadTarget",
    "download",
    "expand",
    "parse",
    "prune",
    "run_command",
    "upload",
    "upload_into",
]


class UploadTarget(BaseModel):
    """Where to upload a produced file (``UrlInfo``); optional in export and syslog."""

    model_config = ConfigDict(extra="allow")

    url: str | None = Field(default=None, min_length=1, max_length=4096)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"(?i)https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL")
        return v


# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def explain(self) -> str:
        tail = (self.stderr or self.stdout).decode(errors="replace").strip()[-300:]
        return f"exited with {self.returncode}" + (f": {tail}" if tail else "")


def expand(argv: Sequence[str], **values: str) -> list[str]:
    """Replace ``{key}`` in each argument (no shell, no other formatting)."""
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


async def run_command(argv: Sequence[str], time_limit: float = 300.0) -> CommandResult:
    """Run ``argv`` (no shell); not found → 127, timeout → killed, -9."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return CommandResult(127, b"", f"{argv[0]}: {exc.strerror or exc}".encode())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), time_limit)
    except TimeoutError:
        await _kill(proc)
        return CommandResult(-9, b"", f"timed out after {time_limit:g} s".encode())
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    return CommandResult(proc.returncode if proc.returncode is not None else -1, out, err)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


# --- transfers -------------------------------------------------------------------------------


Progress = Callable[[int, int | None], Awaitable[None]]


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str


async def download(
    http: httpx.AsyncClient,
    ref: FileRef,
    dest: Path,
    *,
    max_bytes: int,
    time_limit: float,
    progress: Progress | None = None,
) -> Downloaded:
    """Stream ``ref.url`` into ``dest`` (via ``dest.part``); check ``size`` and ``sha256``.

    Raises ``TransferError`` with the reason; nothing is left at ``dest`` then.
    """
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    limit = min(max_bytes, ref.size) if ref.size is not None else max_bytes
    try:
        async with asyncio.timeout(time_limit):
            async with http.stream("GET", ref.url, headers=ref.headers) as r:
                if r.status_code != 200:
                    raise TransferError(f"download failed: HTTP {r.status_code}")
                header = r.headers.get("content-length")
                total = ref.size if ref.size is not None else _int(header)
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    async for chunk in r.aiter_bytes(64 * 1024):
                        size += len(chunk)
                        if size > limit:
                            what = "the announced size" if ref.size is not None else "the limit"
                            raise TransferError(f"size mismatch: more than {limit} bytes ({what})")
                        digest.update(chunk)
                        f.write(chunk)
                        if progress is not None:
                            await progress(size, total)
        if ref.size is not None and size != ref.size:
            raise TransferError(f"size mismatch: got {size} bytes, expected {ref.size}")
        got = digest.hexdigest()
        if ref.sha256 is not None and got != ref.sha256:
            raise TransferError(f"sha256 mismatch: got {got}, expected {ref.sha256}")
        os.replace(part, dest)
        return Downloaded(dest, size, got)
    except TimeoutError:
        raise TransferError(f"download timed out after {time_limit:g} s") from None
    except httpx.HTTPError as exc:
        raise TransferError(f"download failed: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise TransferError(f"cannot write {part.name}: {exc.strerror or exc}") from None
    finally:
        part.unlink(missing_ok=True)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def upload(
    http: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    path: Path,
    time_limit: float,
) -> Any:
    """POST ``path`` as multipart field ``file`` (the gateway's export/syslog upload) and
    return the server's JSON answer (ThingsPro filebin: ``{fieldname, url}``)."""
    try:
        with path.open("rb") as f:
            r = await http.post(
                url,
                headers=dict(headers),
                files={"file": (path.name, f, "application/octet-stream")},
                timeout=time_limit,
            )
    except httpx.HTTPError as exc:
        raise TransferError(f"upload failed: {type(exc).__name__}: {exc}") from None
    if r.status_code >= 300:
        raise TransferError(f"upload failed: HTTP {r.status_code}")
    try:
        return r.json()
    except ValueError:
        return {"url": url}


def prune(directory: Path, pattern: str, keep: int) -> None:
    """Delete all but the newest ``keep`` files matching ``pattern``."""
    files = sorted(directory.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


async def upload_into(
    out: dict[str, Any],
    http: httpx.AsyncClient,
    url: str | None,
    headers: Mapping[str, str],
    path: Path,
    timeout_s: float,
) -> None:
    """If ``url`` is given, upload ``path`` there and record the answer in ``out``
    (``upload``, and ``url`` when the answer names one); a failure answers 502."""
    if url is None:
        return
    try:
        answer = await upload(http, url, headers, path, timeout_s)
    except TransferError as exc:
        raise HandlerError(502, exc.message) from None
    out["upload"] = answer
    if isinstance(answer, dict) and "url" in answer:
        out["url"] = answer["url"]
