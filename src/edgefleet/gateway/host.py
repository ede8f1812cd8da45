"""What the shared handlers need of the gateway they run on: small ports, one per group of
handlers. The agent implements them with the machine it runs on (files, commands, /proc),
the simulator with in-memory state; the handlers' logic (bodies, answers, job flow, events)
is the same on both."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgefleet.gateway.bodies import FileRef
from edgefleet.gateway.jobs import Background

Progress = Callable[[int, int | None], Awaitable[None]]
"""Called with (bytes so far, total bytes if known) while a file downloads."""


@dataclass(frozen=True)
class Fetched:
    """A downloaded (and checked) file: where it is kept, if anywhere."""

    size: int
    sha256: str
    path: Path | None = None


class JobsHost(Protocol):
    """The background jobs of requests, and the answers sent before (redeliveries)."""

    @property
    def background(self) -> Background: ...

    def answered(self, task_id: str) -> bool:
        """True if ``task_id`` was answered before (its answer is remembered)."""
        ...

    async def report(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        """Publish a job's event on the client topic, or keep it for the next connection."""
        ...


class SystemHost(JobsHost, Protocol):
    """``/system/properties``, ``/system/status``, ``/system/reboot``."""

    def system_properties(self) -> dict[str, Any]: ...

    async def system_status(self) -> dict[str, Any]: ...

    def reboot_delay(self, asked: float | None) -> float:
        """Seconds between a reboot's answer and the reboot (``asked``: the request's)."""
        ...

    def reboot_accepted(self, delay: float) -> dict[str, Any]:
        """The answer to an accepted reboot."""
        ...

    async def reboot(self) -> None:
        """Reboot now (say ``REBOOTING``, go down); the job is past cancelling."""
        ...


class FirmwareHost(SystemHost, Protocol):
    """``/system/firmware``: where the image goes and how it is installed."""

    progress_every: int
    """Percent between progress events (one at 0 and one at the end in any case)."""
    progress_start: int
    """The band of ``progress_every`` taken as reported when the download starts: 0 reports
    the next band crossed, -1 the first chunk too."""

    async def fetch_firmware(self, ref: FileRef, progress: Progress) -> Fetched:
        """Download and check ``ref`` (``TransferError`` with the reason)."""
        ...

    async def install_firmware(self, got: Fetched, task_id: str) -> dict[str, Any]:
        """Install ``got`` (``TransferError`` with the reason); return what the success event
        says besides code, version, size and sha256."""
        ...

    def firmware_ended(self, result: dict[str, Any]) -> None:
        """An upgrade's result, before it is reported (``code``: success or fail)."""
        ...

    def firmware_reboot_delay(self) -> float | None:
        """Seconds from a successful upgrade to the reboot; None: no reboot."""
        ...


class ImportHost(SystemHost, Protocol):
    """``/system/import``: apply a configuration archive."""

    async def import_config(
        self, ref: FileRef, scopes: list[str]
    ) -> tuple[dict[str, Any], float | None]:
        """Fetch and apply ``ref`` for ``scopes`` (``HandlerError`` 400 if refused); return the
        answer and the seconds until the reboot it needs (None: no reboot)."""
        ...


class GatewayHost(FirmwareHost, ImportHost, Protocol):
    """Every port: what a gateway serving all the shared handlers implements."""
