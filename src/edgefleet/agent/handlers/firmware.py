"""``POST /system/firmware``: accept at once, then download, verify, install, reboot; report by
events.

Events (``put /system/firmware`` on the client topic, no task_id):

    {"code": 200, "data": {"progress": 40, "downloaded": 4194304, "total": 10485760}}
    {"code": 200, "data": {"code": "FW_UPGRADE_SUCCESS", "version": "1.3.0", "file": …,
                           "size": …, "sha256": …}}
    {"code": 500, "data": {"code": "FW_UPGRADE_FAIL", "reason": "sha256 mismatch: …"}}

``progress`` is a percentage when the size is known (from the request or Content-Length),
else ``null`` with the byte count; it is sent at 0, every 10 % and at the end. ``version`` is
the request's ``version`` (``""`` when it gave none). After a success the machine reboots
(``rebootAfterFirmware``, ``rebootDelay``, ``rebootCommand``). The upgrade may be cancelled
(``DELETE /system/tasks/{task_id}``: no result event then) until the install command starts.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.agent.handlers.system import reboot_later
from edgefleet.agent.plugin import AgentContext, HandlerError, Reply, Request, Route
from edgefleet.agent.util import (
    Downloaded,
    FileRef,
    TransferError,
    download,
    expand,
    parse,
    run_command,
)

log = logging.getLogger(__name__)

RESOURCE = "/system/firmware"
SUCCESS = "FW_UPGRADE_SUCCESS"
FAIL = "FW_UPGRADE_FAIL"
INSTALLING = "installing the firmware: can no longer be cancelled"
FINISHED = "already finished"


class FirmwareBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    delay: float = Field(default=0, ge=0, le=86400)
    file: FileRef
    version: str | None = Field(default=None, max_length=200)
    """The version the image installs; reported in the success event."""


def file_name(url: str) -> str:
    """A safe local name from the URL's last path segment."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name[:100] or "firmware.bin"


class Firmware:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.current: str | None = None
        """The task_id of the latest accepted upgrade (running while its job runs)."""

    def routes(self) -> Iterable[Route]:
        return [Route("post", RESOURCE, self.upgrade)]

    async def upgrade(self, req: Request) -> Reply:
        body = parse(FirmwareBody, req.data)
        if self.ctx.background.active(self.current):
            raise HandlerError(409, "a firmware upgrade is already running")
        self.current = req.task_id

        async def job() -> None:
            final = await self.run(body, req.task_id)
            if final["code"] == SUCCESS and self.ctx.config.rebootAfterFirmware:
                await reboot_later(self.ctx, req.task_id)

        req.after_reply(job)
        return 200, {"status": "accepted", "delay": body.delay, "url": body.file.url}

    async def run(self, body: FirmwareBody, task_id: str = "") -> dict[str, Any]:
        """The upgrade up to its result; returns (and emits) the final event's data."""
        await asyncio.sleep(body.delay)
        try:
            got = await self._download(body.file)
            if self.ctx.config.firmwareInstallCommand:
                self.ctx.background.commit(task_id, INSTALLING)
            await self._install(got)
        except TransferError as exc:
            return await self._fail(task_id, exc.message)
        except Exception as exc:  # the event must be sent whatever happened
            log.exception("firmware upgrade failed")
            return await self._fail(task_id, f"{type(exc).__name__}: {exc}")
        data = {
            "code": SUCCESS,
            "version": body.version or "",
            "message": "firmware downloaded, verified and installed",
            "file": str(got.path),
            "size": got.size,
            "sha256": got.sha256,
        }
        log.info("firmware upgrade succeeded: %s", got.path)
        self.ctx.background.commit(task_id, FINISHED)
        await self.ctx.emit("put", RESOURCE, data)
        return data

    async def _fail(self, task_id: str, reason: str) -> dict[str, Any]:
        log.error("firmware upgrade failed: %s", reason)
        data = {"code": FAIL, "reason": reason}
        self.ctx.background.commit(task_id, FINISHED)
        await self.ctx.emit("put", RESOURCE, data, 500)
        return data

    async def _download(self, ref: FileRef) -> Downloaded:
        dest = self.ctx.path("firmware") / file_name(ref.url)
        step = -1

        async def progress(done: int, total: int | None) -> None:
            nonlocal step
            if total:
                pct = min(100, done * 100 // total)
                if pct // 10 > step:
                    step = pct // 10
                    await self._progress(pct, done, total)

        await self._progress(0, 0, ref.size)
        try:
            got = await download(
                self.ctx.http,
                ref,
                dest,
                max_bytes=self.ctx.config.maxDownloadBytes,
                time_limit=self.ctx.config.downloadTimeout,
                progress=progress,
            )
        except TransferError:
            dest.unlink(missing_ok=True)
            raise
        if step < 10:
            await self._progress(100 if got.size else None, got.size, got.size or None)
        return got

    async def _progress(self, pct: int | None, done: int, total: int | None) -> None:
        await self.ctx.emit("put", RESOURCE, {"progress": pct, "downloaded": done, "total": total})

    async def _install(self, got: Downloaded) -> None:
        command = self.ctx.config.firmwareInstallCommand
        if not command:
            return
        argv = expand(command, file=str(got.path))
        if argv == list(command):
            argv.append(str(got.path))
        log.warning("installing firmware: %s", " ".join(argv))
        result = await run_command(argv, self.ctx.config.commandTimeout)
        if not result.ok:
            raise TransferError(f"install command {result.explain()}")


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return Firmware(ctx).routes()
