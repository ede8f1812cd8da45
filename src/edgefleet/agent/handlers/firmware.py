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
The job flow is the shared one (``edgefleet.gateway.handlers``); here are the machine's parts:
where the image goes and the install command.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from edgefleet.agent.handlers.system import Machine
from edgefleet.agent.plugin import AgentContext, Reply, Request, Route
from edgefleet.agent.util import FileRef, TransferError, download, expand, run_command
from edgefleet.gateway import handlers
from edgefleet.gateway.bodies import FirmwareBody
from edgefleet.gateway.handlers import FAIL, FINISHED, SUCCESS
from edgefleet.gateway.host import Fetched, Progress
from edgefleet.gateway.routing import bind

__all__ = [
    "FAIL",
    "FINISHED",
    "INSTALLING",
    "RESOURCE",
    "SUCCESS",
    "Firmware",
    "FirmwareBody",
    "FirmwareMachine",
    "file_name",
    "plugin",
]

log = logging.getLogger(__name__)

RESOURCE = handlers.FIRMWARE
INSTALLING = "installing the firmware: can no longer be cancelled"


def file_name(url: str) -> str:
    """A safe local name from the URL's last path segment."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name[:100] or "firmware.bin"


class FirmwareMachine(Machine):
    """The machine as the shared firmware handler's host: the image is kept in the data dir
    and installed by ``firmwareInstallCommand``."""

    progress_every = 10
    progress_start = -1

    async def fetch_firmware(self, ref: FileRef, progress: Progress) -> Fetched:
        dest = self.ctx.path("firmware") / file_name(ref.url)
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
        return Fetched(got.size, got.sha256, got.path)

    async def install_firmware(self, got: Fetched, task_id: str) -> dict[str, Any]:
        assert got.path is not None  # fetch_firmware keeps it
        command = self.ctx.config.firmwareInstallCommand
        if command:
            self.ctx.background.commit(task_id, INSTALLING)
            argv = expand(command, file=str(got.path))
            if argv == list(command):
                argv.append(str(got.path))
            log.warning("installing firmware: %s", " ".join(argv))
            result = await run_command(argv, self.ctx.config.commandTimeout)
            if not result.ok:
                raise TransferError(f"install command {result.explain()}")
        return {"message": "firmware downloaded, verified and installed", "file": str(got.path)}

    def firmware_ended(self, result: dict[str, Any]) -> None:
        if result["code"] == SUCCESS:
            log.info("firmware upgrade succeeded: %s", result["file"])
        else:
            log.error("firmware upgrade failed: %s", result["reason"])

    def firmware_reboot_delay(self) -> float | None:
        return self.ctx.config.rebootDelay if self.ctx.config.rebootAfterFirmware else None


class Firmware:
    def __init__(self, ctx: AgentContext) -> None:
        self.machine = FirmwareMachine(ctx)

    def routes(self) -> Iterable[Route]:
        return bind(self.machine, handlers.FIRMWARE_ROUTES)

    async def upgrade(self, req: Request) -> Reply:
        return await handlers.upgrade(self.machine, req)

    async def run(self, body: FirmwareBody, task_id: str = "") -> dict[str, Any]:
        """The upgrade up to its result; returns (and emits) the final event's data."""
        return await handlers.run_upgrade(self.machine, body, task_id)


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return Firmware(ctx).routes()
